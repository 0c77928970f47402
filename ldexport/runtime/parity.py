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
from ldexport.export.metadata import ExportInfo, read_onnx_info
from ldexport.interop.checkpoint import load_detector
from ldexport.parity.base import Runner
from ldexport.parity.check import DEFAULT_SCORE_ATOL, ParityReport, check_parity, default_box_atol
from ldexport.parity.inputs import image_cases, random_cases
from ldexport.parity.runners import OnnxRuntimeRunner, TorchRunner
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
    sizes: Sequence[tuple[int, int]] = (),
    batch: int = 2,
    box_atol: float | None = None,
    score_atol: float = DEFAULT_SCORE_ATOL,
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
        sizes: random input sizes (dynamic graphs).
        batch: images in a batched case.
        box_atol, score_atol: tolerances (box default: :func:`default_box_atol`).

    Raises:
        LdexportError: a mismatching config or checkpoint, a graph onnxruntime cannot run
            without an engine, nothing to compare with.
    """
    info = info or read_onnx_info(onnx_path)
    if info.nms == "efficient" and (engine is None or reference == "onnxruntime"):
        raise LdexportError(f"{onnx_path} uses TensorRT's EfficientNMS_TRT plugin, which onnxruntime cannot run: give --trt ENGINE")
    if asdict(config.model) | {"pretrained": None} != asdict(info.model_config) | {"pretrained": None}:
        raise LdexportError(f"the config's model section differs from the one {onnx_path} was exported with")
    if reference == "onnxruntime" and engine is None:
        raise LdexportError("--reference onnxruntime compares a TensorRT engine with the ONNX model: give --trt ENGINE")
    loaded = load_detector(config.model, checkpoint)
    if loaded.checkpoint_sha256 != info.checkpoint_sha256:
        raise LdexportError(f"{onnx_path} was exported from another checkpoint than {checkpoint} (sha256 differs)")
    spec = info.input_spec
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
    return check_parity(
        reference_runner,
        candidates,
        cases,
        strides=config.model.strides,
        test_cfg=info.test_cfg,
        detections=info.detections,
        box_atol=box_atol if box_atol is not None else default_box_atol(config.model.reg_max, config.model.strides),
        score_atol=score_atol,
    )
