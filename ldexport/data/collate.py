"""Batches: normalise, pad to a multiple of 32, and gather targets and metas.

Legend: ``N`` images, ``M`` boxes, ``G`` ignore regions of one image. The batch format
is the one of ``docs/INTERNALS.md`` ("Batches and targets").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ldexport.data.pipeline import ImageMeta, Sample
from ldexport.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, pad_images


@dataclass(eq=False)
class Batch:
    """One collated batch.

    Attributes:
        images: ``[N, 3, Hp, Wp]`` float32, normalised RGB, zero-padded at the bottom
            and right to multiples of the size divisor.
        targets: ``N`` dicts with ``"boxes"`` ``[M, 4]`` float32 xyxy, ``"labels"``
            ``[M]`` int64 and ``"ignore_boxes"`` ``[G, 4]`` float32 xyxy, all in
            resized (input) pixels.
        image_sizes: ``N`` ``(h, w)`` of the resized images before padding.
        metas: ``N`` :class:`ImageMeta` (image id, scale factor, original size, flip).
    """

    images: Tensor
    targets: list[dict[str, Tensor]]
    image_sizes: list[tuple[int, int]]
    metas: list[ImageMeta]

    def __len__(self) -> int:
        return len(self.metas)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch with its tensors on ``device``."""
        targets = [{k: v.to(device, non_blocking=non_blocking) for k, v in t.items()} for t in self.targets]
        return Batch(self.images.to(device, non_blocking=non_blocking), targets, self.image_sizes, self.metas)

    def pin_memory(self) -> Batch:
        """The batch in pinned memory (called by ``DataLoader(pin_memory=True)``)."""
        targets = [{k: v.pin_memory() for k, v in t.items()} for t in self.targets]
        return Batch(self.images.pin_memory(), targets, self.image_sizes, self.metas)


class BatchCollator:
    """``collate_fn`` that normalises and pads as mmdet's ``DetDataPreprocessor``.

    Each image is normalised with ``(pixel - mean) / std`` in RGB, then the batch is
    padded with 0 to its largest height and width rounded up to ``size_divisor``.

    Args:
        mean: RGB means, 0..255.
        std: RGB standard deviations, 0..255.
        size_divisor: the padded sizes are multiples of it.
    """

    def __init__(
        self,
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        size_divisor: int = 32,
    ) -> None:
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.size_divisor = size_divisor

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        images = pad_images([normalize(s.image, self.mean, self.std) for s in samples], self.size_divisor)
        targets = [
            {"boxes": s.boxes, "labels": s.labels, "ignore_boxes": s.ignore_boxes} for s in samples
        ]
        return Batch(images, targets, [s.meta.image_size for s in samples], [s.meta for s in samples])
