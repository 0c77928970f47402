"""Non-maximum suppression in pure PyTorch, with mmcv's semantics.

mmcv's ``nms`` keeps a box unless a higher-scoring kept box overlaps it with IoU strictly
greater than the threshold (areas without the legacy +1), and returns the kept indices in
descending score order. ``batched_nms`` makes it class-aware by shifting each class's
boxes by ``label * (max_coordinate + 1)``, exactly as mmcv does, so that borderline
overlaps round the same way.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ldexport.model.bbox import box_iou


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS.

    Args:
        boxes: ``[K, 4]`` xyxy.
        scores: ``[K]``.
        iou_threshold: overlaps above this suppress.

    Returns:
        ``[K']`` int64 indices into ``boxes``, by descending score.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.sort(descending=True).indices
    sorted_boxes = boxes[order]
    # [K, K]: does the row box (higher score) suppress the column box?
    suppresses = (box_iou(sorted_boxes, sorted_boxes, eps=0.0) > iou_threshold).cpu().numpy()
    removed = np.zeros(len(order), dtype=bool)
    keep = []
    for index in range(len(order)):
        if removed[index]:
            continue
        keep.append(index)
        removed |= suppresses[index]
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS: boxes of different labels never suppress each other.

    Args:
        boxes: ``[K, 4]``; scores: ``[K]``; labels: ``[K]`` int64.

    Returns:
        ``[K']`` kept indices by descending score.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    offsets = labels.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)
