"""INT8 entropy calibration fed by images through the deployment preprocessing.

:class:`CalibrationBatches` (pure numpy) turns a folder of images into batches at the
engine's opt shape; :func:`entropy_calibrator` wraps them in TensorRT's
``IInt8EntropyCalibrator2``, copying each batch into one torch CUDA buffer. The
calibration cache is read when present (then no image is needed) and written after
calibration, so a rebuild does not calibrate again.

TensorRT calibrates a dynamic-shape network at the opt shapes of its calibration profile,
which is why batches are made at the opt shape.
"""

from __future__ import annotations

import logging
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ldexport.data.input_spec import InputSpec
from ldexport.errors import LdexportError
from ldexport.io import atomic_write_bytes

if TYPE_CHECKING:
    import tensorrt as trt
    from typing_extensions import Buffer

_LOG = logging.getLogger(__name__)


class CalibrationBatches:
    """Batches of preprocessed calibration images.

    Args:
        paths: image files (see :func:`ldexport.io.list_images`).
        spec: the graph's input contract (from its metadata).
        shape: the input's opt shape, batch first: ``[N, 3, H, W]`` or ``[N, H, W, 3]``,
            as the spec lays it out.
        max_images: use at most this many images.

    A last partial batch is dropped, unless it is the only one: then images are repeated
    to fill it, so that a handful of images still calibrates.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        spec: InputSpec,
        shape: Sequence[int],
        max_images: int | None = None,
    ) -> None:
        if not paths:
            raise LdexportError("INT8 calibration needs at least one image")
        self.paths = list(paths)[:max_images] if max_images else list(paths)
        self.shape = tuple(int(size) for size in shape)
        expected_rank = 4
        if len(self.shape) != expected_rank:
            raise LdexportError(f"calibration input shape must be [N, C, H, W] or [N, H, W, C], not {list(shape)}")
        batch, height, width = (
            (self.shape[0], self.shape[1], self.shape[2]) if spec.preprocess_in_graph else (self.shape[0], *self.shape[2:])
        )
        if spec.input_shape(height, width, batch) != self.shape:
            raise LdexportError(f"calibration input shape {list(shape)} is not laid out as the graph's {spec.layout} input")
        self.spec = spec.with_fixed_size(height, width, batch)

    @property
    def batch_size(self) -> int:
        """``N`` of the opt shape."""
        return self.shape[0]

    def __len__(self) -> int:
        return max(1, len(self.paths) // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yields ``[N, ...]`` arrays of the input's shape and dtype."""
        count = len(self) * self.batch_size
        paths = [self.paths[index % len(self.paths)] for index in range(count)]
        for start in range(0, count, self.batch_size):
            yield self.spec.read(paths[start : start + self.batch_size]).images


@dataclasses.dataclass
class CalibrationState:
    """What calibration did: batches fed, and the error that stopped it, if any.

    An exception cannot cross TensorRT's C++ callback, so ``get_batch`` stores it here,
    ends calibration, and the builder raises it once TensorRT returns.
    """

    batches_fed: int = 0
    error: Exception | None = None


def entropy_calibrator(
    batches: CalibrationBatches | None,
    *,
    cache_path: Path | None,
    device: int = 0,
    state: CalibrationState | None = None,
) -> trt.IInt8Calibrator:
    """A TensorRT ``IInt8EntropyCalibrator2`` over ``batches``.

    Args:
        batches: the images; ``None`` to calibrate from ``cache_path`` alone.
        cache_path: calibration cache read if it exists, written after calibration.
        device: CUDA device of the buffer handed to TensorRT.
        state: filled in as calibration runs (check ``state.error`` after the build).

    Raises:
        LdexportError: neither images nor an existing cache.
    """
    import tensorrt as trt
    import torch

    status = state if state is not None else CalibrationState()
    cached = cache_path is not None and Path(cache_path).is_file()
    if batches is None and not cached:
        raise LdexportError("INT8 needs calibration images (--calib-images) or a --calib-cache file")

    class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches) if batches is not None else iter(())
            self._size = batches.batch_size if batches is not None else 1
            self._total = len(batches) if batches is not None else 0
            self._buffer: torch.Tensor | None = None

        def get_batch_size(self) -> int:
            return self._size

        def get_batch(self, names: list[str]) -> list[int]:
            # build.py checks that the network has exactly one input, named names[0].
            try:
                batch = next(self._batches, None)
            except Exception as error:  # an unreadable image: report it after the build
                status.error = error
                return []
            if batch is None:
                return []  # no more batches
            host = torch.from_numpy(batch)
            if self._buffer is None:
                self._buffer = torch.empty_like(host, device=f"cuda:{device}")
            self._buffer.copy_(host)
            torch.cuda.synchronize(device)  # TensorRT reads it on its own stream
            status.batches_fed += 1
            _LOG.info("calibration batch %d/%d", status.batches_fed, self._total)
            return [self._buffer.data_ptr()]

        # None tells TensorRT there is no cache (then it calibrates).
        def read_calibration_cache(self) -> bytes | None:
            if cache_path is not None and Path(cache_path).is_file():
                return Path(cache_path).read_bytes()
            return None

        def write_calibration_cache(self, cache: Buffer) -> None:
            if cache_path is not None:
                atomic_write_bytes(Path(cache_path), bytes(cache))

    return _EntropyCalibrator()
