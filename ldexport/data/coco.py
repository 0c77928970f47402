"""COCO JSON <-> records.

Loading follows mmdet 3.3's ``CocoDataset.parse_data_info``: an annotation is kept
when its box overlaps the image, its ``area`` is positive and it is at least 1 px wide
and high; ``iscrowd`` boxes become ignore regions; ``[x, y, w, h]`` becomes
``[x, y, x + w, y + h]`` (no clipping here: the resize clips). Categories sorted by id
give the contiguous labels, unless ``classes`` names the ones to keep, in its order.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ldexport.data.records import ImageRecord, RecordSet
from ldexport.errors import LdexportError
from ldexport.io import atomic_write_text

logger = logging.getLogger(__name__)


def load_coco(
    images_dir: str | Path,
    annotation_file: str | Path,
    *,
    classes: Sequence[str] | None = None,
    check_files: bool = True,
) -> RecordSet:
    """Loads a COCO instances file.

    Args:
        images_dir: the folder that ``file_name`` entries are relative to.
        annotation_file: the ``instances_*.json`` file.
        classes: category names to keep, in label order; ``None`` keeps all categories
            in the order of their ids. Annotations of other categories are left out.
        check_files: fail early when an image named in the file does not exist.

    Returns:
        The records in the order of the file's ``images``; ``num_dropped_boxes`` counts
        the annotations left out for being too small or outside their image.

    Raises:
        LdexportError: the file is missing or malformed, or an image is missing.
    """
    path = Path(annotation_file)
    content = _read_json(path)
    images = [_image_entry(e, path) for e in _section(content, "images", path, required=True)]
    categories = _section(content, "categories", path, required=True)
    class_names, category_ids = _select_categories(categories, classes, path)
    sizes = {image_id: (h, w) for image_id, _, h, w in images}
    if len(sizes) != len(images):
        raise LdexportError(f"{path}: image ids are not unique")
    known = {c["id"] for c in categories}
    label_of = {cat: label for label, cat in enumerate(category_ids)}
    per_image: dict[int, list[tuple[list[float], int, bool]]] = {i: [] for i in sizes}
    dropped = 0
    for ann in _section(content, "annotations", path, required=False):
        image_id, category_id, box, crowd = _annotation_entry(ann, sizes, known, path)
        if box is None:
            dropped += 1
        elif category_id in label_of:
            per_image[image_id].append((box, label_of[category_id], crowd))
    records = [
        _record(image_id, Path(images_dir) / name, h, w, per_image[image_id])
        for image_id, name, h, w in images
    ]
    if check_files:
        _check_files_exist(records, path)
    if dropped:
        logger.info("%s: dropped %d boxes under 1 px or outside their image", path, dropped)
    return RecordSet(records, class_names, category_ids, path, dropped)


def to_coco_dict(data: RecordSet, images_dir: str | Path | None = None) -> dict[str, Any]:
    """COCO instances content for a record set (the ground truth of YOLO data sets).

    Boxes become annotations with ``area = w * h``; an ignore region, which has no
    class, becomes one ``iscrowd = 1`` annotation per category. Annotation ids start
    at 1.

    Args:
        data: the records.
        images_dir: ``file_name`` is made relative to this folder; the file name alone
            when ``None`` or when an image lies elsewhere.

    Returns:
        A dict with ``images``, ``annotations`` and ``categories``.
    """
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for record in data:
        images.append(
            {
                "id": record.image_id,
                "file_name": _relative_name(record.path, images_dir),
                "height": record.height,
                "width": record.width,
            }
        )
        boxes = [(b, data.category_id(int(l)), 0) for b, l in zip(record.boxes, record.labels)]
        boxes += [(b, c, 1) for b in record.ignore_boxes for c in data.category_ids]
        for box, category_id, crowd in boxes:
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": record.image_id,
                    "category_id": category_id,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": crowd,
                }
            )
    categories = [{"id": c, "name": n} for c, n in zip(data.category_ids, data.class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco_json(data: RecordSet, path: str | Path, images_dir: str | Path | None = None) -> Path:
    """Writes :func:`to_coco_dict` of ``data`` to ``path`` (atomically) and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(to_coco_dict(data, images_dir)))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise LdexportError(f"{path}: annotation file does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise LdexportError(f"{path}: cannot read annotation file ({error})") from None
    except json.JSONDecodeError as error:
        raise LdexportError(
            f"{path}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"
        ) from None
    if not isinstance(content, dict):
        raise LdexportError(f"{path}: expected a JSON object with 'images' and 'categories'")
    return content


def _section(content: dict[str, Any], key: str, path: Path, *, required: bool) -> list[Any]:
    if key not in content:
        if required:
            raise LdexportError(f"{path}: no '{key}' list in the annotation file")
        return []
    value = content[key]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise LdexportError(f"{path}: '{key}' must be a list of objects")
    return value


def _field(entry: dict[str, Any], key: str, kind: type, path: Path, what: str) -> Any:
    """``entry[key]`` checked to be of ``kind`` (ints also accepted as floats)."""
    value = entry.get(key)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        name = entry.get("id", "?")
        raise LdexportError(f"{path}: {what} {name}: '{key}' must be {kind.__name__}, got {value!r}")
    return value


def _select_categories(
    categories: list[dict[str, Any]], classes: Sequence[str] | None, path: Path
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Class names and category ids in label order."""
    by_id = sorted(
        (_field(c, "id", int, path, "category"), _field(c, "name", str, path, "category"))
        for c in categories
    )
    if len({i for i, _ in by_id}) != len(by_id):
        raise LdexportError(f"{path}: category ids are not unique")
    if classes is None:
        return tuple(n for _, n in by_id), tuple(i for i, _ in by_id)
    id_of = {n: i for i, n in by_id}
    missing = [n for n in classes if n not in id_of]
    if missing:
        raise LdexportError(f"{path}: no categories named {missing}")
    return tuple(classes), tuple(id_of[n] for n in classes)


def _image_entry(entry: dict[str, Any], path: Path) -> tuple[int, str, int, int]:
    image_id = _field(entry, "id", int, path, "image")
    file_name = _field(entry, "file_name", str, path, "image")
    height = _field(entry, "height", int, path, "image")
    width = _field(entry, "width", int, path, "image")
    if height <= 0 or width <= 0:
        raise LdexportError(f"{path}: image {image_id}: size {width}x{height} is not positive")
    return image_id, file_name, height, width


def _annotation_entry(
    ann: dict[str, Any], sizes: dict[int, tuple[int, int]], categories: set[int], path: Path
) -> tuple[int, int, list[float] | None, bool]:
    """``(image_id, category_id, xyxy box or None when dropped, is_crowd)``."""
    ann_id = ann.get("id", "?")
    image_id = _field(ann, "image_id", int, path, "annotation")
    category_id = _field(ann, "category_id", int, path, "annotation")
    if image_id not in sizes:
        raise LdexportError(f"{path}: annotation {ann_id}: image_id {image_id} is not in 'images'")
    if category_id not in categories:
        raise LdexportError(
            f"{path}: annotation {ann_id}: category_id {category_id} is not in 'categories'"
        )
    bbox = ann.get("bbox")
    if not (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
        and all(math.isfinite(v) for v in bbox)
    ):
        raise LdexportError(
            f"{path}: annotation {ann_id}: 'bbox' must be 4 numbers [x, y, w, h], got {bbox!r}"
        )
    x, y, w, h = (float(v) for v in bbox)
    height, width = sizes[image_id]
    inter_w = max(0.0, min(x + w, width) - max(x, 0.0))
    inter_h = max(0.0, min(y + h, height) - max(y, 0.0))
    area = float(_field(ann, "area", float, path, "annotation")) if "area" in ann else w * h
    if inter_w * inter_h == 0 or area <= 0 or w < 1 or h < 1:
        return image_id, category_id, None, False
    return image_id, category_id, [x, y, x + w, y + h], bool(ann.get("iscrowd", 0))


def _record(
    image_id: int, path: Path, height: int, width: int, boxes: list[tuple[list[float], int, bool]]
) -> ImageRecord:
    kept = [(b, l) for b, l, crowd in boxes if not crowd]
    crowd_boxes = [b for b, _, crowd in boxes if crowd]
    return ImageRecord(
        image_id=image_id,
        path=path,
        height=height,
        width=width,
        boxes=torch.tensor([b for b, _ in kept], dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor([l for _, l in kept], dtype=torch.int64),
        ignore_boxes=torch.tensor(crowd_boxes, dtype=torch.float32).reshape(-1, 4),
    )


def _check_files_exist(records: list[ImageRecord], path: Path) -> None:
    missing = [r.path for r in records if not r.path.is_file()]
    if missing:
        raise LdexportError(
            f"{missing[0]}: image named in {path} does not exist ({len(missing)} missing in all)"
        )


def _relative_name(image_path: Path, images_dir: str | Path | None) -> str:
    if images_dir is not None:
        try:
            return image_path.relative_to(images_dir).as_posix()
        except ValueError:
            pass
    return image_path.name
