"""The generated shapes data set: deterministic, valid COCO, boxes on the shapes."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from data_helpers import TINY_SHAPES
from PIL import Image

from ldexport.data.shapes import (
    SHAPE_CLASSES,
    ShapesConfig,
    annotation_file,
    ensure_shapes,
    generate_shapes,
    load_shapes,
    render_shapes,
)
from ldexport.errors import LdexportError


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tiny_shapes: Path, tmp_path: Path) -> None:
    again = generate_shapes(tmp_path / "again", TINY_SHAPES)
    assert _files(again) == _files(tiny_shapes)
    other = generate_shapes(tmp_path / "other", replace(TINY_SHAPES, seed=4))
    assert _files(other)["train/000001.jpg"] != _files(tiny_shapes)["train/000001.jpg"]


def test_more_images_keep_the_first_ones(tiny_shapes: Path, tmp_path: Path) -> None:
    fewer = generate_shapes(tmp_path / "fewer", replace(TINY_SHAPES, num_train=3, num_val=1))
    assert _files(fewer)["train/000003.jpg"] == _files(tiny_shapes)["train/000003.jpg"]
    assert _files(fewer)["val/000001.jpg"] == _files(tiny_shapes)["val/000001.jpg"]


def test_writes_valid_coco_that_pycocotools_reads(tiny_shapes: Path) -> None:
    from pycocotools.coco import COCO

    for split, count in (("train", TINY_SHAPES.num_train), ("val", TINY_SHAPES.num_val)):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(annotation_file(tiny_shapes, split)))
        assert len(coco.getImgIds()) == count
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
        for image in coco.loadImgs(coco.getImgIds()):
            with Image.open(tiny_shapes / split / image["file_name"]) as file:
                assert file.size == (image["width"], image["height"])
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
            assert TINY_SHAPES.min_objects <= len(anns) <= TINY_SHAPES.max_objects
            for ann in anns:
                x, y, w, h = ann["bbox"]
                assert x >= 0 and y >= 0 and x + w <= image["width"] and y + h <= image["height"]
                assert TINY_SHAPES.min_object_size * 0.5 <= max(w, h) <= TINY_SHAPES.max_object_size
                assert ann["iscrowd"] == 0 and ann["area"] == w * h


def test_boxes_are_tight_around_the_shapes() -> None:
    """Without noise, each box side's first row (or column) inside holds shape pixels
    that differ sharply from the background pixel just outside it."""
    config = replace(TINY_SHAPES, noise_std=0.0, max_overlap=0.0)
    checked = 0
    for index in range(1, 9):
        pixels, boxes, labels = render_shapes(np.random.default_rng([config.seed, 0, index]), config)
        image = pixels.astype(int)  # [H, W, 3]
        height, width = image.shape[:2]
        for x1, y1, x2, y2 in boxes:
            edges = [
                (y1 > 0, image[y1, x1:x2], image[y1 - 1, x1:x2]),
                (y2 < height, image[y2 - 1, x1:x2], image[min(y2, height - 1), x1:x2]),
                (x1 > 0, image[y1:y2, x1], image[y1:y2, x1 - 1]),
                (x2 < width, image[y1:y2, x2 - 1], image[y1:y2, min(x2, width - 1)]),
            ]
            for exists, inside, outside in edges:
                if exists:
                    assert (np.abs(inside - outside).sum(-1) > 100).any()
                    checked += 1
        assert set(labels) <= {0, 1, 2}
    assert checked > 20


def test_load_shapes_gives_records(tiny_shapes: Path) -> None:
    data = load_shapes(tiny_shapes, "val")
    assert len(data) == TINY_SHAPES.num_val and data.class_names == SHAPE_CLASSES
    assert data.category_ids == (1, 2, 3) and data.num_dropped_boxes == 0
    assert all(r.boxes.shape[0] == r.labels.shape[0] >= 1 for r in data)
    with pytest.raises(LdexportError, match="split must be one of"):
        load_shapes(tiny_shapes, "test")


def test_ensure_shapes_reuses_or_regenerates(tmp_path: Path) -> None:
    config = replace(TINY_SHAPES, num_train=2, num_val=1)
    root = ensure_shapes(tmp_path / "s", config)
    stamp = (root / "train/000001.jpg").stat().st_mtime_ns
    ensure_shapes(root, config)
    assert (root / "train/000001.jpg").stat().st_mtime_ns == stamp
    ensure_shapes(root, replace(config, num_train=3))
    assert len(json.loads(annotation_file(root, "train").read_text())["images"]) == 3


def test_refuses_to_overwrite_foreign_folders(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(LdexportError, match="not a generated shapes data set"):
        generate_shapes(tmp_path, TINY_SHAPES)


def test_an_interrupted_generation_is_redone(tmp_path: Path) -> None:
    """A generation killed after it wrote its first images left folders without a
    manifest, which every later run refused as foreign."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "s"
    script = (
        "from ldexport.data.shapes import ShapesConfig, generate_shapes\n"
        f"generate_shapes({str(root)!r}, ShapesConfig(num_train=100000))\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while not (root / "train" / "000003.jpg").is_file():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    config = replace(TINY_SHAPES, num_train=2, num_val=1)
    ensure_shapes(root, config)
    assert len(load_shapes(root, "train")) == 2 and len(list((root / "train").iterdir())) == 2
    assert not (root / "shapes.partial").exists()


def test_bad_config_is_a_user_error() -> None:
    with pytest.raises(LdexportError, match="image_format"):
        ShapesConfig(image_format="gif")
    with pytest.raises(LdexportError, match="sizes"):
        ShapesConfig(min_image_size=64, max_object_size=80)
