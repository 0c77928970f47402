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
class AnchorGrid:
    """The anchors of a pyramid's feature maps, flat (levels concatenated), with what
    training's assignment and losses and test-time decoding read of them: one owner for
    both, built once per feature-map sizes and device by whoever caches it (the head for
    decoding, the criterion for training).

    Attributes:
        anchors: ``[A, 4]`` xyxy pixels.
        points: ``[A, 2]`` anchor centres ``(x, y)`` in pixels (as mmdet's ATSS and its
            decoding compute them: the same float32 values).
        areas: ``[A]`` anchor areas (width times height, as the overlaps compute them).
        centers: ``[A, 2]`` anchor centres in units of their level's stride (where GFL's
            losses decode distances from).
        strides: ``[A, 1]`` the stride of each anchor's level (a column: it divides
            ``[..., A, 2]`` points and ``[..., A, 4]`` boxes as it is).
        levels: ``[A]`` int64 level index.
        origins: ``[A, 2]`` float ``(row, column)`` of the anchor's cell on its level's
            grid times the level's stride: the anchor centre in ``(y, x)`` order, the
            order of image sizes.
        level_strides: ``[L]`` float, the stride of each level (a float holds an integer
            stride exactly: ``distance * level_strides[l]`` has the bits of ``distance *
            stride``).
        level_starts: ``[L]`` int64, the index in ``A`` of each level's first anchor.
        num_level_anchors: ``A_l`` of every level.
    """

    anchors: Tensor
    points: Tensor
    areas: Tensor
    centers: Tensor
    strides: Tensor
    levels: Tensor
    origins: Tensor
    level_strides: Tensor
    level_starts: Tensor
    num_level_anchors: tuple[int, ...]


def flatten_levels(maps: Sequence[Tensor]) -> Tensor:
    """Per level ``[N, X, H_l, W_l]`` -> ``[N, A, X]`` in :class:`AnchorGrid`'s layout:
    levels concatenated, each row-major.

    The result is a transposed view of one contiguous ``[N, X, A]`` copy (element-wise
    operations and reductions read it as it is; a ``reshape`` copies where it must). The
    training step counts its operations: making it contiguous would cost one more copy,
    and concatenating the levels' transposed views four more operations a call."""
    return torch.cat([level.flatten(2) for level in maps], dim=2).transpose(1, 2)


def anchor_grid(
    featmap_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    octave_base_scale: float = 8.0,
    device: torch.device | str | None = None,
) -> AnchorGrid:
    """The :class:`AnchorGrid` of feature maps of ``featmap_sizes`` (``(H_l, W_l)``)."""
    levels = grid_anchors(featmap_sizes, strides, octave_base_scale, device=device)
    counts = tuple(len(level) for level in levels)
    anchors = torch.cat(levels)
    stride = torch.cat([torch.full((count,), float(s), device=device) for count, s in zip(counts, strides)])
    cells = torch.cat([
        torch.stack(torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"), -1)
        .reshape(-1, 2)
        for h, w in featmap_sizes
    ]).float()  # fmt: skip
    points = anchor_centers(anchors)
    return AnchorGrid(
        anchors=anchors,
        points=points,
        areas=(anchors[:, 2:] - anchors[:, :2]).prod(-1),
        centers=points / stride[:, None],  # as mmdet's GFL head computes them
        strides=stride[:, None],
        levels=torch.cat([torch.full((count,), i, device=device) for i, count in enumerate(counts)]),
        origins=cells * stride[:, None],
        level_strides=torch.tensor([float(s) for s in strides[: len(counts)]], device=device),
        level_starts=torch.tensor([sum(counts[:i]) for i in range(len(counts))], dtype=torch.long, device=device),
        num_level_anchors=counts,
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
