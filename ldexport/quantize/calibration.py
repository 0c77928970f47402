"""Calibration images fed to ONNX Runtime's calibrator as the deployed model receives them.

:func:`calibration_feed` is the one place where a calibration image becomes a graph input:
the deployment preprocessing recorded in the graph's metadata (resize keeping the aspect
ratio to the export size, pad bottom-right, normalise for a float input or BGR bytes for a
graph with preprocessing). :class:`CalibrationReader` walks the images in order, a batch
of the graph's size at a time, with a progress bar; :func:`calibration_sha256` names the
calibration set in the quantized model's metadata.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ldexport.errors import LdexportError
from ldexport.export.metadata import INPUT_NAME, ExportInfo
from ldexport.trt.files import sha256_file


def calibration_feed(paths: Sequence[Path], info: ExportInfo) -> dict[str, np.ndarray]:
    """A batch of images as the graph's feed, at the export size (the profile's opt).

    Args:
        paths: ``B`` image files.
        info: the graph's metadata.

    Returns:
        ``{"images": [B, 3, H, W] float32}`` (normalised RGB, padded with 0) or
        ``{"images": [B, H, W, 3] uint8}`` (BGR) for a graph with preprocessing.
    """
    from ldexport.trt.preprocess import preprocess

    height, width = info.input_size
    if info.preprocess:
        shape, dtype, normalisation = (height, width, 3), np.dtype(np.uint8), None
    else:
        shape, dtype, normalisation = (3, height, width), np.dtype(np.float32), (info.mean, info.std)
    samples = [preprocess(path, shape=shape, dtype=dtype, normalisation=normalisation) for path in paths]  # type: ignore[arg-type]
    return {INPUT_NAME: np.stack(samples)}


def calibration_sha256(paths: Sequence[Path]) -> str:
    """SHA-256 naming a calibration set: over each image's file name and content hash, in
    the order used. The same images in another folder give the same hash."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{sha256_file(Path(path))}  {Path(path).name}\n".encode())
    return digest.hexdigest()


def batch_size(info: ExportInfo) -> int:
    """Images a calibration batch: a static graph's batch, else 1."""
    return 1 if info.dynamic else int(info.opt_shape[0])


class CalibrationReader:
    """ONNX Runtime's ``CalibrationDataReader`` over calibration images.

    A static graph with batch ``B > 1`` gets its last batch filled by repeating the last
    image. ``set_range`` (in batches) lets ONNX Runtime collect a few batches at a time,
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
        self.info = info
        self.batch = batch_size(info)
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
        group += [group[-1]] * (self.batch - len(group))
        self._next += 1
        feed = calibration_feed(group, self.info)
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
