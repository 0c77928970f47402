"""YOLO text loading: coco128 in place, and each malformed input named in one line."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import pytest
import torch
from data_helpers import write_image

from ldexport.data.image_io import read_image
from ldexport.data.yolo import load_yolo
from ldexport.errors import LdexportError


def _load_coco128(root: Path):
    return load_yolo(root / "images/train2017", root / "labels/train2017", root / "classes.txt")


def test_coco128_pairs_unlabelled_images_and_orphan_labels(coco128: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ldexport.data.yolo"):
        data = _load_coco128(coco128)
    [message] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "2 label files have no image and were skipped" in message
    assert "000000000656.txt" in message and "000000000659.txt" in message

    ids = {r.image_id for r in data}
    assert len(data) == 128 and len(ids) == 128
    assert 656 not in ids and 659 not in ids
    labelled = [r for r in data if (coco128 / "labels/train2017" / f"{r.path.stem}.txt").is_file()]
    assert len(labelled) == 126
    unlabelled = {r.image_id: r for r in data if r not in labelled}
    assert set(unlabelled) == {250, 508}
    for record in unlabelled.values():
        assert record.boxes.shape == (0, 4) and record.labels.shape == (0,)

    lines = sum(
        len([l for l in (coco128 / "labels/train2017" / f"{r.path.stem}.txt").read_text().splitlines() if l.strip()])
        for r in labelled
    )
    assert sum(r.boxes.shape[0] for r in data) + data.num_dropped_boxes == lines
    assert data.num_classes == 80 and data.class_names[0] == "person" and data.class_names[45] == "bowl"
    assert data.category_ids == tuple(range(1, 81))


def test_coco128_boxes_in_original_pixels(coco128: Path) -> None:
    data = _load_coco128(coco128)
    record = next(r for r in data if r.image_id == 9)
    assert record.size == (480, 640)  # from the JPEG header
    # First line "45 0.479492 0.688771 0.955609 0.5955"; COCO's own box for this bowl is
    # [x, y, w, h] = [1.08, 187.69, 611.59, 285.84].
    assert record.labels[0] == 45
    torch.testing.assert_close(
        record.boxes[0], torch.tensor([1.08, 187.69, 1.08 + 611.59, 187.69 + 285.84]), atol=0.02, rtol=0
    )
    for r in data:
        assert r.boxes.dtype == torch.float32 and r.labels.dtype == torch.int64
        assert (r.boxes[:, 2:] > r.boxes[:, :2]).all()
        assert (r.boxes[:, 0::2] <= r.width).all() and (r.boxes[:, 1::2] <= r.height).all()


def test_grey_image_decodes_to_three_equal_channels(coco128: Path) -> None:
    image = read_image(coco128 / "images/train2017/000000000086.jpg")  # stored as greyscale
    assert image.shape[0] == 3 and image.dtype == torch.uint8
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


@pytest.fixture()
def yolo_dir(tmp_path: Path) -> Path:
    write_image(tmp_path / "images/a.png", 40, 20)
    write_image(tmp_path / "images/b.png", 30, 30)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels/a.txt").write_text("1 0.5 0.5 0.5 0.5\n\n0 0.1 0.1 0.01 0.5\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\n\n")
    return tmp_path


def _load(root: Path):
    return load_yolo(root / "images", root / "labels", root / "classes.txt")


def test_small_folder_ids_boxes_and_dropped_count(yolo_dir: Path) -> None:
    data = _load(yolo_dir)
    assert data.class_names == ("cat", "dog")
    assert [r.image_id for r in data] == [1, 2]  # non-numeric stems: 1..N in name order
    a, b = data.records
    # 40 x 20 image: cx=20, cy=10, w=20, h=10; the second box is 0.4 px wide: dropped.
    torch.testing.assert_close(a.boxes, torch.tensor([[10.0, 5.0, 30.0, 15.0]]))
    assert a.labels.tolist() == [1]
    assert data.num_dropped_boxes == 1
    assert b.boxes.shape == (0, 4)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("0 0.5 0.5 0.5\n", "expected 5 fields"),
        ("0 0.5 0.5 0.5 0.5 0.1\n", "expected 5 fields"),
        ("0 0.5 half 0.5 0.5\n", "must be numbers"),
        ("2 0.5 0.5 0.5 0.5\n", "class 2 is not an integer in 0..1"),
        ("0.5 0.5 0.5 0.5 0.5\n", "is not an integer"),
        ("0 0.5 0.5 1.5 0.5\n", "normalised to"),
        ("0 0.5 0.5 nan 0.5\n", "normalised to"),
    ],
)
def test_malformed_label_names_file_and_line(yolo_dir: Path, content: str, reason: str) -> None:
    label = yolo_dir / "labels/b.txt"
    label.write_text("1 0.5 0.5 0.2 0.2\n" + content)
    with pytest.raises(LdexportError) as error:
        _load(yolo_dir)
    message = str(error.value)
    assert message.startswith(f"{label}: line 2:") and reason in message and "\n" not in message


def test_orphan_labels_are_one_logged_line_not_a_python_warning(
    yolo_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for stem in ("z", "c"):
        (yolo_dir / f"labels/{stem}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    # A Python warning shows the user ldexport's file and line: none may be raised.
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="ldexport.data.yolo"):
        warnings.simplefilter("error")
        data = _load(yolo_dir)
    assert len(data) == 2
    assert [r.getMessage() for r in caplog.records] == [
        f"{yolo_dir / 'labels'}: 2 label files have no image and were skipped: c.txt, z.txt"
    ]


def test_unreadable_image_is_named(yolo_dir: Path) -> None:
    bad = yolo_dir / "images/c.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(LdexportError, match=re.escape(str(bad))) as error:
        _load(yolo_dir)
    assert "\n" not in str(error.value)


def test_truncated_image_fails_when_decoded(tmp_path: Path) -> None:
    path = write_image(tmp_path / "t.jpg", 64, 64)
    path.write_bytes(path.read_bytes()[:200])  # the header survives, the pixels do not
    with pytest.raises(LdexportError, match=re.escape(f"{path}: cannot read image")):
        read_image(path)


@pytest.mark.parametrize("missing", ["classes.txt", "images", "labels"])
def test_missing_inputs_are_named(yolo_dir: Path, missing: str) -> None:
    target = yolo_dir / missing
    if target.is_dir():
        for child in target.iterdir():
            child.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(LdexportError, match=re.escape(str(target))):
        _load(yolo_dir)


def test_blank_line_inside_class_names_is_rejected(yolo_dir: Path) -> None:
    names = yolo_dir / "classes.txt"
    names.write_text("cat\n\ndog\n")
    with pytest.raises(LdexportError, match=re.escape(f"{names}: line 2 is blank")):
        _load(yolo_dir)
