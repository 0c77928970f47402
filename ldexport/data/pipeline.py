"""The per-image pipeline of mmdet's LD configs: decode, keep-ratio resize, random flip.

Legend: ``M`` boxes, ``G`` ignore regions of one image. The pipeline keeps uint8
pixels; normalisation and padding happen when a batch is collated
(:mod:`ldexport.data.collate`), as mmdet's data preprocessor does them per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ldexport.data.image_io import read_image
from ldexport.data.records import ImageRecord
from ldexport.data.transforms import flip_boxes, resize_boxes, resize_image, rescale_size, sample_scale
from ldexport.errors import LdexportError


@dataclass(frozen=True)
class ImageMeta:
    """What it takes to map detections on the network input back to the image file.

    Attributes:
        image_id: the record's image id.
        path: the image file, as a string.
        original_size: ``(height, width)`` of the file.
        image_size: ``(height, width)`` after resizing, before padding.
        scale_factor: ``(w_scale, h_scale)``, resized over original size per axis
            (mmdet's ``scale_factor``).
        flipped: whether the image was flipped horizontally after resizing.
    """

    image_id: int
    path: str
    original_size: tuple[int, int]
    image_size: tuple[int, int]
    scale_factor: tuple[float, float]
    flipped: bool = False


@dataclass(eq=False)
class Sample:
    """One transformed image and its targets, in resized pixels.

    Attributes:
        image: ``[3, h, w]`` uint8 RGB.
        boxes: ``[M, 4]`` float32 xyxy.
        labels: ``[M]`` int64.
        ignore_boxes: ``[G, 4]`` float32 xyxy.
        meta: sizes and scale of this image.
    """

    image: Tensor
    boxes: Tensor
    labels: Tensor
    ignore_boxes: Tensor
    meta: ImageMeta


class DetectionTransform:
    """Keep-ratio resize (fixed or multi-scale) then random horizontal flip.

    The training pipeline of ``ld_r18-gflv1-r101_fpn_1x_coco.py`` is
    ``DetectionTransform(scale=(1333, 800), flip_prob=0.5)``; its test pipeline is
    ``DetectionTransform(scale=(1333, 800))``.

    Args:
        scale: ``(long, short)`` edge limits of mmdet's ``Resize``.
        scale_range: two scales to sample one between per image (mmdet's
            ``RandomResize``); replaces ``scale`` when given.
        flip_prob: probability of a horizontal flip.
    """

    def __init__(
        self,
        *,
        scale: tuple[int, int] = (1333, 800),
        scale_range: tuple[tuple[int, int], tuple[int, int]] | None = None,
        flip_prob: float = 0.0,
    ) -> None:
        if min(scale) <= 0 or (scale_range is not None and min(min(s) for s in scale_range) <= 0):
            raise LdexportError(f"resize scales must be positive, got {scale} and {scale_range}")
        if not 0.0 <= flip_prob <= 1.0:
            raise LdexportError(f"flip probability must be in [0, 1], got {flip_prob}")
        self.scale = tuple(scale)
        self.scale_range = scale_range
        self.flip_prob = flip_prob

    def __call__(
        self, record: ImageRecord, image: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> Sample:
        """Transforms one record.

        Args:
            record: the annotations, in original pixels.
            image: ``[3, H, W]`` uint8 RGB pixels of ``record``; read from
                ``record.path`` when ``None``.
            generator: the source of the random scale and flip; the global torch
                generator when ``None``.

        Raises:
            LdexportError: the image is unreadable or its size differs from the record's.
        """
        if image is None:
            image = read_image(record.path, channels_last=True)  # the resize reads it as decoded
        if tuple(image.shape[-2:]) != record.size:
            raise LdexportError(
                f"{record.path}: image is {image.shape[-1]}x{image.shape[-2]} (w x h) but its "
                f"annotations say {record.width}x{record.height}"
            )
        scale = sample_scale(self.scale_range, generator) if self.scale_range is not None else self.scale
        new_w, new_h, _ = rescale_size(record.width, record.height, scale)  # type: ignore[arg-type]
        # mmdet stores the per-axis ratio of the rounded size, not the factor itself.
        scale_factor = (new_w / record.width, new_h / record.height)
        image = resize_image(image, (new_h, new_w))
        boxes = resize_boxes(record.boxes, scale_factor, (new_h, new_w))
        ignore_boxes = resize_boxes(record.ignore_boxes, scale_factor, (new_h, new_w))
        flipped = self.flip_prob > 0 and bool(torch.rand((), generator=generator) < self.flip_prob)
        if flipped:
            image = image.flip(-1)
            boxes, ignore_boxes = flip_boxes(boxes, new_w), flip_boxes(ignore_boxes, new_w)
        meta = ImageMeta(
            image_id=record.image_id,
            path=str(record.path),
            original_size=record.size,
            image_size=(new_h, new_w),
            scale_factor=scale_factor,
            flipped=flipped,
        )
        return Sample(image, boxes, record.labels.clone(), ignore_boxes, meta)


def boxes_to_original(boxes: Tensor, meta: ImageMeta) -> Tensor:
    """Maps boxes on the (unpadded) network input back to the original image pixels.

    Undoes the flip, then divides by the scale factor as mmdet's ``rescale=True`` does
    (no clipping: boxes clipped to the resized image already lie inside the original).

    Args:
        boxes: ``[K, 4]`` xyxy in resized pixels.
        meta: the image's meta.

    Returns:
        ``[K, 4]`` xyxy in original pixels.
    """
    if meta.flipped:
        boxes = flip_boxes(boxes, meta.image_size[1])
    w_scale, h_scale = meta.scale_factor
    return boxes / boxes.new_tensor([w_scale, h_scale, w_scale, h_scale])
