"""The tiny shapes config and small file writers shared by the data tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ldexport.data.shapes import ShapesConfig

TINY_SHAPES = ShapesConfig(
    num_train=8,
    num_val=4,
    min_image_size=64,
    max_image_size=112,
    min_object_size=12,
    max_object_size=40,
    max_objects=4,
    seed=3,
)


def write_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """Writes a random RGB image of ``width`` x ``height`` (PNG or JPEG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_json(path: Path, content: Any) -> Path:
    """Writes ``content`` as JSON to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path
