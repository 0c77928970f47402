"""The GFL detector: ResNet, FPN, GFL head, and mmdet's test-time decoding.

Legend: ``N`` images, ``C`` classes, ``R = reg_max + 1`` bins, ``A_l`` anchors of level
``l``, ``K`` candidates kept for NMS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ldexport.model.bbox import anchor_centers, distance2bbox
from ldexport.model.fpn import FPN
from ldexport.model.gfl_head import GFLHead
from ldexport.model.nms import batched_nms
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
    """Decodes raw head outputs of a batch into detections (see :meth:`GFLDetector.predict`)."""
    featmap_sizes = [(score.shape[-2], score.shape[-1]) for score in cls_scores]
    anchors = head.anchors(featmap_sizes, device=cls_scores[0].device)
    results = []
    for index, image_size in enumerate(image_sizes):
        results.append(
            _decode_image(
                head,
                [score[index] for score in cls_scores],
                [pred[index] for pred in bbox_preds],
                anchors,
                image_size,
                cfg,
            )
        )
    return results


def _decode_image(
    head: GFLHead,
    cls_scores: Sequence[Tensor],
    bbox_preds: Sequence[Tensor],
    anchors: Sequence[Tensor],
    image_size: tuple[int, int],
    cfg: TestConfig,
) -> Detections:
    boxes_all, scores_all, labels_all = [], [], []
    for cls_score, bbox_pred, level_anchors, stride in zip(cls_scores, bbox_preds, anchors, head.strides):
        # [A_l, 4]: expected distances, in pixels
        distances = head.integral(bbox_pred.permute(1, 2, 0)) * stride
        # [A_l, C]
        scores = cls_score.permute(1, 2, 0).reshape(-1, head.num_classes).sigmoid()
        scores, anchor_index, labels = top_candidates(scores, cfg.score_thr, cfg.nms_pre)
        points = anchor_centers(level_anchors[anchor_index])
        boxes_all.append(distance2bbox(points, distances[anchor_index], max_shape=image_size))
        scores_all.append(scores)
        labels_all.append(labels)
    return suppress(torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all), cfg)


def suppress(boxes: Tensor, scores: Tensor, labels: Tensor, cfg: TestConfig) -> Detections:
    """The candidates of every level to detections: the size filter, class-aware NMS, the cap.

    Args:
        boxes: ``[K, 4]``; scores: ``[K]``; labels: ``[K]``, the levels' candidates concatenated.
    """
    if cfg.min_bbox_size >= 0:
        width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        large = (width > cfg.min_bbox_size) & (height > cfg.min_bbox_size)
        boxes, scores, labels = boxes[large], scores[large], labels[large]
    keep = batched_nms(boxes, scores, labels, cfg.iou_threshold)[: cfg.max_per_img]
    return Detections(boxes=boxes[keep], scores=scores[keep], labels=labels[keep])


def top_candidates(scores: Tensor, score_thr: float, topk: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``topk`` best anchor-class pairs scoring above ``score_thr``.

    Args:
        scores: ``[A_l, C]`` sigmoid scores.

    Returns:
        ``scores [K]`` descending, ``anchor_index [K]`` and ``labels [K]``.
    """
    valid = scores > score_thr
    candidates = scores[valid]
    # [K, 2]: (anchor, class) of each candidate, row-major like ``candidates``
    pairs = torch.nonzero(valid)
    candidates, order = candidates.sort(descending=True)
    order = order[:topk]
    pairs = pairs[order]
    return candidates[:topk], pairs[:, 0], pairs[:, 1]
