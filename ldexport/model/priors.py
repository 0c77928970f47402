"""Anchors as mmdet's ``AnchorGenerator`` makes them for GFL.

GFL uses one square anchor per location, ``octave_base_scale * stride`` wide, centred on
``(x * stride, y * stride)`` (mmdet's ``center_offset=0``: the centre is the top-left
corner of the feature cell, not its middle). Its anchor centres are the points the head's
distances are measured from.

Legend: ``A_l = H_l * W_l`` anchors on level ``l``, row-major (x fastest); ``A = sum_l
A_l`` of all levels, concatenated in level order; ``L`` levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ldexport.model.bbox import anchor_centers


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


@dataclass(frozen=True)
class AnchorPoints:
    """The points a head's distances are measured from, for one set of feature-map sizes.

    Attributes:
        points: ``[A, 2]`` anchor centres ``(x, y)`` in input pixels, levels concatenated.
        level_strides: ``[L]`` float, the stride of each level.
        level_starts: ``[L]`` int64, the index in ``points`` of each level's first point.
        num_level_points: ``A_l`` of every level.
    """

    points: Tensor
    level_strides: Tensor
    level_starts: Tensor
    num_level_points: tuple[int, ...]


def anchor_points(
    featmap_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    octave_base_scale: float = 8.0,
    device: torch.device | str | None = None,
) -> AnchorPoints:
    """The :class:`AnchorPoints` of feature maps of ``featmap_sizes`` (``(H_l, W_l)``).

    The centres are those of :func:`grid_anchors` (the same float32 values), and a float
    stride holds an integer exactly, so ``distance * level_strides[l]`` has the bits of
    ``distance * stride`` with the Python integer.
    """
    levels = grid_anchors(featmap_sizes, strides, octave_base_scale, device=device)
    counts = tuple(len(level) for level in levels)
    starts = [sum(counts[:index]) for index in range(len(counts))]
    return AnchorPoints(
        points=anchor_centers(torch.cat(levels)),
        level_strides=torch.tensor([float(s) for s in strides[: len(counts)]], device=device),
        level_starts=torch.tensor(starts, dtype=torch.long, device=device),
        num_level_points=counts,
    )


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
