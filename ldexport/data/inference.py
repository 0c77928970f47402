"""Images straight from files to a network batch, with the test pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ldexport.data.collate import Batch, BatchCollator
from ldexport.data.image_io import read_image
from ldexport.data.pipeline import DetectionTransform
from ldexport.data.records import ImageRecord


def prepare_images(
    paths: Sequence[str | Path],
    *,
    scale: tuple[int, int] = (1333, 800),
    collator: BatchCollator | None = None,
) -> Batch:
    """Reads, resizes and pads images as mmdet's test pipeline does (uint8; the network
    input is ``batch.inputs(device)[0]``).

    Args:
        paths: image files; image ids are their positions ``0..N-1``.
        scale: ``(long, short)`` edge limits of the keep-ratio resize.
        collator: the padding; to multiples of 32 when ``None``.

    Returns:
        A :class:`Batch` whose targets are empty; ``metas`` map detections back to the
        files' pixels (:func:`~ldexport.data.pipeline.boxes_to_original`).

    Raises:
        LdexportError: an image cannot be read.
    """
    transform = DetectionTransform(scale=scale)
    samples = []
    for image_id, path in enumerate(paths):
        image = read_image(Path(path))
        record = ImageRecord(image_id, Path(path), int(image.shape[1]), int(image.shape[2]))
        samples.append(transform(record, image))
    return (collator if collator is not None else BatchCollator())(samples)
