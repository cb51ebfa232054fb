"""Each new backbone's whole path on a tiny instance: a torchvision-layout state dict is
converted (--arch, --verify), trained with the tiny config (one update per image: a shorter
compile) and evaluated; VGG-16's workdir is used by predict (the same code for every
backbone). The BatchNorm ResNet trains with bn_update: its updated statistics are
checkpointed, and evaluating the workdir afterwards restores and uses them (the same AP table
as at the end of training). It is ResNet-26 here: ResNet-50's code with two blocks a stage (half
the compile); ResNet-50's own layout, parity and conversion are checked in test_models.py,
test_layout.py and test_converter.py."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from tests.helpers import checkpoint_steps, train_args
from voc_jax import evaluate, predict, train, weights
from voc_jax import workdir as workdir_lib
from voc_jax.convert import command
from voc_jax.convert import torch_models as tm

WIDTH = 1 / 16


@pytest.mark.slow  # converts, trains, evaluates and predicts: about a minute per family
@pytest.mark.parametrize("arch", ["vgg16", "resnet26"])
def test_convert_train_evaluate_predict(arch, tmp_path, tiny_data_root, capsys, quick_compiles):
    torch.manual_seed(0)
    source = tm.randomize_batch_norm(tm.classifier(arch, 10, WIDTH))
    pth = tmp_path / f"{arch}.pth"
    torch.save(source.state_dict(), pth)
    converted = tmp_path / "converted"
    args = ["--arch", arch, "--pth", str(pth), "--out", str(converted), "--verify"]
    assert command.main([*args, "--verify-size", "61x77"]) == 0
    out = capsys.readouterr().out
    assert f"{arch} of width 0.0625" in out and "verify at 61x77" in out
    variables, metadata = weights.load_converted(converted)
    assert metadata["architecture"] == {
        "name": arch, "input_size": 224, "num_classes": 10, "width": WIDTH,
    }  # fmt: skip
    assert ("batch_stats" in variables) == (arch == "resnet26")

    work = tmp_path / "work"
    code = train.main(
        train_args(
            work, f"--config.data.root={tiny_data_root}", f"--config.model.arch={arch}",
            f"--config.model.width={WIDTH}", f"--config.init.weights={converted}",
            "--config.num_epochs=1", f"--config.model.bn_update={arch == 'resnet26'}",
            "--config.patches.per_image=4",
        )
    )  # fmt: skip
    assert code == 0
    step = checkpoint_steps(work)[-1]
    assert (work / "eval" / str(step) / "ap_table.json").is_file()
    saved = work / "checkpoints" / str(step)
    assert (saved / "batch_stats").is_dir() == (arch == "resnet26")
    if arch == "resnet26":  # updated by training, checkpointed, restored by evaluate
        from voc_jax.experiment import Experiment

        exp = Experiment.build(workdir_lib.load_config(work))
        _, restored = workdir_lib.restore_variables(work, exp.model.variables)
        changed = [
            not np.array_equal(np.asarray(a), b)
            for a, b in zip(
                jax.tree.leaves(restored["batch_stats"]),
                jax.tree.leaves(variables["batch_stats"]),
                strict=True,
            )
        ]
        assert all(changed)
        table = (work / "eval" / str(step) / "ap_table.json").read_text()
        assert evaluate.main(["voc_jax.evaluate", f"--workdir={work}"]) == 0
        assert (work / "eval" / str(step) / "ap_table.json").read_text() == table
    else:
        image = next((tiny_data_root / "JPEGImages").glob("*.jpg"))
        assert predict.main(["voc_jax.predict", f"--workdir={work}", "--top=2", str(image)]) == 0
