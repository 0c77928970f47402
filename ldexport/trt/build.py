"""Building a TensorRT engine from an exported ONNX file (TensorRT 10.x Python API).

Steps: the readiness check; parse with ``OnnxParser`` (its errors reported with node
names); one optimisation profile with a min/opt/max for every dynamic input (from the
arguments, else from the ONNX metadata, see :mod:`ldexport.trt.profile`); precision,
decode layers kept in fp32 (:mod:`ldexport.trt.precision`); workspace limit; timing cache
loaded and saved; the engine and its JSON sidecar (:mod:`ldexport.trt.sidecar`) written
atomically.

INT8 comes two ways:

- **explicit** (the default): a graph quantized by ``ldexport quantize`` holds
  ``QuantizeLinear``/``DequantizeLinear`` pairs, which the parser turns into Q/DQ layers;
  TensorRT then runs int8 exactly where the graph says, with the graph's scales, and no
  calibrator runs. The build allows int8 and fp16 kernels (``INT8`` and ``FP16`` flags,
  the decode layers constrained to fp32), or, with ``strongly_typed``, takes every type
  from the graph (no precision flags: int8 between Q/DQ pairs, fp32 elsewhere), the mode
  TensorRT recommends for Q/DQ networks;
- **implicit** (``int8=True``, deprecated by TensorRT since 10.1): a float graph is
  calibrated with ``IInt8EntropyCalibrator2`` on images and TensorRT picks int8 layer by
  layer where it is faster (:mod:`ldexport.trt.calib`).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from ldexport import __version__
from ldexport.errors import LdexportError
from ldexport.quantize.graph import is_quantized
from ldexport.trt.backend import dims_tuple, register_plugins, require_tensorrt
from ldexport.trt.calib import CalibrationState
from ldexport.io import atomic_write_bytes, sha256_file
from ldexport.trt.precision import DECODE_PATTERN, DecodePrecision, constrain_decode_layers
from ldexport.trt.problem import Problem, has_errors, summary
from ldexport.trt.profile import Profile, resolve_profile
from ldexport.trt.readiness import check_onnx, read_onnx
from ldexport.trt.sidecar import installed_environment, sidecar_path, write_sidecar

if TYPE_CHECKING:
    import tensorrt as trt

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """How to build an engine.

    Attributes:
        fp16: allow fp16 kernels.
        int8: implicit INT8: allow int8 kernels (with fp16 as fallback) in a float graph,
            calibrated on ``calib_images`` by TensorRT (a Q/DQ graph needs no flag).
        calib_images: folder of calibration images (read recursively).
        calib_cache: calibration cache, read when it exists and written after calibration.
        calib_max_images: at most this many calibration images.
        profile: input name -> (min, opt, max) shapes; ``None``: the ONNX metadata's.
        workspace_gib: limit of TensorRT's workspace memory pool, in GiB.
        timing_cache: timing cache file, read when it exists and written after the build.
        decode_pattern: regex selecting the decode layers (:mod:`ldexport.trt.precision`).
        decode_precision: precision those layers keep in fp16 / int8 engines.
        strongly_typed: build a strongly typed network: every type from the graph, no
            precision flags (for a Q/DQ graph: int8 where it is quantized, fp32 elsewhere).
        check: run the readiness check first (``ldexport trt`` runs it itself).
        device: CUDA device index.
        verbose: log TensorRT's INFO messages.
    """

    fp16: bool = False
    int8: bool = False
    calib_images: Path | None = None
    calib_cache: Path | None = None
    calib_max_images: int = 512
    profile: Profile | None = None
    workspace_gib: float | None = None
    timing_cache: Path | None = None
    decode_pattern: str = DECODE_PATTERN
    decode_precision: DecodePrecision = "fp32"
    strongly_typed: bool = False
    check: bool = True
    device: int = 0
    verbose: bool = False


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """What a build wrote, and what it noticed."""

    engine_path: Path
    sidecar_path: Path
    decode_layers: list[str]
    warnings: list[Problem]


def build_engine(
    onnx_path: Path, engine_path: Path, options: BuildOptions = BuildOptions()
) -> BuildResult:
    """Builds ``engine_path`` (and ``<engine>.json``) from ``onnx_path``.

    Raises:
        LdexportError: the graph is not ready, no TensorRT/CUDA, a parser error (naming
            the node), a dynamic input without a profile, or TensorRT fails to build.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    model = read_onnx(onnx_path)
    profile = resolve_profile(model, options.profile)
    quantized = is_quantized(model)
    if quantized and options.int8:
        raise LdexportError(
            f"{onnx_path} is already quantized (Q/DQ): TensorRT builds it with its own scales; "
            "drop --int8-implicit and the calibration options"
        )
    if options.strongly_typed and (options.fp16 or options.int8):
        raise LdexportError("a strongly typed network takes its precision from the graph: drop --fp16/--int8-implicit")
    require_tensorrt()
    import tensorrt as trt
    import torch

    problems: list[Problem] = []
    if options.check:
        problems = check_onnx(model, trt_version=trt.__version__, profile=profile)
        if has_errors(problems):
            raise LdexportError(
                f"{onnx_path} is not ready for TensorRT {trt.__version__} ({summary(problems)}); "
                f"first: {problems[0].one_line()}; run `ldexport trt --check-only` for the report"
            )
    with torch.cuda.device(options.device):
        built = _build(onnx_path, model, profile, options, quantized)
    sidecar = {
        **installed_environment(options.device),
        "ldexport_version": __version__,
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "precision": {
            "fp16": not options.strongly_typed and (options.fp16 or options.int8 or quantized),
            "int8": options.int8 or quantized,
            "quantization": "explicit (Q/DQ)" if quantized else "implicit (calibrated)" if options.int8 else None,
            "strongly_typed": options.strongly_typed,
            "decode_precision": "graph" if options.strongly_typed else options.decode_precision,
            "decode_layers": len(built.decode_layers),
        },
        "profile": {
            name: {"min": list(low), "opt": list(opt), "max": list(high)}
            for name, (low, opt, high) in profile.items()
        },
        "inputs": built.inputs,
        "outputs": built.outputs,
        # the graph's ldexport metadata (input contract, classes, decoding), so that an
        # engine is used without its ONNX file (ldexport eval/predict/bench --engine)
        "onnx": {
            "file": onnx_path.name,
            "sha256": sha256_file(onnx_path),
            "metadata": {prop.key: prop.value for prop in model.metadata_props},
        },
    }
    atomic_write_bytes(engine_path, built.engine)
    write_sidecar(engine_path, sidecar)
    return BuildResult(engine_path, sidecar_path(engine_path), built.decode_layers, problems)


@dataclasses.dataclass(frozen=True)
class _Built:
    engine: bytes
    decode_layers: list[str]
    inputs: dict[str, Any]
    outputs: dict[str, Any]


def _build(
    onnx_path: Path, model: onnx.ModelProto, profile: Profile, options: BuildOptions, quantized: bool
) -> _Built:
    """Parses, configures and builds; runs on the CUDA device of ``options``."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.INFO if options.verbose else trt.Logger.WARNING)
    register_plugins(logger)  # before parsing: EfficientNMS_TRT nodes become plugin layers
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch; strong typing is the one flag left
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if options.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise LdexportError(_parser_errors(parser, onnx_path))
    config = builder.create_builder_config()
    trt_profile = _add_profile(builder, network, config, profile)
    decode_layers = _set_precision(builder, network, config, options, quantized)
    # TensorRT holds the calibrator by a raw pointer: keep it alive until the build ends.
    calibration = CalibrationState()
    calibrator = None
    if options.int8:
        calibrator = _calibrator(network, model, options, trt_profile, calibration)
        config.int8_calibrator = calibrator
        if trt_profile is not None and not config.set_calibration_profile(trt_profile):
            raise LdexportError(f"TensorRT rejected the calibration profile {profile}")
    if options.workspace_gib is not None:
        workspace = int(options.workspace_gib * (1 << 30))
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    _load_timing_cache(config, options.timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if isinstance(calibration.error, LdexportError):
        raise calibration.error
    if calibration.error is not None:
        raise LdexportError(f"INT8 calibration failed: {calibration.error}")
    if serialized is None:
        raise LdexportError(f"TensorRT could not build an engine from {onnx_path} (see its log)")
    if options.timing_cache is not None:
        atomic_write_bytes(options.timing_cache, bytes(config.get_timing_cache().serialize()))
    return _Built(
        engine=bytes(serialized),
        decode_layers=decode_layers,
        inputs=_io_description(network, inputs=True),
        outputs=_io_description(network, inputs=False),
    )


def _parser_errors(parser: trt.OnnxParser, onnx_path: Path) -> str:
    messages = []
    for index in range(parser.num_errors):
        error: trt.ParserError = parser.get_error(index)
        node = error.node_name() or f"node #{error.node()}"
        messages.append(f"node {node!r} ({error.node_operator()}): {error.desc()}")
    details = "; ".join(messages) or "no error recorded"
    return f"TensorRT's ONNX parser rejected {onnx_path}: {details}"


def _add_profile(
    builder: trt.Builder,
    network: trt.INetworkDefinition,
    config: trt.IBuilderConfig,
    profile: Profile,
) -> trt.IOptimizationProfile | None:
    """One optimisation profile with a shape range for each dynamic network input."""
    import tensorrt as trt

    dynamic = []
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        if any(size < 0 for size in dims_tuple(tensor.shape)):
            dynamic.append(tensor.name)
    if not dynamic:
        return None
    trt_profile = builder.create_optimization_profile()
    for name in dynamic:
        if name not in profile:
            raise LdexportError(f"input {name!r} is dynamic in TensorRT's network; give it a profile")
        low, opt, high = (trt.Dims(list(shape)) for shape in profile[name])
        trt_profile.set_shape(name, low, opt, high)
    if config.add_optimization_profile(trt_profile) < 0:
        raise LdexportError(f"TensorRT rejected the optimisation profile {profile}")
    return trt_profile


def _set_precision(
    builder: trt.Builder,
    network: trt.INetworkDefinition,
    config: trt.IBuilderConfig,
    options: BuildOptions,
    quantized: bool,
) -> list[str]:
    """Precision flags and the decode layers' constraints.

    A strongly typed network takes no flag and no constraint (its decode layers are fp32
    because the graph's are). A Q/DQ graph gets ``INT8`` and ``FP16``: int8 where its Q/DQ
    layers put it, fp16 allowed elsewhere, the decoding constrained to fp32.
    """
    import tensorrt as trt

    if options.strongly_typed:
        return []
    int8 = options.int8 or quantized
    if options.fp16 or int8:
        if not builder.platform_has_fast_fp16:
            _LOG.warning("this GPU has no fast fp16; the engine may be slower than fp32")
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
    if not (options.fp16 or int8):
        return []
    decode_layers = constrain_decode_layers(
        network, pattern=options.decode_pattern, precision=options.decode_precision
    )
    if decode_layers:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    else:
        _LOG.warning(
            "no layer matches the decode pattern %r: the box decoding runs in reduced precision",
            options.decode_pattern,
        )
    return decode_layers


def _calibrator(
    network: trt.INetworkDefinition,
    model: onnx.ModelProto,
    options: BuildOptions,
    trt_profile: trt.IOptimizationProfile | None,
    state: CalibrationState,
) -> trt.IInt8Calibrator:
    from ldexport.export.metadata import read_input_spec
    from ldexport.io import list_images
    from ldexport.trt.calib import CalibrationBatches, entropy_calibrator

    if network.num_inputs != 1:
        count = network.num_inputs
        raise LdexportError(f"INT8 calibration feeds one image input; the network has {count}")
    tensor = network.get_input(0)
    shape = trt_profile.get_shape(tensor.name)[1] if trt_profile is not None else tensor.shape
    if any(size < 0 for size in dims_tuple(shape)):
        raise LdexportError(f"input {tensor.name!r} has no calibration shape")
    batches = None
    if options.calib_images is not None:
        props = {prop.key: prop.value for prop in model.metadata_props}
        batches = CalibrationBatches(
            list_images(options.calib_images, recursive=True),
            spec=read_input_spec(props, "the ONNX model"),
            shape=dims_tuple(shape),
            max_images=options.calib_max_images,
        )
    return entropy_calibrator(
        batches, cache_path=options.calib_cache, device=options.device, state=state
    )


def _load_timing_cache(config: trt.IBuilderConfig, path: Path | None) -> None:
    data = Path(path).read_bytes() if path is not None and Path(path).is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        _LOG.warning("timing cache %s is for another GPU or TensorRT; starting afresh", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _io_description(network: trt.INetworkDefinition, *, inputs: bool) -> dict[str, Any]:
    count = network.num_inputs if inputs else network.num_outputs
    tensors = [network.get_input(i) if inputs else network.get_output(i) for i in range(count)]
    return {t.name: {"shape": list(dims_tuple(t.shape)), "dtype": t.dtype.name} for t in tensors}
