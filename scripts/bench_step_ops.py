"""Operation count of one LD training step (issue #10): how many top-level aten operations
the step dispatches, by part, and which host-synchronising operations it contains.

On a GPU every dispatched operation costs a kernel launch and Python time whatever its
size, and every ``nonzero``, ``item``, ``masked_select``, ``unique`` or boolean-mask index
waits for the device; on a CPU the same counts are measurable, and they are what this
script prints. The step is ``ldexport.engine.loop``'s: the frozen teacher, the student,
assignment and losses, the one read-back of the loss terms, backward, and ``foreach`` SGD,
for an R18 student and an R101 teacher (80 classes, 256 channels, ``reg_max`` 16), batch 2
at 256x256, eager, fp32, on the CPU.

Counted are the operator events of the torch profiler (``aten::``, and ``mkldnn::`` for
oneDNN's fused convolutions, which the frozen teacher runs on CPU) that have no operator
ancestor (an ``aten::conv2d`` counts once, not with the ``aten::convolution`` under it);
the backward's operations count too (their parents are autograd nodes, not operators). Each
is attributed to the part of the step it ran in (``record_function`` ranges); ``inputs``
is the copy of the padded ground truth to the device (the loader's workers pad it:
``BatchCollator(min_boxes=...)``; on the CPU the copies are no-ops that still dispatch).

With ``--device cuda`` it answers the question the counts stand for: is the step bound by
the host or by the GPU? It times warm steps end to end (the device synchronised around
them), profiles a few with CUDA activity, and prints per step the wall time, the GPU's busy
time (the sum of its kernels' and copies' durations: one stream, so they do not overlap),
the kernel launches, and the host time spent in each part of the step. A wall time far
above the GPU's busy time is a step bound by Python and launches. (The busy time is the
union of the device events' intervals; the first version summed their durations, which
the profiler's event list over-counts. The union has not yet run on a GPU.) It also lists
the kernels that take the most GPU time. ``--mode graph`` measures the step as ``ldexport
train`` runs it by default on CUDA: the forward and backward pass replayed as one CUDA
graph (``ldexport.engine.graphs.GraphedStep``), the SGD step eager; ``--channels-last``
puts the student and the images in channels-last memory (``train.channels_last``). Neither
has run on a GPU yet. ``--mode compiled`` compiles the student, the teacher and the
criterion as ``train.compile`` does: on CUDA the compiled step replayed as a graph; on the
CPU the compiled step's count, in which each of inductor's fused C++ kernels counts as one
operation (the stand-in for the Triton kernels a GPU would launch; compiling takes about
two minutes on 2 cores the first time, seconds with inductor's cache).

Usage:
    python scripts/bench_step_ops.py [--size 256] [--batch 2] [--out step_ops.json]
    python scripts/bench_step_ops.py --device cuda --size 1024 --amp fp32 bf16 --out step_cuda.json
    python scripts/bench_step_ops.py --device cuda --size 1024 --amp bf16 --mode eager graph --channels-last
    python scripts/bench_step_ops.py --mode compiled
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import NUM_CLASSES, STUDENT, TEACHER, make_batch  # noqa: E402

from ldexport.assign.ground_truth import pad_ground_truth  # noqa: E402
from ldexport.config import TrainConfig  # noqa: E402
from ldexport.distill import Distiller  # noqa: E402
from ldexport.engine.build import build_optimizer  # noqa: E402
from ldexport.engine.graphs import MIN_BOXES  # noqa: E402
from ldexport.engine.loop import graphed_step, loss_flags  # noqa: E402
from ldexport.losses.ld_criterion import LDCriterion  # noqa: E402
from ldexport.model import build_detector  # noqa: E402

# The targets of issue #10 (CPU, batch 2 at 256x256, eager, foreach SGD).
TARGETS = {"step": 1200, "teacher": 300, "assignment_and_losses": 200}
SYNCHRONISING = ("aten::nonzero", "aten::item", "aten::_local_scalar_dense", "aten::masked_select", "aten::unique",
                 "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive")
PARTS = ("inputs", "teacher", "student", "assignment_and_losses", "readback", "backward", "optimizer")


OPERATOR_NAMESPACES = ("aten::", "mkldnn::")


def _top_level_aten(events) -> list:
    """The operator events without an operator ancestor, and the kernels of compiled code
    (inductor's C++ kernels, recorded under ``torch._inductor.config.cpp.enable_kernel_profile``)."""
    chosen = []
    for event in events:
        if not event.name.startswith(OPERATOR_NAMESPACES) and not _is_compiled_kernel(event.name):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith(OPERATOR_NAMESPACES):
            parent = parent.cpu_parent
        if parent is None:
            chosen.append(event)
    return chosen


def _is_compiled_kernel(name: str) -> bool:
    return name.startswith("graph_") and "cpp_fused" in name


def _part(event) -> str:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("step/"):
            return parent.name[len("step/"):]
        parent = parent.cpu_parent
    return "other"


def _setup(batch: int, size: int, seed: int, device: torch.device, channels_last: bool = False,
           compiled: bool = False):
    """The step's parts as ``ldexport.engine.loop`` runs them: distiller, SGD, inputs
    (``compiled``: student, teacher and criterion compiled, as ``train.compile`` has them)."""
    torch.manual_seed(seed)
    student, teacher = build_detector(STUDENT), build_detector(TEACHER)
    if compiled:
        student.compile()
    distiller = Distiller(student=student, teacher=teacher, criterion=LDCriterion(num_classes=NUM_CLASSES))
    distiller = distiller.to(device).train()
    if compiled:
        distiller.compile()
    optimizer = build_optimizer(student, TrainConfig(), lr=0.01)  # as `ldexport train`: fused on CUDA, foreach elsewhere
    images, targets = make_batch(batch, size, seed)
    images = images.to(device)
    if channels_last:
        student.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # missing in torch's stubs
        images = images.contiguous(memory_format=torch.channels_last)
    targets = [{key: value.to(device) for key, value in target.items()} for target in targets]
    return distiller, optimizer, images, targets


def _make_step(distiller, optimizer, images, targets, amp_dtype=None):
    """One LD step with ``record_function`` ranges around its parts."""
    from torch.profiler import record_function

    size = tuple(images.shape[-2:])
    # padded as the loader's workers pad it (BatchCollator), before the step
    padded = pad_ground_truth([{k: v.cpu() for k, v in t.items()} for t in targets], [size] * images.shape[0])
    device_type = images.device.type

    def step() -> None:
        with record_function("step/inputs"):  # the loop copies the padded ground truth
            ground_truth = padded.to(images.device, non_blocking=True)
        with torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            with record_function("step/teacher"):
                teacher_out = distiller.teacher_outputs(images)
            with record_function("step/student"):
                student_out = distiller.student(images)
            with record_function("step/assignment_and_losses"):
                losses = distiller.losses(student_out, teacher_out, ground_truth)
        with record_function("step/readback"):
            flags, _ = loss_flags(losses)
            host = flags.to("cpu", non_blocking=True)
        with record_function("step/backward"):
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if host.device.type == "cpu" and images.is_cuda:
                torch.cuda.current_stream().synchronize()  # the loop's one wait, for the copy
            host.tolist()
        with record_function("step/optimizer"):
            optimizer.step()

    return step


def _make_graphed_step(distiller, optimizer, images, targets, amp_dtype=None):
    """The step as ``ldexport train`` runs it on CUDA: forward and backward replayed as a
    CUDA graph, the flags copied to the host, the SGD step eager."""
    from torch.profiler import record_function

    ground_truth = pad_ground_truth(targets, [tuple(images.shape[-2:])] * images.shape[0], minimum=MIN_BOXES)
    graphs = graphed_step(distiller, optimizer, amp_dtype, images.device, capture_at=1)

    def step() -> None:
        with record_function("step/replay"):
            replayed = graphs(images, ground_truth)
            if replayed is None:
                raise RuntimeError(f"the CUDA graph capture failed: {graphs.failed}")
            host = replayed[0].to("cpu", non_blocking=True)
        with record_function("step/optimizer"):
            optimizer.step()
        with record_function("step/readback"):
            torch.cuda.current_stream().synchronize()  # the loop's one wait, for the copy
            host.tolist()

    return step


def time_on_device(
    batch: int, size: int, amp: str, steps: int = 10, profiled: int = 1, seed: int = 0, mode: str = "eager",
    channels_last: bool = False, top: int = 12,
) -> dict:
    """Wall time, GPU busy time, launches, host time per part and the costliest kernels of
    warm CUDA steps, eager or replayed as a CUDA graph (``mode``)."""
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16}[amp]
    make = {"eager": _make_step, "graph": _make_graphed_step, "compiled": _make_graphed_step}[mode]
    distiller, optimizer, images, targets = _setup(batch, size, seed, device, channels_last, compiled=mode == "compiled")
    step = make(distiller, optimizer, images, targets, amp_dtype=amp_dtype)
    started = time.perf_counter()
    for _ in range(3):  # warm-up: cudnn's search, lazy initialisation, optimizer state, compilation
        step()
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - started
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - start) * 1000 / steps
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(profiled):
            step()
        torch.cuda.synchronize()
    intervals, launches = set(), 0
    host_us: Counter = Counter()
    for event in profile.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            intervals.add((event.time_range.start, event.time_range.end, event.name))
            continue
        elif "LaunchKernel" in event.name or "cudaGraphLaunch" in event.name:
            launches += 1
        elif event.name.startswith("step/"):
            host_us[event.name[len("step/"):]] += event.time_range.elapsed_us()
    kernels = len(intervals)
    by_kernel: Counter = Counter()
    for start, end, name in intervals:
        by_kernel[name] += end - start
    # The GPU's busy time is the union of its kernels' and copies' intervals: the first H200
    # run summed the events' durations and got 76 ms of "busy" time in a 44 ms step (events
    # listed more than once, or overlapping); a union counts each instant once.
    busy_us, reach = 0.0, float("-inf")
    for start, end, _ in sorted(intervals):
        if end > reach:
            busy_us += end - max(start, reach)
            reach = end
    return {
        "settings": {"batch": batch, "size": size, "amp": amp, "mode": mode, "channels_last": channels_last,
                     "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps_timed": steps,
                     "steps_profiled": profiled},
        "warmup_s": round(warmup_s, 1),
        "wall_ms": round(wall_ms, 2),
        "gpu_busy_ms": round(busy_us / profiled / 1000, 2),
        "gpu_ops": kernels // profiled,
        "launches": launches // profiled,
        "host_ms_by_part": {part: round(host_us[part] / profiled / 1000, 2) for part in (*PARTS, "replay") if host_us[part]},
        # Kernel names as the profiler gives them, with their GPU time per step.
        "top_kernels_ms": [(name, round(us / profiled / 1000, 3)) for name, us in by_kernel.most_common(top)],
    }


def print_device_times(result: dict) -> None:
    s = result["settings"]
    memory = ", student channels-last" if s["channels_last"] else ""
    print(f"one LD step (R18/R101, batch {s['batch']} at {s['size']}x{s['size']}, {s['amp']}, {s['mode']}{memory}) "
          f"on {s['device']}, torch {s['torch']}")
    print(f"  warm-up (3 steps: captures, compilation) {result['warmup_s']:.1f} s")
    print(f"  wall {result['wall_ms']:.1f} ms/step; GPU busy {result['gpu_busy_ms']:.1f} ms "
          f"({result['gpu_busy_ms'] / result['wall_ms']:.0%}); {result['gpu_ops']} kernels and copies, "
          f"{result['launches']} launch calls")
    print("  host time by part (ms):", ", ".join(f"{k} {v}" for k, v in result["host_ms_by_part"].items()))
    print("  most GPU time:" if result["top_kernels_ms"] else "  no kernel events in the profile")
    for name, ms in result["top_kernels_ms"]:
        print(f"    {ms:8.3f} ms  {name[:110]}")


def count_ops(batch: int, size: int, seed: int = 0, compiled: bool = False) -> dict:
    """Profiles one warm step and returns the counts (see the module docstring)."""
    if compiled:
        from torch._inductor import config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True  # each C++ kernel a profiler event
    step = _make_step(*_setup(batch, size, seed, torch.device("cpu"), compiled=compiled))

    step()  # warm-up: lazy initialisation, optimizer state (and the compilation)
    if compiled:
        step()  # the second call's guards: no recompilation in the profiled step
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        step()
    top = _top_level_aten(profile.events())
    by_part = Counter(_part(event) for event in top)
    names = Counter(event.name for event in top)
    sync = {name: count for name, count in names.items() if name in SYNCHRONISING}
    parts = {part: by_part.get(part, 0) for part in PARTS}
    parts["other"] = by_part.get("other", 0)
    return {
        "settings": {"batch": batch, "size": size, "student": "R18", "teacher": "R101", "sgd": "foreach",
                     "mode": "compiled" if compiled else "eager"},
        "total": len(top),
        "compiled_kernels": sum(_is_compiled_kernel(event.name) for event in top),
        "parts": parts,
        "synchronising": sync,
        "index_ops": {name: names[name] for name in ("aten::index", "aten::index_put_", "aten::index_put") if name in names},
        "most_common": names.most_common(25),
    }


def print_counts(result: dict) -> None:
    settings = result["settings"]
    print(f"top-level aten operations of one LD step (R18/R101, batch {settings['batch']} at "
          f"{settings['size']}x{settings['size']}, {settings['mode']}, foreach SGD, CPU)")
    print(f"  total                    {result['total']:6d}   (target <= {TARGETS['step']})")
    if settings["mode"] == "compiled":
        print(f"  of which compiled kernels {result['compiled_kernels']:5d}   (inductor's C++ kernels; the rest are "
              "aten operations, in or outside the compiled code)")
    for part, count in result["parts"].items():
        target = TARGETS.get(part)
        print(f"  {part:24s} {count:6d}" + (f"   (target <= {target})" if target else ""))
    parts = result["parts"]
    combined = parts["assignment_and_losses"] + parts["readback"]
    print(f"  synchronising ops: {result['synchronising'] or 'none'}; index ops: {result['index_ops'] or 'none'}")
    print(f"  (assignment, losses and the read-back together: {combined})")
    print("  most common:", ", ".join(f"{name.split('::')[-1]} {count}" for name, count in result["most_common"][:12]))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: wall, GPU busy and host time per step instead of the CPU operation counts")
    parser.add_argument("--amp", nargs="+", choices=["fp32", "bf16"], default=["fp32"], help="with --device cuda")
    parser.add_argument("--mode", nargs="+", choices=["eager", "graph", "compiled"], default=["eager"],
                        help="eager steps; with --device cuda also replayed as a CUDA graph as `ldexport train` does "
                        "(graph), or compiled and replayed as a graph (compiled, `train.compile: true`); on the CPU "
                        "`compiled` counts the compiled step's kernels and operations")
    parser.add_argument("--channels-last", action="store_true",
                        help="with --device cuda: the student and the images channels-last")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        results = []
        for amp in args.amp:
            for mode in args.mode:
                results.append(time_on_device(args.batch, args.size, amp, mode=mode, channels_last=args.channels_last))
                print_device_times(results[-1])  # as it comes: a time limit may stop the next one
                if args.out is not None:
                    args.out.write_text(json.dumps(results, indent=2) + "\n")
        return
    if "graph" in args.mode:
        parser.error("--mode graph needs --device cuda")
    result = count_ops(args.batch, args.size, compiled="compiled" in args.mode)
    print_counts(result)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
