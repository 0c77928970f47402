"""COCO JSON loading as mmdet parses it, the round trip, and malformed files."""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from data_helpers import write_image, write_json

from ldexport.data.coco import load_coco, to_coco_dict, write_coco_json
from ldexport.data.coco_eval import METRICS, evaluate_coco
from ldexport.data.pipeline import DetectionTransform
from ldexport.errors import LdexportError


def _content() -> dict[str, Any]:
    """Two images; categories listed out of id order; crowd, tiny and outside boxes."""
    return {
        "images": [
            {"id": 42, "file_name": "a.png", "height": 50, "width": 80},
            {"id": 7, "file_name": "sub/b.png", "height": 40, "width": 40},
        ],
        "categories": [{"id": 7, "name": "c7"}, {"id": 1, "name": "c1"}, {"id": 3, "name": "c3"}],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 7, "bbox": [10, 5, 20, 30], "area": 600, "iscrowd": 0},
            {"id": 2, "image_id": 42, "category_id": 1, "bbox": [0, 0, 80, 50], "area": 4000, "iscrowd": 1},
            {"id": 3, "image_id": 42, "category_id": 3, "bbox": [5, 5, 0.5, 10], "area": 5, "iscrowd": 0},
            {"id": 4, "image_id": 42, "category_id": 3, "bbox": [5, 5, 10, 0.9], "area": 9, "iscrowd": 0},
            {"id": 5, "image_id": 42, "category_id": 3, "bbox": [90, 5, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 6, "image_id": 42, "category_id": 3, "bbox": [1, 2, 3, 4], "area": 0, "iscrowd": 0},
            {"id": 7, "image_id": 7, "category_id": 3, "bbox": [-2.5, 1.5, 12, 8], "area": 96, "iscrowd": 0},
            {"id": 8, "image_id": 7, "category_id": 1, "bbox": [20, 20, 10, 10], "area": 100},
        ],
    }


@pytest.fixture()
def coco_dir(tmp_path: Path) -> Path:
    write_image(tmp_path / "images/a.png", 80, 50)
    write_image(tmp_path / "images/sub/b.png", 40, 40)
    write_json(tmp_path / "instances.json", _content())
    return tmp_path


def test_crowd_tiny_and_category_mapping(coco_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ldexport.data.coco"):
        data = load_coco(coco_dir / "images", coco_dir / "instances.json")
    assert "dropped 4 boxes" in caplog.text
    assert data.num_dropped_boxes == 4  # 0.5 px wide, 0.9 px high, outside, zero area
    assert data.class_names == ("c1", "c3", "c7") and data.category_ids == (1, 3, 7)
    assert data.category_id(2) == 7 and data.label(7) == 2 and data.label(3) == 1
    assert data.labels_to_category_ids(torch.tensor([2, 0, 1])).tolist() == [7, 1, 3]
    with pytest.raises(LdexportError, match="category id 5"):
        data.label(5)

    a, b = data.records  # the file's image order
    assert (a.image_id, a.size, a.path) == (42, (50, 80), coco_dir / "images/a.png")
    torch.testing.assert_close(a.boxes, torch.tensor([[10.0, 5.0, 30.0, 35.0]]))
    assert a.labels.tolist() == [2]
    torch.testing.assert_close(a.ignore_boxes, torch.tensor([[0.0, 0.0, 80.0, 50.0]]))
    # Not clipped at load time (mmdet clips after resizing).
    torch.testing.assert_close(b.boxes, torch.tensor([[-2.5, 1.5, 9.5, 9.5], [20.0, 20.0, 30.0, 30.0]]))
    assert b.labels.tolist() == [1, 0] and b.ignore_boxes.shape == (0, 4)


def test_round_trip_keeps_boxes_crowds_and_ids(coco_dir: Path, tmp_path: Path) -> None:
    data = load_coco(coco_dir / "images", coco_dir / "instances.json")
    out = write_coco_json(data, tmp_path / "again.json", coco_dir / "images")
    written = json.loads(out.read_text())
    assert [i["file_name"] for i in written["images"]] == ["a.png", "sub/b.png"]
    crowds = [a for a in written["annotations"] if a["iscrowd"]]
    assert len(crowds) == 3  # an ignore region has no class: one per category
    again = load_coco(coco_dir / "images", out)
    assert again.num_dropped_boxes == 0
    assert again.class_names == data.class_names and again.category_ids == data.category_ids
    for before, after in zip(data, again):
        assert (before.image_id, before.size, before.path) == (after.image_id, after.size, after.path)
        torch.testing.assert_close(before.boxes, after.boxes)
        assert torch.equal(before.labels, after.labels)
        torch.testing.assert_close(before.ignore_boxes, after.ignore_boxes.unique(dim=0))


def test_classes_selects_and_orders_categories(coco_dir: Path) -> None:
    data = load_coco(coco_dir / "images", coco_dir / "instances.json", classes=["c7", "c1"])
    assert data.category_ids == (7, 1)
    a, b = data.records
    assert a.labels.tolist() == [0]
    assert b.labels.tolist() == [1]  # the category 3 box is left out
    assert a.ignore_boxes.shape == (1, 4)
    with pytest.raises(LdexportError, match=r"no categories named \['dog'\]"):
        load_coco(coco_dir / "images", coco_dir / "instances.json", classes=["dog"])


def _broken(content: dict[str, Any], case: str) -> dict[str, Any] | list[Any]:
    content = copy.deepcopy(content)
    if case == "no images":
        del content["images"]
    elif case == "short bbox":
        content["annotations"][0]["bbox"] = [1, 2, 3]
    elif case == "unknown image":
        content["annotations"][0]["image_id"] = 99
    elif case == "unknown category":
        content["annotations"][0]["category_id"] = 99
    elif case == "string height":
        content["images"][0]["height"] = "50"
    elif case == "null area":
        content["annotations"][6]["area"] = None
    elif case == "string area":
        content["annotations"][6]["area"] = "abc"
    elif case == "duplicate image id":
        content["images"][1]["id"] = 42
    elif case == "not an object":
        return [content]
    return content


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("no images", "no 'images' list"),
        ("short bbox", "annotation 1: 'bbox' must be 4 numbers"),
        ("unknown image", "annotation 1: image_id 99 is not in 'images'"),
        ("unknown category", "annotation 1: category_id 99 is not in 'categories'"),
        ("string height", "image 42: 'height' must be int"),
        ("null area", "annotation 7: 'area' must be float, got None"),
        ("string area", "annotation 7: 'area' must be float, got 'abc'"),
        ("duplicate image id", "image ids are not unique"),
        ("not an object", "expected a JSON object"),
    ],
)
def test_malformed_annotation_file_is_named(coco_dir: Path, case: str, reason: str) -> None:
    path = write_json(coco_dir / "bad.json", _broken(_content(), case))
    with pytest.raises(LdexportError) as error:
        load_coco(coco_dir / "images", path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message


def test_invalid_json_and_missing_file_are_named(coco_dir: Path) -> None:
    bad = coco_dir / "bad.json"
    bad.write_text('{"images": [}')
    with pytest.raises(LdexportError, match=re.escape(f"{bad}: not valid JSON") + ".*line 1 column"):
        load_coco(coco_dir / "images", bad)
    missing = coco_dir / "nope.json"
    with pytest.raises(LdexportError, match=re.escape(f"{missing}: annotation file does not exist")):
        load_coco(coco_dir / "images", missing)


def test_missing_and_mismatched_images_are_named(coco_dir: Path) -> None:
    (coco_dir / "images/sub/b.png").unlink()
    with pytest.raises(LdexportError, match=re.escape(f"{coco_dir / 'images/sub/b.png'}: image named in")):
        load_coco(coco_dir / "images", coco_dir / "instances.json")

    write_image(coco_dir / "images/sub/b.png", 41, 40)  # the file says 40 x 40
    data = load_coco(coco_dir / "images", coco_dir / "instances.json")
    with pytest.raises(LdexportError, match=re.escape(f"{data[1].path}: image is 41x40")):
        DetectionTransform()(data[1])


def test_to_coco_dict_boxes_are_xywh(coco_dir: Path) -> None:
    data = load_coco(coco_dir / "images", coco_dir / "instances.json")
    content = to_coco_dict(data)
    first = content["annotations"][0]
    assert first["bbox"] == [10.0, 5.0, 20.0, 30.0] and first["area"] == 600.0
    assert first["category_id"] == 7 and first["image_id"] == 42 and first["iscrowd"] == 0
    assert content["categories"] == [{"id": 1, "name": "c1"}, {"id": 3, "name": "c3"}, {"id": 7, "name": "c7"}]


def test_missing_area_is_the_box_area(coco_dir: Path) -> None:
    content = _content()
    del content["annotations"][6]["area"]  # as written by tools that leave it out
    data = load_coco(coco_dir / "images", write_json(coco_dir / "noarea.json", content))
    assert data[1].boxes.shape == (2, 4) and data.num_dropped_boxes == 4


@pytest.mark.parametrize("annotations", ["empty", "absent", "crowd only"])
def test_evaluating_a_split_without_boxes_warns_that_ap_is_undefined(
    coco_dir: Path, annotations: str, caplog: pytest.LogCaptureFixture
) -> None:
    content = _content()
    if annotations == "absent":
        del content["annotations"]
    elif annotations == "crowd only":  # ignore regions excuse detections; they are not boxes to find
        content["annotations"] = [a for a in content["annotations"] if a.get("iscrowd")]
    else:
        content["annotations"] = []
    path = write_json(coco_dir / "unannotated.json", content)
    data = load_coco(coco_dir / "images", path)
    with caplog.at_level(logging.WARNING, logger="ldexport.data.coco_eval"):
        metrics = evaluate_coco({}, data)
    assert metrics == {name: -1.0 for name in METRICS}
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: the split has no annotated boxes, so AP is undefined (-1)"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ldexport.data.coco_eval"):
        evaluate_coco({}, load_coco(coco_dir / "images", coco_dir / "instances.json"))
    assert not caplog.records  # boxes to miss: AP is 0, not undefined
