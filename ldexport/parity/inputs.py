"""The inputs parity runs on: photographs resized as deployment resizes them, random
images at other sizes, and batches of more than one.

A photograph is resized keeping its aspect ratio and padded at the bottom and right
(as :mod:`ldexport.trt.preprocess` does for calibration):

- static graph: to fit the graph's ``H x W``, padded to exactly ``H x W``;
- dynamic graph: to fit the export size, padded only up to a multiple of 32 (and 64 px).

A float graph gets ``[N, 3, H, W]`` RGB normalised with the model's mean and std, padded
with 0 after normalising (as mmdet pads); a graph with preprocessing gets the same pixels
as ``[N, H, W, 3]`` BGR bytes, padded with 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ldexport.errors import LdexportError
from ldexport.export.metadata import ExportInfo
from ldexport.export.options import MIN_SIZE, SIZE_DIVISOR, check_image_size

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class Case:
    """One parity input.

    Attributes:
        name: what it is (file names, or ``random``).
        images: the graph's ``images`` feed.
    """

    name: str
    images: np.ndarray

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        """The feed dict of the graph."""
        return {"images": self.images}


def list_images(folder: str | Path, max_images: int | None = None) -> list[Path]:
    """Image files directly in ``folder``, sorted by name, at most ``max_images``.

    Raises:
        LdexportError: the folder is missing, unreadable, or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LdexportError(f"image folder not found: {folder}")
    try:
        paths = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
    except OSError as error:
        raise LdexportError(f"cannot list image folder {folder}: {error.strerror or error}") from None
    if not paths:
        raise LdexportError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return paths[:max_images] if max_images else paths


def image_cases(paths: Sequence[Path], info: ExportInfo, batch: int = 1) -> list[Case]:
    """Photographs as graph inputs, ``batch`` images a case (see the module doc).

    A static graph takes its own batch size: the last case is filled up by repeating its
    last image. A dynamic graph's images in one case are padded to a common size.
    """
    if not info.dynamic:
        batch = _static_batch(info)
    cases = []
    for start in range(0, len(paths), batch):
        group = list(paths[start : start + batch])
        group += [group[-1]] * (batch - len(group)) if not info.dynamic else []
        pixels = [_letterbox(_read_rgb(path), info) for path in group]
        height = max(image.shape[0] for image in pixels)
        width = max(image.shape[1] for image in pixels)
        names = ",".join(dict.fromkeys(path.name for path in group))
        cases.append(Case(names, _to_feed(pixels, (height, width), info)))
    return cases


def random_cases(sizes: Sequence[tuple[int, int]], info: ExportInfo, batch: int = 2, seed: int = 0) -> list[Case]:
    """Random images (uniform bytes) at each size, ``batch`` a case.

    A static graph takes only its own size and batch; other sizes are skipped.
    """
    generator = np.random.default_rng(seed)
    if not info.dynamic:
        sizes, batch = [info.input_size], _static_batch(info)
    cases = []
    for height, width in sizes:
        check_image_size(height, width, "parity size")
        pixels = [generator.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(batch)]
        cases.append(Case(f"random {batch}x{height}x{width}", _to_feed(pixels, (height, width), info)))
    return cases


def _static_batch(info: ExportInfo) -> int:
    return info.opt_shape[0]


def _read_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise LdexportError(f"cannot read image {path}: {type(error).__name__}: {error}") from None


def _letterbox(image: Image.Image, info: ExportInfo) -> np.ndarray:
    """Resized keeping the ratio to fit the export size; ``[h, w, 3]`` RGB, unpadded."""
    target_height, target_width = info.input_size
    scale = min(target_height / image.height, target_width / image.width)
    width = max(1, min(target_width, round(image.width * scale)))
    height = max(1, min(target_height, round(image.height * scale)))
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))


def _to_feed(pixels: Sequence[np.ndarray], size: tuple[int, int], info: ExportInfo) -> np.ndarray:
    """Pads ``[h, w, 3]`` RGB images to one canvas and lays them out as the graph takes them."""
    height, width = size
    if info.dynamic:
        height, width = (max(MIN_SIZE, -(-side // SIZE_DIVISOR) * SIZE_DIVISOR) for side in (height, width))
    else:
        height, width = info.input_size
    if info.preprocess:
        feed = np.zeros((len(pixels), height, width, 3), np.uint8)
        for index, image in enumerate(pixels):
            feed[index, : image.shape[0], : image.shape[1]] = image[..., ::-1]  # RGB -> BGR
        return feed
    mean = np.asarray(info.mean, np.float32)
    std = np.asarray(info.std, np.float32)
    feed = np.zeros((len(pixels), 3, height, width), np.float32)  # 0 after normalising
    for index, image in enumerate(pixels):
        normalised = (image.astype(np.float32) - mean) / std
        feed[index, :, : image.shape[0], : image.shape[1]] = normalised.transpose(2, 0, 1)
    return feed
