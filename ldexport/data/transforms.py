"""Image and box transforms with the numerics of mmdet 3.3's LD pipeline.

``Resize(scale=(1333, 800), keep_ratio=True)`` -> :func:`rescale_size`,
:func:`resize_image`, :func:`resize_boxes`; ``RandomResize`` -> :func:`sample_scale`;
``RandomFlip`` -> :func:`flip_boxes`; ``DetDataPreprocessor(mean, std,
bgr_to_rgb=True, pad_size_divisor=32)`` -> :func:`normalize`, :func:`pad_images` (the
loaders pad uint8 pixels) and :func:`normalize_batch` (on the device).
Images are ``[3, H, W]`` RGB; boxes are ``[M, 4]`` xyxy pixels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (123.675, 116.28, 103.53)
"""RGB means of mmdet's data preprocessor, in 0..255 pixels."""
IMAGENET_STD = (58.395, 57.12, 57.375)
"""RGB standard deviations of mmdet's data preprocessor, in 0..255 pixels."""


def rescale_size(width: int, height: int, scale: tuple[int, int]) -> tuple[int, int, float]:
    """The keep-ratio size that fits ``scale``, as ``mmcv.rescale_size`` computes it.

    The factor makes the long side at most ``max(scale)`` and the short side at most
    ``min(scale)``; each side becomes ``int(side * factor + 0.5)``.

    Args:
        width: original width.
        height: original height.
        scale: ``(long, short)`` edge limits, in either order, e.g. ``(1333, 800)``.

    Returns:
        ``(new_width, new_height, factor)``.
    """
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(width * float(factor) + 0.5), int(height * float(factor) + 0.5), factor


def sample_scale(
    scale_range: tuple[tuple[int, int], tuple[int, int]], generator: torch.Generator | None = None
) -> tuple[int, int]:
    """A random scale between two, as mmcv's ``RandomResize`` samples a scale list.

    Each edge is drawn uniformly from the integers between the two scales' edges,
    both ends included: ``((1333, 640), (1333, 800))`` gives ``(1333, 640..800)``.

    Args:
        scale_range: two ``(long, short)`` scales.
        generator: the random source; the global torch one when ``None`` (seeded per
            DataLoader worker).

    Returns:
        One ``(long, short)`` scale for :func:`rescale_size`.
    """
    (a0, a1), (b0, b1) = scale_range
    edge0 = torch.randint(min(a0, b0), max(a0, b0) + 1, (), generator=generator)
    edge1 = torch.randint(min(a1, b1), max(a1, b1) + 1, (), generator=generator)
    return int(edge0), int(edge1)


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize with OpenCV's ``INTER_LINEAR`` sampling (half-pixel centres, no
    antialiasing), in uint8; within 1 grey level of ``cv2.resize``.

    torch's uint8 kernel (fixed-point weights, as OpenCV's) runs about 7x faster in a
    loader worker than interpolating a float copy and rounding back.

    Args:
        image: ``[3, H, W]`` uint8.
        size: ``(new_height, new_width)``.

    Returns:
        ``[3, new_height, new_width]`` uint8.
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def resize_boxes(boxes: Tensor, scale_factor: tuple[float, float], image_size: tuple[int, int]) -> Tensor:
    """Scales boxes to a resized image and clips them to it (mmdet ``clip_object_border``).

    Args:
        boxes: ``[M, 4]`` xyxy in original pixels.
        scale_factor: ``(w_scale, h_scale)``, new size over old size per axis.
        image_size: ``(height, width)`` of the resized image.

    Returns:
        ``[M, 4]`` xyxy in resized pixels.
    """
    w_scale, h_scale = scale_factor
    height, width = image_size
    scaled = boxes * boxes.new_tensor([w_scale, h_scale, w_scale, h_scale])
    scaled[:, 0::2] = scaled[:, 0::2].clamp(0, width)
    scaled[:, 1::2] = scaled[:, 1::2].clamp(0, height)
    return scaled


def flip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Horizontal flip of boxes, as mmdet's ``HorizontalBoxes.flip_``: ``x1' = w - x2``.

    Args:
        boxes: ``[M, 4]`` xyxy.
        width: the image width.

    Returns:
        ``[M, 4]`` xyxy in the flipped image.
    """
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


def normalize(
    image: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Tensor:
    """``(pixel - mean) / std`` per RGB channel, in float32.

    Args:
        image: ``[3, H, W]`` (or ``[N, 3, H, W]``) RGB, 0..255.
        mean: three RGB means.
        std: three RGB standard deviations.

    Returns:
        Same shape, float32.
    """
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (image.float() - mean_t) / std_t


def normalize_batch(
    images: Tensor,
    image_sizes: Sequence[tuple[int, int]],
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    channels_last: bool = False,
) -> Tensor:
    """A padded uint8 batch as the network input, on the batch's device.

    Equal to :func:`normalize` of each image followed by :func:`pad_images` with 0 (mmdet's
    ``DetDataPreprocessor``), but one quarter of the bytes cross to the GPU and the
    arithmetic runs there.

    Args:
        images: ``[N, 3, Hp, Wp]`` uint8 RGB, each image at the top left.
        image_sizes: ``N`` ``(h, w)`` of the images before padding.
        mean: three RGB means.
        std: three RGB standard deviations.
        channels_last: return the channels-last memory format.

    Returns:
        ``[N, 3, Hp, Wp]`` float32, normalised, 0 in the padding.
    """
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    mean_t, std_t = _channel_stats(tuple(mean), tuple(std), images.device)
    batch = (images.float() - mean_t) / std_t
    height, width = batch.shape[-2:]
    for out, (h, w) in zip(batch, image_sizes):
        # a few fills of the padding, no read-back
        if h < height:
            out[:, h:].zero_()
        if w < width:
            out[:, :h, w:].zero_()
    return batch


@functools.lru_cache(maxsize=8)
def _channel_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """``[1, 3, 1, 1]`` float32 mean and std on ``device``, copied there once."""
    return (
        torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).to(device),
        torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1).to(device),
    )


def padded_size(sizes: Sequence[tuple[int, int]], size_divisor: int = 32) -> tuple[int, int]:
    """The largest ``(height, width)`` of ``sizes``, each rounded up to ``size_divisor``."""
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    return -(-height // size_divisor) * size_divisor, -(-width // size_divisor) * size_divisor


def pad_images(
    images: Sequence[Tensor], size_divisor: int = 32, pad_value: float = 0.0, *, shared: bool = False
) -> Tensor:
    """Stacks images into one batch padded at the bottom and right.

    mmdet's ``DetDataPreprocessor`` pads the normalised images with 0, so padding
    normalised images with the default ``pad_value`` reproduces it.

    Args:
        images: ``N`` tensors ``[3, h_i, w_i]``.
        size_divisor: the padded height and width are multiples of it.
        pad_value: the value of the padding.
        shared: build the batch in shared memory, as a loader worker hands it to the main
            process (otherwise the hand-over copies it there: a batch of 16 uint8 images
            at 1344x800, 51 MB, took 85 ms to build and hand over, 52 ms built in place).

    Returns:
        ``[N, 3, Hp, Wp]`` with ``Hp, Wp`` from :func:`padded_size`.
    """
    height, width = padded_size([(i.shape[-2], i.shape[-1]) for i in images], size_divisor)
    shape = (len(images), images[0].shape[0], height, width)
    if shared:  # as torch's default_collate does in a worker
        storage = images[0]._typed_storage()._new_shared(math.prod(shape), device=images[0].device)
        batch = images[0].new(storage).view(shape).fill_(pad_value)
    else:
        batch = images[0].new_full(shape, pad_value)
    for out, image in zip(batch, images):
        out[:, : image.shape[-2], : image.shape[-1]].copy_(image)
    return batch
