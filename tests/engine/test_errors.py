"""User errors: one line on stderr, exit code 1, no traceback; the last good checkpoint kept."""

from __future__ import annotations

import pytest
import torch

from ldexport.engine.run import train
from ldexport.errors import LdexportError
from ldexport.interop.checkpoint import read_checkpoint

from .conftest import ldexport, make_teacher, requires_coco128, set_args, small_config

pytestmark = requires_coco128

TRAIN = ("train", "configs/coco128_ld_tiny.yaml")


def _one_line_error(run, *fragments: str) -> str:
    assert run.returncode == 1, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ldexport: error: "), run.stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    return lines[0]


def test_unknown_config_key(tmp_path):
    run = ldexport(*TRAIN, "--work-dir", tmp_path, "--set", "train.learning_rate=0.1")
    _one_line_error(run, "unknown config key 'train.learning_rate'")
    assert not tmp_path.joinpath("latest.pth").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (("train", "configs/no_such_config.yaml"), "config not found: configs/no_such_config.yaml"),
        ((*TRAIN, "--teacher", "no_such_teacher.pth"), "checkpoint not found: no_such_teacher.pth"),
        (("eval", "configs/coco128_ld_tiny.yaml", "no_such_student.pth"), "checkpoint not found: no_such_student.pth"),
    ],
)
def test_missing_files(args, message, tmp_path):
    _one_line_error(ldexport(*args), message)


def test_incompatible_teacher(tmp_path):
    # A teacher with 8 distance bins cannot teach a student with 16.
    teacher = make_teacher(small_config("distill.teacher.reg_max=8"), tmp_path / "teacher_r8.pth")
    run = ldexport(*TRAIN, "--teacher", teacher, "--work-dir", tmp_path / "run", *set_args("distill.teacher.reg_max=8"))
    _one_line_error(run, "teacher is incompatible with the student: reg_max 8 vs student's 16")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, teacher_checkpoint):
    work_dir = tmp_path / "run"
    run = ldexport(
        *TRAIN, "--teacher", teacher_checkpoint, "--work-dir", work_dir,
        *set_args("train.lr=1.0e+12", "train.checkpoint_interval=1"),
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    error = run.stderr.strip().splitlines()[-1]  # after the data loader's warnings, if any
    assert error.startswith("ldexport: error: the ") and "NaN or infinite" in error and "last good checkpoint" in error
    checkpoint = read_checkpoint(work_dir / "latest.pth")
    assert checkpoint["iteration"] >= 1
    assert all(bool(torch.isfinite(t).all()) for t in checkpoint["model"].values() if t.is_floating_point())


def test_resume_needs_a_run_and_a_run_is_not_overwritten(tmp_path, teacher_checkpoint):
    config = small_config("train.epochs=1", "data.max_images=2", "train.eval_interval=0")
    with pytest.raises(LdexportError, match="nothing to resume"):
        train(config, work_dir=tmp_path, teacher_checkpoint=teacher_checkpoint, resume=True)
    train(config, work_dir=tmp_path, teacher_checkpoint=teacher_checkpoint)
    with pytest.raises(LdexportError, match="already holds a run"):
        train(config, work_dir=tmp_path, teacher_checkpoint=teacher_checkpoint)


@pytest.mark.parametrize(
    "override, message",
    [
        ("distill.kd_temperature=0.5", "config key 'distill.kd_temperature' must be at least 1, got 0.5"),
        ("train.amp=fp8", "config key 'train.amp' must be one of none, bf16, fp16, got 'fp8'"),
        ("train.schedule=linear", "config key 'train.schedule' must be one of step, cosine, got 'linear'"),
        ("data.format=voc", "config key 'data.format' must be one of coco, yolo, shapes, got 'voc'"),
    ],
)
def test_bad_config_values_fail_at_load_time(override, message, tmp_path):
    run = ldexport(*TRAIN, "--work-dir", tmp_path, "--set", override)
    _one_line_error(run, message)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
