"""Loading a serialized engine, after checking that it was built for this machine."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ldexport.errors import LdexportError
from ldexport.trt.backend import register_plugins, require_tensorrt
from ldexport.trt.sidecar import check_sidecar, installed_environment

if TYPE_CHECKING:
    import tensorrt as trt


@dataclasses.dataclass
class LoadedEngine:
    """A deserialised engine with the runtime and logger it needs kept alive."""

    engine: trt.ICudaEngine
    runtime: trt.Runtime
    logger: trt.ILogger
    path: Path


def load_engine(
    path: Path,
    *,
    device: int = 0,
    missing_sidecar: Literal["error", "warn"] = "error",
    verbose: bool = False,
) -> LoadedEngine:
    """Deserialises ``path`` once its sidecar matches the installed TensorRT and GPU.

    Args:
        path: the ``.engine`` file written by :func:`ldexport.trt.build.build_engine`.
        device: CUDA device index the engine will run on.
        missing_sidecar: ``"error"`` refuses an engine without ``<engine>.json``;
            ``"warn"`` loads it after a warning (TensorRT may then fail less clearly).
        verbose: log TensorRT's INFO messages.

    Raises:
        LdexportError: no TensorRT/CUDA, no such file, a sidecar mismatch (saying what
            differs), or TensorRT cannot deserialise it.
    """
    require_tensorrt()
    import tensorrt as trt
    import torch

    path = Path(path)
    if not path.is_file():
        raise LdexportError(f"no engine file {path}")
    check_sidecar(path, installed_environment(device), missing=missing_sidecar)
    logger = trt.Logger(trt.Logger.INFO if verbose else trt.Logger.WARNING)
    register_plugins(logger)  # an engine with a plugin layer (EfficientNMS_TRT) needs it
    runtime = trt.Runtime(logger)
    with torch.cuda.device(device):
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise LdexportError(f"TensorRT could not deserialise {path} (see the TensorRT log above)")
    return LoadedEngine(engine=engine, runtime=runtime, logger=logger, path=path)
