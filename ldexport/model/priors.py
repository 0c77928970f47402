"""Anchors as mmdet's ``AnchorGenerator`` makes them for GFL.

GFL uses one square anchor per location, ``octave_base_scale * stride`` wide, centred on
``(x * stride, y * stride)`` (mmdet's ``center_offset=0``: the centre is the top-left
corner of the feature cell, not its middle). Its anchor centres are the points the head's
distances are measured from.

Legend: ``A_l = H_l * W_l`` anchors on level ``l``, row-major (x fastest).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def level_anchors(
    featmap_size: tuple[int, int],
    stride: int,
    octave_base_scale: float = 8.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Anchors of one level.

    Args:
        featmap_size: ``(H_l, W_l)``.
        stride: the level's stride in input pixels.
        octave_base_scale: anchor side in strides.

    Returns:
        ``[A_l, 4]`` xyxy anchors, row-major over the feature map.
    """
    height, width = featmap_size
    half = octave_base_scale * stride * 0.5
    shift_x = torch.arange(0, width, device=device).to(dtype) * stride
    shift_y = torch.arange(0, height, device=device).to(dtype) * stride
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    xx, yy = xx.reshape(-1), yy.reshape(-1)
    return torch.stack((xx - half, yy - half, xx + half, yy + half), dim=-1)


def grid_anchors(
    featmap_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    octave_base_scale: float = 8.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[Tensor]:
    """Anchors of every level, as a list of ``[A_l, 4]`` xyxy tensors."""
    return [
        level_anchors(size, stride, octave_base_scale, device, dtype)
        for size, stride in zip(featmap_sizes, strides)
    ]


def valid_flags(
    featmap_size: tuple[int, int], valid_size: tuple[int, int], device: torch.device | str | None = None
) -> Tensor:
    """Which anchors of a level lie on the valid (unpadded) part of its feature map.

    Args:
        featmap_size: ``(H_l, W_l)``.
        valid_size: ``(h, w)`` cells of the level that cover the image, padding excluded.

    Returns:
        ``[A_l]`` bool.
    """
    height, width = featmap_size
    valid_h, valid_w = valid_size
    valid_x = torch.zeros(width, dtype=torch.bool, device=device)
    valid_y = torch.zeros(height, dtype=torch.bool, device=device)
    valid_x[:valid_w] = True
    valid_y[:valid_h] = True
    return (valid_y[:, None] & valid_x[None, :]).reshape(-1)
