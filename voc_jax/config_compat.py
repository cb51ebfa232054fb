"""Config fields that moved, in one place: configs and ``config.json`` files written before a
field moved keep working, and so do the old command-line overrides.

``model.conv1_padding`` (AlexNet's, once a field of every model) is now
``model.options.conv1_padding``: backbones own their options (voc_jax.models.backbone).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import ml_collections

log = logging.getLogger(__name__)

# old key -> new key, for --config.<old>=... overrides
RENAMED = {"model.conv1_padding": "model.options.conv1_padding"}
# options that were fields of every model: {old model field: (the architecture it belongs to,
# its option name)}; other architectures ignored the field then and ignore it now
MOVED_OPTIONS = {"conv1_padding": ("alexnet", "conv1_padding")}


def model_options(model: ml_collections.ConfigDict) -> dict[str, Any]:
    """``model.options`` as a plain dict, with a legacy top-level field (an old config.json,
    or a config file that still sets ``c.model.conv1_padding``) moved in: it wins over the
    option's default, since a user set it."""
    options = model.get("options")
    values = dict(options.to_dict() if isinstance(options, ml_collections.ConfigDict) else {})
    for field, (arch, name) in MOVED_OPTIONS.items():
        if field in model and model.get("arch") == arch:
            values[name] = model[field]
    return values


def rename_overrides(argv: Sequence[str], name: str = "config") -> list[str]:
    """``--config.model.conv1_padding=3`` -> ``--config.model.options.conv1_padding=3``, with a
    note saying the new name."""
    out = []
    for arg in argv:
        for old, new in RENAMED.items():
            prefix = f"--{name}.{old}"
            if arg == prefix or arg.startswith(prefix + "="):
                log.warning("--%s.%s is now --%s.%s", name, old, name, new)
                arg = f"--{name}.{new}" + arg[len(prefix) :]
        out.append(arg)
    return out
