"""The converter's old module name, kept for users who import it: the library is
voc_jax.convert.converter, the command voc_jax.convert.command (it converts every
architecture, not only AlexNet). ``python convert/alexnet_to_flax.py`` stays the documented
script."""

from voc_jax.convert.command import build_parser, check_output, main, run
from voc_jax.convert.converter import (
    ConversionError,
    Converted,
    from_file,
    from_neon,
    from_package,
    from_torchvision,
    load_state_dict,
    sha256_of,
    torch_to_flax,
    verify_against_torch,
)

__all__ = [
    "ConversionError",
    "Converted",
    "build_parser",
    "check_output",
    "from_file",
    "from_neon",
    "from_package",
    "from_torchvision",
    "load_state_dict",
    "main",
    "run",
    "sha256_of",
    "torch_to_flax",
    "verify_against_torch",
]
