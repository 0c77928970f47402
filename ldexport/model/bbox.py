"""Box geometry shared by the head, the losses and the export.

Legend: ``A`` anchor points, ``R = reg_max + 1`` bins. Boxes are ``(x1, y1, x2, y2)`` in
input pixels; distances are ``(left, top, right, bottom)`` from a point to the box sides.
"""

from __future__ import annotations

import torch
from torch import Tensor


def anchor_centers(anchors: Tensor) -> Tensor:
    """Centres of xyxy anchors.

    Args:
        anchors: ``[..., 4]`` xyxy boxes.

    Returns:
        ``[..., 2]`` ``(cx, cy)``.
    """
    return torch.stack(
        ((anchors[..., 0] + anchors[..., 2]) / 2, (anchors[..., 1] + anchors[..., 3]) / 2), dim=-1
    )


def distance2bbox(points: Tensor, distance: Tensor, max_shape: tuple[int, int] | None = None) -> Tensor:
    """Boxes from points and their distances to the four sides.

    Args:
        points: ``[..., 2]`` ``(x, y)`` (broadcast against ``distance``).
        distance: ``[..., 4]`` ``(left, top, right, bottom)``, in pixels.
        max_shape: ``(height, width)`` to clip the boxes to, or ``None``.

    Returns:
        ``[..., 4]`` xyxy boxes.
    """
    if max_shape is None:  # the same arithmetic in four operations (the training step's form)
        left_top, right_bottom = distance.split(2, dim=-1)
        return torch.cat((points - left_top, points + right_bottom), dim=-1)
    x1 = points[..., 0] - distance[..., 0]
    y1 = points[..., 1] - distance[..., 1]
    x2 = points[..., 0] + distance[..., 2]
    y2 = points[..., 1] + distance[..., 3]
    height, width = max_shape
    x1 = x1.clamp(min=0, max=width)
    y1 = y1.clamp(min=0, max=height)
    x2 = x2.clamp(min=0, max=width)
    y2 = y2.clamp(min=0, max=height)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def bbox2distance(points: Tensor, boxes: Tensor, max_dis: float | None = None, eps: float = 0.1) -> Tensor:
    """Distances from points to the sides of boxes, the inverse of :func:`distance2bbox`.

    Args:
        points: ``[..., 2]``.
        boxes: ``[..., 4]`` xyxy.
        max_dis: upper clamp, ``reg_max`` in stride units for DFL targets.
        eps: keeps the clamped distance strictly below ``max_dis`` so that its right
            bin exists.

    Returns:
        ``[..., 4]`` ``(left, top, right, bottom)``.
    """
    top_left, bottom_right = boxes.split(2, dim=-1)
    distance = torch.cat((points - top_left, bottom_right - points), dim=-1)  # left, top, right, bottom
    if max_dis is not None:
        distance = distance.clamp(min=0, max=max_dis - eps)
    return distance


def box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """Pairwise IoU, batched over any leading dimensions.

    Args:
        boxes1: ``[..., M, 4]`` xyxy.
        boxes2: ``[..., K, 4]`` xyxy.

    Returns:
        ``[..., M, K]``.
    """
    # [..., M, 1] and [..., 1, K] coordinates: unbound once, each a broadcastable view
    x1a, y1a, x2a, y2a = boxes1.unsqueeze(-2).unbind(-1)
    x1b, y1b, x2b, y2b = boxes2.unsqueeze(-3).unbind(-1)
    area1 = (x2a - x1a) * (y2a - y1a)
    area2 = (x2b - x1b) * (y2b - y1b)
    # [..., M, K] each; x and y apart and in place: NMS builds these for thousands of boxes
    width = torch.min(x2a, x2b) - torch.max(x1a, x1b)
    height = torch.min(y2a, y2b) - torch.max(y1a, y1b)
    overlap = width.clamp_(min=0).mul_(height.clamp_(min=0))
    union = (area1 + area2).sub_(overlap)
    return overlap.div_(union.clamp_(min=eps))
