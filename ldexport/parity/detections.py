"""Detection-level parity: the same objects found, by label and by box.

After NMS, small numerical differences can only matter where a decision flips (a score at
the threshold, an IoU at the NMS threshold, a tie at the top-k); the tensors are then
compared as sets. A reference detection is matched by an unmatched candidate of the same
label whose box overlaps it with IoU >= 0.99 (greedily, best score first, one to one);
parity needs every reference detection matched and every candidate detection matched,
except a detection whose score lies within the score tolerance of the score threshold
(``borderline``): a rounding difference the dense comparison accepts puts it on either
side of the threshold, so its absence on the other side is no mismatch.

Legend: ``N`` images, ``A`` anchor points, ``A_l`` of level ``l``, ``C`` classes,
``K`` detections.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ldexport.model.bbox import box_iou
from ldexport.model.detector import Detections, TestConfig, suppress, top_candidates

MATCH_IOU = 0.99


@dataclass(frozen=True)
class DetectionMatch:
    """How two runners' detections of a batch agree.

    Attributes:
        reference, candidate: detections found by each, over the batch.
        matched: pairs matched (same label, IoU >= 0.99).
        max_box_error, max_score_error: largest absolute difference within matched pairs
            (a box's error is its largest coordinate difference, pixels).
        mean_box_error, mean_score_error: their means over the matched pairs.
        mean_iou: the matched pairs' mean IoU (1 when none matched).
        borderline_reference, borderline_candidate: unmatched detections of each side
            whose score is within the score tolerance of the threshold (excused).
    """

    reference: int
    candidate: int
    matched: int
    max_box_error: float
    max_score_error: float
    mean_box_error: float = 0.0
    mean_score_error: float = 0.0
    mean_iou: float = 1.0
    borderline_reference: int = 0
    borderline_candidate: int = 0

    @property
    def reference_recall(self) -> float:
        """Share of the reference's detections the candidate found (1 when there are none)."""
        return self.matched / self.reference if self.reference else 1.0

    @property
    def candidate_precision(self) -> float:
        """Share of the candidate's detections the reference found (1 when there are none)."""
        return self.matched / self.candidate if self.candidate else 1.0

    @property
    def passed(self) -> bool:
        """Every detection matched, both ways, but those at the score threshold."""
        return (
            self.matched + self.borderline_reference == self.reference
            and self.matched + self.borderline_candidate == self.candidate
        )

    def to_json(self) -> dict:
        """The match as JSON-able data."""
        return {**asdict(self), "reference_recall": self.reference_recall, "candidate_precision": self.candidate_precision}


def match_detections(
    reference: Sequence[Detections],
    candidate: Sequence[Detections],
    *,
    iou: float = MATCH_IOU,
    borderline: tuple[float, float] | None = None,
) -> DetectionMatch:
    """Matches two runners' detections image by image (see the module doc).

    Args:
        reference, candidate: per image, each runner's detections.
        iou: the overlap a pair needs (:data:`MATCH_IOU` for float models; an int8 model
            is matched more loosely, :mod:`ldexport.parity.tolerance`).
        borderline: ``(score_thr, score_atol)``: unmatched detections scoring at most
            ``score_thr + score_atol`` are counted as borderline, not as mismatches;
            ``None``: none is.
    """
    totals = np.zeros(5, dtype=np.int64)
    box_errors: list[float] = []
    score_errors: list[float] = []
    overlaps: list[float] = []
    for ref, cand in zip(reference, candidate, strict=True):
        pairs = _match_image(ref, cand, iou)
        totals += (len(ref.scores), len(cand.scores), len(pairs), *_borderline(ref, cand, pairs, borderline))
        if pairs:
            ref_rows, cand_rows = (torch.tensor(indices) for indices in zip(*pairs))
            overlaps += box_iou(ref.boxes[ref_rows].double(), cand.boxes[cand_rows].double()).diagonal().tolist()
        for ref_index, cand_index in pairs:
            box_errors.append(float((ref.boxes[ref_index] - cand.boxes[cand_index]).abs().max()))
            score_errors.append(float((ref.scores[ref_index] - cand.scores[cand_index]).abs()))
    # a NaN score (or box) of a matched pair is an infinite error: Python's max() would let
    # a NaN after a finite value through
    boxes, scores = (np.where(np.isnan(errors), np.inf, errors) for errors in (np.asarray(box_errors), np.asarray(score_errors)))
    return DetectionMatch(
        int(totals[0]),
        int(totals[1]),
        int(totals[2]),
        float(boxes.max()) if boxes.size else 0.0,
        float(scores.max()) if scores.size else 0.0,
        mean_box_error=float(boxes.mean()) if boxes.size else 0.0,
        mean_score_error=float(scores.mean()) if scores.size else 0.0,
        mean_iou=float(np.mean(overlaps)) if overlaps else 1.0,
        borderline_reference=int(totals[3]),
        borderline_candidate=int(totals[4]),
    )


def _borderline(
    reference: Detections, candidate: Detections, pairs: list[tuple[int, int]], borderline: tuple[float, float] | None
) -> tuple[int, int]:
    """Unmatched detections of each side scoring within ``score_atol`` of ``score_thr``.

    Only the threshold's own neighbourhood: a detection NMS kept on one side can suppress
    only lower-scoring ones, which lie there too.
    """
    if borderline is None:
        return 0, 0
    score_thr, score_atol = borderline
    counts = []
    for found, matched in ((reference, {ref for ref, _ in pairs}), (candidate, {cand for _, cand in pairs})):
        unmatched = torch.ones(len(found.scores), dtype=torch.bool)
        unmatched[list(matched)] = False
        counts.append(int((unmatched & (found.scores <= score_thr + score_atol)).sum()))
    return counts[0], counts[1]


def _match_image(reference: Detections, candidate: Detections, threshold: float = MATCH_IOU) -> list[tuple[int, int]]:
    if len(reference.scores) == 0 or len(candidate.scores) == 0:
        return []
    # [K_ref, K_cand]: IoU where the labels agree, -1 elsewhere
    iou = box_iou(reference.boxes.double(), candidate.boxes.double())
    iou = torch.where(reference.labels[:, None] == candidate.labels[None, :], iou, torch.full_like(iou, -1.0))
    taken = torch.zeros(len(candidate.scores), dtype=torch.bool)
    pairs = []
    for ref_index in reference.scores.argsort(descending=True, stable=True).tolist():
        overlaps = iou[ref_index].masked_fill(taken, -1.0)
        best = int(overlaps.argmax())
        if overlaps[best] >= threshold:
            taken[best] = True
            pairs.append((ref_index, best))
    return pairs


def detections_from_outputs(outputs: dict[str, np.ndarray]) -> list[Detections]:
    """Unpads a graph's ``num_dets``/``det_boxes``/``det_scores``/``det_labels``."""
    results = []
    for index, count in enumerate(outputs["num_dets"].reshape(-1).tolist()):
        results.append(
            Detections(
                boxes=torch.from_numpy(np.asarray(outputs["det_boxes"][index, :count], dtype=np.float32)),
                scores=torch.from_numpy(np.asarray(outputs["det_scores"][index, :count], dtype=np.float32)),
                labels=torch.from_numpy(np.asarray(outputs["det_labels"][index, :count], dtype=np.int64)),
            )
        )
    return results


def detections_from_dense(
    boxes: np.ndarray, scores: np.ndarray, level_sizes: Sequence[tuple[int, int]], cfg: TestConfig
) -> list[Detections]:
    """``predict``'s post-processing applied to a graph's dense outputs.

    Args:
        boxes: ``[N, A, 4]`` decoded, clipped boxes.
        scores: ``[N, A, C]`` sigmoid scores.
        level_sizes: ``(H_l, W_l)`` of every level, to split ``A`` into levels.
        cfg: the decoding settings.
    """
    counts = [height * width for height, width in level_sizes]
    results = []
    for image_boxes, image_scores in zip(torch.from_numpy(boxes), torch.from_numpy(scores)):
        picked_boxes, picked_scores, picked_labels = [], [], []
        for level_boxes, level_scores in zip(image_boxes.split(counts), image_scores.split(counts)):
            candidates, anchor_index, labels = top_candidates(level_scores, cfg.score_thr, cfg.nms_pre)
            picked_scores.append(candidates)
            picked_boxes.append(level_boxes[anchor_index])
            picked_labels.append(labels)
        results.append(suppress(torch.cat(picked_boxes), torch.cat(picked_scores), torch.cat(picked_labels), cfg))
    return results


def pad_detections(detections: Sequence[Detections], max_det: int) -> dict[str, np.ndarray]:
    """Detections as a graph with NMS outputs them: zero-padded to ``K = max_det``."""
    batch = len(detections)
    outputs = {
        "num_dets": np.zeros((batch, 1), np.int32),
        "det_boxes": np.zeros((batch, max_det, 4), np.float32),
        "det_scores": np.zeros((batch, max_det), np.float32),
        "det_labels": np.zeros((batch, max_det), np.int32),
    }
    for index, found in enumerate(detections):
        count = min(len(found.scores), max_det)
        outputs["num_dets"][index, 0] = count
        outputs["det_boxes"][index, :count] = found.boxes[:count].numpy()
        outputs["det_scores"][index, :count] = found.scores[:count].numpy()
        outputs["det_labels"][index, :count] = found.labels[:count].numpy()
    return outputs


def level_sizes(height: int, width: int, strides: Sequence[int]) -> list[tuple[int, int]]:
    """``(H_l, W_l)`` of every level for an input of ``height x width`` (multiples of 32):
    each stride-2 stage rounds up, so a level is the input divided by its stride, rounded up."""
    return [(-(-height // stride), -(-width // stride)) for stride in strides]


def graph_detections(
    outputs: dict[str, np.ndarray],
    *,
    input_size: tuple[int, int],
    strides: Sequence[int],
    test_cfg: TestConfig,
) -> list[Detections]:
    """The detections of any runner's outputs, one per image of the batch, in input pixels.

    Args:
        outputs: ``num_dets``/``det_*`` (a graph with NMS), else dense ``boxes``/``scores``
            (post-processed as ``predict`` does).
        input_size: ``(H, W)`` of the input (to split ``A`` into levels).
        strides: the levels' strides.
        test_cfg: the decoding settings.
    """
    if "num_dets" in outputs:
        return detections_from_outputs(outputs)
    return detections_from_dense(outputs["boxes"], outputs["scores"], level_sizes(*input_size, strides), test_cfg)
