"""Box overlaps with mmdet's ``bbox_overlaps`` numerics: IoU, IoF and GIoU, and the DIoU
that the original LD code adds to its overlap calculator for the VLR region.

Every quantity is computed element by element on boxes broadcast against each other, so
the pairwise and the aligned forms give bit-identical values to mmdet's two code paths.

Legend: ``A`` rows of ``boxes1`` (anchors), ``M`` rows of ``boxes2`` (ground truth), ``N``
images, ``K`` aligned pairs. Boxes are xyxy.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Mode = Literal["iou", "iof", "giou", "diou"]


def _broadcast_overlaps(boxes1: Tensor, boxes2: Tensor, mode: Mode, eps: float) -> Tensor:
    """Overlaps of boxes that broadcast against each other (``[..., 4]`` each)."""
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    lt = torch.max(boxes1[..., :2], boxes2[..., :2])
    rb = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = area1 if mode == "iof" else area1 + area2 - overlap
    union = union.clamp(min=eps)
    ious = overlap / union
    if mode in ("iou", "iof"):
        return ious
    enclose_lt = torch.min(boxes1[..., :2], boxes2[..., :2])
    enclose_rb = torch.max(boxes1[..., 2:], boxes2[..., 2:])
    enclose_wh = (enclose_rb - enclose_lt).clamp(min=0)
    if mode == "giou":
        enclose_area = (enclose_wh[..., 0] * enclose_wh[..., 1]).clamp(min=eps)
        return ious - (enclose_area - union) / enclose_area
    # DIoU: IoU minus the squared centre distance over the enclosing box's squared diagonal.
    dx = (boxes2[..., 0] + boxes2[..., 2]) - (boxes1[..., 0] + boxes1[..., 2])
    dy = (boxes2[..., 1] + boxes2[..., 3]) - (boxes1[..., 1] + boxes1[..., 3])
    rho2 = dx**2 / 4 + dy**2 / 4
    diagonal2 = (enclose_wh[..., 0] ** 2 + enclose_wh[..., 1] ** 2).clamp(min=eps)
    return ious - rho2 / diagonal2


def pairwise_overlaps(boxes1: Tensor, boxes2: Tensor, mode: Mode = "iou", eps: float = 1e-6) -> Tensor:
    """Overlap of every box of ``boxes1`` with every box of ``boxes2``.

    Args:
        boxes1: ``[A, 4]``.
        boxes2: ``[M, 4]``.
        mode: ``iou``; ``iof`` (intersection over the area of ``boxes1``); ``giou``;
            ``diou``.
        eps: lower clamp of the union (and of the enclosing area or diagonal).

    Returns:
        ``[A, M]``.
    """
    if boxes1.shape[0] == 0 or boxes2.shape[0] == 0:
        return boxes1.new_zeros((boxes1.shape[0], boxes2.shape[0]))
    return _broadcast_overlaps(boxes1[:, None, :], boxes2[None, :, :], mode, eps)


def batched_overlaps(anchors: Tensor, boxes: Tensor, mode: Mode = "iou", eps: float = 1e-6) -> Tensor:
    """Overlap of every anchor with every box of every image: the values of
    :func:`pairwise_overlaps` (``anchors`` as ``boxes1``), laid out box-major.

    Args:
        anchors: ``[A, 4]``, the same for every image.
        boxes: ``[N, M, 4]``.
        mode: as in :func:`pairwise_overlaps` (``iof`` divides by the anchor's area).
        eps: as in :func:`pairwise_overlaps`.

    Returns:
        ``[N, M, A]``.
    """
    return _broadcast_overlaps(anchors[None, None, :, :], boxes[:, :, None, :], mode, eps)


def aligned_overlaps(boxes1: Tensor, boxes2: Tensor, mode: Mode = "iou", eps: float = 1e-6) -> Tensor:
    """Overlap of each box of ``boxes1`` with the box in the same row of ``boxes2``.

    Args:
        boxes1: ``[K, 4]``.
        boxes2: ``[K, 4]``.
        mode: as in :func:`pairwise_overlaps`.
        eps: as in :func:`pairwise_overlaps`.

    Returns:
        ``[K]``.
    """
    if boxes1.shape != boxes2.shape:
        raise ValueError(f"aligned boxes need equal shapes, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    return _broadcast_overlaps(boxes1, boxes2, mode, eps)
