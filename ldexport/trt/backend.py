"""Is a real TensorRT and a CUDA GPU available here?

``tensorrt-stubs`` installs a ``tensorrt/`` folder holding only ``.pyi`` files, so a bare
``import tensorrt`` succeeds as an empty namespace package on machines without TensorRT.
A real TensorRT is recognised by its ``Builder`` class and a module ``__file__``.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

import numpy as np

from ldexport.errors import LdexportError

if TYPE_CHECKING:
    import tensorrt as trt
    import torch

_LOG = logging.getLogger(__name__)


def tensorrt_missing_reason() -> str | None:
    """Returns why TensorRT cannot be used here, or ``None`` when a real one is installed."""
    try:
        module = importlib.import_module("tensorrt")
    except (ImportError, OSError) as error:  # OSError: libnvinfer missing or broken
        return f"TensorRT is not installed ({error})"
    if getattr(module, "__file__", None) is None or not hasattr(module, "Builder"):
        return "TensorRT is not installed (only type stubs were found)"
    return None


def cuda_missing_reason() -> str | None:
    """Returns why no CUDA GPU can be used through torch, or ``None`` when one can."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is available to torch"
    return None


def backend_missing_reason() -> str | None:
    """Returns why TensorRT engines cannot be built or run here, or ``None``."""
    return tensorrt_missing_reason() or cuda_missing_reason()


def require_tensorrt(*, cuda: bool = True) -> None:
    """Raises :class:`LdexportError` unless a real TensorRT (and, by default, CUDA) is here.

    Call it before ``import tensorrt`` so that a machine with only the stubs gets one
    clear line instead of an ``AttributeError`` deep inside a build.
    """
    reason = tensorrt_missing_reason() or (cuda_missing_reason() if cuda else None)
    if reason is not None:
        raise LdexportError(f"TensorRT/CUDA is not available: {reason}")


def register_plugins(logger: trt.ILogger) -> None:
    """Registers libnvinfer_plugin's plugins (``EfficientNMS_TRT``, ...) with TensorRT.

    TensorRT's Python module registers none by itself: the ONNX parser imports a plugin op
    only when its creator is in the registry ("Any custom plugins must be registered with
    TensorRT's plugin registry in order for it to be visible to the onnx-tensorrt parser"),
    and an engine holding a plugin layer deserialises only when it is registered too.
    Call it before parsing and before deserialising (Polygraphy does both); calling it
    again is harmless.
    """
    import tensorrt as trt

    if not trt.init_libnvinfer_plugins(logger, ""):
        _LOG.warning("TensorRT could not register libnvinfer_plugin's plugins (EfficientNMS_TRT)")


def dims_tuple(dims: trt.Dims) -> tuple[int, ...]:
    """A TensorRT ``Dims`` as a tuple of ints (``-1`` for a dynamic size)."""
    return tuple(int(dims[index]) for index in range(len(dims)))


def torch_dtype(dtype: trt.DataType) -> torch.dtype:
    """The torch dtype of a TensorRT tensor type."""
    import tensorrt as trt
    import torch

    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.int8: torch.int8,
        trt.uint8: torch.uint8,
        trt.bool: torch.bool,
    }
    if dtype not in table:
        raise LdexportError(f"TensorRT tensor type {dtype} has no torch equivalent")
    return table[dtype]


def numpy_dtype(dtype: trt.DataType) -> np.dtype:
    """The numpy dtype of a TensorRT tensor type (bfloat16 has none)."""
    import torch

    torch_type = torch_dtype(dtype)
    if torch_type == torch.bfloat16:
        raise LdexportError("a bfloat16 tensor has no numpy equivalent")
    return torch.empty(0, dtype=torch_type).numpy().dtype
