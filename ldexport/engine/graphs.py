"""The LD step's forward and backward pass replayed as CUDA graphs (``train.cuda_graphs``).

On a GPU the eager step is bound by the host, not by the device: about 1,250 operations
(frozen teacher, student, assignment, losses, backward; 3,000 kernel launches on an H200),
each some Python and a launch, cost more than the arithmetic they launch. A CUDA graph records those launches
once and replays them with one. The step was written for this: fixed shapes for a given
batch shape, no host synchronisation, no data-dependent allocation.

What a graph holds: the distiller's forward pass (under autocast when asked), the loss
terms and the "not finite" flag stacked into one small tensor, and the backward pass,
which accumulates into gradient tensors allocated once, outside every graph, and zeroed
first thing inside it (so every graph writes the same ``.grad`` tensors). What stays
eager: copying the batch into the graph's input tensors, the one read-back, gradient
clipping, the optimizer step and the learning-rate schedule (the rate changes every step
and is a Python number to the optimizer).

One graph per input key (the padded image batch's shape and dtype, and the padded box
and ignore-box counts). The images keep mmdet's padding (to 32 px): padding further, to a
few bucket sizes, would mean fewer graphs but other numbers, since the padded area enters
the head's GroupNorm statistics. Box counts are padded to at least ``MIN_BOXES`` (masked
boxes change nothing), so that few keys share an image shape. A key is captured the second
time it comes (``capture_at``), its first batch runs eagerly: a shape that never returns
costs no capture. (coco128 at 1333x800, batch 16: 7 of the 12 keys of 3 epochs come once;
over 36 epochs 35 keys, 18 with ``MIN_BOXES`` 64 instead of 16.) Every graph draws on one
memory pool. That is safe here because they replay one at a time on one stream and the
only memory a graph hands out (its flags) is read before the next replay. Beyond
``max_graphs`` keys a batch runs eagerly; so does every batch after a capture that failed
(a model with an operation that cannot be captured, such as the host-built constants of the
deformable convolution), with one warning.

Before a key's capture, its step runs ``warmup`` times eagerly on a side stream (cuDNN's
autotuning, the anchor grid and other lazily built constants, autograd's own set-up).
Those passes update no weight, and the buffers they change (BatchNorm's running
statistics) are put back, so a run with graphs trains exactly as many steps as one
without. The capture checks only its own thread's CUDA calls (``thread_local``): the data
loader's pinning thread goes on while a graph is captured. A new key costs seconds (the
warm-up passes and the capture); a replay saves the launch
overhead of the eager step, which is what bounds small batches (measured on an H200 at
batch 2, 1024x1024: 1.45x fp32, 1.64x bf16), and nothing where the GPU already bounds the
step (batch 16 at 1333x800).

With ``train.compile`` the graph holds the compiled kernels: the step's parts are compiled
(``torch.compile``'s default mode, which makes no graph of its own) in the warm-up passes,
and the capture records what they launch, so that fewer, fused kernels are replayed with
one launch. A compilation cannot run inside a capture (it copies to and from the device),
so the capture runs under ``torch.compiler.set_stance("eager_on_recompile")``: code that
would need compiling anew there is recorded eagerly instead, the same arithmetic.

Only where it applies: CUDA, one process (DDP's gradient hooks are not captured) and no
fp16 gradient scaler (its inf checks read the device). :func:`graphs_apply` says so.

Legend: ``T`` loss terms.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from ldexport.assign.ground_truth import GroundTruth

# Box counts padded to at least this for a graphed step: fewer keys, at a small cost in
# assignment (ATSS is linear in the padded count: its [N, A, 64] overlaps are 11 MB a
# tensor at batch 2 and 1333x800). COCO's images have 7 boxes on average; a batch of 16
# reaches 32 or 64.
MIN_BOXES = 64

# What a graphed function computes: the ``[T + 1]`` loss terms and not-finite flag, and
# the terms' names; its backward pass runs inside it.
StepFunction = Callable[[Tensor, GroundTruth], tuple[Tensor, list[str]]]


def graphs_apply(device: torch.device, *, world_size: int, amp_dtype: torch.dtype | None) -> str | None:
    """``None`` when the step can be replayed as CUDA graphs, else why not."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if world_size > 1:
        return "CUDA graphs are used in single-process runs only (DDP's gradient all-reduce is not captured)"
    if amp_dtype is torch.float16:
        return "fp16's gradient scaler reads the device every step; use train.amp=bf16"
    return None


@dataclass
class _Captured:
    """One key's graph and the tensors it reads and writes."""

    graph: torch.cuda.CUDAGraph
    images: Tensor
    ground_truth: GroundTruth
    flags: Tensor
    names: list[str]


def _key(images: Tensor, ground_truth: GroundTruth) -> tuple[object, ...]:
    shapes = (tuple(getattr(ground_truth, field.name).shape) for field in fields(GroundTruth))
    return (tuple(images.shape), images.dtype, images.stride(), *shapes)


class GraphedStep:
    """Replays ``step`` (forward and backward of one batch) as CUDA graphs, one per key.

    Args:
        step: runs the forward and backward pass of ``(images, ground_truth)`` and returns
            the ``[T + 1]`` flags and the ``T`` names (see :data:`StepFunction`).
        parameters: the trained parameters, whose ``.grad`` the backward pass writes.
        modules: the models whose buffers the warm-up passes must leave unchanged.
        warmup: eager passes before a capture.
        max_graphs: keys captured at most; later keys return ``None`` (run eagerly).
        capture_at: a key is captured the ``capture_at``-th time it comes; until then its
            batches return ``None`` (run eagerly).
    """

    def __init__(
        self,
        step: StepFunction,
        parameters: Sequence[nn.Parameter],
        modules: Sequence[nn.Module],
        *,
        warmup: int = 2,
        max_graphs: int = 32,
        capture_at: int = 2,
    ):
        self.step = step
        self.parameters = list(parameters)
        self.modules = list(modules)
        self.warmup = warmup
        self.max_graphs = max_graphs
        self.capture_at = capture_at
        self._sightings: Counter[tuple[object, ...]] = Counter()  # keys not captured (yet), times seen
        self._graphs: dict[tuple[object, ...], _Captured] = {}
        self._pool: Any = None  # torch.cuda.graph_pool_handle(), made at the first capture
        self.failed: str | None = None  # why a capture failed; then every batch runs eagerly

    def __len__(self) -> int:
        return len(self._graphs)

    def __call__(self, images: Tensor, ground_truth: GroundTruth) -> tuple[Tensor, list[str]] | None:
        """Runs the step on this batch; ``None`` when it is one key too many (run it eagerly).

        Returns:
            The ``[T + 1]`` flags on the device (valid until the next call) and the names.
        """
        key = _key(images, ground_truth)
        captured = self._graphs.get(key)
        if captured is None:
            if self.failed is not None or len(self._graphs) >= self.max_graphs:
                return None
            self._sightings[key] += 1
            if self._sightings[key] < self.capture_at:
                return None
            try:
                captured = self._capture(images, ground_truth)
            except RuntimeError as error:  # an operation that a graph cannot hold
                self.failed = str(error).splitlines()[0]
                warnings.warn(f"CUDA graph capture failed, the steps run eagerly: {self.failed}", stacklevel=2)
                torch.cuda.synchronize()
                return None
            self._graphs[key] = captured
        captured.images.copy_(images)
        for field in fields(GroundTruth):
            getattr(captured.ground_truth, field.name).copy_(getattr(ground_truth, field.name))
        captured.graph.replay()
        return captured.flags, captured.names

    def zero_grad(self) -> None:
        """Zeroes the gradients in place (an eager step between replays must keep them)."""
        grads = [p.grad for p in self.parameters if p.grad is not None]
        if grads:
            torch._foreach_zero_(grads)

    def _capture(self, images: Tensor, ground_truth: GroundTruth) -> _Captured:
        static_images = images.clone()
        static_truth = GroundTruth(**{f.name: getattr(ground_truth, f.name).clone() for f in fields(GroundTruth)})
        for parameter in self.parameters:
            if parameter.grad is None:  # outside the graph: every graph accumulates into these
                parameter.grad = torch.zeros_like(parameter)
        buffers = [b for module in self.modules for b in module.buffers()]
        saved = [b.clone() for b in buffers]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.step(static_images, static_truth)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.compiler.set_stance("eager_on_recompile"), torch.cuda.graph(
            graph, pool=self._pool, capture_error_mode="thread_local"
        ):
            self.zero_grad()  # recorded: every replay starts from zero
            flags, names = self.step(static_images, static_truth)
        return _Captured(graph=graph, images=static_images, ground_truth=static_truth, flags=flags, names=names)
