"""User errors: one line on stderr, exit code 1, no traceback; the last good checkpoint kept."""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from ldexport.engine.run import train
from ldexport.errors import LdexportError
from ldexport.interop.checkpoint import read_checkpoint

from .conftest import COCO128, ldexport, make_teacher, requires_coco128, set_args, small_config

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


def _student_checkpoint(path: Path, *overrides: str) -> Path:
    """An (untrained) checkpoint of the tiny config's student, after ``overrides``."""
    config = small_config(*overrides)
    as_teacher = dataclasses.replace(config, distill=dataclasses.replace(config.distill, teacher=config.model))
    return make_teacher(as_teacher, path)


def _eval(tmp_path: Path, *overrides: str):
    checkpoint = _student_checkpoint(tmp_path / "student.pth", *overrides)
    return ldexport("eval", TRAIN[1], checkpoint, *set_args("data.max_images=2", *overrides))


def test_orphan_labels_are_one_plain_line(tmp_path):
    run = _eval(tmp_path)  # coco128 has two label files without an image
    assert run.returncode == 0, run.stderr
    labels = COCO128 / "labels/train2017"
    notice = f"{labels}: 2 label files have no image and were skipped: 000000000656.txt, 000000000659.txt"
    assert notice in run.stdout.splitlines(), run.stdout
    assert "Warning" not in run.stdout + run.stderr and ".py:" not in run.stdout + run.stderr


def test_a_split_without_boxes_says_why_ap_is_undefined(tmp_path):
    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    content = {
        "images": [{"id": 1, "file_name": "a.png", "height": 48, "width": 64}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [],
    }
    (tmp_path / "val.json").write_text(json.dumps(content))
    data = (f"data.root={tmp_path}", "data.format=coco", "data.val_images=.", "data.val_annotations=val.json")
    run = _eval(tmp_path, *data, "model.num_classes=2")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert f"{tmp_path / 'val.json'}: the split has no annotated boxes, so AP is undefined (-1)" in lines, run.stdout
    assert lines[-1].startswith("AP -1.0000 AP50 -1.0000")


def test_an_image_over_the_decompression_limit_is_named(tmp_path):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "classes.txt").write_text("cat\n")
    bomb = tmp_path / "images/bomb.png"  # a header of 30000 x 30000 grey pixels
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    data = (f"data.root={tmp_path}", "data.val_images=images", "data.class_names=classes.txt", "model.num_classes=1")
    _one_line_error(_eval(tmp_path, *data), f"{bomb}: cannot read image header", "900000000 pixels")
