"""voc_jax/configs: each backbone's own config (named in error messages) builds that backbone."""

from __future__ import annotations

from pathlib import Path

import pytest

from voc_jax import cli, models
from voc_jax.configs import BY_ARCH
from voc_jax.errors import ConfigError

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


@pytest.mark.parametrize("arch", ["alexnet", "vgg16", "resnet50", "lite0"])
@pytest.mark.parametrize("variant", ["frozen", "finetune"])
def test_every_whole_image_config_validates(arch, variant):
    """voc07_image.py:ARCH,VARIANT for every backbone: its own checks pass (shapes only, no
    compile), its trainable regexes name layers the network has, the cache only when frozen."""
    import re

    import jax

    from voc_jax import optim
    from voc_jax.image import validation
    from voc_jax.image.model import WholeImageNet

    config = cli.load_config_file(f"{CONFIGS / 'voc07_image.py'}:{arch},{variant}")
    config.model.width = 1 / 16
    validation.validate(config)
    assert config.feature_cache.enabled == (variant == "frozen")
    net = WholeImageNet(arch=config.model.arch, width=1 / 16)
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), jax.numpy.zeros((1, 224, 224, 3)))
    paths = optim.param_paths(shapes["params"])
    for pattern in config.optim.trainable:
        assert any(re.fullmatch(pattern, p) for p in paths), pattern


def test_bad_whole_image_arguments_are_refused():
    with pytest.raises(ConfigError, match="ARCH,VARIANT"):
        cli.load_config_file(f"{CONFIGS / 'voc07_image.py'}:resnet50,linear")
