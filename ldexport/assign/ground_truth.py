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
        image_sizes: ``[N, 2]`` float ``(h, w)`` of every image before padding.
    """

    boxes: Tensor
    labels: Tensor
    mask: Tensor
    ignore_boxes: Tensor
    ignore_mask: Tensor
    image_sizes: Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> GroundTruth:
        """A copy on ``device`` (``non_blocking`` copies never wait for the device)."""
        return GroundTruth(**{
            field.name: getattr(self, field.name).to(device, non_blocking=non_blocking) for field in fields(self)
        })  # fmt: skip

    @property
    def num_images(self) -> int:
        return self.boxes.shape[0]


def padded_count(count: int, minimum: int = 4) -> int:
    """``count`` rounded up to a power of two, at least ``minimum``."""
    size = minimum
    while size < count:
        size *= 2
    return size


def _pad(tensors: Sequence[Tensor], count: int, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """``N`` tensors ``[m_i, *shape]`` -> ``[N, count, *shape]``, zero-padded."""
    device = tensors[0].device if tensors else None
    filler = torch.zeros((count, *shape), dtype=dtype, device=device)  # pads every image to ``count``
    return pad_sequence([*(t.to(dtype).reshape(-1, *shape) for t in tensors), filler], batch_first=True)[:-1]


def pad_ground_truth(
    targets: Sequence[Mapping[str, Tensor]], image_sizes: Sequence[tuple[int, int]], *, minimum: int = 4
) -> GroundTruth:
    """Pads per-image targets into a :class:`GroundTruth` (on the targets' device).

    Args:
        targets: per image ``boxes [m, 4]``, ``labels [m]`` and optionally
            ``ignore_boxes [g, 4]``.
        image_sizes: ``(h, w)`` of every image before padding.
        minimum: smallest padded count (see :func:`padded_count`).
    """
    if len(targets) != len(image_sizes):
        raise ValueError(f"{len(targets)} targets for {len(image_sizes)} image sizes")
    empty = torch.zeros(0, 4)
    boxes = [t["boxes"] for t in targets]
    ignores = [t.get("ignore_boxes", empty) if t.get("ignore_boxes") is not None else empty for t in targets]
    count = padded_count(max((b.reshape(-1, 4).shape[0] for b in boxes), default=0), minimum)
    ignore_count = padded_count(max((b.reshape(-1, 4).shape[0] for b in ignores), default=0), 1)
    device = boxes[0].device if boxes else torch.device("cpu")
    ignores = [b.to(device) for b in ignores]
    return GroundTruth(
        boxes=_pad(boxes, count, (4,), torch.float32),
        labels=_pad([t["labels"] for t in targets], count, (), torch.int64),
        mask=_pad([torch.ones(b.reshape(-1, 4).shape[0], dtype=torch.bool, device=device) for b in boxes], count, (), torch.bool),
        ignore_boxes=_pad(ignores, ignore_count, (4,), torch.float32),
        ignore_mask=_pad(
            [torch.ones(b.reshape(-1, 4).shape[0], dtype=torch.bool, device=device) for b in ignores], ignore_count, (), torch.bool
        ),
        # built on the host and copied without waiting for the device
        image_sizes=torch.tensor([[float(h), float(w)] for h, w in image_sizes]).to(device, non_blocking=True),
    )
