"""``parity_session``: one parity check from files, as ``ldexport parity`` and the demo run it.

It loads the student of a config and checkpoint (the one loader,
:func:`~ldexport.interop.checkpoint.load_detector`), refuses a graph exported from another
checkpoint or architecture, makes the cases with the graph's input contract, builds the
runners (ONNX Runtime; TensorRT when an engine is given) and calls
:func:`~ldexport.parity.check.check_parity`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from ldexport.config import Config
from ldexport.errors import LdexportError
from ldexport.export.metadata import ExportInfo, check_exported_from, read_onnx_info
from ldexport.interop.checkpoint import load_detector
from ldexport.parity.base import Runner
from ldexport.parity.check import DEFAULT_SCORE_ATOL, ParityReport, check_parity, default_box_atol
from ldexport.data.input_spec import INPUT_NAME, InputSpec
from ldexport.parity.inputs import DEFAULT_RANDOM_SIZES, image_cases, random_cases
from ldexport.parity.runners import OnnxRuntimeRunner, TorchRunner
from ldexport.parity.tolerance import fp32_tolerance, int8_tolerance
from ldexport.runtime.model import tensorrt_runner


def parity_session(
    config: Config,
    checkpoint: str | Path,
    onnx_path: str | Path,
    *,
    info: ExportInfo | None = None,
    engine: str | Path | None = None,
    reference: Literal["pytorch", "onnxruntime"] | str = "pytorch",
    images: Sequence[Path] = (),
    sizes: Sequence[tuple[int, int]] | None = (),
    batch: int = 2,
    box_atol: float | None = None,
    score_atol: float | None = None,
    precision: Literal["auto", "fp32", "int8"] = "auto",
) -> ParityReport:
    """Checks ``onnx_path`` (and ``engine``) against the student of ``config`` + ``checkpoint``.

    Args:
        config: the student's config (its ``model`` must be the graph's).
        checkpoint: the student's weights (the graph must have been exported from them).
        onnx_path: the graph.
        info: the graph's metadata, when already read.
        engine: a TensorRT engine built from the graph, also compared.
        reference: ``pytorch`` (the student) or ``onnxruntime`` (the graph, as reference of
            ``engine``).
        images: photographs (one a case, and a batch of ``batch`` for a dynamic graph).
        sizes: random input sizes: run as given (a static graph takes only its own);
            ``None``: the default cases (:func:`default_random_sizes`), which a quantized
            graph skips, saying so in the report's notes.
        batch: images in a batched case.
        box_atol, score_atol: fp32 tolerances (defaults: :func:`default_box_atol`,
            :data:`DEFAULT_SCORE_ATOL`); refused when the graph is judged at int8's.
        precision: whose tolerances judge the graph (:mod:`ldexport.parity.tolerance`);
            ``auto``: int8 for a quantized (Q/DQ) graph, else fp32.

    Raises:
        LdexportError: a mismatching config or checkpoint, a graph onnxruntime cannot run
            without an engine, sizes a static graph cannot take, fp32 tolerances for an
            int8 judgement or bad ones (negative, not finite), nothing to compare on.
    """
    info = info or read_onnx_info(onnx_path)
    if info.nms == "efficient" and (engine is None or reference == "onnxruntime"):
        raise LdexportError(f"{onnx_path} uses TensorRT's EfficientNMS_TRT plugin, which onnxruntime cannot run: give --trt ENGINE")
    if asdict(config.model) | {"pretrained": None} != asdict(info.model_config) | {"pretrained": None}:
        raise LdexportError(f"the config's model section differs from the one {onnx_path} was exported with")
    if reference == "onnxruntime" and engine is None:
        raise LdexportError("--reference onnxruntime compares a TensorRT engine with the ONNX model: give --trt ENGINE")
    from ldexport.quantize.graph import onnx_is_quantized

    quantized = onnx_is_quantized(onnx_path)
    precision = ("int8" if quantized else "fp32") if precision == "auto" else precision
    if precision == "int8" and (box_atol is not None or score_atol is not None):
        raise LdexportError(
            f"--box-atol/--score-atol are fp32's tolerances and {onnx_path} is judged at int8's: drop them, or give --precision fp32"
        )
    tolerance = int8_tolerance() if precision == "int8" else fp32_tolerance(
        box_atol if box_atol is not None else default_box_atol(config.model.reg_max, config.model.strides),
        score_atol if score_atol is not None else DEFAULT_SCORE_ATOL,
    )  # fmt: skip
    spec = info.input_spec
    notes: list[str] = []
    if sizes is None:
        sizes, note = default_random_sizes(spec, quantized, None if engine is None else _engine_largest(engine, spec))
        notes += [note] if note else []
    elif spec.fixed_size is not None:
        height, width = spec.fixed_size
        for size in sizes:
            spec.check_size(*size, onnx_path, hint=f': give --sizes {height}x{width}, or --sizes "" for no random inputs')
    if not images and not sizes:
        why = " (a quantized graph runs no random inputs unless --sizes is given)" if quantized else " or --sizes HxW,..."
        raise LdexportError(f"nothing to compare on: give --images DIR{why}")
    loaded = load_detector(config.model, checkpoint)
    check_exported_from(
        onnx_path, (info.checkpoint_sha256, info.weights_sha256), checkpoint, (loaded.checkpoint_sha256, lambda: loaded.weights_sha256)
    )
    cases = image_cases(list(images), spec)
    if spec.fixed_batch is None and len(images) > 1 and batch > 1:
        cases += image_cases(list(images)[:batch], spec, batch=batch)
    cases += random_cases(sizes, spec, batch=batch)
    onnx_runner = None if info.nms == "efficient" else OnnxRuntimeRunner(onnx_path)
    reference_runner: Runner
    candidates: list[Runner] = []
    if reference == "onnxruntime" and onnx_runner is not None:
        reference_runner = onnx_runner
    else:
        reference_runner = TorchRunner(loaded.model, test_cfg=info.test_cfg, spec=spec, detections=info.detections)
        candidates += [onnx_runner] if onnx_runner is not None else []
    if engine is not None:
        candidates.append(tensorrt_runner(engine))
    report = check_parity(
        reference_runner,
        candidates,
        cases,
        strides=config.model.strides,
        test_cfg=info.test_cfg,
        detections=info.detections,
        tolerance=tolerance,
    )
    report.notes += notes
    return report


def default_random_sizes(
    spec: InputSpec, quantized: bool, engine_largest: tuple[int, int] | None = None
) -> tuple[list[tuple[int, int]], str | None]:
    """The random inputs parity runs unless told, and a note saying why when that is not
    the sizes themselves.

    A dynamic graph: :data:`DEFAULT_RANDOM_SIZES` and the largest input its contract makes
    (:meth:`InputSpec.largest_input`: the size deployment feeds at most, where the coarsest
    levels have the most cells), those an engine's profile takes (``engine_largest``). A
    static graph: its own size. A quantized graph: none, since its scales were calibrated
    on photographs: uniform noise lies outside that range, and its int8 error there (a p99
    score error of 0.27 on the demo's student) says nothing about the photographs it will
    be given.
    """
    if quantized:
        return [], (
            "random-noise inputs skipped: the graph is quantized, its int8 ranges were calibrated on photographs "
            "and noise falls outside them (give --sizes HxW,... to run them anyway)"
        )
    if spec.fixed_size is not None:
        height, width = spec.fixed_size
        return [spec.fixed_size], f"random inputs at {height}x{width} only: the graph is static"
    sizes = list(dict.fromkeys((*DEFAULT_RANDOM_SIZES, spec.largest_input())))
    if engine_largest is None:
        return sizes, None
    taken = [size for size in sizes if size[0] <= engine_largest[0] and size[1] <= engine_largest[1]]
    skipped = ", ".join(f"{height}x{width}" for height, width in sizes if (height, width) not in taken)
    if not skipped:
        return taken, None
    return taken, f"random inputs of {skipped} skipped: above the engine's profile ({engine_largest[0]}x{engine_largest[1]})"


def _engine_largest(engine: str | Path, spec: InputSpec) -> tuple[int, int] | None:
    """``(H, W)`` of the largest input in ``engine``'s profile (its sidecar), if recorded."""
    from ldexport.trt.sidecar import read_sidecar

    largest = ((read_sidecar(Path(engine)) or {}).get("profile") or {}).get(INPUT_NAME, {}).get("max")
    if not isinstance(largest, list) or len(largest) != 4:
        return None
    return (int(largest[1]), int(largest[2])) if spec.preprocess_in_graph else (int(largest[2]), int(largest[3]))
