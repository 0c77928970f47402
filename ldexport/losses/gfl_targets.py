"""Training targets of the GFL head, as mmdet 3.3's ``GFLHead.get_targets`` builds them.

Per image: anchors outside the image's padded extent are invalid (mmdet's valid flags,
computed from ``pad_shape``, the image size rounded up to ``pad_size_divisor``; GFL's
``allowed_border=-1`` keeps every valid anchor); ATSS assigns the valid ones; positives
get their box's label and box, weight 1; negatives weight 1; ignored and invalid anchors
weight 0 and the background label ``C``.

Legend: ``N`` images, ``L`` levels, ``A_l`` anchors of level ``l`` (all of the padded
batch's feature map), ``A = sum_l A_l``, ``M`` boxes of one image, ``C`` classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ldexport.assign.atss import atss_assign, vlr_region
from ldexport.model.priors import valid_flags


@dataclass
class GFLTargets:
    """Targets of a batch, split by level.

    Attributes:
        labels: per level ``[N, A_l]`` int64; ``C`` for background, ignored or invalid.
        label_weights: per level ``[N, A_l]`` float QFL weights.
        bbox_targets: per level ``[N, A_l, 4]`` xyxy boxes in pixels; 0 off positives.
        vlr_weights: per level ``[N, A_l]`` VLR weights, or ``None`` when not requested.
        num_pos: mmdet's ``avg_factor`` before reduction: the sum over images of
            ``max(positives of the image, 1)``.
    """

    labels: list[Tensor]
    label_weights: list[Tensor]
    bbox_targets: list[Tensor]
    vlr_weights: list[Tensor] | None
    num_pos: int


def _ceil_div(value: int, divisor: int) -> int:
    return -(-int(value) // int(divisor))


def image_valid_flags(
    featmap_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    image_size: tuple[int, int],
    pad_size_divisor: int,
    device: torch.device | str | None = None,
) -> Tensor:
    """mmdet's valid flags of one image, levels concatenated.

    Args:
        featmap_sizes: ``(H_l, W_l)`` of every level (of the padded batch).
        strides: stride of every level.
        image_size: ``(h, w)`` of the unpadded image.
        pad_size_divisor: mmdet's ``DetDataPreprocessor.pad_size_divisor``; the image's
            ``pad_shape`` is its size rounded up to a multiple of it.

    Returns:
        ``[A]`` bool.
    """
    pad_h = _ceil_div(image_size[0], pad_size_divisor) * pad_size_divisor
    pad_w = _ceil_div(image_size[1], pad_size_divisor) * pad_size_divisor
    flags = []
    for (feat_h, feat_w), stride in zip(featmap_sizes, strides):
        valid_size = (min(_ceil_div(pad_h, stride), feat_h), min(_ceil_div(pad_w, stride), feat_w))
        flags.append(valid_flags((feat_h, feat_w), valid_size, device))
    return torch.cat(flags)


def _image_targets(
    anchors: Tensor,
    valid: Tensor,
    num_level_anchors: Sequence[int],
    target: Mapping[str, Tensor],
    num_classes: int,
    topk: int,
    ignore_iof_thr: float,
    with_vlr: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, int]:
    """Targets of one image over all ``A`` anchors: labels ``[A]``, label weights ``[A]``,
    box targets ``[A, 4]``, VLR weights ``[A]`` or ``None``, and its positive count."""
    gt_boxes = target["boxes"].to(anchors).reshape(-1, 4)
    gt_labels = target["labels"].to(anchors.device).reshape(-1)
    ignore_boxes = target.get("ignore_boxes")
    if ignore_boxes is not None:
        ignore_boxes = ignore_boxes.to(anchors).reshape(-1, 4)
    inside = anchors[valid]  # [A_v, 4]
    num_level_inside = [int(flags.sum()) for flags in torch.split(valid, list(num_level_anchors))]
    gt_index = atss_assign(
        inside, num_level_inside, gt_boxes, topk=topk, ignore_boxes=ignore_boxes, ignore_iof_thr=ignore_iof_thr
    )
    pos = (gt_index >= 0).nonzero().squeeze(1)
    neg = (gt_index == -1).nonzero().squeeze(1)

    labels = torch.full((anchors.shape[0],), num_classes, dtype=torch.long, device=anchors.device)
    label_weights = anchors.new_zeros(anchors.shape[0])
    bbox_targets = torch.zeros_like(anchors)
    valid_index = valid.nonzero().squeeze(1)  # [A_v] positions of the valid anchors in A
    labels[valid_index[pos]] = gt_labels[gt_index[pos]]
    label_weights[valid_index[pos]] = 1.0
    label_weights[valid_index[neg]] = 1.0
    bbox_targets[valid_index[pos]] = gt_boxes[gt_index[pos]]
    vlr = None
    if with_vlr:
        vlr = anchors.new_zeros(anchors.shape[0])
        vlr[valid_index] = vlr_region(
            inside, num_level_inside, gt_boxes, topk=topk, ignore_boxes=ignore_boxes, ignore_iof_thr=ignore_iof_thr
        )
    return labels, label_weights, bbox_targets, vlr, pos.numel()


def _split_levels(per_image: list[Tensor], num_level_anchors: Sequence[int]) -> list[Tensor]:
    """``N`` tensors ``[A, ...]`` -> ``L`` tensors ``[N, A_l, ...]``."""
    return list(torch.stack(per_image).split(list(num_level_anchors), dim=1))


def build_gfl_targets(
    anchors: Sequence[Tensor],
    featmap_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    targets: Sequence[Mapping[str, Tensor]],
    image_sizes: Sequence[tuple[int, int]],
    *,
    num_classes: int,
    topk: int = 9,
    ignore_iof_thr: float = -1.0,
    pad_size_divisor: int = 32,
    with_vlr: bool = False,
) -> GFLTargets:
    """Targets of a batch.

    Args:
        anchors: per level ``[A_l, 4]`` xyxy anchors, the same for every image.
        featmap_sizes: ``(H_l, W_l)`` of every level.
        strides: stride of every level.
        targets: per image ``boxes [M, 4]``, ``labels [M]``, optional ``ignore_boxes``.
        image_sizes: ``(h, w)`` of every unpadded image.
        num_classes: ``C``.
        topk: ATSS candidates per level.
        ignore_iof_thr: IoF with an ignore box above which an anchor is ignored (> 0
            enables; mmdet's default -1 leaves ignore boxes unused).
        pad_size_divisor: as in :func:`image_valid_flags`.
        with_vlr: also compute VLR weights.
    """
    num_level_anchors = [level.shape[0] for level in anchors]
    flat_anchors = torch.cat(list(anchors))
    per_image = []
    for target, image_size in zip(targets, image_sizes, strict=True):
        valid = image_valid_flags(featmap_sizes, strides, image_size, pad_size_divisor, flat_anchors.device)
        per_image.append(_image_targets(
            flat_anchors, valid, num_level_anchors, target, num_classes, topk, ignore_iof_thr, with_vlr
        ))
    labels, label_weights, bbox_targets, vlr, num_pos = zip(*per_image)
    return GFLTargets(
        labels=_split_levels(list(labels), num_level_anchors),
        label_weights=_split_levels(list(label_weights), num_level_anchors),
        bbox_targets=_split_levels(list(bbox_targets), num_level_anchors),
        vlr_weights=_split_levels(list(vlr), num_level_anchors) if with_vlr else None,
        num_pos=sum(max(count, 1) for count in num_pos),
    )
