"""COCO evaluation: perfect detections score 1, and both evaluators agree."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from data_helpers import write_image, write_json
from torch import Tensor

from ldexport.data.coco import load_coco
from ldexport.data.coco_eval import METRICS, evaluate_coco
from ldexport.data.records import ImageRecord, RecordSet
from ldexport.data.shapes import load_shapes
from ldexport.data.yolo import load_yolo
from ldexport.errors import LdexportError

BACKENDS = ("faster_coco_eval", "pycocotools")


@dataclass
class Dets:
    boxes: Tensor
    scores: Tensor
    labels: Tensor


def _perfect(data: RecordSet) -> dict[int, Dets]:
    return {r.image_id: Dets(r.boxes.clone(), torch.ones(len(r.labels)), r.labels.clone()) for r in data}


def _noisy(data: RecordSet, seed: int = 0) -> dict[int, Dets]:
    """Jittered, partly missing, partly wrong detections with random scores."""
    generator = torch.Generator().manual_seed(seed)
    detections = {}
    for r in data:
        keep = torch.rand(len(r.labels), generator=generator) > 0.2
        boxes = r.boxes[keep]
        size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        boxes = boxes + size * 0.15 * (torch.rand(boxes.shape, generator=generator) - 0.5)
        extra = torch.rand(3, 4, generator=generator) * torch.tensor([r.width, r.height] * 2)
        extra = torch.cat([extra[:, :2].minimum(extra[:, 2:]), extra[:, :2].maximum(extra[:, 2:])], 1)
        labels = torch.cat([r.labels[keep], torch.randint(0, data.num_classes, (3,), generator=generator)])
        scores = torch.rand(len(labels), generator=generator)
        detections[r.image_id] = Dets(torch.cat([boxes, extra]), scores, labels)
    return detections


@pytest.fixture(scope="module")
def coco128_data(coco128: Path) -> RecordSet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_yolo(coco128 / "images/train2017", coco128 / "labels/train2017", coco128 / "classes.txt")


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_detections_score_one_against_the_annotation_file(tiny_shapes: Path, backend: str) -> None:
    data = load_shapes(tiny_shapes, "val")
    metrics = evaluate_coco(_perfect(data), data, backend=backend)
    assert set(metrics) == set(METRICS)
    for name in METRICS:  # -1: no ground truth of that size
        assert metrics[name] == pytest.approx(1.0, abs=1e-9) or (name[-1] in "sml" and metrics[name] == -1.0)
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-9)


def test_perfect_detections_score_one_on_yolo_data(coco128_data: RecordSet) -> None:
    metrics = evaluate_coco(_perfect(coco128_data), coco128_data, backend="faster_coco_eval")
    assert metrics == pytest.approx({name: 1.0 for name in METRICS}, abs=1e-9)  # small, medium and large boxes


def test_evaluators_agree(coco128_data: RecordSet) -> None:
    detections = _noisy(coco128_data)
    faster = evaluate_coco(detections, coco128_data, backend="faster_coco_eval")
    reference = evaluate_coco(detections, coco128_data, backend="pycocotools")
    assert 0.05 < reference["AP"] < 0.95 and 0.05 < reference["APs"] < 0.95
    for name in METRICS:
        assert faster[name] == pytest.approx(reference[name], abs=1e-4), name
    assert evaluate_coco(detections, coco128_data) == faster  # "auto" picks faster-coco-eval


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_map_back_to_unsorted_category_ids(tmp_path: Path, backend: str) -> None:
    write_image(tmp_path / "a.png", 100, 80)
    anns = [(7, [10, 10, 30, 30]), (1, [50, 20, 40, 50]), (3, [5, 45, 20, 30]), (3, [0, 0, 100, 80])]
    content = {
        "images": [{"id": 5, "file_name": "a.png", "height": 80, "width": 100}],
        "categories": [{"id": 7, "name": "c7"}, {"id": 1, "name": "c1"}, {"id": 3, "name": "c3"}],
        "annotations": [
            {"id": i + 1, "image_id": 5, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": int(i == 3)}
            for i, (c, b) in enumerate(anns)
        ],
    }
    data = load_coco(tmp_path, write_json(tmp_path / "instances.json", content))
    record = data[0]
    # A confident detection on the crowd region is ignored, not a false positive.
    crowd = Dets(torch.tensor([[0.0, 0.0, 100.0, 80.0]]), torch.tensor([2.0]), torch.tensor([data.label(3)]))
    dets = _perfect(data)[5]
    with_crowd = Dets(
        torch.cat([dets.boxes, crowd.boxes]),
        torch.cat([dets.scores, crowd.scores]),
        torch.cat([dets.labels, crowd.labels]),
    )
    assert evaluate_coco({5: with_crowd}, data, backend=backend)["AP"] == pytest.approx(1.0, abs=1e-9)
    shifted = Dets(record.boxes, torch.ones(3), (record.labels + 1) % 3)
    assert evaluate_coco({5: shifted}, data, backend=backend)["AP"] == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignore_regions_of_yolo_style_records_ignore_every_class(backend: str) -> None:
    boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0], [10.0, 60.0, 40.0, 90.0]])
    ignore = torch.tensor([[50.0, 50.0, 100.0, 100.0]])
    data = RecordSet([ImageRecord(1, Path("x.png"), 100, 100, boxes, [0, 1], ignore)], ("a", "b"), (1, 2))
    # Confident detections of both classes in the ignore region, ranked above the true ones.
    dets = Dets(
        torch.cat([boxes, ignore, torch.tensor([[55.0, 55.0, 95.0, 95.0]])]),
        torch.tensor([0.3, 0.3, 0.9, 0.8]),
        torch.tensor([0, 1, 0, 1]),
    )
    assert evaluate_coco({1: dets}, data, backend=backend)["AP"] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_detections_score_zero(tiny_shapes: Path, backend: str) -> None:
    data = load_shapes(tiny_shapes, "val")
    metrics = evaluate_coco({}, data, backend=backend)
    assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0


def test_user_errors(tiny_shapes: Path) -> None:
    data = load_shapes(tiny_shapes, "val")
    with pytest.raises(LdexportError, match="image id 999"):
        evaluate_coco({999: Dets(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))}, data)
    with pytest.raises(LdexportError, match="backend must be one of"):
        evaluate_coco({}, data, backend="detectron2")
