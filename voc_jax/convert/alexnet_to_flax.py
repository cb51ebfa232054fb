"""Convert pretrained ImageNet weights (AlexNet, VGG-16, ResNet-50) into a voc-jax (Flax)
weights directory.

Sources: torchvision's weights API (``--torchvision``: AlexNet and VGG-16 IMAGENET1K_V1,
ResNet-50 IMAGENET1K_V2 by default, ``--torchvision IMAGENET1K_V1`` for its older weights), a
local torchvision-layout state dict (``--pth``), or, for AlexNet, a neon model file (.p/.prm,
read with a restricted unpickler: an ImageNet AlexNet, or the reference's trained VOC transfer
model with its head; neon's momentum buffers, the 'states', are ignored). Every key and shape
is checked, nothing may be left over; BatchNorm's running mean and variance go into the
``batch_stats`` collection and ``num_batches_tracked`` is dropped. A narrower network of the
same layout (fewer channels) is read too: its width is recorded. The output directory holds
``params.msgpack`` and ``metadata.json`` (source, sha256, architecture, the preprocessing the
weights expect); it is written atomically. ``--verify`` runs torch and Flax on one random
batch and compares logits.

Exit codes: 0 done, 1 verification above tolerance, 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import urllib.error
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from voc_jax import cli, models
from voc_jax import weights as weights_lib
from voc_jax.convert import layout
from voc_jax.errors import UserError
from voc_jax.models.alexnet import ALEXNET_LAYERS, POOLED_SIZE
from voc_jax.preprocessing import NEON, TORCHVISION, Preprocessing

# torchvision AlexNet state-dict prefixes of our layer names (the neon import's transfer model).
TORCH_LAYER_NAMES = {layer.name: layer.torch_name for layer in ALEXNET_LAYERS}
POOLED = POOLED_SIZE  # fc6 reads a 256 x 6 x 6 map
# torchvision's weights enum and default weights of each architecture.
TORCHVISION_WEIGHTS = {
    "alexnet": ("AlexNet_Weights", "IMAGENET1K_V1"),
    "vgg16": ("VGG16_Weights", "IMAGENET1K_V1"),
    "resnet50": ("ResNet50_Weights", "IMAGENET1K_V2"),
}


class ConversionError(UserError):
    """Bad input: the message names the file and every problem found."""


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ----------------------------------------------------------------------------- torch inputs


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """A torchvision-layout state dict as float32 NumPy arrays; clear errors for anything else."""
    import torch

    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConversionError(
            f"{path}: not a readable torch state dict ({type(e).__name__}: {first_line[:200]}); "
            "expected a file written by torch.save(model.state_dict(), PATH)"
        ) from e
    # Common wrappers: {'state_dict': ...} (Lightning and many scripts), {'model': ...}.
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ConversionError(
            f"{path}: holds a {type(obj).__name__}, not a state dict (a mapping of tensors)"
        )
    state: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(
                f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor"
            )
        state[str(name).removeprefix("module.")] = value.detach().float().cpu().numpy()
    return state


def torchvision_weights(arch: str, name: str | None):
    """torchvision's weights entry for ``arch`` (``name``: IMAGENET1K_V1, ...; None: ours)."""
    import torchvision.models

    enum_name, default = TORCHVISION_WEIGHTS[arch]
    enum = getattr(torchvision.models, enum_name)
    try:
        return enum[name or default]
    except KeyError:
        available = ", ".join(member.name for member in enum)
        raise ConversionError(
            f"--torchvision {name}: {arch} has no such weights; available: {available}"
        ) from None


def fetch_torchvision(
    arch: str = "alexnet", name: str | None = None
) -> tuple[dict[str, np.ndarray], Path, dict[str, Any]]:
    """Download (or reuse torch hub's cached copy of) torchvision's ImageNet weights."""
    import torch

    weights = torchvision_weights(arch, name)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    try:
        state = weights.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, ConnectionError, TimeoutError) as e:
        raise ConversionError(
            f"cannot download {weights.url} ({type(e).__name__}: {e}); offline? Download it on a "
            f"machine with internet, copy it here and run: python convert/alexnet_to_flax.py "
            f"--arch {arch} --pth {cached.name} --out DIR"
        ) from e
    transforms = weights.transforms()
    info = {
        "categories": list(weights.meta["categories"]),
        "mean": tuple(transforms.mean),
        "std": tuple(transforms.std),
        "url": weights.url,
        "acc@1": weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1"),
        "name": f"{type(weights).__name__}.{weights.name}",
    }
    return {k: v.float().numpy() for k, v in state.items()}, cached, info


def torch_to_flax(
    state: Mapping[str, np.ndarray], source: str, arch: str = "alexnet"
) -> tuple[dict[str, Any], int, float]:
    """(variables, num_classes, width) of a torchvision-layout state dict; every tensor used,
    every shape checked (voc_jax.convert.layout)."""
    try:
        return layout.torch_to_flax(arch, state, source)
    except layout.LayoutError as e:
        raise ConversionError(str(e)) from e


def layer_to_flax(layer: str, w: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """One torch-layout AlexNet layer as Flax kernel/bias."""
    grid = POOLED if layer == "fc6" else None  # fc6 rows: torch's (C, H, W) -> our (H, W, C)
    return {"kernel": layout.kernel_to_flax(w, grid), "bias": np.asarray(b, np.float32)}


def transfer_to_flax(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """A torch-layout AlexNet transfer model (backbone + ``head.fc_a``/``head.fc_b``) as our
    variables."""
    params: dict[str, Any] = {
        layer: layer_to_flax(layer, state[f"{prefix}.weight"], state[f"{prefix}.bias"])
        for layer, prefix in TORCH_LAYER_NAMES.items()
        if layer != "fc8"
    }
    params["head"] = {
        name: layer_to_flax(name, state[f"head.{name}.weight"], state[f"head.{name}.bias"])
        for name in ("fc_a", "fc_b")
    }
    return {"params": params}


# ----------------------------------------------------------------------------- verification


def torch_model_for(metadata: Mapping[str, Any], state: Mapping[str, np.ndarray]):
    """The torch module the state dict belongs to: torchvision's classifier, or for an
    AlexNet transfer model the backbone followed by the head (eval mode: dropout is the
    identity, BatchNorm uses its running statistics)."""
    import torch

    from voc_jax.convert import torch_models

    arch = metadata["architecture"]
    if arch["name"] == "transfer":
        return torch_models.transfer_net_from_state(
            state,
            num_classes=int(arch["num_classes"]),
            hidden=int(arch["head_hidden"]),
            conv1_padding=int(arch["conv1_padding"]),
        )
    model = torch_models.classifier(
        arch["name"],
        int(arch["num_classes"]),
        float(arch.get("width", 1.0)),
        int(arch.get("conv1_padding", 2)),
    )
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    return model.eval()


def flax_model_for(metadata: Mapping[str, Any]):
    from voc_jax.model import TransferNet

    arch = metadata["architecture"]
    if arch["name"] != "transfer":
        return weights_lib.classifier_from_metadata(metadata)
    return TransferNet(
        num_classes=int(arch["num_classes"]),
        conv1_padding=int(arch["conv1_padding"]),
        head_hidden=int(arch["head_hidden"]),
    )


def verify_against_torch(
    variables: Mapping[str, Any],
    metadata: Mapping[str, Any],
    state: Mapping[str, np.ndarray],
    *,
    input_size: int | tuple[int, int] = 224,
    batch: int = 2,
    seed: int = 0,
) -> dict[str, float]:
    """Logits of the torch model and of the converted Flax model on one random batch
    (``input_size``: a side, or (height, width))."""
    import jax
    import torch

    torch_model = torch_model_for(metadata, state)
    generator = torch.Generator().manual_seed(seed)
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    x = torch.randn(batch, 3, h, w, generator=generator)
    with torch.no_grad():
        expected = torch_model(x).numpy()
    model = flax_model_for(metadata)
    with jax.default_matmul_precision("highest"):
        apply = jax.jit(lambda v, images: model.apply(v, images))
        got = np.asarray(
            apply(weights_lib.as_variables(variables), x.numpy().transpose(0, 2, 3, 1))
        )
    diff = np.abs(got - expected)
    return {
        "max_abs": float(diff.max()),
        "max_rel": float(diff.max() / max(np.abs(expected).max(), 1e-30)),
        "max_elementwise_rel": float((diff / np.maximum(np.abs(expected), 1e-6)).max()),
        "logit_scale": float(np.abs(expected).max()),
        "within": bool(np.allclose(got, expected, rtol=1e-4, atol=1e-5)),
    }


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python convert/alexnet_to_flax.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--arch",
        choices=models.ARCHITECTURES,
        default="alexnet",
        help="the network's architecture, torchvision's layout (default: alexnet)",
    )
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
        "--pth",
        type=Path,
        metavar="FILE",
        help="a local torchvision-layout state dict of --arch (torch.save(model.state_dict()))",
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
    parser.add_argument("--rtol", type=float, default=1e-4, help="--verify relative tolerance")
    parser.add_argument("--atol", type=float, default=1e-5, help="--verify absolute tolerance")
    pre = parser.add_argument_group(
        "preprocessing (for --pth files trained with other normalisation than torchvision's)"
    )
    pre.add_argument("--channel-order", choices=("RGB", "BGR"), default=None)
    pre.add_argument("--scale", type=float, default=None, help="multiplier on 0-255 pixels")
    pre.add_argument("--mean", type=float, nargs=3, default=None, metavar=("C0", "C1", "C2"))
    pre.add_argument("--std", type=float, nargs=3, default=None, metavar=("C0", "C1", "C2"))
    return parser


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


def _preprocessing(args: argparse.Namespace, base: Preprocessing) -> Preprocessing:
    try:
        prep = Preprocessing(
            channel_order=args.channel_order or base.channel_order,
            scale=base.scale if args.scale is None else args.scale,
            mean=tuple(args.mean) if args.mean else base.mean,
            std=tuple(args.std) if args.std else base.std,
        )
    except ValueError as e:
        raise ConversionError(f"--channel-order/--scale/--mean/--std: {e}") from e
    if not 0 < prep.scale <= 1:
        raise ConversionError(f"--scale {prep.scale}: must be in (0, 1] (a multiplier on 0-255)")
    return prep


def check_output(out: Path, force: bool) -> None:
    """Refuse an output we could not write before any (slow) conversion work."""
    if out.exists() and not force:
        raise ConversionError(f"{out}: already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise ConversionError(f"{out}: exists and is not a directory")
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConversionError(f"{out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConversionError(f"{out}: cannot write into {parent} (permission denied)")


def convert(
    args: argparse.Namespace,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
    """Read the source and build (variables, metadata, torch state) without writing anything."""
    import torch

    if args.neon:
        if args.arch != "alexnet":
            raise ConversionError(f"--neon reads neon's AlexNet files, not --arch {args.arch}")
        return convert_neon(args)
    if args.torchvision is not None:
        state, path, info = fetch_torchvision(args.arch, args.torchvision or None)
        base = Preprocessing(mean=info["mean"], std=info["std"])
        source = {
            "kind": "torchvision",
            "name": info["name"],
            "url": info["url"],
            "imagenet_acc@1": info["acc@1"],
        }
        categories = info["categories"]
    else:
        path = args.pth
        state = load_state_dict(path)
        base = TORCHVISION
        source = {"kind": "pth", "name": path.name}
        categories = None
    source |= {"file": str(path), "sha256": sha256_of(path)}
    variables, num_classes, width = torch_to_flax(state, str(path), args.arch)
    architecture: dict[str, Any] = {
        "name": args.arch,
        "input_size": 224,
        "num_classes": num_classes,
        "width": width,
    }
    if args.arch == "alexnet":
        architecture["conv1_padding"] = 2
    metadata: dict[str, Any] = {
        "source": source,
        "architecture": architecture,
        "preprocessing": _preprocessing(args, base).to_dict(),
        "imagenet_classes": num_classes,
        "converter": {"torch": torch.__version__, "script": "convert/alexnet_to_flax.py"},
    }
    if categories is not None:
        metadata["categories"] = categories
    return variables, metadata, state


def convert_neon(
    args: argparse.Namespace,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
    """A neon file: restricted unpickling, layer mapping, then the torchvision path's layouts."""
    import torch

    from voc_jax.convert import neon

    path = args.neon
    state, facts = neon.neon_to_torch_state(neon.load_pickle(path), path)
    architecture: dict[str, Any] = {
        "name": facts["kind"],
        "conv1_padding": facts["conv1_padding"],
        "input_size": 224,
        "num_classes": facts["num_classes"],
    }
    if facts["kind"] == "transfer":
        architecture["head_hidden"] = facts["head_hidden"]
        params = transfer_to_flax(state)
    else:
        params, _, _ = torch_to_flax(state, str(path))
    metadata: dict[str, Any] = {
        "source": {
            "kind": "neon",
            "name": path.name,
            "file": str(path),
            "sha256": sha256_of(path),
            "neon_version": facts["neon_version"],
            "epoch_index": facts["epoch_index"],
            "backend": facts["backend"],
            "dropout_scaled_layers": facts["dropout_scaled"],
        },
        "architecture": architecture,
        "preprocessing": _preprocessing(args, NEON).to_dict(),
        "converter": {"torch": torch.__version__, "script": "convert/alexnet_to_flax.py"},
    }
    if facts["kind"] == "alexnet":
        metadata["imagenet_classes"] = facts["num_classes"]
    return params, metadata, state


def main(argv: Sequence[str] | None = None) -> int:
    return cli.argparse_command(argv, build_parser(), run)


def run(args: argparse.Namespace) -> int:
    check_output(args.out, args.force)
    smallest = models.backbone(args.arch).min_patch
    if args.verify and any(min(size) < smallest for size in args.verify_size):
        sizes = " ".join(f"{h}x{w}" for h, w in args.verify_size)
        raise ConversionError(
            f"--verify-size {sizes}: {args.arch} needs at least {smallest} pixels a side"
        )
    if args.neon is None and args.torchvision is None:
        _preprocessing(args, TORCHVISION)  # bad overrides fail before reading anything
    variables, metadata, state = convert(args)
    flat = weights_lib.flatten(variables)
    n_params = sum(int(np.prod(np.shape(v))) for k, v in flat.items() if not k.startswith("batch"))
    arch = metadata["architecture"]
    stats = sum(1 for k in flat if k.startswith(weights_lib.STATS))
    width = float(arch.get("width", 1.0))
    narrow = "" if width == 1.0 else f" of width {width:g}"
    with_stats = f", {stats} BatchNorm statistics" if stats else ""
    print(
        f"converted {metadata['source']['file']} ({metadata['source']['kind']}, sha256 "
        f"{metadata['source']['sha256'][:12]}...): {arch['name']}{narrow}, "
        f"{len(variables['params'])} layers, {n_params:,} parameters{with_stats}, "
        f"{arch['num_classes']} classes"
    )
    if args.verify and not verify(args, variables, metadata, state):
        print("error: converted model disagrees with torch; nothing written", file=sys.stderr)
        return 1
    out = weights_lib.save_converted(args.out, variables, metadata, overwrite=args.force)
    print(f"wrote {out / weights_lib.PARAMS_FILE} and {out / weights_lib.METADATA_FILE}")
    return 0


def verify(args: argparse.Namespace, variables, metadata, state) -> bool:
    """Torch against Flax at each ``--verify-size``; one line each; True when all agree."""
    good = True
    for h, w in args.verify_size:
        stats = verify_against_torch(variables, metadata, state, input_size=(h, w))
        diff_ok = stats["max_abs"] <= args.atol + args.rtol * stats["logit_scale"]
        print(
            f"verify at {h}x{w}: max |flax - torch| = "
            f"{stats['max_abs']:.3e}, relative to the largest logit {stats['max_rel']:.3e} "
            f"(logit scale {stats['logit_scale']:.3g}; tolerance atol={args.atol:g} rtol={args.rtol:g})"
        )
        good = good and diff_ok
    return good


if __name__ == "__main__":
    sys.exit(main())
