"""voc_jax/convert/converter.py, the converter's library: every source reads into the same
strict layout checks; .safetensors files (no pickle) give exactly what .pth files give. The
command's flags, outputs and errors are in tests/test_convert_command.py."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from voc_jax.convert import converter, torch_models
from voc_jax.models import alexnet, resnet

WIDTH = 1 / 16


@pytest.fixture(scope="module")
def narrow_resnet():
    torch.manual_seed(0)
    return torch_models.randomize_batch_norm(torch_models.classifier("resnet50", 10, WIDTH))


def test_safetensors_and_pth_convert_to_the_same_variables(narrow_resnet, tmp_path):
    state = narrow_resnet.state_dict()
    torch.save(state, tmp_path / "r.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "r.safetensors")
    from_pth = converter.from_file(resnet.BACKBONE, tmp_path / "r.pth")
    from_st = converter.from_file(resnet.BACKBONE, tmp_path / "r.safetensors")
    assert from_st.metadata["source"]["kind"] == "safetensors"
    assert from_pth.metadata["source"]["kind"] == "pth"
    assert from_st.metadata["architecture"] == from_pth.metadata["architecture"]
    leaves = jax.tree.leaves(from_pth.variables)
    for a, b in zip(leaves, jax.tree.leaves(from_st.variables), strict=True):
        np.testing.assert_array_equal(a, b)
    # 53 convolutions (stem, 16 x 3 in the blocks, 4 projections), each a kernel and a
    # BatchNorm of 4 arrays, and fc's kernel and bias:
    assert len(leaves) == 5 * (1 + 16 * 3 + 4) + 2


def test_resnet26_converts_its_own_layout_and_refuses_resnet50s(narrow_resnet, tmp_path):
    """ResNet-26 (two bottlenecks a stage, no torchvision weights): its state dict converts,
    ResNet-50's is refused naming the blocks it does not have, --torchvision points to --pth."""
    from voc_jax.models import BACKBONES

    b26 = BACKBONES["resnet26"]
    torch.manual_seed(1)
    torch.save(torch_models.classifier("resnet26", 10, WIDTH).state_dict(), tmp_path / "r26.pth")
    leaves = jax.tree.leaves(converter.from_file(b26, tmp_path / "r26.pth").variables)
    assert len(leaves) == 5 * (1 + 8 * 3 + 4) + 2
    torch.save(narrow_resnet.state_dict(), tmp_path / "r50.pth")
    with pytest.raises(converter.ConversionError, match=r"layer1\.2\."):
        converter.from_file(b26, tmp_path / "r50.pth")
    with pytest.raises(converter.ConversionError, match="no ResNet-26 weights.*--pth"):
        converter.torchvision_weights(b26, None)


def test_a_safetensors_file_is_recognised_by_its_header_whatever_its_name(tmp_path):
    save_file({"w": torch.ones(2)}, tmp_path / "weights.bin")
    assert converter.is_safetensors(tmp_path / "weights.bin")
    torch.save({"w": torch.ones(2)}, tmp_path / "w.pth")
    assert not converter.is_safetensors(tmp_path / "w.pth")
    (tmp_path / "text.safetensors").write_text("not tensors")
    assert not converter.is_safetensors(tmp_path / "text.safetensors")


def test_half_precision_tensors_are_widened_and_integers_refused(tmp_path):
    save_file({"a": torch.full((3,), 1.5, dtype=torch.bfloat16)}, tmp_path / "h.safetensors")
    state = converter.load_state_dict(tmp_path / "h.safetensors")
    assert state["a"].dtype == np.float32 and state["a"].tolist() == [1.5, 1.5, 1.5]
    save_file({"idx": torch.arange(3)}, tmp_path / "i.safetensors")
    with pytest.raises(converter.ConversionError, match="tensor 'idx' is torch.int64"):
        converter.load_state_dict(tmp_path / "i.safetensors")


def test_a_broken_safetensors_file_is_one_clear_error(narrow_resnet, tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({k: v.contiguous() for k, v in narrow_resnet.state_dict().items()}, path)
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(converter.ConversionError, match="cut.safetensors: not a readable"):
        converter.load_state_dict(path)


def test_another_architectures_file_is_refused_naming_every_problem(narrow_resnet, tmp_path):
    save_file({k: v.contiguous() for k, v in narrow_resnet.state_dict().items()}, tmp_path / "r.st")
    with pytest.raises(converter.ConversionError) as error:
        converter.from_file(alexnet.BACKBONE, tmp_path / "r.st")
    assert "not a state dict of AlexNet" in str(error.value)
    assert any(p.startswith("missing features.0.weight") for p in error.value.problems)
