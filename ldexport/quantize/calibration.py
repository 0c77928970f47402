"""Calibration images fed to ONNX Runtime's calibrator as the deployed model receives them.

:func:`calibration_feed` is the one place where a calibration image becomes a graph input:
through the graph's own input contract (:class:`~ldexport.data.input_spec.InputSpec`,
recorded in its metadata), at one fixed shape (:func:`calibration_spec`). :class:`CalibrationReader` walks the images in order, a batch
of the graph's size at a time, with a progress bar; :func:`calibration_sha256` names the
calibration set in the quantized model's metadata.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ldexport.data.input_spec import INPUT_NAME, InputSpec
from ldexport.errors import LdexportError
from ldexport.export.metadata import ExportInfo
from ldexport.io import sha256_file


def calibration_spec(info: ExportInfo) -> InputSpec:
    """The graph's input contract at one fixed shape: a static graph's own; a dynamic
    graph's at the export size (the profile's opt), one image a batch, letterboxed.

    ONNX Runtime's histogram calibrators stack a tensor's values over the batches they
    collect together, so every batch must have the same shape.
    """
    spec = info.input_spec
    if spec.fixed_size is not None:
        return spec
    height, width = info.input_size
    return spec.with_fixed_size(height, width, 1)


def calibration_feed(paths: Sequence[Path], spec: InputSpec) -> dict[str, np.ndarray]:
    """Images as one feed of the graph, through its input contract (:meth:`InputSpec.read`).

    Args:
        paths: at most the spec's batch of image files (a short batch is filled up by
            repeating the last image).
        spec: :func:`calibration_spec`.

    Returns:
        ``{"images": [B, 3, H, W] float32}`` (normalised RGB) or ``{"images": [B, H, W, 3]
        uint8}`` (BGR bytes) for a graph with preprocessing.
    """
    return {INPUT_NAME: spec.read(paths).images}


def calibration_sha256(paths: Sequence[Path]) -> str:
    """SHA-256 naming a calibration set: over each image's file name and content hash, in
    the order used. The same images in another folder give the same hash."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{sha256_file(Path(path))}  {Path(path).name}\n".encode())
    return digest.hexdigest()


class CalibrationReader:
    """ONNX Runtime's ``CalibrationDataReader`` over calibration images.

    A static graph with batch ``B > 1`` gets its last batch filled by repeating the last
    image (:meth:`InputSpec.to_feed`). ``set_range`` (in batches) lets ONNX Runtime collect a few batches at a time,
    so the calibrator never holds every intermediate tensor of every image at once.

    Args:
        paths: the images, in order.
        info: the graph's metadata.
        progress: show a progress bar on stderr.
    """

    def __init__(self, paths: Sequence[Path], info: ExportInfo, *, progress: bool = True) -> None:
        if not paths:
            raise LdexportError("calibration needs at least one image")
        self.paths = list(paths)
        self.spec = calibration_spec(info)
        self.batch = self.spec.fixed_batch or 1
        self._count = -(-len(self.paths) // self.batch)
        self._next = 0
        self._end = self._count
        self._bar = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=len(self.paths), desc="calibrate", unit="img", leave=False, disable=None)

    def __len__(self) -> int:
        """Batches in all."""
        return self._count

    def set_range(self, start_index: int, end_index: int) -> None:
        """Feeds batches ``start_index`` to ``end_index`` (exclusive) next."""
        self._next, self._end = start_index, min(end_index, self._count)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch's feed, or ``None`` at the end of the range."""
        if self._next >= self._end:
            return None
        start = self._next * self.batch
        group = self.paths[start : start + self.batch]
        self._next += 1
        feed = calibration_feed(group, self.spec)
        if self._bar is not None:
            self._bar.update(min(self.batch, len(self.paths) - start))
        return feed

    def __iter__(self) -> CalibrationReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed

    def close(self) -> None:
        """Closes the progress bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
