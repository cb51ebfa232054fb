"""voc_jax/configs: each backbone's own config (named in error messages) builds that backbone."""

from __future__ import annotations

from pathlib import Path

import pytest

from voc_jax import cli, models
from voc_jax.configs import BY_ARCH

CONFIGS = Path(__file__).resolve().parent.parent / "voc_jax" / "configs"


@pytest.mark.parametrize("arch", sorted(models.ARCHITECTURES))
def test_every_backbone_has_its_own_config(arch):
    assert arch in BY_ARCH, f"voc_jax/configs/__init__.py: BY_ARCH lacks {arch}"
    config = cli.load_config_file(str(CONFIGS / BY_ARCH[arch]))
    assert config.model.arch == arch


def test_the_weights_mismatch_names_a_config_that_exists():
    from voc_jax import model_validation

    for arch, name in BY_ARCH.items():
        message = model_validation._config_of(arch)
        assert message == f"--config voc_jax/configs/{name}" and (CONFIGS / name).is_file()
