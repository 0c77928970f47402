"""The generated shapes data set: coloured circles, squares and triangles on noise.

A deterministic, seeded stand-in for COCO that a tiny detector learns on CPU in
minutes: the demo's default data and the "does LD work" experiment's. Written in COCO
format::

    root/train/000001.jpg ...      root/instances_train.json
    root/val/000001.jpg ...        root/instances_val.json
    root/shapes.json               (the config it was made with; written last)
    root/shapes.partial            (only while generating, or after an interrupted run)

Every image is drawn from its own generator seeded with ``(seed, split, index)``, so a
larger ``num_train`` keeps the first images unchanged.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from ldexport.data.coco import load_coco, write_coco_json
from ldexport.data.records import ImageRecord, RecordSet
from ldexport.errors import LdexportError
from ldexport.io import atomic_write_text

SHAPE_CLASSES = ("circle", "square", "triangle")
SPLITS = ("train", "val")
_MANIFEST = "shapes.json"
_PARTIAL = "shapes.partial"  # present while a generation is under way
_VERSION = 1


@dataclass(frozen=True)
class ShapesConfig:
    """How many images, of what size, with how many and how large shapes.

    Attributes:
        num_train: training images.
        num_val: validation images.
        min_image_size: smallest image side, pixels.
        max_image_size: largest image side, pixels (width and height drawn apart).
        min_objects: fewest shapes an image.
        max_objects: most shapes an image (fewer when they do not fit).
        min_object_size: smallest shape extent, pixels.
        max_object_size: largest shape extent, pixels.
        max_overlap: largest share of the smaller of two shapes' boxes that the other
            may cover (so that no shape hides another).
        noise_std: standard deviation of the pixel noise, grey levels.
        image_format: ``"jpg"`` or ``"png"``.
        seed: the data set's seed.
    """

    num_train: int = 400
    num_val: int = 100
    min_image_size: int = 128
    max_image_size: int = 256
    min_objects: int = 1
    max_objects: int = 5
    min_object_size: int = 16
    max_object_size: int = 96
    max_overlap: float = 0.2
    noise_std: float = 10.0
    image_format: str = "jpg"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_format not in ("jpg", "png"):
            raise LdexportError(f"shapes image_format must be 'jpg' or 'png', got {self.image_format!r}")
        sizes = (8, self.min_object_size, self.max_object_size + 2, self.min_image_size, self.max_image_size)
        if list(sizes) != sorted(sizes):
            raise LdexportError(
                "shapes sizes need 8 <= min_object_size <= max_object_size <= min_image_size - 2 "
                "and min_image_size <= max_image_size"
            )
        if not 0 <= self.min_objects <= self.max_objects or self.num_train < 0 or self.num_val < 0:
            raise LdexportError("shapes counts must be non-negative, with min_objects <= max_objects")


def annotation_file(root: str | Path, split: str) -> Path:
    """``root/instances_<split>.json``."""
    return Path(root) / f"instances_{split}.json"


def generate_shapes(root: str | Path, config: ShapesConfig = ShapesConfig()) -> Path:
    """Writes the shapes data set under ``root``, replacing a previous one.

    Args:
        root: the output folder.
        config: what to generate.

    Returns:
        ``root``.

    Raises:
        LdexportError: ``root`` holds split folders that this generator did not write.
    """
    root = Path(root)
    manifest, partial = root / _MANIFEST, root / _PARTIAL
    if any((root / s).exists() for s in SPLITS) and not manifest.is_file() and not partial.is_file():
        raise LdexportError(f"{root}: has train/ or val/ folders but is not a generated shapes data set")
    root.mkdir(parents=True, exist_ok=True)
    # Marks the folders as this generator's until the manifest is written: a generation
    # that is interrupted is redone by the next one.
    atomic_write_text(partial, "generating\n")
    manifest.unlink(missing_ok=True)
    for split, count in zip(SPLITS, (config.num_train, config.num_val)):
        images_dir = root / split
        shutil.rmtree(images_dir, ignore_errors=True)
        images_dir.mkdir(parents=True)
        indices = tqdm(range(1, count + 1), desc=f"generating shapes/{split}", disable=None, leave=False)
        records = [_write_image(images_dir, split, i, config) for i in indices]
        data = RecordSet(records, SHAPE_CLASSES, (1, 2, 3))
        write_coco_json(data, annotation_file(root, split), images_dir)
    atomic_write_text(manifest, json.dumps({"version": _VERSION, **asdict(config)}, indent=2))  # last: marks it complete
    partial.unlink()
    return root


def ensure_shapes(root: str | Path, config: ShapesConfig = ShapesConfig()) -> Path:
    """Generates the data set unless ``root`` already holds it with the same config."""
    manifest = Path(root) / _MANIFEST
    if manifest.is_file():
        try:
            if json.loads(manifest.read_text()) == {"version": _VERSION, **asdict(config)}:
                return Path(root)
        except json.JSONDecodeError:
            pass
    return generate_shapes(root, config)


def load_shapes(root: str | Path, split: str) -> RecordSet:
    """The records of one split (``"train"`` or ``"val"``) of a generated data set."""
    if split not in SPLITS:
        raise LdexportError(f"shapes split must be one of {SPLITS}, got {split!r}")
    return load_coco(Path(root) / split, annotation_file(root, split))


def render_shapes(
    rng: np.random.Generator, config: ShapesConfig
) -> tuple[np.ndarray, list[list[int]], list[int]]:
    """Draws one image.

    Args:
        rng: the image's random generator.
        config: sizes, counts and noise.

    Returns:
        ``(pixels [H, W, 3] uint8 RGB, boxes as [x1, y1, x2, y2] ints with exclusive
        x2 and y2, labels in 0..2)``.
    """
    width, height = (int(v) for v in rng.integers(config.min_image_size, config.max_image_size + 1, 2))
    background = rng.integers(0, 256, 3)
    canvas = Image.fromarray(_gradient(rng, background, height, width))
    boxes: list[list[int]] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(config.min_objects, config.max_objects + 1))):
        square = _place(rng, config, width, height, boxes)
        if square is None:
            continue
        label = int(rng.integers(len(SHAPE_CLASSES)))
        mask = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask).polygon(_outline(rng, label, square), fill=255)
        box = mask.getbbox()
        if box is None:
            continue
        canvas.paste(_contrasting_colour(rng, background), mask=mask)
        boxes.append(list(box))
        labels.append(label)
    pixels = np.asarray(canvas, dtype=np.float32) + rng.normal(0.0, config.noise_std, (height, width, 3))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), boxes, labels


def _write_image(images_dir: Path, split: str, index: int, config: ShapesConfig) -> ImageRecord:
    rng = np.random.default_rng([config.seed, SPLITS.index(split), index])
    pixels, boxes, labels = render_shapes(rng, config)
    path = images_dir / f"{index:06d}.{config.image_format}"
    if config.image_format == "jpg":
        Image.fromarray(pixels).save(path, quality=95)
    else:
        Image.fromarray(pixels).save(path)
    height, width = pixels.shape[:2]
    box_tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return ImageRecord(index, path, height, width, box_tensor, torch.tensor(labels, dtype=torch.int64))


def _gradient(rng: np.random.Generator, base: np.ndarray, height: int, width: int) -> np.ndarray:
    """A background of colour ``base`` with a soft linear ramp in a random direction."""
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (xs / width - 0.5) * math.cos(angle) + (ys / height - 0.5) * math.sin(angle)
    amplitude = rng.uniform(10, 40)
    pixels = base[None, None, :].astype(np.float32) + amplitude * ramp[..., None]
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _place(
    rng: np.random.Generator, config: ShapesConfig, width: int, height: int, boxes: list[list[int]]
) -> tuple[float, float, float] | None:
    """A square ``(cx, cy, side)`` that overlaps the placed boxes little, or ``None``."""
    largest = min(config.max_object_size, width - 2, height - 2)
    for _ in range(20):
        side = float(rng.integers(config.min_object_size, largest + 1))
        x0 = float(rng.uniform(0, width - side))
        y0 = float(rng.uniform(0, height - side))
        candidate = [x0, y0, x0 + side, y0 + side]
        if all(_overlap(candidate, b) <= config.max_overlap for b in boxes):
            return x0 + side / 2, y0 + side / 2, side
    return None


def _outline(
    rng: np.random.Generator, label: int, square: tuple[float, float, float]
) -> list[tuple[float, float]]:
    """The polygon of shape ``label`` inscribed in ``square``, at a random rotation."""
    cx, cy, side = square
    side -= 1.0  # PIL fills the pixels at both ends of a span: keep within ``side`` pixels
    if label == 0:  # circle: a 64-gon is round at these sizes
        corners, angle, radius = 64, 0.0, side / 2
    elif label == 1:  # square at angle theta: its extent along x and y is s(|cos| + |sin|)
        theta = float(rng.uniform(0, math.pi / 2))
        edge = side / (abs(math.cos(theta)) + abs(math.sin(theta)))
        corners, angle, radius = 4, theta + math.pi / 4, edge / math.sqrt(2)
    else:  # triangle
        corners, angle, radius = 3, float(rng.uniform(0, 2 * math.pi)), side / 2
    steps = [angle + 2 * math.pi * k / corners for k in range(corners)]
    return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in steps]


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    """A random colour at least 200 grey levels (summed over RGB) from ``background``."""
    colour = rng.integers(0, 256, 3)
    for _ in range(50):
        if int(np.abs(colour - background).sum()) >= 200:
            break
        colour = rng.integers(0, 256, 3)
    return int(colour[0]), int(colour[1]), int(colour[2])


def _overlap(a: list[float], b: list[int]) -> float:
    """Intersection of boxes ``a`` and ``b`` over the area of the smaller one."""
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter_w * inter_h / smaller
