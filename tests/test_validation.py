"""voc_jax/validation.py: the config's values, every problem at once, each naming its key; the
backbone checks its own options; a low floor (no transfer network, no optimizer imported).
The commands' one-line errors for each bad value are in tests/test_errors.py."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from tests.configs import tiny
from tests.helpers import REPO
from voc_jax import validation
from voc_jax.errors import ConfigError


@pytest.mark.slow
def test_importing_validation_pulls_in_no_model_optimizer_pipeline_or_experiment():
    """The config is checked before anything heavy is imported or run (a fresh interpreter)."""
    probe = (
        "import json, sys, voc_jax.validation; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('voc_jax'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    loaded = set(json.loads(out.stdout))
    heavy = ("experiment", "steps", "feature_cache", "data.pipeline", "train", "evaluate")
    for name in (*heavy, "models.transfer", "optim", "weights", "model_validation"):
        assert f"voc_jax.{name}" not in loaded


def test_a_good_config_passes():
    validation.validate(tiny.get_config(), device_count=1, process_count=1)


def test_every_problem_is_reported_at_once_naming_its_key():
    c = tiny.get_config()
    c.batch_size = 0
    c.model.dtype = "float16"
    c.optim.momentum = 1.5
    c.eval.protocols = ("voc12",)
    with pytest.raises(ConfigError) as error:
        validation.validate(c, device_count=1, process_count=1)
    message = str(error.value)
    for key in ("batch_size=0", "model.dtype='float16'", "optim.momentum=1.5", "eval.protocols"):
        assert key in message


def test_divisibility_by_devices_and_processes():
    c = tiny.get_config()
    c.images_per_step = 3
    with pytest.raises(ConfigError, match="images_per_step=3 must be a multiple of the 2 devices"):
        validation.validate(c, device_count=2, process_count=1)


def test_the_backbone_checks_its_own_options():
    c = tiny.get_config()
    c.model.options.conv1_padding = 7
    with pytest.raises(ConfigError, match=r"model\.options\.conv1_padding=7: must be an integer"):
        validation.validate(c, device_count=1, process_count=1)
    c = tiny.get_config()
    with c.unlocked():
        c.model.options.conv_padding = 2
    with pytest.raises(ConfigError, match="conv_padding: alexnet has no such option"):
        validation.validate(c, device_count=1, process_count=1)


def test_another_backbones_options_are_set_aside_when_the_arch_is_switched(caplog):
    """AlexNet's conv1_padding in a config switched to ResNet-50 (--config.model.arch) is
    named and ignored, as ResNet-50 ignored the field before options were its own."""
    c = tiny.get_config()
    c.model.arch = "resnet50"
    with caplog.at_level(logging.WARNING):
        validation.validate(c, device_count=1, process_count=1)
    assert "model.options.conv1_padding is not an option of resnet50: ignored" in caplog.text


def test_a_legacy_top_level_conv1_padding_is_checked_as_the_option():
    c = tiny.get_config()
    with c.unlocked():
        c.model.conv1_padding = 9  # a config file written before options moved
    with pytest.raises(ConfigError, match=r"model\.options\.conv1_padding=9"):
        validation.validate(c, device_count=1, process_count=1)
