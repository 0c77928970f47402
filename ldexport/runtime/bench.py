"""``bench_model``: how fast a model runs, for one input shape and batch.

Inputs are random images of exactly ``H x W`` fed through the model's input contract (so a
graph with preprocessing gets bytes, a plain one normalised floats). After ``warmup``
untimed runs, each of ``runs`` calls of the runner is timed with ``time.perf_counter``:
a call takes numpy in and gives numpy out, so it includes the copies to and from the
device and whatever the model holds (the decoding; NMS when it is in the graph; for a
checkpoint, the dense decoding a graph without NMS holds, no NMS). Latency percentiles are
per call; images/s is the batch over the median call.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ldexport.errors import LdexportError
from ldexport.export.options import check_image_size
from ldexport.runtime.model import RuntimeModel


@dataclass(frozen=True)
class BenchResult:
    """One model at one shape and batch.

    Attributes:
        model: the runner's name and what it ran (``onnxruntime CPUExecutionProvider``).
        height, width, batch: the input.
        runs: timed calls.
        p50_ms, p90_ms, p99_ms, mean_ms: latency of one call, milliseconds.
        images_per_s: ``batch / p50``.
    """

    model: str
    height: int
    width: int
    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float

    def to_json(self) -> dict:
        """As JSON-able data."""
        return dataclasses.asdict(self)


def bench_feeds(model: RuntimeModel, height: int, width: int, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random images of exactly ``height x width`` as the model's input.

    Raises:
        LdexportError: a shape or batch the model refuses (a static model takes only its
            own; every model needs multiples of 32, at least 64).
    """
    check_image_size(height, width, "bench shape")
    model.spec.check_size(height, width, model.source)
    batch = model.run_batch(batch)
    return model.spec.random_feed(height, width, batch, torch.Generator().manual_seed(seed)).feeds


def bench_model(model: RuntimeModel, height: int, width: int, *, batch: int = 1, warmup: int = 5, runs: int = 50) -> BenchResult:
    """Times ``model`` (see the module doc).

    Raises:
        LdexportError: a shape the model refuses, or ``runs < 1``.
    """
    if runs < 1:
        raise LdexportError(f"bench needs at least one timed run, got {runs}")
    feeds = bench_feeds(model, height, width, batch)
    milliseconds = time_calls({"model": lambda: model.runner.infer(feeds)}, warmup=warmup, runs=runs)["model"]
    p50, p90, p99 = (float(np.percentile(milliseconds, q)) for q in (50, 90, 99))
    return BenchResult(
        model=describe(model),
        height=height,
        width=width,
        batch=batch,
        runs=runs,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=float(milliseconds.mean()),
        images_per_s=batch / (p50 / 1e3),
    )


def time_calls(calls: Mapping[str, Callable[[], object]], *, warmup: int, runs: int) -> dict[str, np.ndarray]:
    """Milliseconds of each of ``runs`` calls of every function, timed round-robin.

    One call of each function per round, so that a machine busy with other work slows
    them alike (side-by-side ratios stay meaningful); ``warmup`` untimed rounds first.

    Returns:
        name -> ``[runs]`` milliseconds.
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: np.asarray(values) for name, values in times.items()}


def describe(model: RuntimeModel) -> str:
    """The runner and where it runs: ``pytorch cpu fp32``, ``onnxruntime CPUExecutionProvider``."""
    runner = model.runner
    providers = getattr(runner, "providers", None)
    if providers:
        return f"{runner.name} {providers[0]}"
    device = getattr(runner, "device", None)
    if device is not None:
        autocast = getattr(runner, "autocast", None)
        return f"{runner.name} {device} {'fp32' if autocast is None else str(autocast).removeprefix('torch.')}"
    return runner.name


def format_results(results: list[BenchResult]) -> str:
    """A table, one row a result."""
    header = ("model", "shape", "batch", "p50 ms", "p90 ms", "p99 ms", "images/s")
    rows = [
        (r.model, f"{r.height}x{r.width}", str(r.batch), f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.images_per_s:.1f}")
        for r in results
    ]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in [header, *rows])
