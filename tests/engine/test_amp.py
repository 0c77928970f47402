"""The AMP path of the training loop (autocast, fp16 gradient scaler), run on CPU.

AMP is meant for CUDA; CPU autocast runs the same loop code (autocast region, scaler,
its state in the checkpoint) with other kernels, so these tests cover the code, not the
GPU's numerics.
"""

import math

import pytest

from ldexport.engine.monitor import read_log
from ldexport.engine.run import train
from ldexport.interop.checkpoint import read_checkpoint

from .conftest import requires_coco128, small_config

pytestmark = requires_coco128
SHORT = ("data.max_images=4", "train.epochs=2", "train.eval_interval=2")


@pytest.fixture(scope="module")
def fp32_losses(tmp_path_factory, teacher_checkpoint):
    work_dir = tmp_path_factory.mktemp("fp32") / "run"
    train(small_config(*SHORT), work_dir=work_dir, teacher_checkpoint=teacher_checkpoint)
    return [record["loss"] for record in read_log(work_dir, "train")]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_trains_under_autocast_close_to_fp32(tmp_path, teacher_checkpoint, fp32_losses, amp):
    result = train(small_config(*SHORT, f"train.amp={amp}"), work_dir=tmp_path / "run", teacher_checkpoint=teacher_checkpoint)

    losses = [record["loss"] for record in read_log(tmp_path / "run", "train")]
    assert len(losses) == len(fp32_losses) == 4 and all(math.isfinite(value) for value in losses)
    # Autocast took effect (the first step's loss is not fp32's) and stayed close to fp32.
    first = abs(losses[0] - fp32_losses[0]) / fp32_losses[0]
    assert 0 < first < 1e-2, first
    assert result.metrics and "loss_ld" in read_log(tmp_path / "run", "train")[0]

    scaler = read_checkpoint(result.latest_checkpoint)["scaler"]
    if amp == "fp16":
        assert scaler["scale"] > 0 and scaler["_growth_tracker"] == 4
    else:
        assert scaler is None  # bf16 needs no loss scaling
