"""The TensorRT parity runner: an engine run on torch CUDA buffers.

Each call sets the input shapes (``set_input_shape``), points TensorRT at torch CUDA input
tensors (``set_tensor_address``), enqueues ``execute_async_v3`` on a torch CUDA stream, and
copies the outputs back as numpy arrays.

Every output goes through one ``IOutputAllocator`` that hands out torch tensors, as
Polygraphy's ``TrtRunner`` does. TensorRT calls an output's allocator whenever one is set
(``reallocateOutputAsync`` gets the address given by ``setTensorAddress`` as
``currentMemory``, and TensorRT writes wherever the allocator's return value points), so an
output must not be both preallocated and given an allocator that returns other memory. One
path for all outputs serves the fixed ones, those sized by the input shapes, and those
whose shape depends on the data (``NonMaxSuppression``, ``NonZero``) alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from ldexport.errors import LdexportError
from ldexport.parity.base import Runner
from ldexport.trt.backend import dims_tuple, torch_dtype
from ldexport.trt.engine import load_engine

if TYPE_CHECKING:
    import tensorrt as trt
    import torch


class TensorRTRunner(Runner):
    """Runs a serialized engine on CUDA through torch buffers.

    Args:
        engine_path: the ``.engine`` file (its ``.json`` sidecar is checked first).
        device: CUDA device index.
        missing_sidecar: ``"error"`` or ``"warn"``, see :func:`ldexport.trt.engine.load_engine`.
    """

    name = "tensorrt"

    def __init__(
        self,
        engine_path: Path,
        *,
        device: int = 0,
        missing_sidecar: Literal["error", "warn"] = "error",
    ) -> None:
        self._loaded = load_engine(
            Path(engine_path), device=device, missing_sidecar=missing_sidecar
        )
        import tensorrt as trt  # after load_engine, which checks that it is the real one
        import torch

        engine = self._loaded.engine
        self._device = torch.device("cuda", device)
        with torch.cuda.device(self._device):  # the context's memory goes on the current device
            self._stream = torch.cuda.Stream(self._device)
            self._context = engine.create_execution_context()
        if self._context is None:
            raise LdexportError(f"TensorRT could not create an execution context for {engine_path}")
        names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
        modes = {name: engine.get_tensor_mode(name) for name in names}
        self.input_names = [name for name in names if modes[name] == trt.TensorIOMode.INPUT]
        self.output_names = [name for name in names if modes[name] == trt.TensorIOMode.OUTPUT]
        self._outputs = _OutputBuffers(self._device)
        self._allocator = _make_output_allocator(self._outputs)  # TensorRT keeps a raw pointer
        for output_name in self.output_names:
            if not self._context.set_output_allocator(output_name, self._allocator):
                raise LdexportError(f"TensorRT refused an output allocator for {output_name!r}")

    @property
    def placement(self) -> str:
        """The CUDA device the engine runs on."""
        return str(self._device)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the engine on ``feeds`` (input name -> array) and returns every output."""
        import torch

        engine, context = self._loaded.engine, self._context
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise LdexportError(f"missing inputs {missing}; the engine takes {self.input_names}")
        keep_alive = []
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            for name in self.input_names:
                # copied on self._stream (the current stream here), which TensorRT runs on
                tensor = self._to_device(name, feeds[name])
                keep_alive.append(tensor)
                shape = tuple(tensor.shape)
                if not context.set_input_shape(name, shape):
                    raise LdexportError(f"TensorRT rejected shape {shape} for input {name!r}")
                if not context.set_tensor_address(name, tensor.data_ptr()):
                    raise LdexportError(f"TensorRT rejected the buffer of input {name!r}")
            self._outputs.shapes.clear()  # no stale shape of a data-dependent output
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise LdexportError(f"TensorRT failed to run {self._loaded.path} (see its log)")
            self._stream.synchronize()
            outputs: dict[str, torch.Tensor] = {}
            for name in self.output_names:
                # known from the input shapes, else (data-dependent) as TensorRT notified it
                shape = dims_tuple(context.get_tensor_shape(name))
                if all(size >= 0 for size in shape):
                    self._outputs.shapes[name] = shape
                outputs[name] = self._outputs.output(name, torch_dtype(engine.get_tensor_dtype(name)))
        return {name: _to_numpy(tensor) for name, tensor in outputs.items()}

    def _to_device(self, name: str, array: np.ndarray) -> torch.Tensor:
        """The feed as a contiguous CUDA tensor of the engine's dtype and within its profile."""
        import torch

        engine = self._loaded.engine
        dtype = torch_dtype(engine.get_tensor_dtype(name))
        host = torch.from_numpy(np.ascontiguousarray(array))
        if host.dtype != dtype:
            if host.dtype.is_floating_point != dtype.is_floating_point:
                raise LdexportError(f"input {name!r} is {array.dtype}; the engine takes {dtype}")
            host = host.to(dtype)
        if self._is_dynamic(name):
            low, _, high = (dims_tuple(dims) for dims in engine.get_tensor_profile_shape(name, 0))
            shape = tuple(host.shape)
            inside = all(lo <= size <= hi for size, lo, hi in zip(shape, low, high))
            if len(shape) != len(low) or not inside:
                raise LdexportError(
                    f"input {name!r} has shape {shape}, outside the engine's profile {low}..{high}"
                )
        return host.to(self._device, non_blocking=True)

    def _is_dynamic(self, name: str) -> bool:
        return any(size < 0 for size in dims_tuple(self._loaded.engine.get_tensor_shape(name)))


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()  # numpy has no bfloat16
    return tensor.cpu().numpy()


class _OutputBuffers:
    """The outputs' device buffers, grown when TensorRT asks for more, and their shapes.

    Args:
        device: the CUDA device (a CPU device works too, which the tests use).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.buffers: dict[str, torch.Tensor] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    def buffer(self, name: str, size: int, alignment: int = 1) -> int:
        """A pointer to at least ``size`` bytes for output ``name``, aligned to ``alignment``.

        The buffer is kept and reused while it is large enough.
        """
        import torch

        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < size or buffer.data_ptr() % max(alignment, 1):
            # torch's allocations are 512-byte aligned on CUDA, more than TensorRT asks for
            buffer = torch.empty(max(size, 1), dtype=torch.uint8, device=self.device)
            self.buffers[name] = buffer
        return buffer.data_ptr()

    def output(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """A copy of the output as TensorRT last shaped it.

        Raises:
            LdexportError: TensorRT did not report the output's shape during the run.
        """
        import torch

        if name not in self.shapes or name not in self.buffers:
            raise LdexportError(f"TensorRT did not report output {name!r} to its allocator")
        shape = self.shapes[name]
        count = int(np.prod(shape)) if shape else 1
        element = torch.empty((), dtype=dtype).element_size()
        return self.buffers[name][: count * element].view(dtype).reshape(shape).clone()


def _make_output_allocator(outputs: _OutputBuffers) -> trt.IOutputAllocator:
    """An ``IOutputAllocator`` keeping every output in ``outputs``."""
    import tensorrt as trt

    class _Allocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)

        def reallocate_output(
            self, tensor_name: str, memory: int, size: int, alignment: int
        ) -> int:
            return outputs.buffer(tensor_name, size, alignment)

        # TensorRT 10 calls this one (reallocate_output is its deprecated fallback); it runs
        # inside execute_async_v3, where torch's current stream is the runner's stream.
        def reallocate_output_async(
            self, tensor_name: str, memory: int, size: int, alignment: int, stream: int
        ) -> int:
            return outputs.buffer(tensor_name, size, alignment)

        def notify_shape(self, tensor_name: str, shape: trt.Dims) -> None:
            outputs.shapes[tensor_name] = dims_tuple(shape)

    return _Allocator()
