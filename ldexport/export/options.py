"""What to export: input shape, dynamic axes, NMS, preprocessing, opset; and which input
sizes a GFL detector can take.

A GFL detector's pyramid halves the resolution down to stride 32 in the backbone and 128
in the FPN; mmdet pads every batch to a multiple of 32 so that each stride-32 cell covers
whole stride-16 cells (the FPN's nearest upsampling then lines up as in training). Inputs
below 64 px leave nothing but single-cell maps from stride 32 on (and under 32 px the
backbone has no stride-32 cell at all), so a size must be a multiple of 32 and at least 64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ldexport.data.input_spec import MIN_SIZE, SIZE_DIVISOR
from ldexport.errors import LdexportError
# The largest side of an input: a float feature pyramid at 8192x8192 already takes gigabytes.
MAX_SIZE = 8192
MIN_OPSET = 17
# the TorchScript-based exporter's newest opset in torch 2.x
MAX_OPSET = 20

NmsKind = Literal["none", "onnx", "efficient"]


def check_image_size(height: int, width: int, what: str = "input size") -> None:
    """Raises :class:`LdexportError` unless the detector can take a ``height x width`` input
    (and a trace or a run at it fits in memory: at most :data:`MAX_SIZE` a side)."""
    for name, size in (("height", height), ("width", width)):
        if size < MIN_SIZE or size % SIZE_DIVISOR:
            raise LdexportError(
                f"{what} {height}x{width}: the {name} must be a multiple of {SIZE_DIVISOR} "
                f"and at least {MIN_SIZE} (the pyramid reaches stride 128)"
            )
        if size > MAX_SIZE:
            raise LdexportError(f"{what} {height}x{width}: the {name} is over {MAX_SIZE}, the largest side taken")


def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` (height x width) or ``"640"`` -> ``(height, width)``."""
    parts = text.lower().strip().split("x")
    if len(parts) not in (1, 2) or not all(part.strip().isdigit() for part in parts):
        raise LdexportError(f"not a size: {text!r} (expected HxW, e.g. 640x640)")
    height, width = (int(parts[0]), int(parts[-1]))
    return height, width


@dataclass(frozen=True)
class ExportOptions:
    """How the ONNX graph is exported.

    Attributes:
        height, width: the static input size, or the typical (profile ``opt``) size of a
            dynamic graph; the trace runs at it.
        batch: the static batch, or the typical batch of a dynamic graph.
        dynamic: batch, height and width dynamic, anchor points computed in the graph.
        max_height, max_width, max_batch: the largest input of a dynamic graph, recorded
            as its TensorRT profile's ``max`` (the graph itself has no bound). ``None``:
            the largest input its input contract makes (:meth:`InputSpec.largest_input
            <ldexport.data.input_spec.InputSpec.largest_input>`; 1344 for mmdet's
            ``(1333, 800)``), or the export size where that is larger; the batch.
        nms: ``"none"`` (dense ``boxes``/``scores``), ``"onnx"`` (``NonMaxSuppression``)
            or ``"efficient"`` (TensorRT's ``EfficientNMS_TRT`` plugin).
        preprocess: take uint8 BGR ``[N, H, W, 3]`` and normalise in the graph.
        opset: ONNX opset of the default domain.
        simplify: run onnxslim on the exported graph (the default; skipped with a warning
            when onnxslim is not installed).
    """

    height: int = 640
    width: int = 640
    batch: int = 1
    dynamic: bool = False
    max_height: int | None = None
    max_width: int | None = None
    max_batch: int | None = None
    nms: NmsKind = "none"
    preprocess: bool = False
    opset: int = MIN_OPSET
    simplify: bool = True

    def validate(self) -> None:
        """Raises :class:`LdexportError` for options no export can satisfy."""
        check_image_size(self.height, self.width, "export size")
        if self.batch < 1:
            raise LdexportError(f"batch must be at least 1, got {self.batch}")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise LdexportError(f"opset {self.opset} is not supported: use {MIN_OPSET} to {MAX_OPSET}")
        if self.nms not in ("none", "onnx", "efficient"):
            raise LdexportError(f"unknown NMS kind {self.nms!r} (none, onnx, efficient)")
        if self.dynamic:
            if self.max_height is not None or self.max_width is not None:
                max_height, max_width = self.max_height or MAX_SIZE, self.max_width or MAX_SIZE
                check_image_size(max_height, max_width, "largest input size")
                if max_height < self.height or max_width < self.width:
                    raise LdexportError(
                        f"the largest input {self.max_height or '-'}x{self.max_width or '-'} is smaller than the export size "
                        f"{self.height}x{self.width}"
                    )
            if self.max_batch is not None and self.max_batch < self.batch:
                raise LdexportError(f"max batch {self.max_batch} is below the batch {self.batch}")

    def largest_input(self, contract: tuple[int, int]) -> tuple[int, int]:
        """``(H, W)`` of a dynamic graph's largest input: ``max_height`` and ``max_width``
        where given, else the largest input of the graph's input ``contract`` (or the
        export size, where that is larger)."""
        height = self.max_height if self.max_height is not None else max(contract[0], self.height)
        width = self.max_width if self.max_width is not None else max(contract[1], self.width)
        return height, width

    def input_shape(self, height: int, width: int, batch: int) -> tuple[int, int, int, int]:
        """The graph input's shape for one image size: NHWC with preprocessing, else NCHW."""
        return (batch, height, width, 3) if self.preprocess else (batch, 3, height, width)

    def profile(self, contract: tuple[int, int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """``(min, opt, max)`` input shapes for TensorRT (all equal when static); ``contract``
        is the largest input of the graph's input contract (see :meth:`largest_input`)."""
        opt = self.input_shape(self.height, self.width, self.batch)
        if not self.dynamic:
            return opt, opt, opt
        low = self.input_shape(MIN_SIZE, MIN_SIZE, 1)
        high = self.input_shape(*self.largest_input(contract), self.max_batch or self.batch)
        return low, opt, high
