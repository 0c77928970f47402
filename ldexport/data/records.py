"""Per-image annotation records and the record set that names their classes.

Legend: ``M`` ground-truth boxes of one image, ``G`` ignore (crowd) regions of one image,
``C`` classes. Boxes are xyxy float32 in the pixels of the original image file; labels
are contiguous ``0..C-1``. A record set also keeps the COCO category id of each label
so that evaluation can map detections back to the ids of the ground truth.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ldexport.errors import LdexportError


@dataclass(eq=False)
class ImageRecord:
    """The annotations of one image, in its original pixels.

    Attributes:
        image_id: the COCO image id (the file stem's number for YOLO data when numeric).
        path: the image file.
        height: original height in pixels.
        width: original width in pixels.
        boxes: ``[M, 4]`` float32 xyxy.
        labels: ``[M]`` int64 contiguous labels ``0..C-1``.
        ignore_boxes: ``[G, 4]`` float32 xyxy crowd regions (never matched, never
            penalised); ``[0, 4]`` when there are none.
    """

    image_id: int
    path: Path
    height: int
    width: int
    boxes: Tensor = field(default_factory=lambda: torch.zeros(0, 4))
    labels: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    ignore_boxes: Tensor = field(default_factory=lambda: torch.zeros(0, 4))

    def __post_init__(self) -> None:
        self.boxes = torch.as_tensor(self.boxes, dtype=torch.float32).reshape(-1, 4)
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64).reshape(-1)
        self.ignore_boxes = torch.as_tensor(self.ignore_boxes, dtype=torch.float32).reshape(-1, 4)
        if self.boxes.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"image {self.image_id}: {self.boxes.shape[0]} boxes but {self.labels.shape[0]} labels"
            )

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the original image."""
        return self.height, self.width


@dataclass(eq=False)
class RecordSet:
    """The records of one split, its class names, and the label <-> category id mapping.

    Attributes:
        records: one per image, in a stable order.
        class_names: ``C`` names; ``class_names[label]``.
        category_ids: ``C`` COCO category ids; ``category_ids[label]``.
        annotation_file: the COCO JSON the records came from (evaluation reads its
            ground truth from there, as mmdet's ``CocoMetric`` does); ``None`` when the
            ground truth must be built from the records (YOLO text data).
        num_dropped_boxes: boxes left out at load time (under 1 px wide or high, zero
            area, or outside the image).
    """

    records: list[ImageRecord]
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    annotation_file: Path | None = None
    num_dropped_boxes: int = 0

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        self.category_ids = tuple(int(c) for c in self.category_ids)
        if len(self.class_names) != len(self.category_ids):
            raise ValueError(
                f"{len(self.class_names)} class names but {len(self.category_ids)} category ids"
            )
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"category ids are not unique: {self.category_ids}")
        self._label_of = {cat: label for label, cat in enumerate(self.category_ids)}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> ImageRecord:
        return self.records[index]

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    @property
    def num_classes(self) -> int:
        """``C``."""
        return len(self.class_names)

    def category_id(self, label: int) -> int:
        """The COCO category id of a contiguous label."""
        return self.category_ids[label]

    def label(self, category_id: int) -> int:
        """The contiguous label of a COCO category id.

        Raises:
            LdexportError: the category id is not one of this record set's.
        """
        try:
            return self._label_of[int(category_id)]
        except KeyError:
            raise LdexportError(
                f"category id {category_id} is not one of {list(self.category_ids)}"
            ) from None

    def labels_to_category_ids(self, labels: Tensor) -> Tensor:
        """Maps contiguous labels to category ids.

        Args:
            labels: ``[K]`` int64 in ``0..C-1``.

        Returns:
            ``[K]`` int64 COCO category ids.
        """
        lookup = torch.tensor(self.category_ids, dtype=torch.int64)
        return lookup[labels.to(torch.int64).cpu()]

    def subset(self, indices: Sequence[int]) -> RecordSet:
        """A record set with the records at ``indices`` and the same classes."""
        return RecordSet(
            records=[self.records[i] for i in indices],
            class_names=self.class_names,
            category_ids=self.category_ids,
            annotation_file=self.annotation_file,
            num_dropped_boxes=self.num_dropped_boxes,
        )


def filter_records(data: RecordSet, *, min_size: int = 32, drop_empty: bool = True) -> RecordSet:
    """Drops images for training, as mmdet's ``filter_cfg`` does for the LD configs.

    mmdet's COCO training set keeps an image when ``min(width, height) >= min_size``
    and, with ``filter_empty_gt``, when it has at least one annotation. Here an image is
    empty when it has neither boxes nor ignore regions after loading.

    Args:
        data: the record set to filter.
        min_size: smallest allowed original short side, in pixels.
        drop_empty: drop images without annotations.

    Returns:
        A record set with the kept records, in their original order.
    """
    keep = [
        i
        for i, r in enumerate(data.records)
        if min(r.height, r.width) >= min_size
        and not (drop_empty and r.boxes.shape[0] == 0 and r.ignore_boxes.shape[0] == 0)
    ]
    return data.subset(keep)
