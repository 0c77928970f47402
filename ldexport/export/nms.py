"""Non-maximum suppression inside the exported graph, as :meth:`GFLDetector.predict` does it.

Legend: ``N`` images, ``A_l`` anchor points of level ``l``, ``C`` classes, ``k`` the
per-level pre-NMS top-k (``nms_pre``), ``B = L * k`` candidates of ``L`` levels, ``K``
detections kept (``max_det``), ``S`` boxes NonMaxSuppression selects over the batch.

Both stages first pick candidates exactly as ``predict`` does:

1. per level, the ``k`` best anchor-class pairs (TopK over ``[N, A_l * C]``, sorted, so
   ``K <= 3840`` for TensorRT holds with mmdet's ``nms_pre=1000``), kept when their score
   is strictly above ``score_thr``. A level with fewer than ``k`` pairs is padded with
   scores of -1, which never pass, so that K is a constant for every input size;
2. each candidate's box is its anchor's decoded box (clipped to the input);
3. boxes whose width or height is not above ``min_bbox_size`` are dropped (when
   ``min_bbox_size >= 0``).

:class:`OnnxNMS` then runs the standard ONNX ``NonMaxSuppression`` class-aware the way
mmcv's ``batched_nms`` (and ldexport's :func:`~ldexport.model.nms.batched_nms`) does:
every box is shifted by ``label * (max coordinate + 1)``, the same float32 arithmetic, so
boxes of different classes never overlap and borderline IoUs round as in PyTorch; one
"class" of scores goes in. The thresholds agree with ``predict`` by construction:
onnxruntime keeps a score when ``score > score_threshold`` and suppresses when
``IoU > iou_threshold``, with ``IoU`` computed as ``intersection / (area1 + area2 -
intersection)`` in float32 exactly like :func:`~ldexport.model.bbox.box_iou`; the
selection stops after ``max_det`` boxes like ``keep[:max_per_img]``. Which boxes were
kept becomes a mask over the candidates, and a final TopK orders them by score, so the
result does not depend on the order NonMaxSuppression lists its indices in.

Exact score ties among overlapping boxes of one class are the one thing neither side
orders reproducibly: ``torch.sort`` is not stable on CPU and onnxruntime's NMS pops ties
from a heap; the detections then differ by which of two equal-scored boxes is kept.

:class:`EfficientNMS` hands the candidates to TensorRT's ``EfficientNMS_TRT`` plugin
(domain ``TRT``), which onnxruntime cannot run. It is class-aware per class (no offsets),
keeps its top 4096 scores at or above its score threshold before NMS (every pair but the
candidates' own scores -1, so that only they pass, whatever ``score_thr``), suppresses at
``IoU >=`` its IoU threshold (set to the float32 just above ``iou_threshold``: the same
test as ``IoU > iou_threshold``), and returns the same four outputs; its parity is
checked on a TensorRT engine.

Outputs of both: ``num_dets [N, 1]`` int32, ``det_boxes [N, K, 4]`` float32 xyxy input
pixels, ``det_scores [N, K]``, ``det_labels [N, K]`` int32, by descending score, zero
past ``num_dets``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ldexport.model.nms import batched_nms, nms

# TensorRT's TopK takes K up to this.
MAX_TOPK = 3840
# onnx output names of the detections, in order
DETECTION_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_labels")


class CandidateSelector(nn.Module):
    """Steps 1-3 above: the per-level top-k candidates of ``predict``.

    Args:
        nms_pre: ``k``, candidates kept per level.
        score_thr: scores at or below it are dropped.
        min_bbox_size: boxes not wider and taller than it are dropped; negative disables.
    """

    def __init__(self, *, nms_pre: int, score_thr: float, min_bbox_size: float):
        super().__init__()
        self.nms_pre = nms_pre
        self.score_thr = score_thr
        self.min_bbox_size = min_bbox_size

    def forward(self, boxes: Sequence[Tensor], scores: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Args: per level ``boxes [N, A_l, 4]`` and ``scores [N, A_l, C]``.

        Returns:
            ``boxes [N, B, 4]``, ``scores [N, B]``, ``labels [N, B]`` int64 and ``valid
            [N, B]`` bool, levels in order, each level by descending score.
        """
        picked = [self.level(level_boxes, level_scores) for level_boxes, level_scores in zip(boxes, scores)]
        boxes_b, scores_b, labels_b, valid_b = (torch.cat(parts, dim=1) for parts in zip(*picked))
        if self.min_bbox_size >= 0:
            width = boxes_b[..., 2] - boxes_b[..., 0]
            height = boxes_b[..., 3] - boxes_b[..., 1]
            valid_b = valid_b & (width > self.min_bbox_size) & (height > self.min_bbox_size)
        return boxes_b, scores_b, labels_b, valid_b

    def level(self, boxes: Tensor, scores: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One level's ``k`` best anchor-class pairs (see :meth:`forward`)."""
        num_classes = scores.shape[2]
        # [N, A_l * C] pairs, row-major (anchor, class) as predict enumerates them, then
        # k pairs that never pass so that TopK always has k to take
        flat = scores.flatten(1)
        flat = torch.cat((flat, torch.full_like(flat[:, :1], -1.0).expand(-1, self.nms_pre)), dim=1)
        top_scores, pair = flat.topk(self.nms_pre, dim=1)
        valid = top_scores > self.score_thr
        pair = torch.where(valid, pair, torch.zeros_like(pair))
        anchor = torch.div(pair, num_classes, rounding_mode="trunc")
        label = pair - anchor * num_classes
        # [N, k, 4]
        picked = boxes.gather(1, anchor.unsqueeze(-1).expand(-1, -1, 4))
        return picked, top_scores, label, valid


class OnnxNMS(nn.Module):
    """Candidates + ONNX ``NonMaxSuppression``, class-aware by offsets (see module doc).

    Args:
        nms_pre, score_thr, min_bbox_size: candidate selection (:class:`CandidateSelector`).
        iou_threshold: overlaps strictly above it suppress.
        max_det: ``K``, detections kept per image.
    """

    def __init__(self, *, nms_pre: int, score_thr: float, iou_threshold: float, max_det: int, min_bbox_size: float):
        super().__init__()
        self.candidates = CandidateSelector(nms_pre=nms_pre, score_thr=score_thr, min_bbox_size=min_bbox_size)
        self.score_thr = score_thr
        self.iou_threshold = iou_threshold
        self.max_det = max_det

    def forward(self, boxes: Sequence[Tensor], scores: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Args: per level ``boxes [N, A_l, 4]``, ``scores [N, A_l, C]``. Returns the detections."""
        boxes_b, scores_b, labels_b, valid = self.candidates(boxes, scores)
        num_candidates = len(boxes) * self.candidates.nms_pre
        # [N, 1, 1]: largest coordinate of each image's candidates (all are >= 0)
        largest = torch.where(valid.unsqueeze(-1), boxes_b, torch.zeros_like(boxes_b)).flatten(1).amax(dim=1)
        offsets = labels_b.to(boxes_b.dtype) * (largest.reshape(-1, 1) + 1)
        shifted = boxes_b + offsets.unsqueeze(-1)
        nms_scores = torch.where(valid, scores_b, torch.full_like(scores_b, -1.0)).unsqueeze(1)
        # [S, 3]: (image, 0, candidate)
        selected = _NonMaxSuppression.apply(shifted, nms_scores, self.max_det, self.iou_threshold, self.score_thr)
        flat_index = selected[:, 0] * num_candidates + selected[:, 2]
        kept = torch.zeros_like(scores_b).flatten().scatter(0, flat_index, torch.ones_like(flat_index, dtype=scores_b.dtype))
        kept_scores = torch.where(kept.reshape(scores_b.shape) > 0, scores_b, torch.full_like(scores_b, -1.0))
        return _gather_detections(kept_scores, boxes_b, labels_b, self.max_det, num_candidates)


class EfficientNMS(nn.Module):
    """Candidates + TensorRT's ``EfficientNMS_TRT`` plugin (see module doc).

    Args: as :class:`OnnxNMS`; ``num_classes`` ``C`` sizes the plugin's score input.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        nms_pre: int,
        score_thr: float,
        iou_threshold: float,
        max_det: int,
        min_bbox_size: float,
    ):
        super().__init__()
        self.candidates = CandidateSelector(nms_pre=nms_pre, score_thr=score_thr, min_bbox_size=min_bbox_size)
        self.num_classes = num_classes
        self.score_thr = score_thr
        self.iou_threshold = iou_threshold
        self.max_det = max_det

    def forward(self, boxes: Sequence[Tensor], scores: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Args: per level ``boxes [N, A_l, 4]``, ``scores [N, A_l, C]``. Returns the detections."""
        boxes_b, scores_b, labels_b, valid = self.candidates(boxes, scores)
        # [N, B, C]: each candidate scores only its own class; the other pairs and the
        # dropped candidates score -1, below any threshold (the plugin keeps scores >= its
        # threshold, so a 0 would pass score_thr=0)
        kept = torch.where(valid, scores_b, torch.full_like(scores_b, -1.0))
        class_scores = torch.full_like(kept, -1.0).unsqueeze(-1).expand(-1, -1, self.num_classes)
        class_scores = class_scores.scatter(2, labels_b.unsqueeze(-1), kept.unsqueeze(-1))
        return _EfficientNMSPlugin.apply(boxes_b, class_scores, self.max_det, self.iou_threshold, self.score_thr)


def _gather_detections(
    kept_scores: Tensor, boxes: Tensor, labels: Tensor, max_det: int, num_candidates: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ``K`` best kept candidates of each image, zero-padded.

    Args:
        kept_scores: ``[N, B]`` scores of the kept candidates, -1 elsewhere.
        boxes: ``[N, B, 4]``; labels: ``[N, B]``.
        max_det: ``K``.
        num_candidates: ``B``, known before the trace (levels times ``nms_pre``).
    """
    missing = max_det - num_candidates
    if missing > 0:  # fewer candidates than K: pad, so that TopK can take K
        kept_scores = torch.cat((kept_scores, torch.full_like(kept_scores[:, :1], -1.0).expand(-1, missing)), dim=1)
        boxes = torch.cat((boxes, torch.zeros_like(boxes[:, :1]).expand(-1, missing, -1)), dim=1)
        labels = torch.cat((labels, torch.zeros_like(labels[:, :1]).expand(-1, missing)), dim=1)
    # [N, K]
    top_scores, order = kept_scores.topk(max_det, dim=1)
    found = top_scores > -0.5
    det_boxes = boxes.gather(1, order.unsqueeze(-1).expand(-1, -1, 4)) * found.unsqueeze(-1).to(boxes.dtype)
    det_scores = torch.where(found, top_scores, torch.zeros_like(top_scores))
    det_labels = torch.where(found, labels.gather(1, order), torch.zeros_like(order)).to(torch.int32)
    num_dets = found.to(boxes.dtype).sum(dim=1, keepdim=True).to(torch.int32)
    return num_dets, det_boxes, det_scores, det_labels


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (one class); in PyTorch, its onnxruntime semantics."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_output: int, iou_threshold: float, score_threshold: float) -> Tensor:  # type: ignore[override]
        """Args: ``boxes [N, B, 4]``, ``scores [N, 1, B]``. Returns ``[S, 3]`` int64."""
        rows = []
        for image in range(boxes.shape[0]):
            candidates = torch.nonzero(scores[image, 0] > score_threshold).flatten()
            keep = candidates[nms(boxes[image, candidates], scores[image, 0, candidates], iou_threshold)[:max_output]]
            row = torch.stack((torch.full_like(keep, image), torch.zeros_like(keep), keep), dim=1)
            rows.append(row)
        return torch.cat(rows)

    @staticmethod
    def symbolic(g, boxes, scores, max_output: int, iou_threshold: float, score_threshold: float):  # noqa: ANN001
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_output], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32)),
            center_point_box_i=0,
        )


class _EfficientNMSPlugin(torch.autograd.Function):
    """TensorRT's ``EfficientNMS_TRT``; in PyTorch, class-aware NMS with its outputs."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_output: int, iou_threshold: float, score_threshold: float):  # type: ignore[override]
        """Args: ``boxes [N, B, 4]``, ``scores [N, B, C]``. Returns the four detections."""
        batch, num_candidates, num_classes = scores.shape
        kept_scores = torch.full((batch, num_candidates * num_classes), -1.0, dtype=scores.dtype)
        for image in range(batch):
            flat = scores[image].flatten()
            pairs = torch.nonzero(flat > score_threshold).flatten()
            anchor, label = pairs // num_classes, pairs % num_classes
            keep = batched_nms(boxes[image, anchor], flat[pairs], label, iou_threshold)[:max_output]
            kept_scores[image, pairs[keep]] = flat[pairs[keep]]
        pair_boxes = boxes.repeat_interleave(num_classes, dim=1)
        pair_labels = torch.arange(num_classes).repeat(num_candidates).expand(batch, -1)
        return _gather_detections(kept_scores, pair_boxes, pair_labels, max_output, num_candidates * num_classes)

    @staticmethod
    def symbolic(g, boxes, scores, max_output: int, iou_threshold: float, score_threshold: float):  # noqa: ANN001
        # the plugin suppresses at IoU >= its threshold, predict at IoU > iou_threshold: the
        # next float32 above it makes the two the same test on float32 IoUs
        above = torch.nextafter(torch.tensor(iou_threshold), torch.tensor(float("inf"))).item()
        outputs = g.op(
            "TRT::EfficientNMS_TRT",
            boxes,
            scores,
            background_class_i=-1,
            box_coding_i=0,
            iou_threshold_f=above,
            max_output_boxes_i=max_output,
            plugin_version_s="1",
            score_activation_i=0,
            score_threshold_f=score_threshold,
            outputs=4,
        )
        for output, dtype, rank in zip(outputs, (torch.int32, torch.float32, torch.float32, torch.int32), (2, 3, 2, 2)):
            output.setType(boxes.type().with_dtype(dtype).with_sizes([None] * rank))
        return outputs
