"""Batches: pad uint8 pixels to a multiple of 32, gather targets and metas; normalise on
the device.

A batch leaves the loader as uint8 (a quarter of float32's bytes to pin and copy);
:meth:`Batch.inputs` copies it to the device (``non_blocking`` from pinned memory) and
normalises it there, the one step between a batch and the network. For training, the
collator also pads the ground truth into the fixed-size tensors that assignment reads
(:class:`~ldexport.assign.ground_truth.GroundTruth`): in the loader's workers, not in the
training loop's thread, which then only copies it.

Legend: ``N`` images, ``M`` boxes, ``G`` ignore regions of one image. The batch format
is the one of ``docs/INTERNALS.md`` ("Batches and targets").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import get_worker_info

from ldexport.assign.ground_truth import GroundTruth, pad_ground_truth
from ldexport.data.pipeline import ImageMeta, Sample
from ldexport.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_batch, pad_images


@dataclass(eq=False)
class Batch:
    """One collated batch.

    Attributes:
        images: ``[N, 3, Hp, Wp]`` uint8 RGB, zero-padded at the bottom and right to
            multiples of the size divisor (:meth:`inputs` gives the network input).
        targets: ``N`` dicts with ``"boxes"`` ``[M, 4]`` float32 xyxy, ``"labels"``
            ``[M]`` int64 and ``"ignore_boxes"`` ``[G, 4]`` float32 xyxy, all in
            resized (input) pixels.
        image_sizes: ``N`` ``(h, w)`` of the resized images before padding.
        metas: ``N`` :class:`ImageMeta` (image id, scale factor, original size, flip).
        ground_truth: ``targets`` padded for assignment, when the collator was asked
            for it (``min_boxes``), else ``None``.
    """

    images: Tensor
    targets: list[dict[str, Tensor]]
    image_sizes: list[tuple[int, int]]
    metas: list[ImageMeta]
    ground_truth: GroundTruth | None = None

    def __len__(self) -> int:
        return len(self.metas)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch with its tensors on ``device``."""
        targets = [{k: v.to(device, non_blocking=non_blocking) for k, v in t.items()} for t in self.targets]
        truth = self.ground_truth.to(device, non_blocking=non_blocking) if self.ground_truth is not None else None
        images = self.images.to(device, non_blocking=non_blocking)
        return Batch(images, targets, self.image_sizes, self.metas, truth)

    def inputs(
        self,
        device: torch.device | str,
        *,
        channels_last: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> tuple[Tensor, list[dict[str, Tensor]]]:
        """The network input and the targets on ``device``.

        The uint8 pixels and the targets are copied ``non_blocking`` (asynchronous from
        pinned memory), then normalised and padded as mmdet's data preprocessor does,
        on the device.

        Returns:
            ``images [N, 3, Hp, Wp]`` float32 normalised RGB, 0 in the padding; the targets.
        """
        moved = self.to(device, non_blocking=True)
        images = normalize_batch(moved.images, self.image_sizes, mean=mean, std=std, channels_last=channels_last)
        return images, moved.targets

    def pin_memory(self) -> Batch:
        """The batch in pinned memory (called by ``DataLoader(pin_memory=True)``)."""
        targets = [{k: v.pin_memory() for k, v in t.items()} for t in self.targets]
        truth = self.ground_truth.pin_memory() if self.ground_truth is not None else None
        return Batch(self.images.pin_memory(), targets, self.image_sizes, self.metas, truth)


class BatchCollator:
    """``collate_fn`` that pads uint8 images with 0 to the batch's size, rounded up.

    Normalisation happens on the device (:meth:`Batch.inputs`), after the copy.

    Args:
        size_divisor: the padded sizes are multiples of it.
        min_boxes: when given, the batch also carries its ground truth padded for
            assignment, to at least this many boxes (``Batch.ground_truth``).
    """

    def __init__(self, *, size_divisor: int = 32, min_boxes: int | None = None) -> None:
        self.size_divisor = size_divisor
        self.min_boxes = min_boxes

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        # in a loader worker, built where the main process reads it (no copy at the hand-over)
        in_worker = get_worker_info() is not None
        images = pad_images([s.image for s in samples], self.size_divisor, shared=in_worker)
        targets = [
            {"boxes": s.boxes, "labels": s.labels, "ignore_boxes": s.ignore_boxes} for s in samples
        ]
        sizes = [s.meta.image_size for s in samples]
        truth = None
        if self.min_boxes is not None:
            truth = pad_ground_truth(targets, sizes, minimum=self.min_boxes, size_divisor=self.size_divisor)
        return Batch(images, targets, sizes, [s.meta for s in samples], truth)
