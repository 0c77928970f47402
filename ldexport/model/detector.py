"""The GFL detector: ResNet, FPN, GFL head, and mmdet's test-time decoding.

Legend: ``N`` images, ``C`` classes, ``R = reg_max + 1`` bins, ``A_l`` anchors of level
``l``, ``K_l`` candidates of level ``l``, ``K`` of all levels (padded over the batch),
``D`` detections.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ldexport.model.bbox import anchor_centers, distance2bbox
from ldexport.model.fpn import FPN
from ldexport.model.gfl_head import GFLHead
from ldexport.model.nms import padded_batched_nms
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
    """Detections of one image: ``boxes [K, 4]`` xyxy input pixels, ``scores [K]``, ``labels [K]``."""

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

    Every step runs on the whole batch at once: per level the top candidates, their
    distributions' expectations and boxes; then the size filter and class-aware NMS.
    """
    featmap_sizes = [(score.shape[-2], score.shape[-1]) for score in cls_scores]
    anchors = head.anchors(featmap_sizes, device=cls_scores[0].device)
    batch, num_classes, bins = cls_scores[0].shape[0], head.num_classes, 4 * (head.reg_max + 1)
    boxes_all, scores_all, labels_all, valid_all = [], [], [], []
    for cls_score, bbox_pred, level_anchors, stride in zip(cls_scores, bbox_preds, anchors, head.strides):
        # [N, A_l, C]
        scores = cls_score.permute(0, 2, 3, 1).reshape(batch, -1, num_classes).sigmoid()
        scores, anchor_index, labels, valid = select_candidates(scores, cfg.score_thr, cfg.nms_pre)
        # [N, K_l, 4 * R] -> [N, K_l, 4]: expected distances of the candidates, in pixels
        logits = bbox_pred.permute(0, 2, 3, 1).reshape(batch, -1, bins)
        logits = logits.gather(1, anchor_index[..., None].expand(-1, -1, bins))
        distances = head.integral(logits).reshape(batch, -1, 4) * stride
        points = anchor_centers(level_anchors)[anchor_index]  # [N, K_l, 2]
        boxes_all.append(distance2bbox(points, distances))
        scores_all.append(scores)
        labels_all.append(labels)
        valid_all.append(valid)
    boxes = torch.cat(boxes_all, dim=1)  # [N, K, 4]
    # [N, 1, 4]: clip to each image's own (w, h, w, h), as mmdet's max_shape
    limits = torch.tensor([(w, h, w, h) for h, w in image_sizes], dtype=boxes.dtype).to(boxes.device)[:, None]
    boxes = torch.minimum(boxes.clamp(min=0), limits)
    return suppress_batch(boxes, torch.cat(scores_all, 1), torch.cat(labels_all, 1), torch.cat(valid_all, 1), cfg)


def suppress_batch(boxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor, cfg: TestConfig) -> list[Detections]:
    """The candidates of every level to detections: the size filter, class-aware NMS, the cap.

    Args:
        boxes: ``[N, K, 4]``; scores: ``[N, K]``; labels: ``[N, K]``; valid: ``[N, K]``
            bool (padding is ``False``): the levels' candidates concatenated.

    Returns:
        One :class:`Detections` per image, by descending score.
    """
    if cfg.min_bbox_size >= 0:
        width, height = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        valid = valid & (width > cfg.min_bbox_size) & (height > cfg.min_bbox_size)
    order, kept = padded_batched_nms(boxes, scores, labels, valid, cfg.iou_threshold)
    # [N, D]: the first max_per_img kept candidates, in order (padding after them)
    positions = torch.arange(kept.shape[1], device=kept.device).expand_as(kept)
    first = torch.where(kept, positions, kept.shape[1]).sort(dim=1).values[:, : cfg.max_per_img]
    index = order.gather(1, first.clamp(max=max(kept.shape[1] - 1, 0)))
    counts = kept.sum(1).clamp(max=cfg.max_per_img).tolist()  # read back once for the batch
    found_boxes = boxes.gather(1, index[..., None].expand(-1, -1, 4))
    found_scores, found_labels = scores.gather(1, index), labels.gather(1, index)
    return [
        Detections(boxes=found_boxes[i, :count], scores=found_scores[i, :count], labels=found_labels[i, :count])
        for i, count in enumerate(counts)
    ]


def suppress(boxes: Tensor, scores: Tensor, labels: Tensor, cfg: TestConfig) -> Detections:
    """:func:`suppress_batch` for one image's candidates ``boxes [K, 4]``, ``scores [K]``, ``labels [K]``."""
    valid = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    return suppress_batch(boxes[None], scores[None], labels[None], valid[None], cfg)[0]


def select_candidates(scores: Tensor, score_thr: float, topk: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ``topk`` best anchor-class pairs of each image scoring above ``score_thr``.

    mmdet's ``filter_scores_and_topk`` with fixed shapes: the same pairs in the same
    order (descending score, ties by position), padded where fewer pass the threshold.

    Args:
        scores: ``[N, A_l, C]`` sigmoid scores.

    Returns:
        ``scores [N, K]`` descending, ``anchor_index [N, K]``, ``labels [N, K]`` and
        ``valid [N, K]`` (a prefix of each row), ``K = min(topk, A_l * C)``.
    """
    batch, _, num_classes = scores.shape
    flat = scores.reshape(batch, -1)
    flat = flat.masked_fill(flat <= score_thr, -1.0)
    values, index = flat.topk(min(topk, flat.shape[1]), dim=1)
    # topk leaves equal scores in any order: put them in position order, as a stable sort
    index, perm = index.sort(dim=1)
    values, perm2 = values.gather(1, perm).sort(dim=1, descending=True, stable=True)
    index = index.gather(1, perm2)
    return values, index // num_classes, index % num_classes, values > score_thr


def top_candidates(scores: Tensor, score_thr: float, topk: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`select_candidates` for one image's ``scores [A_l, C]``, without the padding.

    Returns:
        ``scores [K]`` descending, ``anchor_index [K]`` and ``labels [K]``.
    """
    values, anchor_index, labels, valid = select_candidates(scores[None], score_thr, topk)
    count = int(valid.sum())
    return values[0, :count], anchor_index[0, :count], labels[0, :count]
