"""YOLO text labels -> records.

Layout (Ultralytics'): ``images/<split>/NAME.jpg``, ``labels/<split>/NAME.txt`` with
one ``class cx cy w h`` line a box (all four normalised to ``[0, 1]``), and a class
names file with one name a line. An image without a label file has no objects; a label
file without an image is skipped with a warning. Image sizes come from the file headers.
Category ids are ``label + 1``; image ids are the file stems when all are numbers (COCO
file names), else ``1..N`` in file name order.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from ldexport.data.image_io import IMAGE_EXTENSIONS, read_image_size
from ldexport.data.records import ImageRecord, RecordSet
from ldexport.errors import LdexportError

logger = logging.getLogger(__name__)


def load_yolo(images_dir: str | Path, labels_dir: str | Path, classes_file: str | Path) -> RecordSet:
    """Loads a YOLO text data set.

    Example::

        root = Path("coco128")
        data = load_yolo(root / "images/train2017", root / "labels/train2017", root / "classes.txt")

    Args:
        images_dir: folder of images.
        labels_dir: folder of ``NAME.txt`` label files matching the image stems.
        classes_file: the class names, one a line, in label order.

    Returns:
        One record per image, in file name order. Boxes are clipped to the image;
        ``num_dropped_boxes`` counts those under 1 px wide or high after clipping.

    Raises:
        LdexportError: a folder or the class names file is missing, an image header is
            unreadable, or a label file is malformed.
    """
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    class_names = read_class_names(Path(classes_file))
    images = _list_images(images_dir)
    labels = {p.stem: p for p in _list_dir(labels_dir).glob("*.txt")}
    orphans = sorted(set(labels) - set(images))
    if orphans:
        shown = ", ".join(labels[s].name for s in orphans[:5]) + (", ..." if len(orphans) > 5 else "")
        logger.warning("%s: %d label files have no image and were skipped: %s", labels_dir, len(orphans), shown)
    stems = sorted(images)
    image_ids = _image_ids(stems)
    records, dropped = [], 0
    for stem, image_id in zip(stems, image_ids):
        height, width = read_image_size(images[stem])
        boxes, box_labels = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
        if stem in labels:
            boxes, box_labels, n = _read_label_file(labels[stem], height, width, len(class_names))
            dropped += n
        records.append(ImageRecord(image_id, images[stem], height, width, boxes, box_labels))
    if dropped:
        logger.info("%s: dropped %d boxes under 1 px", labels_dir, dropped)
    category_ids = tuple(range(1, len(class_names) + 1))
    return RecordSet(records, class_names, category_ids, None, dropped)


def read_class_names(path: Path) -> tuple[str, ...]:
    """Class names, one a line; trailing blank lines are allowed, others are not.

    Raises:
        LdexportError: the file is missing, empty, or has a blank line between names.
    """
    try:
        lines = path.read_text().rstrip().splitlines()
    except FileNotFoundError:
        raise LdexportError(f"{path}: class names file does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise LdexportError(f"{path}: cannot read class names ({error})") from None
    names = tuple(line.strip() for line in lines)
    if not names:
        raise LdexportError(f"{path}: class names file is empty")
    if "" in names:
        raise LdexportError(f"{path}: line {names.index('') + 1} is blank; one class name a line")
    return names


def _list_dir(folder: Path) -> Path:
    if not folder.is_dir():
        raise LdexportError(f"{folder}: folder does not exist")
    return folder


def _list_images(images_dir: Path) -> dict[str, Path]:
    images: dict[str, Path] = {}
    for path in sorted(_list_dir(images_dir).iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path.stem in images:
            raise LdexportError(f"{path}: another image has the same name stem ({images[path.stem].name})")
        images[path.stem] = path
    if not images:
        raise LdexportError(f"{images_dir}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return images


def _image_ids(stems: list[str]) -> list[int]:
    """File stems as ids when all are distinct numbers, else ``1..N``."""
    if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(stems) + 1))


def _read_label_file(
    path: Path, height: int, width: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(boxes [M, 4] xyxy pixels, labels [M], number dropped)`` of one label file."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise LdexportError(f"{path}: cannot read label file ({error})") from None
    boxes, labels, dropped = [], [], 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        label, cx, cy, w, h = _parse_line(line, path, number, num_classes)
        x1 = min(max((cx - w / 2) * width, 0.0), width)
        y1 = min(max((cy - h / 2) * height, 0.0), height)
        x2 = min(max((cx + w / 2) * width, 0.0), width)
        y2 = min(max((cy + h / 2) * height, 0.0), height)
        if x2 - x1 < 1 or y2 - y1 < 1:
            dropped += 1
            continue
        boxes.append([x1, y1, x2, y2])
        labels.append(label)
    box_tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return box_tensor, torch.tensor(labels, dtype=torch.int64), dropped


def _parse_line(
    line: str, path: Path, number: int, num_classes: int
) -> tuple[int, float, float, float, float]:
    """``(label, cx, cy, w, h)`` of one ``class cx cy w h`` line."""
    fields = line.split()
    where = f"{path}: line {number}"
    if len(fields) != 5:
        raise LdexportError(f"{where}: expected 5 fields 'class cx cy w h', got {len(fields)}")
    try:
        label_value = float(fields[0])
        cx, cy, w, h = (float(f) for f in fields[1:])
    except ValueError:
        raise LdexportError(f"{where}: fields must be numbers, got {line.strip()!r}") from None
    if not label_value.is_integer() or not 0 <= label_value < num_classes:
        raise LdexportError(f"{where}: class {fields[0]} is not an integer in 0..{num_classes - 1}")
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
        raise LdexportError(f"{where}: cx cy w h must be normalised to [0, 1], got {line.strip()!r}")
    return int(label_value), cx, cy, w, h
