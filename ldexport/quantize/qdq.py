"""INT8 post-training quantization of an exported graph into the ONNX QDQ form.

:func:`quantize_onnx` calibrates an ldexport graph on images with ONNX Runtime's static
quantization and writes a graph that ONNX Runtime runs on the CPU and TensorRT builds as
an explicitly quantized network (no calibrator):

- QDQ format; int8 weights, symmetric, one scale per output channel; int8 activations,
  symmetric, one scale per tensor (zero points 0, as TensorRT requires); biases float;
- calibration by ``minmax``, ``entropy`` or ``percentile`` over the images fed as the
  deployed model receives them (:mod:`ldexport.quantize.calibration`);
- the ``decode/`` nodes (decoding and NMS), the ``preprocess/`` nodes and the nodes the
  user excludes stay float, and so do their inputs (:mod:`ldexport.quantize.graph`);
- the graph's metadata carried over, plus :data:`QUANTIZATION_KEY`: settings, the number
  of calibration images and the calibration set's SHA-256.

The file appears only when complete, checked and loadable by ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ldexport.errors import LdexportError
from ldexport.export.keys import QUANTIZATION_KEY
from ldexport.export.metadata import read_export_info
from ldexport.io import atomic_path, check_writable
from ldexport.quantize.calibration import CalibrationReader, calibration_sha256
from ldexport.quantize.graph import (
    FLOAT_PATTERNS,
    QUANTIZED_OP_TYPES,
    count_qdq,
    float_side,
    inline_constant_identities,
    input_convolutions,
    is_quantized,
    matching_nodes,
    nodes_to_quantize,
    qdq_touching,
    rename_scoped_qdq,
    unquantize_float_inputs,
)

CalibrationMethod = Literal["minmax", "entropy", "percentile"]
CALIBRATION_METHODS: tuple[CalibrationMethod, ...] = ("minmax", "entropy", "percentile")
# chosen by scripts/bench_int8.py (docs/benchmarks.md, "INT8"): the smallest AP loss of
# the three on the demo's student at 128 images (entropy 0.0006, percentile 0.0033, minmax 0.0077)
DEFAULT_METHOD: CalibrationMethod = "entropy"
DEFAULT_NUM_IMAGES = 128
DEFAULT_PERCENTILE = 99.999
# NMS is index arithmetic: never quantized, even when the decoding is
_NMS_PATTERN = r"(?:^|/)decode/nms/"
# decoding operators quantized by ``quantize_decode`` (the measurement's counterfactual)
_DECODE_OP_TYPES = ("MatMul", "Softmax", "Sigmoid", "Mul", "Add", "Sub", "Reshape", "Transpose", "Concat")
# batches ONNX Runtime collects between two histogram updates (memory bound)
_COLLECT_BATCHES = 8


@dataclass(frozen=True)
class QuantizeSettings:
    """How to quantize.

    Attributes:
        method: calibration method: ``minmax``, ``entropy`` or ``percentile``.
        num_images: calibration images used at most (spread evenly over the sorted folder).
        percentile: the ``percentile`` method's percentile of ``|x|``.
        exclude: more regular expressions over node names to keep float.
        quantize_decode: quantize the decoding too (only to measure what keeping it
            float is worth; NMS and preprocessing stay float).
        quantize_stem: quantize the convolution that reads the image too (kept float by
            default: :func:`~ldexport.quantize.graph.input_convolutions`).
    """

    method: CalibrationMethod = DEFAULT_METHOD
    num_images: int = DEFAULT_NUM_IMAGES
    percentile: float = DEFAULT_PERCENTILE
    exclude: tuple[str, ...] = ()
    quantize_decode: bool = False
    quantize_stem: bool = False

    def validate(self) -> None:
        """Raises LdexportError on a setting out of range."""
        if self.method not in CALIBRATION_METHODS:
            raise LdexportError(f"unknown calibration method {self.method!r} ({', '.join(CALIBRATION_METHODS)})")
        if self.num_images < 1:
            raise LdexportError(f"--num-images must be at least 1, not {self.num_images}")
        if not 0 < self.percentile <= 100:
            raise LdexportError(f"percentile must be in (0, 100], not {self.percentile}")


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize_onnx` wrote.

    Attributes:
        path: the quantized graph.
        settings: the settings used.
        images: the calibration images used.
        calibration_sha256: SHA-256 of the calibration set (:func:`calibration_sha256`).
        quantized_nodes: nodes quantized.
        float_nodes: nodes left float (decoding, NMS, preprocessing, exclusions, and what
            feeds only them).
        qdq_nodes: Q/DQ nodes in the written graph.
        seconds: wall time of the calibration and quantization.
    """

    path: Path
    settings: QuantizeSettings
    images: list[Path] = field(repr=False)
    calibration_sha256: str
    quantized_nodes: int
    float_nodes: int
    qdq_nodes: int
    seconds: float


def quantize_onnx(
    source: str | Path,
    output: str | Path,
    images: Sequence[Path],
    settings: QuantizeSettings = QuantizeSettings(),
    *,
    progress: bool = True,
) -> QuantizeResult:
    """Quantizes the ldexport graph ``source`` into ``output`` (see the module doc).

    Args:
        source: an fp32 graph written by ``ldexport onnx``.
        output: the ``.onnx`` file to write (replaced if it exists).
        images: calibration images (at most ``settings.num_images`` are used).
        settings: how to quantize.
        progress: show the calibration's progress bar.

    Raises:
        LdexportError: a missing or non-ldexport graph, one already quantized or ending in
            TensorRT's NMS plugin, no images, an ``exclude`` pattern that matches no node or
            patterns that leave nothing to quantize, an output folder that does not exist.
    """
    import onnx

    settings.validate()
    source, output = Path(source), Path(output)
    model = _load(source)
    info = read_export_info({prop.key: prop.value for prop in model.metadata_props}, str(source))
    if is_quantized(model):
        raise LdexportError(f"{source} is already quantized (it holds Q/DQ or quantized operators); quantize its float original")
    if info.nms == "efficient":  # calibration runs the whole graph in ONNX Runtime
        raise LdexportError(
            f"{source} uses TensorRT's EfficientNMS_TRT plugin, which ONNX Runtime cannot run to calibrate: "
            "quantize a graph exported with --nms or without NMS"
        )
    check_writable(output)  # before the calibration, not after it
    if not images:
        raise LdexportError("calibration needs at least one image")
    chosen = _spread(list(images), settings.num_images)
    for pattern in settings.exclude:
        if not matching_nodes(model, [pattern]):
            raise LdexportError(f"--exclude {pattern!r} matches no node of {source}")
    float_patterns = (_NMS_PATTERN, FLOAT_PATTERNS[1]) if settings.quantize_decode else FLOAT_PATTERNS
    floating = matching_nodes(model, (*float_patterns, *settings.exclude))
    if not settings.quantize_stem:
        floating |= input_convolutions(model)
    quantized = nodes_to_quantize(model, floating)
    if settings.quantize_decode:
        quantized += _decode_nodes(model, floating)
    if not quantized:  # ONNX Runtime would write the float graph, recorded as quantized
        raise LdexportError(f"nothing of {source} is left to quantize: the --exclude patterns cover every quantizable node")
    started = time.perf_counter()
    inline_constant_identities(model)
    with tempfile.TemporaryDirectory(prefix="ldexport-quantize-") as work:
        prepared, staged = Path(work) / "float.onnx", Path(work) / "quantized.onnx"
        onnx.save(model, str(prepared))
        reader = CalibrationReader(chosen, info, progress=progress)
        try:
            _quantize_static(prepared, staged, reader, settings, quantized, sorted(floating))
        finally:
            reader.close()
        result = onnx.load(str(staged))
    keep_float = float_side(result, floating, quantized)
    unquantize_float_inputs(result, keep_float)
    rename_scoped_qdq(result, (*float_patterns, *settings.exclude))
    leaks = qdq_touching(result, matching_nodes(result, float_patterns))
    if leaks:  # the quantizer put Q/DQ where ldexport asked for float: a bug, not a user error
        raise RuntimeError(f"Q/DQ left on float nodes: {leaks[:5]}")
    digest = calibration_sha256(chosen)
    _set_metadata(result, settings, len(chosen), digest, len(quantized), len(keep_float))
    seconds = time.perf_counter() - started
    _write_checked(result, output)
    return QuantizeResult(
        path=output,
        settings=settings,
        images=chosen,
        calibration_sha256=digest,
        quantized_nodes=len(quantized),
        float_nodes=len(keep_float),
        qdq_nodes=count_qdq(result),
        seconds=seconds,
    )


def _load(path: Path):  # noqa: ANN202 - onnx is imported lazily
    import onnx

    if not path.is_file():
        raise LdexportError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf's DecodeError and others for a file that is not ONNX
        raise LdexportError(f"{path} is not a readable ONNX model ({type(error).__name__})") from None


def _spread(paths: list[Path], count: int) -> list[Path]:
    """``count`` of ``paths`` spread evenly over the list (all of them when fewer)."""
    if len(paths) <= count:
        return paths
    step = len(paths) / count
    return [paths[int(index * step)] for index in range(count)]


def _decode_nodes(model, floating: set[str]) -> list[str]:  # noqa: ANN001
    """The decoding's arithmetic nodes, for ``quantize_decode``."""
    decode = matching_nodes(model, [FLOAT_PATTERNS[0]]) - floating
    return [node.name for node in model.graph.node if node.name in decode and node.op_type in _DECODE_OP_TYPES]


def _quantize_static(
    source: Path,
    staged: Path,
    reader: CalibrationReader,
    settings: QuantizeSettings,
    quantized: list[str],
    floating: list[str],
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    op_types = sorted(set(QUANTIZED_OP_TYPES) | (set(_DECODE_OP_TYPES) if settings.quantize_decode else set()))
    with _quiet_onnxruntime():
        quantize_static(
            str(source),
            str(staged),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=quantized,
            nodes_to_exclude=floating,
            calibrate_method=methods[settings.method],
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                # TensorRT dequantizes int8 (and fp8/int4), not int32: biases stay float
                "QuantizeBias": False,
                "CalibTensorRangeSymmetric": True,
                "CalibPercentile": settings.percentile,
                "CalibStridedMinMax": _stride(len(reader)),
            },
        )


def _stride(batches: int) -> int:
    """The largest divisor of ``batches`` up to :data:`_COLLECT_BATCHES` (ONNX Runtime
    requires the stride to divide the number of batches)."""
    return max(size for size in range(1, min(batches, _COLLECT_BATCHES) + 1) if batches % size == 0)


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """Silences ONNX Runtime's quantization chatter: its histogram collector prints on
    stdout at every batch, and it warns through the root logger that the graph was not
    run through its pre-processing (an exported ldexport graph is already folded)."""

    class _DropPreProcessHint(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "pre-process" not in record.getMessage()

    root = logging.getLogger()
    hint = _DropPreProcessHint()
    root.addFilter(hint)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(hint)


def _set_metadata(model, settings: QuantizeSettings, images: int, digest: str, quantized: int, floating: int) -> None:  # noqa: ANN001
    import onnxruntime

    value = {
        "format": "qdq",
        "activations": "int8, symmetric, per tensor",
        "weights": "int8, symmetric, per output channel",
        "bias": "float",
        "method": settings.method,
        **({"percentile": settings.percentile} if settings.method == "percentile" else {}),
        "calibration_images": images,
        "calibration_sha256": digest,
        "float_patterns": list((_NMS_PATTERN, FLOAT_PATTERNS[1]) if settings.quantize_decode else FLOAT_PATTERNS),
        "exclude": list(settings.exclude),
        "decode_quantized": settings.quantize_decode,
        "stem_quantized": settings.quantize_stem,
        "quantized_nodes": quantized,
        "float_nodes": floating,
        "onnxruntime": onnxruntime.__version__,
    }
    for prop in [prop for prop in model.metadata_props if prop.key == QUANTIZATION_KEY]:
        model.metadata_props.remove(prop)
    model.metadata_props.add(key=QUANTIZATION_KEY, value=json.dumps(value))


def _write_checked(model, output: Path) -> None:  # noqa: ANN001
    """Checks the graph, loads it in ONNX Runtime, and renames it into place."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(model)
    with atomic_path(output) as temporary:
        onnx.save(model, str(temporary))
        try:
            ort.InferenceSession(str(temporary), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime's own exception types
            raise RuntimeError(f"ONNX Runtime cannot load the quantized graph: {error}") from error


__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_METHOD",
    "DEFAULT_NUM_IMAGES",
    "QuantizeResult",
    "QuantizeSettings",
    "quantize_onnx",
]
