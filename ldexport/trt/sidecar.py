"""The JSON file beside an engine that says what it was built with and for.

A TensorRT engine only runs under the TensorRT release that built it and is tuned for one
GPU model. ``model.engine`` gets ``model.engine.json``::

    {
      "format": 1,
      "ldexport_version": "0.1.0",
      "tensorrt_version": "10.13.0.35",
      "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": [9, 0]},
      "precision": {"fp16": true, "int8": false, "decode_fp32_layers": 17},
      "profile": {"images": {"min": [1, 3, 320, 320], "opt": [...], "max": [...]}},
      "inputs": {"images": {"shape": [-1, 3, -1, -1], "dtype": "float32"}},
      "onnx": {"file": "model.onnx", "sha256": "...", "metadata": {the ONNX metadata_props}}
    }

:func:`compare_environment` is a pure function of the sidecar and of what is installed,
so the mismatch logic is tested without TensorRT or a GPU.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from ldexport.errors import LdexportError
from ldexport.io import atomic_write_bytes

SIDECAR_FORMAT = 1
SIDECAR_SUFFIX = ".json"


def sidecar_path(engine_path: Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def write_sidecar(engine_path: Path, sidecar: Mapping[str, Any]) -> Path:
    """Writes the sidecar of ``engine_path`` atomically; returns its path."""
    path = sidecar_path(engine_path)
    text = json.dumps({"format": SIDECAR_FORMAT, **sidecar}, indent=2, sort_keys=True)
    atomic_write_bytes(path, (text + "\n").encode())
    return path


def read_sidecar(engine_path: Path) -> dict[str, Any] | None:
    """The sidecar of ``engine_path``, or ``None`` when there is none.

    Raises:
        LdexportError: the sidecar exists but is not a JSON object.
    """
    path = sidecar_path(engine_path)
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise LdexportError(f"cannot read engine sidecar {path}: {error}") from None
    if not isinstance(value, dict):
        raise LdexportError(f"engine sidecar {path} is not a JSON object")
    return value


def installed_environment(device: int = 0) -> dict[str, Any]:
    """The installed TensorRT version and the GPU, in the sidecar's layout.

    Needs a real TensorRT and CUDA (see :func:`ldexport.trt.backend.require_tensorrt`).
    """
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return {
        "tensorrt_version": trt.__version__,
        "gpu": {
            "name": torch.cuda.get_device_name(device),
            "compute_capability": [major, minor],
        },
    }


def compare_environment(sidecar: Mapping[str, Any], installed: Mapping[str, Any]) -> list[str]:
    """What differs between the engine's build environment and the installed one.

    Args:
        sidecar: the engine's sidecar (``tensorrt_version``, ``gpu.name``,
            ``gpu.compute_capability``).
        installed: the same keys for this machine (:func:`installed_environment`).

    Returns:
        One sentence per difference; empty when the engine can be loaded here.
    """
    differences = []
    built_trt, here_trt = sidecar.get("tensorrt_version"), installed.get("tensorrt_version")
    if built_trt != here_trt:
        differences.append(f"TensorRT {built_trt} built it, TensorRT {here_trt} is installed")
    built_gpu, here_gpu = dict(sidecar.get("gpu") or {}), dict(installed.get("gpu") or {})
    built_cc = _capability(built_gpu.get("compute_capability"))
    here_cc = _capability(here_gpu.get("compute_capability"))
    if built_cc != here_cc:
        differences.append(
            f"it was built for compute capability {built_cc}, this GPU has {here_cc}"
        )
    if built_gpu.get("name") != here_gpu.get("name"):
        differences.append(
            f"it was built on GPU {built_gpu.get('name')!r}, this GPU is {here_gpu.get('name')!r}"
        )
    return differences


def _capability(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]}.{value[1]}"
    return "unknown" if value is None else str(value)


def check_sidecar(
    engine_path: Path,
    installed: Mapping[str, Any],
    *,
    missing: Literal["error", "warn"] = "error",
) -> None:
    """Refuses an engine whose sidecar does not match ``installed``.

    Args:
        engine_path: the engine; its sidecar is ``<engine>.json``.
        installed: from :func:`installed_environment`.
        missing: ``"error"`` (default) or ``"warn"``: what a missing sidecar does.

    Raises:
        LdexportError: the sidecar differs (the message says exactly how), or is missing
            and ``missing == "error"``.
    """
    sidecar = read_sidecar(engine_path)
    if sidecar is None:
        message = (
            f"engine {engine_path} has no sidecar {sidecar_path(engine_path).name}, so its "
            "TensorRT version and GPU cannot be checked; rebuild it with `ldexport trt`"
        )
        if missing == "error":
            raise LdexportError(message)
        warnings.warn(message, stacklevel=2)
        return
    differences = compare_environment(sidecar, installed)
    if differences:
        raise LdexportError(
            f"engine {engine_path} does not match this machine: {'; '.join(differences)}; "
            "rebuild it here with `ldexport trt`"
        )
