"""Deployment preprocessing of one image, as INT8 calibration must see it.

The deployed engine takes either

- a float input ``[N, 3, H, W]``: RGB, resized keeping the aspect ratio to fit ``H x W``,
  normalised with the model's ``mean``/``std`` (pixel scale 0-255, RGB order), padded at
  the bottom and right with 0 (that is, after normalisation, as mmdet pads); or
- a uint8 input ``[N, H, W, 3]`` (a graph with preprocessing inside): BGR bytes, resized
  the same way and padded with 0; the graph normalises them itself.

``mean`` and ``std`` come from the ONNX ``metadata_props`` keys :data:`MEAN_KEY` and
:data:`STD_KEY`, each a JSON list of three floats, e.g. ``[123.675, 116.28, 103.53]`` and
``[58.395, 57.12, 57.375]``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ldexport.errors import LdexportError

MEAN_KEY = "mean"
STD_KEY = "std"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

Normalisation = tuple[tuple[float, float, float], tuple[float, float, float]]  # mean, std


def normalisation_from_metadata(props: Mapping[str, str]) -> Normalisation | None:
    """``(mean, std)`` from ONNX metadata, or ``None`` when the keys are absent."""
    if MEAN_KEY not in props and STD_KEY not in props:
        return None
    values = []
    for key in (MEAN_KEY, STD_KEY):
        try:
            value = json.loads(props[key])
        except (KeyError, json.JSONDecodeError):
            raise LdexportError(f"ONNX metadata {key!r} is missing or not JSON") from None
        numbers = isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)
        if not numbers or len(value) != 3:
            raise LdexportError(f"ONNX metadata {key!r} must be a JSON list of 3 numbers: {value!r}")
        values.append((float(value[0]), float(value[1]), float(value[2])))
    if any(s == 0 for s in values[1]):
        raise LdexportError("ONNX metadata 'std' has a zero")
    return values[0], values[1]


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted so that runs are repeatable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LdexportError(f"calibration image folder {folder} does not exist")
    paths = sorted(
        path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )
    if not paths:
        raise LdexportError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return paths


def letterbox(image: Image.Image, height: int, width: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Resizes keeping the aspect ratio to fit ``height x width``, pads bottom/right.

    Returns:
        ``[height, width, 3]`` uint8 RGB padded with 0, and the ``(h, w)`` of the image
        inside it.
    """
    rgb = image.convert("RGB")
    scale = min(height / rgb.height, width / rgb.width)
    new_width = max(1, min(width, round(rgb.width * scale)))
    new_height = max(1, min(height, round(rgb.height * scale)))
    resized = np.asarray(rgb.resize((new_width, new_height), Image.Resampling.BILINEAR))
    canvas = np.zeros((height, width, 3), np.uint8)
    canvas[:new_height, :new_width] = resized
    return canvas, (new_height, new_width)


def preprocess(
    path: Path,
    *,
    shape: Sequence[int],
    dtype: np.dtype,
    normalisation: Normalisation | None,
) -> np.ndarray:
    """One image as one sample of the network input.

    Args:
        path: an image file.
        shape: the input's shape without the batch axis: ``[3, H, W]`` (float input) or
            ``[H, W, 3]`` (uint8 input).
        dtype: the input's numpy dtype.
        normalisation: ``(mean, std)`` for a float input.

    Returns:
        ``[3, H, W]`` normalised RGB, or ``[H, W, 3]`` BGR bytes.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if np.issubdtype(dtype, np.integer):
                if len(shape) != 3 or shape[2] != 3:
                    raise LdexportError(f"an integer image input must be [N, H, W, 3]: {list(shape)}")
                pixels, _ = letterbox(image, shape[0], shape[1])
                return np.ascontiguousarray(pixels[..., ::-1]).astype(dtype)  # RGB -> BGR
            if len(shape) != 3 or shape[0] != 3:
                raise LdexportError(f"a float image input must be [N, 3, H, W], not {list(shape)}")
            if normalisation is None:
                raise LdexportError(
                    f"the ONNX metadata has no {MEAN_KEY!r}/{STD_KEY!r}: re-export the model "
                    "so that calibration can normalise images as deployment does"
                )
            pixels, (valid_h, valid_w) = letterbox(image, shape[1], shape[2])
    except OSError as error:
        raise LdexportError(f"cannot read calibration image {path}: {error}") from None
    mean = np.asarray(normalisation[0], np.float32)
    std = np.asarray(normalisation[1], np.float32)
    sample = np.zeros((shape[1], shape[2], 3), np.float32)  # padding is 0 after normalising
    sample[:valid_h, :valid_w] = (pixels[:valid_h, :valid_w] - mean) / std
    return np.ascontiguousarray(sample.transpose(2, 0, 1)).astype(dtype)
