"""The ground truth of a batch as fixed-size tensors: every image's boxes padded to one
count, with a validity mask, so that assignment and losses run on the whole batch at once
(ultralytics' ``TaskAlignedAssigner`` takes its targets the same way) with no per-image
loop and no data-dependent shape.

The padded count is rounded up to a power of two (:func:`padded_count`), so that batches
with similar box counts share one shape and a compiled step is reused.

Legend: ``N`` images, ``M`` boxes per image after padding, ``G`` ignore (crowd) boxes per
image after padding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence


@dataclass
class GroundTruth:
    """Padded ground truth of ``N`` images.

    Attributes:
        boxes: ``[N, M, 4]`` xyxy input pixels; zeros where padded.
        labels: ``[N, M]`` int64; 0 where padded.
        mask: ``[N, M]`` bool, ``True`` for a real box.
        ignore_boxes: ``[N, G, 4]`` crowd regions; zeros where padded.
        ignore_mask: ``[N, G]`` bool.
        pad_shapes: ``[N, 2]`` float ``(h, w)`` of every image rounded up to the size
            divisor: mmdet's ``pad_shape``, which decides the anchors assigned
            (:func:`~ldexport.losses.gfl_targets.valid_anchors`).
    """

    boxes: Tensor
    labels: Tensor
    mask: Tensor
    ignore_boxes: Tensor
    ignore_mask: Tensor
    pad_shapes: Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> GroundTruth:
        """A copy on ``device`` (``non_blocking`` copies never wait for the device)."""
        return GroundTruth(**{
            field.name: getattr(self, field.name).to(device, non_blocking=non_blocking) for field in fields(self)
        })  # fmt: skip

    def pin_memory(self) -> GroundTruth:
        """A copy in pinned memory, for ``non_blocking`` copies to a GPU."""
        return GroundTruth(**{field.name: getattr(self, field.name).pin_memory() for field in fields(self)})


def padded_count(count: int, minimum: int = 4) -> int:
    """``count`` rounded up to a power of two, at least ``minimum``."""
    size = minimum
    while size < count:
        size *= 2
    return size


def _pad(tensors: Sequence[Tensor], count: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``N`` tensors ``[m_i, width]`` (or ``[m_i]`` for width 0) -> ``[N, count, width]``
    (``[N, count]``), zero-padded."""
    shape = (count, width) if width else (count,)
    rows = [t if t.dtype == dtype and t.dim() == len(shape) else t.to(dtype).reshape(-1, *shape[1:]) for t in tensors]
    filler = torch.zeros(shape, dtype=dtype, device=device)  # pads every image to ``count``
    return pad_sequence([*rows, filler], batch_first=True)[:-1]


def pad_ground_truth(
    targets: Sequence[Mapping[str, Tensor]],
    image_sizes: Sequence[tuple[int, int]],
    *,
    minimum: int = 4,
    size_divisor: int = 32,
) -> GroundTruth:
    """Pads per-image targets into a :class:`GroundTruth` (on the targets' device).

    Args:
        targets: per image ``boxes [m, 4]``, ``labels [m]`` and optionally
            ``ignore_boxes [g, 4]``.
        image_sizes: ``(h, w)`` of every image before padding.
        minimum: smallest padded count (see :func:`padded_count`).
        size_divisor: images are padded to multiples of it (mmdet's ``pad_size_divisor``).
    """
    if len(targets) != len(image_sizes) or not targets:
        raise ValueError(f"{len(targets)} targets for {len(image_sizes)} image sizes")
    device = targets[0]["boxes"].device
    counts = [t["boxes"].numel() // 4 for t in targets]
    count = padded_count(max(counts), minimum)
    no_boxes = torch.zeros(0, 4, device=device)
    ignores = [t["ignore_boxes"] if t.get("ignore_boxes") is not None else no_boxes for t in targets]
    ignore_counts = [b.numel() // 4 for b in ignores]
    ignore_boxes = _pad(ignores, padded_count(max(ignore_counts), 1), 4, torch.float32, device)
    # the counts and sizes are host values: one small tensor, copied without waiting for the device
    rows = [
        [-(-int(h) // size_divisor) * size_divisor, -(-int(w) // size_divisor) * size_divisor, n, g]
        for (h, w), n, g in zip(image_sizes, counts, ignore_counts)
    ]
    host = torch.tensor(rows, dtype=torch.float32)
    host = host.to(device, non_blocking=True)  # [N, 4]
    return GroundTruth(
        boxes=_pad([t["boxes"] for t in targets], count, 4, torch.float32, device),
        labels=_pad([t["labels"] for t in targets], count, 0, torch.int64, device),
        mask=torch.arange(count, device=device) < host[:, 2:3],
        ignore_boxes=ignore_boxes,
        ignore_mask=torch.arange(ignore_boxes.shape[1], device=device) < host[:, 3:4],
        pad_shapes=host[:, :2],
    )
