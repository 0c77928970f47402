"""COCO box AP of detections, with faster-coco-eval or pycocotools.

Follows mmdet 3.3's ``CocoMetric``: the ground truth of a data set loaded from COCO
JSON is read back from its annotation file (so boxes dropped for training still count);
YOLO text data sets get theirs built in memory. Detections in contiguous labels map
back to category ids; boxes go from xyxy to ``[x, y, x2 - x, y2 - y]``; ``maxDets`` is
``(100, 300, 1000)`` as in mmdet (AP uses the last).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from torch import Tensor

from ldexport.data.coco import to_coco_dict
from ldexport.data.records import RecordSet
from ldexport.errors import LdexportError

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
BACKENDS = ("auto", "faster_coco_eval", "pycocotools")
MAX_DETS = (100, 300, 1000)

logger = logging.getLogger(__name__)


class DetectionsLike(Protocol):
    """What :func:`evaluate_coco` reads of one image's detections (``K`` of them).

    Attributes:
        boxes: ``[K, 4]`` xyxy in original image pixels.
        scores: ``[K]``.
        labels: ``[K]`` contiguous labels ``0..C-1``.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor


def evaluate_coco(
    detections: Mapping[int, DetectionsLike], data: RecordSet, *, backend: str = "auto"
) -> dict[str, float]:
    """COCO box metrics of detections against a record set's ground truth.

    Args:
        detections: image id -> that image's detections. Images of ``data`` that are
            missing count as images without detections.
        data: the record set; its images and categories are the ones evaluated.
        backend: ``"faster_coco_eval"``, ``"pycocotools"``, or ``"auto"`` (the first
            that is installed).

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` in ``[0, 1]``; ``-1`` where the
        ground truth has no box of that size (COCO's convention), and everywhere, with a
        warning, when it has no box at all.

    Raises:
        LdexportError: an unknown backend, none installed, or detections for an image
            that is not in ``data``.
    """
    results = detections_to_results(detections, data)
    ground_truth = coco_ground_truth(data)
    evaluate = {"faster_coco_eval": _evaluate_faster, "pycocotools": _evaluate_pycocotools}[
        _resolve_backend(backend)
    ]
    image_ids = [r.image_id for r in data]
    if not _count_boxes(ground_truth, image_ids, data.category_ids):
        source = data.annotation_file or "the data set"
        logger.warning("%s: the split has no annotated boxes, so AP is undefined (-1)", source)
    stats = evaluate(ground_truth, results, image_ids, list(data.category_ids))
    return {name: float(value) for name, value in zip(METRICS, stats)}


def coco_ground_truth(data: RecordSet) -> dict[str, Any]:
    """The COCO ground truth dict: the annotation file's content, else built in memory."""
    if data.annotation_file is not None:
        return json.loads(data.annotation_file.read_text())
    return to_coco_dict(data)


def detections_to_results(
    detections: Mapping[int, DetectionsLike], data: RecordSet
) -> list[dict[str, Any]]:
    """COCO result entries (``image_id``, ``category_id``, xywh ``bbox``, ``score``)."""
    known = {r.image_id for r in data}
    results: list[dict[str, Any]] = []
    for image_id, dets in detections.items():
        if image_id not in known:
            raise LdexportError(f"detections for image id {image_id}, which is not in the data set")
        boxes = dets.boxes.detach().cpu().double().tolist()
        scores = dets.scores.detach().cpu().double().tolist()
        categories = data.labels_to_category_ids(dets.labels).tolist()
        for (x1, y1, x2, y2), score, category_id in zip(boxes, scores, categories):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": category_id,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                }
            )
    return results


def _count_boxes(ground_truth: dict[str, Any], image_ids: list[int], category_ids: Sequence[int]) -> int:
    """Ground-truth boxes that AP is computed over (crowd regions only excuse detections)."""
    images, categories = set(image_ids), set(category_ids)
    return sum(
        1
        for ann in ground_truth.get("annotations", [])
        if ann.get("image_id") in images and ann.get("category_id") in categories and not ann.get("iscrowd", 0)
    )


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise LdexportError(f"COCO evaluation backend must be one of {BACKENDS}, got {backend!r}")
    candidates = ("faster_coco_eval", "pycocotools") if backend == "auto" else (backend,)
    for name in candidates:
        try:
            __import__(name)
        except ImportError:
            continue
        return name
    raise LdexportError(
        f"COCO evaluation needs {' or '.join(candidates)}: pip install 'ldexport[eval]'"
    )


def _empty_results(ground_truth: dict[str, Any]) -> dict[str, Any]:
    """A result data set without detections (``loadRes`` rejects an empty list)."""
    return {
        "images": ground_truth.get("images", []),
        "categories": copy.deepcopy(ground_truth.get("categories", [])),
        "annotations": [],
    }


def _evaluate_faster(
    ground_truth: dict[str, Any],
    results: list[dict[str, Any]],
    image_ids: list[int],
    category_ids: list[int],
) -> list[float]:
    from faster_coco_eval import COCO, COCOeval_faster

    gt = COCO(ground_truth)
    dt = gt.loadRes(results) if results else COCO(_empty_results(ground_truth))
    evaluator = COCOeval_faster(gt, dt, iouType="bbox", print_function=lambda *args: None)
    return _run(evaluator, image_ids, category_ids)


def _evaluate_pycocotools(
    ground_truth: dict[str, Any],
    results: list[dict[str, Any]],
    image_ids: list[int],
    category_ids: list[int],
) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:
            dt = COCO()
            dt.dataset = _empty_results(ground_truth)
            dt.createIndex()
        return _run(COCOeval(gt, dt, iouType="bbox"), image_ids, category_ids)


def _run(evaluator: Any, image_ids: list[int], category_ids: list[int]) -> list[float]:
    evaluator.params.imgIds = image_ids
    evaluator.params.catIds = category_ids
    evaluator.params.maxDets = list(MAX_DETS)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return [float(v) for v in evaluator.stats[: len(METRICS)]]
