"""Training targets of the GFL head, as mmdet 3.3's ``GFLHead.get_targets`` builds them,
for the whole batch at once in one flat ``[N, A]`` layout (the layout of the losses).

Per image: anchors outside the image's padded extent are invalid (mmdet's valid flags,
computed from ``pad_shape``, the image size rounded up to ``pad_size_divisor``; GFL's
``allowed_border=-1`` keeps every valid anchor); ATSS assigns the valid ones; positives
get their box's label and box, weight 1; negatives weight 1; ignored and invalid anchors
weight 0 and the background label ``C``.

Legend: ``N`` images, ``L`` levels, ``A_l`` anchors of level ``l`` (all of the padded
batch's feature map), ``A = sum_l A_l`` (levels concatenated in order, each row-major),
``M`` boxes per image (padded), ``C`` classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ldexport.assign.atss import atss_assign, vlr_region
from ldexport.assign.ground_truth import GroundTruth
from ldexport.model.priors import AnchorGrid


def valid_anchors(grid: AnchorGrid, pad_shapes: Tensor) -> Tensor:
    """mmdet's valid flags of every image.

    An anchor is valid when its cell lies within the image's ``pad_shape`` (its size
    rounded up to ``pad_size_divisor``, mmdet's ``DetDataPreprocessor``) at its level's
    stride, rounding up: ``row < ceil(pad_h / stride)`` and ``column < ceil(pad_w /
    stride)``; the batch's padding beyond that is invalid. For an integer row that is
    ``row * stride < pad_h``, which is what is computed (exactly: integers, and sizes far
    below 2**24).

    Args:
        grid: the batch's anchors.
        pad_shapes: ``[N, 2]`` ``(h, w)`` of every image rounded up to the size
            divisor (``GroundTruth.pad_shapes``).

    Returns:
        ``[N, A]`` bool.
    """
    return (grid.origins < pad_shapes[:, None, :]).all(dim=-1)


@dataclass
class GFLTargets:
    """Targets of a batch, one row per image and anchor.

    Attributes:
        labels: ``[N, A]`` int64; ``C`` for background, ignored or invalid.
        positive: ``[N, A]`` bool.
        label_weights: ``[N, A]`` float QFL weights.
        bbox_targets: ``[N, A, 4]`` xyxy boxes in pixels, the box of each anchor's
            ``gt_index``: meaningful on positives only (mmdet's are 0 elsewhere; every
            term here weighs the other anchors 0, so they are left as gathered).
        vlr_weights: ``[N, A]`` VLR weights, or ``None`` when not requested.
        num_pos: scalar float tensor, mmdet's ``avg_factor`` before reduction: the sum
            over images of ``max(positives of the image, 1)``.
    """

    labels: Tensor
    positive: Tensor
    label_weights: Tensor
    bbox_targets: Tensor
    vlr_weights: Tensor | None
    num_pos: Tensor


def build_gfl_targets(
    grid: AnchorGrid,
    gt: GroundTruth,
    *,
    num_classes: int,
    topk: int = 9,
    ignore_iof_thr: float = -1.0,
    with_vlr: bool = False,
) -> GFLTargets:
    """Targets of a batch.

    Args:
        grid: the batch's anchors.
        gt: the padded ground truth, on the anchors' device.
        num_classes: ``C``.
        topk: ATSS candidates per level.
        ignore_iof_thr: IoF with an ignore box above which an anchor is ignored (> 0
            enables; mmdet's default -1 leaves ignore boxes unused).
        with_vlr: also compute VLR weights.
    """
    valid = valid_anchors(grid, gt.pad_shapes)  # [N, A]
    assignment = atss_assign(
        grid.anchors, grid.num_level_anchors, valid, gt, topk=topk, ignore_iof_thr=ignore_iof_thr, with_diou=with_vlr,
        points=grid.points, areas=grid.areas,
    )
    positive = assignment.positive  # [N, A], valid anchors only
    index = assignment.gt_index  # [N, A]
    labels = torch.where(positive, gt.labels.gather(1, index), num_classes)
    return GFLTargets(
        labels=labels,
        positive=positive,
        label_weights=(valid if assignment.ignored is None else valid & ~assignment.ignored).float(),
        bbox_targets=gt.boxes.gather(1, index[..., None].expand(-1, -1, 4)),
        vlr_weights=vlr_region(grid.anchors, valid, gt, assignment) if with_vlr else None,
        num_pos=positive.sum(1, dtype=torch.float32).clamp(min=1).sum(),
    )
