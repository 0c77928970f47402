"""The training loop on CUDA: the same step as on CPU, AMP, exact resume, DDP over NCCL.

Marked ``cuda``: skipped, with the reason, where no CUDA device is present (see
``tests/conftest.py``). The CPU versions of these checks run everywhere (``test_amp``,
``test_resume``, ``test_distributed``).
"""

from __future__ import annotations

import math
import signal
import warnings

import pytest
import torch

from ldexport.engine.monitor import read_log
from ldexport.engine.run import train
from ldexport.interop.checkpoint import read_checkpoint

from .conftest import ldexport, requires_coco128, small_config
from .test_distributed import train_two_ranks
from .test_resume import _interrupt, _train_args, assert_same_weights

pytestmark = [requires_coco128, pytest.mark.cuda]
# One step of 2 images, no flips: both devices see the very same batch.
ONE_STEP = ("data.max_images=2", "train.epochs=1", "train.eval_interval=0", "data.flip_prob=0")
SHORT = ("data.max_images=4", "train.epochs=2", "train.eval_interval=2")


def _step(tmp_path, teacher_checkpoint, device):
    work_dir = tmp_path / device
    result = train(small_config(*ONE_STEP, f"train.device={device}"), work_dir=work_dir, teacher_checkpoint=teacher_checkpoint)
    (record,) = read_log(work_dir, "train")
    weights = {k: v.detach().cpu() for k, v in result.student.state_dict().items()}
    return record, weights


def test_ld_step_on_cuda_equals_the_cpu_step(tmp_path, teacher_checkpoint):
    torch.manual_seed(0)
    cpu_record, cpu_weights = _step(tmp_path, teacher_checkpoint, "cpu")
    cuda_record, cuda_weights = _step(tmp_path, teacher_checkpoint, "cuda")
    # TF32 convolutions (cuDNN's default) keep 10 mantissa bits: about 1e-3 relative a layer.
    for name in ("loss", "loss_cls", "loss_bbox", "loss_dfl", "loss_ld"):
        assert cuda_record[name] == pytest.approx(cpu_record[name], rel=2e-2), name
    torch.manual_seed(0)  # as train() seeds before building the student
    from ldexport.model import build_detector

    initial = build_detector(small_config().model).state_dict()
    moved = [k for k, v in initial.items() if v.is_floating_point() and not torch.equal(v, cpu_weights[k])]
    assert moved, "the CPU step changed no weight"
    cpu_delta = torch.cat([(cpu_weights[k] - initial[k]).flatten() for k in moved])
    cuda_delta = torch.cat([(cuda_weights[k] - initial[k]).flatten() for k in moved])
    assert float((cuda_delta - cpu_delta).norm() / cpu_delta.norm()) < 5e-2


@pytest.fixture(scope="module")
def cuda_fp32_losses(tmp_path_factory, teacher_checkpoint):
    work_dir = tmp_path_factory.mktemp("cuda_fp32") / "run"
    train(small_config(*SHORT, "train.device=cuda"), work_dir=work_dir, teacher_checkpoint=teacher_checkpoint)
    return [record["loss"] for record in read_log(work_dir, "train")]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cuda_trains_close_to_fp32(tmp_path, teacher_checkpoint, cuda_fp32_losses, amp):
    config = small_config(*SHORT, "train.device=cuda", f"train.amp={amp}")
    result = train(config, work_dir=tmp_path / "run", teacher_checkpoint=teacher_checkpoint)
    losses = [record["loss"] for record in read_log(tmp_path / "run", "train")]
    assert len(losses) == len(cuda_fp32_losses) == 4 and all(math.isfinite(value) for value in losses)
    # Autocast took effect (not fp32's loss) and stayed close to fp32.
    first = abs(losses[0] - cuda_fp32_losses[0]) / cuda_fp32_losses[0]
    assert 0 < first < 3e-2, first
    assert result.metrics
    scaler = read_checkpoint(result.latest_checkpoint)["scaler"]
    assert (scaler is not None and scaler["scale"] > 0) if amp == "fp16" else scaler is None


def test_interrupted_run_on_cuda_resumes_to_the_same_weights(tmp_path, teacher_checkpoint):
    # After SMALL's train.device=cpu, so they win; 6 epochs of 6 steps, so that a fast GPU
    # is still running when the signal comes after step 3. Deterministic kernels: cuDNN's
    # autotuning (on where steps are replayed as CUDA graphs) may pick other algorithms in
    # another process, and atomics add in any order.
    cuda = ["--set", "train.device=cuda", "--set", "train.epochs=6", "--set", "train.deterministic=true"]
    full = ldexport(*_train_args(teacher_checkpoint, tmp_path / "full"), *cuda, timeout=300)
    assert full.returncode == 0, full.stderr
    parts = tmp_path / "parts"
    stopped = _interrupt(teacher_checkpoint, parts, signal.SIGINT, 3, False, *cuda)
    assert 3 <= stopped < 36
    last = ldexport(*_train_args(teacher_checkpoint, parts), *cuda, "--resume", timeout=300)
    assert last.returncode == 0, last.stderr
    _, resumed = assert_same_weights(tmp_path / "full", parts, iterations=36)
    assert resumed["rng"][0]["cuda"] is not None  # the CUDA generator was saved too


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over NCCL needs two CUDA devices")
def test_two_gpu_processes_over_nccl_keep_identical_students(tmp_path, teacher_checkpoint):
    _, checkpoint = train_two_ranks(tmp_path, teacher_checkpoint, "train.device=cuda", "train.epochs=2", "train.eval_interval=2")
    assert checkpoint["iteration"] == 4 and checkpoint["iters_per_epoch"] == 2


def test_a_run_replays_its_steps_as_cuda_graphs_and_trains_as_the_eager_run(tmp_path, teacher_checkpoint, caplog):
    """``train.cuda_graphs`` (on by default) against ``false``: the same logged losses step
    by step and the same weights, to float rounding (deterministic kernels on both sides).
    The first H200 run of this test found the graphed run's first loss 0.5% off: its batches
    were padded to 128-px buckets, whose padding enters the head's GroupNorm statistics;
    graphed steps now keep mmdet's padding."""
    runs = {}
    for graphs in ("true", "false"):
        work_dir = tmp_path / graphs
        with caplog.at_level("INFO", logger="ldexport.engine"):
            caplog.clear()
            result = train(
                small_config(
                    *SHORT, "train.device=cuda", "data.flip_prob=0", "train.deterministic=true", f"train.cuda_graphs={graphs}"
                ),
                work_dir=work_dir, teacher_checkpoint=teacher_checkpoint,
            )
        assert ("steps replayed as CUDA graphs" in caplog.text) == (graphs == "true")
        runs[graphs] = ([r["loss"] for r in read_log(work_dir, "train")], result.student.state_dict())
    (replayed, replayed_weights), (eager, eager_weights) = runs["true"], runs["false"]
    assert len(replayed) == len(eager) == 4
    assert replayed == pytest.approx(eager, rel=1e-3)
    for name, value in eager_weights.items():
        torch.testing.assert_close(
            replayed_weights[name], value, rtol=1e-3, atol=1e-4, msg=lambda message, name=name: f"{name}: {message}"
        )


def test_a_compiled_run_replays_its_compiled_steps_as_the_unreplayed_compiled_run(tmp_path, teacher_checkpoint, caplog):
    """``train.compile`` with ``train.cuda_graphs`` (both on): the graphs hold the compiled
    kernels and the run trains as the compiled run without graphs (the same 128-px buckets
    on both sides, so the same numbers up to float rounding)."""
    pytest.importorskip("triton", reason="torch.compile's CUDA kernels need triton")
    runs = {}
    for graphs in ("true", "false"):
        work_dir = tmp_path / graphs
        with caplog.at_level("INFO", logger="ldexport.engine"), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            caplog.clear()
            result = train(
                small_config(
                    *SHORT, "train.device=cuda", "data.flip_prob=0", "train.deterministic=true", "train.compile=true",
                    f"train.cuda_graphs={graphs}",
                ),
                work_dir=work_dir, teacher_checkpoint=teacher_checkpoint,
            )
        assert ("steps replayed as CUDA graphs" in caplog.text) == (graphs == "true")
        assert not [w for w in caught if "capture failed" in str(w.message)]
        runs[graphs] = ([r["loss"] for r in read_log(work_dir, "train")], result.student.state_dict())
    (replayed, replayed_weights), (compiled, compiled_weights) = runs["true"], runs["false"]
    assert len(replayed) == len(compiled) == 4 and all(math.isfinite(value) for value in replayed)
    assert replayed == pytest.approx(compiled, rel=1e-3)
    for name, value in compiled_weights.items():
        torch.testing.assert_close(
            replayed_weights[name], value, rtol=1e-3, atol=1e-4, msg=lambda message, name=name: f"{name}: {message}"
        )
