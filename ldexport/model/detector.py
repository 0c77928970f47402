"""The GFL detector: ResNet, FPN, GFL head, and mmdet's test-time decoding.

Legend: ``N`` images, ``C`` classes, ``R = reg_max + 1`` bins, ``L`` levels, ``A_l``
anchors of level ``l``, ``A`` of all levels, ``P_l = A_l * C`` anchor-class pairs of level
``l``, ``K`` candidates of a level and ``B`` of all levels (padded over the levels and the
batch), ``D`` detections.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldexport.model.bbox import distance2bbox
from ldexport.model.fpn import FPN
from ldexport.model.gfl_head import GFLHead
from ldexport.model.nms import padded_batched_nms
from ldexport.model.priors import flatten_levels
from ldexport.model.resnet import ResNet


@dataclass
class TestConfig:
    """Test-time decoding, mmdet's GFL ``test_cfg``.

    Attributes:
        nms_pre: candidates kept per level before NMS (top scores over anchor-class pairs).
        score_thr: scores at or below this are dropped.
        iou_threshold: NMS overlap threshold.
        max_per_img: detections kept per image after NMS.
        min_bbox_size: boxes whose width or height is not above this are dropped
            (mmdet's GFL configs use 0: boxes clipped to nothing go); negative disables.
    """

    __test__ = False  # not a pytest test class, despite its name

    nms_pre: int = 1000
    score_thr: float = 0.05
    iou_threshold: float = 0.6
    max_per_img: int = 100
    min_bbox_size: float = 0.0


@dataclass
class Detections:
    """Detections of one image: ``boxes [D, 4]`` xyxy input pixels, ``scores [D]``, ``labels [D]``."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


class GFLDetector(nn.Module):
    """ResNet + FPN + GFL head.

    ``forward`` returns the raw per-level outputs used for training and distillation;
    ``predict`` decodes them into detections as mmdet's ``GFLHead.predict`` does.
    """

    def __init__(self, *, backbone: ResNet, neck: FPN, head: GFLHead):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Args: images ``[N, 3, H, W]`` normalised RGB.

        Returns:
            ``cls_scores`` per level ``[N, C, H_l, W_l]`` and ``bbox_preds`` per level
            ``[N, 4 * R, H_l, W_l]``.
        """
        return self.head(self.neck(self.backbone(images)))

    @torch.no_grad()
    def predict(
        self,
        images: Tensor,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        cfg: TestConfig | None = None,
    ) -> list[Detections]:
        """Detects objects.

        Args:
            images: ``[N, 3, H, W]`` normalised RGB, possibly padded.
            image_sizes: ``(h, w)`` of each image before padding (boxes are clipped to
                it); the batch's ``(H, W)`` when omitted.
            cfg: decoding settings; mmdet's GFL defaults when omitted.

        Returns:
            One :class:`Detections` per image, in input pixels, by descending score.
        """
        cls_scores, bbox_preds = self(images)
        sizes = image_sizes or [(images.shape[-2], images.shape[-1])] * images.shape[0]
        return decode_detections(self.head, cls_scores, bbox_preds, sizes, cfg or TestConfig())


def decode_detections(
    head: GFLHead,
    cls_scores: Sequence[Tensor],
    bbox_preds: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    cfg: TestConfig,
) -> list[Detections]:
    """Decodes raw head outputs of a batch into detections (see :meth:`GFLDetector.predict`).

    Every step runs once on the whole batch and every level, but the top-k, which mmdet
    takes per level: sigmoid and threshold, the levels' top candidates, their
    distributions' expectations and boxes; then the size filter and class-aware NMS.
    """
    batch, num_classes = cls_scores[0].shape[0], head.num_classes
    grid = head.anchor_grid([score.shape[-2:] for score in cls_scores], cls_scores[0].device)
    # [N, A * C]: every level's anchor-class pairs, anchor-major as mmdet flattens them
    scores = flatten_levels(cls_scores).sigmoid_().reshape(batch, -1)
    level_pairs = [count * num_classes for count in grid.num_level_anchors]
    scores, pair_index, valid = level_candidates(scores, level_pairs, cfg.score_thr, cfg.nms_pre)
    anchor_index = pair_index // num_classes + grid.level_starts[:, None]  # [N, L, K] into A
    # [N, A, 4 * R] -> [N, B, 4 * R]: the candidates' bin logits, B = L * K
    logits = flatten_levels(bbox_preds)
    logits = logits.gather(1, anchor_index.reshape(batch, -1, 1).expand(-1, -1, logits.shape[2]))
    # [N, L, K, 4]: expected distances in pixels (times a float stride: the bits of the int stride)
    distances = head.integral(logits).reshape(*anchor_index.shape, 4) * grid.level_strides[:, None, None]
    boxes = distance2bbox(grid.points[anchor_index], distances).reshape(batch, -1, 4)  # [N, B, 4]
    # [N, 1, 4]: clip to each image's own (w, h, w, h), as mmdet's max_shape
    # built on the host and copied without waiting: a plain copy to a GPU would wait for
    # every kernel queued before it (a host synchronisation inside the decoding)
    limits = torch.tensor([[(w, h, w, h)] for h, w in image_sizes], dtype=boxes.dtype)
    limits = limits.to(boxes.device, non_blocking=True)
    boxes = torch.minimum(boxes.clamp_(min=0), limits)
    labels = (pair_index % num_classes).reshape(batch, -1)
    return suppress_batch(boxes, scores.reshape(batch, -1), labels, valid.reshape(batch, -1), cfg)


def suppress_batch(boxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor, cfg: TestConfig) -> list[Detections]:
    """The candidates of every level to detections: the size filter, class-aware NMS, the cap.

    Args:
        boxes: ``[N, B, 4]``; scores: ``[N, B]``; labels: ``[N, B]``; valid: ``[N, B]``
            bool (padding is ``False``): the levels' candidates concatenated.

    Returns:
        One :class:`Detections` per image, by descending score.
    """
    if cfg.min_bbox_size >= 0:
        sides = boxes[..., 2:] - boxes[..., :2]  # [N, B, 2] width, height
        valid = valid & (sides > cfg.min_bbox_size).all(dim=2)
    order, kept = padded_batched_nms(boxes, scores, labels, valid, cfg.iou_threshold)
    # [N, D]: the first max_per_img kept candidates, in order (the others after them)
    first = kept.sort(dim=1, descending=True, stable=True).indices
    index = order.gather(1, first.narrow(1, 0, min(cfg.max_per_img, kept.shape[1])))
    counts = kept.sum(1).clamp(max=cfg.max_per_img).tolist()  # read back once for the batch
    found_boxes = boxes.gather(1, index[..., None].expand(-1, -1, 4))
    found_scores, found_labels = scores.gather(1, index), labels.gather(1, index)
    return [
        Detections(boxes=found_boxes[i, :count], scores=found_scores[i, :count], labels=found_labels[i, :count])
        for i, count in enumerate(counts)
    ]


def suppress(boxes: Tensor, scores: Tensor, labels: Tensor, cfg: TestConfig) -> Detections:
    """:func:`suppress_batch` for one image's candidates ``boxes [B, 4]``, ``scores [B]``, ``labels [B]``."""
    valid = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    return suppress_batch(boxes[None], scores[None], labels[None], valid[None], cfg)[0]


def level_candidates(
    scores: Tensor, level_pairs: Sequence[int], score_thr: float, topk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``topk`` best anchor-class pairs of each level of each image scoring above ``score_thr``.

    mmdet's ``filter_scores_and_topk``, level by level, with fixed shapes: the same pairs
    in the same order (descending score, ties by position), padded where fewer pass the
    threshold or a level has fewer than ``K`` pairs. The padding scores ``-inf`` (invalid
    whatever the threshold) and sorts after a level's own pairs, so that the valid
    candidates of ``[N, B = L * K]`` follow one another as the levels' lists concatenated.

    Args:
        scores: ``[N, P]`` sigmoid scores, the levels' pairs concatenated, each level
            anchor-major (pair ``a * C + c``).
        level_pairs: ``P_l`` of every level, ``sum P_l = P``.

    Returns:
        ``scores [N, L, K]`` descending per level, ``pair_index [N, L, K]`` into the
        level's pairs and ``valid [N, L, K]`` (a prefix of each level),
        ``K = min(topk, max_l P_l)``.
    """
    flat = scores.masked_fill(scores <= score_thr, -1.0)
    # the one thing done level by level: mmdet keeps topk candidates per level
    picked = [level.topk(min(topk, level.shape[1]), dim=1) for level in flat.split(list(level_pairs), dim=1)]
    size = max(found.values.shape[1] for found in picked)
    values = torch.stack([_pad(found.values, size, float("-inf")) for found in picked], dim=1)
    index = torch.stack([_pad(found.indices, size, 0) for found in picked], dim=1)
    # topk leaves equal scores in any order: put them in position order, as a stable sort
    index, perm = index.sort(dim=2)
    values, perm = values.gather(2, perm).sort(dim=2, descending=True, stable=True)
    return values, index.gather(2, perm), values > score_thr


def _pad(found: Tensor, size: int, value: float) -> Tensor:
    """``[N, K_l]`` padded with ``value`` to ``[N, size]``."""
    return found if found.shape[1] == size else F.pad(found, (0, size - found.shape[1]), value=value)


def select_candidates(scores: Tensor, score_thr: float, topk: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`level_candidates` of one level: the ``topk`` best anchor-class pairs of each
    image scoring above ``score_thr``.

    Args:
        scores: ``[N, A_l, C]`` sigmoid scores.

    Returns:
        ``scores [N, K]`` descending, ``anchor_index [N, K]``, ``labels [N, K]`` and
        ``valid [N, K]`` (a prefix of each row), ``K = min(topk, A_l * C)``.
    """
    batch, anchors, num_classes = scores.shape
    values, index, valid = level_candidates(scores.reshape(batch, -1), [anchors * num_classes], score_thr, topk)
    index = index[:, 0]
    return values[:, 0], index // num_classes, index % num_classes, valid[:, 0]


def top_candidates(scores: Tensor, score_thr: float, topk: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`select_candidates` for one image's ``scores [A_l, C]``, without the padding.

    Returns:
        ``scores [K]`` descending, ``anchor_index [K]`` and ``labels [K]``.
    """
    values, anchor_index, labels, valid = select_candidates(scores[None], score_thr, topk)
    count = int(valid.sum())
    return values[0, :count], anchor_index[0, :count], labels[0, :count]
