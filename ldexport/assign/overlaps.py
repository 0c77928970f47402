"""Box overlaps with mmdet's ``bbox_overlaps`` numerics: IoU, IoF and GIoU, and the DIoU
that the original LD code adds to its overlap calculator for the VLR region.

Every quantity is computed element by element on boxes broadcast against each other, so
the pairwise, batched and aligned forms give bit-identical values to mmdet's two code
paths; modes asked for together share their common terms.

Legend: ``A`` rows of ``boxes1`` (anchors), ``M`` rows of ``boxes2`` (ground truth), ``N``
images, ``K`` aligned pairs. Boxes are xyxy.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Mode = Literal["iou", "iof", "giou", "diou"]


def _area(wh: Tensor) -> Tensor:
    """``[..., 2]`` widths and heights -> ``[...]`` their products. With a gradient, the
    product is written out: ``prod``'s backward asks the device whether an entry is zero."""
    if not wh.requires_grad:
        return wh.prod(-1)
    width, height = wh.unbind(-1)
    return width * height


def _broadcast_overlaps(
    boxes1: Tensor, boxes2: Tensor, modes: tuple[Mode, ...], eps: float, area1: Tensor | None = None
) -> tuple[Tensor, ...]:
    """Overlaps of boxes that broadcast against each other (``[..., 4]`` each), one tensor
    per mode in ``modes`` (the terms they share computed once); ``area1`` the areas of
    ``boxes1`` where the caller keeps them (the anchors').

    x and y are handled as pairs (``[..., 2]``); a product or sum over a pair is the same
    one rounding as the two-term expression mmdet writes out.
    """
    (lt1, rb1), (lt2, rb2) = boxes1.split(2, dim=-1), boxes2.split(2, dim=-1)
    area1 = _area(rb1 - lt1) if area1 is None else area1
    overlap = _area((torch.min(rb1, rb2) - torch.max(lt1, lt2)).clamp(min=0))
    union = area1 if modes == ("iof",) else area1 + _area(rb2 - lt2) - overlap
    union = union.clamp(min=eps)
    ious = overlap / union
    enclose_wh = None
    if "giou" in modes or "diou" in modes:
        enclose_wh = (torch.max(rb1, rb2) - torch.min(lt1, lt2)).clamp(min=0)
    results = []
    for mode in modes:
        if mode in ("iou", "iof"):
            results.append(ious)
        elif mode == "giou":
            assert enclose_wh is not None
            enclose_area = _area(enclose_wh).clamp(min=eps)
            results.append(ious - (enclose_area - union) / enclose_area)
        else:
            # DIoU: IoU minus the squared centre distance over the enclosing box's squared diagonal.
            assert enclose_wh is not None
            centre_offset = (lt2 + rb2) - (lt1 + rb1)  # twice the centre distance, x and y
            diagonal2 = enclose_wh.pow(2).sum(-1).clamp(min=eps)
            results.append(ious - (centre_offset.pow(2) / 4).sum(-1) / diagonal2)
    return tuple(results)


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
    return _broadcast_overlaps(boxes1[:, None, :], boxes2[None, :, :], (mode,), eps)[0]


def batched_overlaps(
    anchors: Tensor, boxes: Tensor, mode: Mode = "iou", eps: float = 1e-6, anchor_areas: Tensor | None = None
) -> Tensor:
    """Overlap of every anchor with every box of every image: the values of
    :func:`pairwise_overlaps` (``anchors`` as ``boxes1``), laid out box-major.

    Args:
        anchors: ``[A, 4]``, the same for every image.
        boxes: ``[N, M, 4]``.
        mode: as in :func:`pairwise_overlaps` (``iof`` divides by the anchor's area).
        eps: as in :func:`pairwise_overlaps`.
        anchor_areas: ``[A]`` the anchors' areas (``AnchorGrid.areas``), when at hand.

    Returns:
        ``[N, M, A]``.
    """
    return _broadcast_overlaps(anchors, boxes[:, :, None, :], (mode,), eps, anchor_areas)[0]  # [A, 4] broadcasts


def batched_iou_and_diou(
    anchors: Tensor, boxes: Tensor, eps: float = 1e-6, anchor_areas: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`batched_overlaps` in modes ``iou`` and ``diou`` at once: two ``[N, M, A]``."""
    ious, dious = _broadcast_overlaps(anchors, boxes[:, :, None, :], ("iou", "diou"), eps, anchor_areas)
    return ious, dious


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
    return _broadcast_overlaps(boxes1, boxes2, (mode,), eps)[0]


def aligned_iou_and_giou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """:func:`aligned_overlaps` in modes ``iou`` and ``giou`` at once (boxes ``[..., 4]``)."""
    ious, gious = _broadcast_overlaps(boxes1, boxes2, ("iou", "giou"), eps)
    return ious, gious
