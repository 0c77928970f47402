"""Training-step benchmark (issue #3): ldexport's LD step against mmdet 3.3's.

One LD training iteration (frozen teacher forward, student forward, every loss, backward,
SGD step) of an R18 student distilled from an R101 teacher (256 FPN and head channels,
4 stacked convolutions, 80 classes, ``reg_max`` 16: the ``ld_r18-gflv1-r101_fpn_1x_coco``
settings), timed for mmdet's ``KnowledgeDistillationSingleStageDetector`` and for
ldexport's :class:`~ldexport.distill.Distiller` on identical inputs and identical weights
(mmdet's, copied through ``ldexport.interop.mmdet``), in one process.

* Fairness to noise: the two sides alternate, iteration by iteration, and swap which goes
  first every iteration; warm-up iterations are not timed; median, min, max and the
  interquartile range of the timed iterations are reported.
* Same computation: the losses of both sides' first iteration must agree to a relative
  1e-4 (2e-2 under bf16 autocast, whose rounding each side applies in its own order), or
  the run fails.
* Peak memory: each side runs alone in a fresh subprocess (loading the weights and the
  batch saved by the parent, the mmdet side importing mmdet, the ldexport side never
  importing it) and reports its peak resident set (and, on CUDA, the allocator's peak).
  The peak is ``VmHWM`` of ``/proc/self/status``, the high-water mark of the process's
  resident set, reset (``/proc/self/clear_refs``) once models, optimizer and batch are
  in place, so that it is the peak of the training steps (resident imports, weights and
  all) and not of loading. ``ru_maxrss`` is also reported but is no measure here: it is
  not reset by ``exec``, so a child of this large parent starts with the parent's
  resident set as its peak. The RSS before the first step is reported too, so that the
  step's own working memory can be told apart from imports and weights.

Each side's step is what its training loop does: mmdet's ``loss`` + ``parse_losses``
(the logged values read back to the host), then backward and ``SGD.step``; ldexport's is
``ldexport.engine.loop.train_step`` itself (``Distiller``, backward queued, the loss terms
read back once, ``SGD.step``: ``foreach`` on CPU, fused on CUDA). Both take the batch already normalised and padded (the data
preprocessing is not timed on either side); SGD is lr 0.01, momentum 0.9, weight decay
1e-4 on both.

The ldexport side runs as ``ldexport train`` runs it: the ``Distiller`` runs the teacher
as a :class:`~ldexport.model.fuse.FrozenTeacher` (BatchNorm folded, ReLU and residual
additions fused, channels-last, no classification tower); the student is NCHW, as
``train.channels_last: false`` leaves it. ``--no-fold-teacher``, ``--teacher-nchw``,
``--student-channels-last`` and ``--compile`` (``train.compile: true``; give it a warm-up
iteration for the compilation) measure the alternatives. On CUDA the ldexport step replays
as CUDA graphs, as ``train.cuda_graphs: true`` (the default) has it: its first iteration
warms up and captures, and its losses, checked against mmdet's, are the graph's;
``--no-cuda-graphs`` measures the eager step. With ``--compile`` the graphs hold the
compiled kernels (``ldexport.engine.graphs``); ``--with-uncompiled`` times the same step
not compiled as one more side of the same run, and ``--with-eager`` the eager step (no
graph, not compiled).

Usage:
    python scripts/bench_train.py --out bench_train.json
    python scripts/bench_train.py --device cuda --out bench_train_cuda.json
    python scripts/bench_train.py --device cuda --amp bf16 --out bench_train_cuda_bf16.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldexport.assign.ground_truth import pad_ground_truth  # noqa: E402
from ldexport.distill import Distiller  # noqa: E402
from ldexport.engine.distributed import DistributedContext  # noqa: E402
from ldexport.engine.graphs import MIN_BOXES, graphs_apply  # noqa: E402
from ldexport.engine.loop import StepSettings, TrainState, graphed_step, train_step  # noqa: E402
from ldexport.interop.mmdet import from_mmdet_state_dict, load_state_dict_checked  # noqa: E402
from ldexport.losses.ld_criterion import LDCriterion  # noqa: E402
from ldexport.model import GFLDetector, ModelConfig, build_detector  # noqa: E402

NUM_CLASSES = 80
STUDENT = ModelConfig(depth=18, num_classes=NUM_CLASSES)  # 256 channels, 4 convs, reg_max 16
TEACHER = ModelConfig(depth=101, num_classes=NUM_CLASSES)
LOSS_RTOL = 1e-4
# Under bf16 autocast each side rounds its convolutions' outputs to 8 significant bits in its
# own order (mmdet's teacher unfolded, ldexport's folded), so the first losses agree to bf16's
# precision only (1.8e-3 relative measured on CPU for loss_ld).
LOSS_RTOL_BF16 = 2e-2
SGD_SETTINGS = dict(lr=0.01, momentum=0.9, weight_decay=1e-4)
# The targets of issue #3: ldexport's iterations/s over mmdet's.
TARGETS = {("cpu", "fp32"): 1.2, ("cuda", "fp32"): 3.0, ("cuda", "bf16"): 4.0}  # issue 10's


@dataclass
class Settings:
    """What one benchmark run measures (saved in the JSON result)."""

    device: str = "cpu"
    amp: str = "fp32"
    batch: int = 2
    size: int = 512
    warmup: int = 2
    iters: int = 7
    memory_iters: int = 2
    threads: int = 0
    seed: int = 0
    fold_teacher: bool = True
    teacher_channels_last: bool = True
    student_channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = True
    with_eager: bool = False
    with_uncompiled: bool = False


# ----------------------------------------------------------------------------- inputs


def make_batch(batch: int, size: int, seed: int) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """A normalised ``[N, 3, size, size]`` batch and realistic ground truth.

    Every image has 3 to 6 boxes whose sides are log-uniform between 12 px and 90 % of
    the image, aspect ratios between 1:2 and 2:1, labels uniform over the classes (seed 0:
    8 boxes of 14 to 450 px; 71 positives, on the levels of strides 8, 32 and 64).
    """
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=generator)
    targets = []
    for _ in range(batch):
        count = int(torch.randint(3, 7, (), generator=generator))
        area_side = torch.exp(torch.empty(count).uniform_(math.log(12), math.log(0.9 * size), generator=generator))
        aspect = torch.exp(torch.empty(count).uniform_(math.log(0.5), math.log(2.0), generator=generator))
        width = (area_side * aspect.sqrt()).clamp(max=size - 2)
        height = (area_side / aspect.sqrt()).clamp(max=size - 2)
        x1 = torch.rand(count, generator=generator) * (size - 1 - width)
        y1 = torch.rand(count, generator=generator) * (size - 1 - height)
        boxes = torch.stack((x1, y1, x1 + width, y1 + height), dim=1).round()
        labels = torch.randint(0, NUM_CLASSES, (count,), generator=generator)
        targets.append({"boxes": boxes, "labels": labels, "ignore_boxes": torch.zeros(0, 4)})
    return images, targets


def mmdet_samples(targets: Sequence[Mapping[str, Tensor]], size: int, device: torch.device) -> list:
    """mmdet ``DetDataSample`` s holding the same ground truth (images unpadded at ``size``)."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    samples = []
    for target in targets:
        sample = DetDataSample(
            metainfo=dict(
                img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                batch_input_shape=(size, size), scale_factor=(1.0, 1.0),
            )
        )
        sample.gt_instances = InstanceData(bboxes=target["boxes"].to(device), labels=target["labels"].to(device))
        sample.ignored_instances = InstanceData(
            bboxes=torch.zeros(0, 4, device=device), labels=torch.zeros(0, dtype=torch.long, device=device)
        )
        samples.append(sample)
    return samples


# ----------------------------------------------------------------------------- models


def _mmdet_config_dir() -> Path:
    import mmdet

    return Path(mmdet.__file__).parent / ".mim" / "configs"


def build_mmdet_ld() -> nn.Module:
    """mmdet's LD detector from ``ld/ld_r18-gflv1-r101_fpn_1x_coco.py``, teacher from
    ``gfl/gfl_r101_fpn_ms-2x_coco.py``, randomly initialised (no checkpoint downloads)."""
    import logging

    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    MMLogger.get_current_instance().setLevel(logging.WARNING)  # init_weights' parameter table
    register_all_modules()
    configs = _mmdet_config_dir()
    student = Config.fromfile(str(configs / "ld" / "ld_r18-gflv1-r101_fpn_1x_coco.py")).model
    teacher = Config.fromfile(str(configs / "gfl" / "gfl_r101_fpn_ms-2x_coco.py")).model
    for model in (student, teacher):
        model.backbone.init_cfg = None  # ImageNet weights would be downloaded
    student.teacher_config = dict(model=teacher)
    student.teacher_ckpt = None
    return MODELS.build(student)


def randomise(detector: nn.Module, seed: int) -> None:
    """Random weights with nothing left at a trivial value, for student and teacher.

    mmdet initialises the last BatchNorm of each residual block to zero, BatchNorm
    statistics to (0, 1), GroupNorm to (1, 0) and Scale to 1; the loss comparison would
    then not see a wrong key mapping or a skipped term. Perturbed values keep deep
    activations finite (residual BatchNorm weights around 0.2).
    """
    torch.manual_seed(seed)
    detector.init_weights()
    detector.teacher_model.init_weights()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for model in (detector, detector.teacher_model):
            for name, tensor in model.state_dict().items():
                if not tensor.is_floating_point() or name.endswith("integral.project"):
                    continue
                noise = torch.randn(tensor.shape, generator=generator)
                if name.endswith("running_var"):
                    tensor.mul_(1 + 0.2 * noise.abs())
                elif name.endswith("running_mean"):
                    tensor.add_(0.05 * noise)
                elif name.endswith((".bn2.weight", ".bn3.weight")) and not tensor.any():
                    tensor.copy_(0.2 * (1 + 0.1 * noise))
                elif name.endswith(("scale", "gn.weight", "bn1.weight", "bn2.weight", "bn3.weight")):
                    tensor.mul_(1 + 0.1 * noise)
                else:
                    tensor.add_(0.01 * noise)


def ldexport_models(student_state: Mapping[str, Tensor], teacher_state: Mapping[str, Tensor]) -> tuple[GFLDetector, GFLDetector]:
    """ldexport's student and teacher holding mmdet's weights (mmdet key names)."""
    student, teacher = build_detector(STUDENT), build_detector(TEACHER)
    load_state_dict_checked(student, from_mmdet_state_dict(student_state), "mmdet student")
    load_state_dict_checked(teacher, from_mmdet_state_dict(teacher_state), "mmdet teacher")
    return student, teacher


# ----------------------------------------------------------------------------- steps


def _sgd(model: nn.Module, foreach: bool | None = None, fused: bool | None = None) -> torch.optim.SGD:
    parameters = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(parameters, foreach=foreach, fused=fused, **SGD_SETTINGS)


def _autocast(settings: Settings):
    return torch.autocast(settings.device, dtype=torch.bfloat16, enabled=settings.amp == "bf16")


class MmdetStep:
    """mmdet's training iteration: ``loss``, ``parse_losses`` (values to the host), backward, step."""

    name = "mmdet"

    def __init__(self, detector: nn.Module, images: Tensor, targets: Sequence[Mapping[str, Tensor]], settings: Settings):
        self.detector = detector
        self.settings = settings
        self.images = images
        self.samples = mmdet_samples(targets, images.shape[-1], images.device)
        self.optimizer = _sgd(detector)
        detector.train()

    def __call__(self) -> dict[str, float]:
        with _autocast(self.settings):
            losses = self.detector.loss(self.images, self.samples)
        loss, log_vars = self.detector.parse_losses(losses)
        values = {name: value.item() for name, value in log_vars.items() if name != "loss"}  # mmengine logs them
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return values


class LdexportStep:
    """ldexport's training iteration, as ``ldexport.engine.loop`` makes it."""

    name = "ldexport"

    def __init__(
        self,
        student: GFLDetector,
        teacher: GFLDetector,
        images: Tensor,
        targets: Sequence[Mapping[str, Tensor]],
        settings: Settings,
    ):
        self.memory_format = torch.channels_last if settings.student_channels_last else torch.contiguous_format
        student.to(memory_format=self.memory_format)
        if settings.compile:
            student.compile()  # as ``train.compile: true`` does
        criterion = LDCriterion(num_classes=NUM_CLASSES)
        self.distiller = Distiller(
            student=student, teacher=teacher, criterion=criterion,
            teacher_channels_last=settings.teacher_channels_last and settings.fold_teacher,
            fold_teacher=settings.fold_teacher,  # False: the ablation, the teacher's own forward
        )
        self.distiller.to(images.device).train()
        if settings.compile:
            self.distiller.compile()  # teacher and criterion, as ``train.compile: true`` does
        self.settings = settings
        self.images = images
        # SGD as ``ldexport train`` builds it: fused on CUDA, foreach elsewhere
        fused = images.is_cuda
        self.optimizer = _sgd(student, foreach=None if fused else True, fused=fused or None)
        self.step_settings = StepSettings(amp_dtype=torch.bfloat16 if settings.amp == "bf16" else None)
        self.ctx = DistributedContext(device=images.device)
        # CUDA graphs as ``train.cuda_graphs: true`` (the default) replays the step where they apply
        graphed = settings.cuda_graphs and graphs_apply(
            images.device, world_size=1, amp_dtype=self.step_settings.amp_dtype
        ) is None
        amp_dtype = self.step_settings.amp_dtype
        # captured at the first iteration, whose losses are checked against mmdet's
        self.graphs = graphed_step(self.distiller, self.optimizer, amp_dtype, images.device, capture_at=1) if graphed else None
        # padded once, as the training loop pads every batch before the step
        image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
        self.targets = pad_ground_truth(targets, image_sizes, minimum=MIN_BOXES if graphed else 4).to(images.device)

    def __call__(self) -> dict[str, float]:
        images = self.images.contiguous(memory_format=self.memory_format)
        losses, _ = train_step(
            self.distiller, images, self.targets, self.optimizer, self.step_settings, self.ctx, False, TrainState(),
            graphs=self.graphs,
        )
        return {name: value for name, value in losses.items() if name != "loss"}


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(step: Callable[[], dict[str, float]], device: str) -> tuple[float, dict[str, float]]:
    _synchronize(device)
    started = time.perf_counter()
    losses = step()
    _synchronize(device)
    return time.perf_counter() - started, losses


def check_same_losses(
    mmdet_losses: Mapping[str, float], ldexport_losses: Mapping[str, float], rtol: float = LOSS_RTOL
) -> list[str]:
    """Loss terms on which the two sides disagree beyond ``rtol`` (or miss)."""
    problems = []
    if set(mmdet_losses) != set(ldexport_losses):
        problems.append(f"loss terms differ: mmdet {sorted(mmdet_losses)}, ldexport {sorted(ldexport_losses)}")
    for name in sorted(set(mmdet_losses) & set(ldexport_losses)):
        theirs, ours = mmdet_losses[name], ldexport_losses[name]
        if not (math.isfinite(theirs) and theirs != 0 and abs(ours - theirs) <= rtol * abs(theirs)):
            problems.append(f"{name}: mmdet {theirs!r}, ldexport {ours!r}")
    return problems


# ----------------------------------------------------------------------------- memory


def _proc_status_mib(field: str) -> float:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    """Resets ``VmHWM`` to the current RSS (Linux >= 4.0), so that it measures the steps
    alone, not the transient copies of loading; ``False`` where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def memory_worker(side: str, state_path: str, settings: Settings) -> dict[str, float]:
    """Runs one side alone (this process is fresh) and returns its memory high-water marks."""
    torch.set_num_threads(settings.threads or torch.get_num_threads())
    state = torch.load(state_path, mmap=True, weights_only=True)
    device = torch.device(settings.device)
    images = state["images"].to(device)
    targets = state["targets"]
    if side == "mmdet":
        detector = build_mmdet_ld()
        detector.load_state_dict(state["student"])
        detector.teacher_model.load_state_dict(state["teacher"])
        detector.to(device)
        step: Callable[[], dict[str, float]] = MmdetStep(detector, images, targets, settings)
    else:
        if "mmdet" in sys.modules:
            raise RuntimeError("the ldexport memory worker imported mmdet")
        student, teacher = ldexport_models(state["student"], state["teacher"])
        step = LdexportStep(student.to(device), teacher.to(device), images, targets, settings)
        del student, teacher  # the step holds what training holds
    del state
    if settings.compile or (settings.cuda_graphs and device.type == "cuda"):
        step()  # the compilation's (the warm-up passes') own memory is not the step's
    gc.collect()
    rss_before = _proc_status_mib("VmRSS")
    reset = _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(settings.memory_iters):
        step()
    result = {
        "peak_rss_mib": _proc_status_mib("VmHWM"),
        "rss_before_step_mib": rss_before,
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_counts_from": "first step" if reset else "process start",
    }
    if device.type == "cuda":
        result["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def measure_memory(side: str, state_path: str, settings: Settings) -> dict[str, float]:
    """Runs :func:`memory_worker` in a fresh interpreter."""
    command = [sys.executable, __file__, "--worker", side, "--state", state_path, *_settings_arguments(settings)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{side} memory worker failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- run


def _summary(seconds: Sequence[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
    median = statistics.median(ordered)
    return {
        "median_s": median,
        "min_s": ordered[0],
        "max_s": ordered[-1],
        "iqr_s": quartiles[2] - quartiles[0],
        "iters_per_s": 1.0 / median,
    }


def machine() -> dict[str, str | int]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    result: dict[str, str | int] = {
        "cpu": cpu,
        "cores": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name()
        result["cudnn_allow_tf32"] = int(torch.backends.cudnn.allow_tf32)  # "fp32" convolutions run in TF32 if 1
    result["load_average_at_start"] = " ".join(f"{value:.2f}" for value in os.getloadavg())
    try:
        import mmcv
        import mmdet
        import mmengine

        result["mmdet"], result["mmcv"], result["mmengine"] = mmdet.__version__, mmcv.__version__, mmengine.__version__
    except ImportError:
        pass
    return result


def run(settings: Settings, out: Path | None) -> dict:
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_train.py: --device cuda but CUDA is not available")
    host = machine()
    images, targets = make_batch(settings.batch, settings.size, settings.seed)
    detector = build_mmdet_ld()
    randomise(detector, settings.seed)
    student_state = {k: v.clone() for k, v in detector.state_dict().items()}
    teacher_state = {k: v.clone() for k, v in detector.teacher_model.state_dict().items()}
    student, teacher = ldexport_models(student_state, teacher_state)
    images = images.to(device)
    steps = {
        "mmdet": MmdetStep(detector.to(device), images, targets, settings),
        "ldexport": LdexportStep(student.to(device), teacher.to(device), images, targets, settings),
    }
    others = {}  # more ldexport sides, from the same weights
    if settings.with_eager and device.type == "cuda":  # ldexport's eager step: no graph, not compiled
        others["ldexport_eager"] = replace(settings, cuda_graphs=False, compile=False)
    if settings.with_uncompiled and settings.compile:  # the same step not compiled (graphed where graphs apply)
        others["ldexport_uncompiled"] = replace(settings, compile=False)
    for name, side in others.items():
        side_student, side_teacher = ldexport_models(student_state, teacher_state)
        steps[name] = LdexportStep(side_student.to(device), side_teacher.to(device), images, targets, side)
    names = list(steps)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    first_losses: dict[str, dict[str, float]] = {}
    for iteration in range(settings.warmup + settings.iters):
        shift = iteration % len(names)  # each side goes first in turn
        for name in names[shift:] + names[:shift]:
            elapsed, losses = timed(steps[name], settings.device)
            first_losses.setdefault(name, losses)
            if iteration >= settings.warmup:
                seconds[name].append(elapsed)
            print(f"  iteration {iteration:2d} {name:20s} {elapsed:7.3f} s", file=sys.stderr, flush=True)
        if iteration == 0:
            rtol = LOSS_RTOL_BF16 if settings.amp == "bf16" else LOSS_RTOL
            problems = [
                f"{name}: {problem}" for name in names[1:]
                for problem in check_same_losses(first_losses["mmdet"], first_losses[name], rtol)
            ]  # fmt: skip
            if problems:
                raise SystemExit("bench_train.py: the sides computed different losses:\n  " + "\n  ".join(problems))
    graphs = steps["ldexport"].graphs  # type: ignore[attr-defined]
    cuda_graphs = None if graphs is None else {"captured": len(graphs), "capture_failed": graphs.failed}
    del steps, detector, student, teacher

    memory: dict[str, dict[str, float]] = {"mmdet": {}, "ldexport": {}}
    if settings.memory_iters > 0:  # 0: not measured
        with tempfile.TemporaryDirectory() as folder:
            state_path = str(Path(folder) / "state.pt")
            torch.save({"student": student_state, "teacher": teacher_state, "images": images.cpu(), "targets": targets}, state_path)
            memory = {name: measure_memory(name, state_path, settings) for name in ("mmdet", "ldexport")}

    summary = {name: _summary(values) for name, values in seconds.items()}
    host["load_average_at_end"] = " ".join(f"{value:.2f}" for value in os.getloadavg())
    ratio = summary["ldexport"]["iters_per_s"] / summary["mmdet"]["iters_per_s"]
    ratios = {name: summary[name]["iters_per_s"] / summary["mmdet"]["iters_per_s"] for name in names[1:]}
    # each iteration's two steps ran back to back, under the same load: the median of their
    # ratios is less sensitive to the load drifting over the run than the ratio of medians
    paired = statistics.median(m / l for m, l in zip(seconds["mmdet"], seconds["ldexport"]))
    target = TARGETS.get((device.type, settings.amp))
    result = {
        "benchmark": "LD training step, R18 student / R101 teacher, vs mmdet 3.3 KnowledgeDistillationSingleStageDetector",
        "settings": asdict(settings),
        "machine": host,
        "ground_truth_boxes_per_image": [int(t["boxes"].shape[0]) for t in targets],
        "first_iteration_losses": first_losses,
        "seconds": seconds,
        "summary": summary,
        "ratio_iters_per_s": ratio,
        "ratios_to_mmdet": ratios,
        "cuda_graphs": cuda_graphs,
        "paired_ratio_median": paired,
        "target_ratio": target,
        "memory": memory,
        "meets_speed_target": None if target is None else ratio >= target,
        "meets_memory_target": (
            memory["ldexport"]["peak_rss_mib"] <= memory["mmdet"]["peak_rss_mib"] if settings.memory_iters > 0 else None
        ),
    }
    print_table(result)
    if out is not None:
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def print_table(result: dict) -> None:
    settings, summary, memory = result["settings"], result["summary"], result["memory"]
    print(
        f"\nLD step, R18 student / R101 teacher, batch {settings['batch']} at {settings['size']}x{settings['size']}, "
        f"{settings['device']} {settings['amp']}, {result['machine']['torch_threads']} threads, "
        f"{settings['iters']} timed iterations after {settings['warmup']} warm-up"
    )
    header = f"{'side':20s} {'it/s':>7s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'IQR s':>7s} {'peak RSS MiB':>13s} {'RSS before step':>16s}"
    print(header)
    print("-" * len(header))
    for name in summary:
        s, m = summary[name], memory.get(name, {})
        line = (
            f"{name:20s} {s['iters_per_s']:7.3f} {s['median_s']:9.3f} {s['min_s']:7.3f} {s['max_s']:7.3f} "
            f"{s['iqr_s']:7.3f} {m.get('peak_rss_mib', float('nan')):13.0f} {m.get('rss_before_step_mib', float('nan')):16.0f}"
        )
        if "cuda_peak_allocated_mib" in m:
            line += f"  cuda peak {m['cuda_peak_allocated_mib']:.0f} MiB"
        print(line)
    target = result["target_ratio"]
    graphs = result["cuda_graphs"]
    if graphs is not None:
        print(f"ldexport's step: {graphs['captured']} CUDA graph(s) captured"
              + (f"; a capture FAILED, eager steps: {graphs['capture_failed']}" if graphs["capture_failed"] else ""))
    for other in ("ldexport_eager", "ldexport_uncompiled"):
        if other in summary:
            print(f"ratio ldexport / {other} (it/s): "
                  f"{summary['ldexport']['iters_per_s'] / summary[other]['iters_per_s']:.3f}; "
                  f"{other}/mmdet: {result['ratios_to_mmdet'][other]:.3f}")
    print(
        f"ratio ldexport/mmdet (it/s): {result['ratio_iters_per_s']:.3f}" + (f"  (target {target}x)" if target else "")
        + f"; median of the per-iteration ratios {result['paired_ratio_median']:.3f}"
    )
    print(
        f"losses of the first iteration agree to {LOSS_RTOL_BF16 if settings['amp'] == 'bf16' else LOSS_RTOL:g}: "
        + ", ".join(f"{k} {v:.5g}" for k, v in sorted(result["first_iteration_losses"]["ldexport"].items()))
    )


def _settings_arguments(settings: Settings) -> list[str]:
    arguments = [
        "--device", settings.device, "--amp", settings.amp, "--batch", str(settings.batch), "--size", str(settings.size),
        "--memory-iters", str(settings.memory_iters), "--threads", str(settings.threads), "--seed", str(settings.seed),
    ]  # fmt: skip
    if not settings.fold_teacher:
        arguments.append("--no-fold-teacher")
    if not settings.teacher_channels_last:
        arguments.append("--teacher-nchw")
    if settings.student_channels_last:
        arguments.append("--student-channels-last")
    if settings.compile:
        arguments.append("--compile")
    if not settings.cuda_graphs:
        arguments.append("--no-cuda-graphs")
    return arguments


def parse_arguments(argv: Sequence[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--amp", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast on both sides (CUDA)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=512, help="square images, a multiple of 32")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=7, help="timed iterations of each side")
    parser.add_argument("--memory-iters", type=int, default=2, help="iterations of each memory subprocess (0: none)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-fold-teacher", action="store_true", help="ldexport: the teacher unchanged, not a FrozenTeacher")
    parser.add_argument("--teacher-nchw", action="store_true", help="ldexport: FrozenTeacher without channels-last")
    parser.add_argument("--student-channels-last", action="store_true", help="ldexport: student and images channels-last")
    parser.add_argument("--compile", action="store_true", help="ldexport: torch.compile the student (train.compile)")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="ldexport: eager steps (train.cuda_graphs: false)")
    parser.add_argument("--with-eager", action="store_true",
                        help="a third side, ldexport's eager step, timed in the same round-robin (CUDA graphs against eager)")
    parser.add_argument("--with-uncompiled", action="store_true",
                        help="with --compile: a side with the step not compiled, in the same round-robin")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    parser.add_argument("--worker", choices=["mmdet", "ldexport"], help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.size % 32:
        parser.error("--size must be a multiple of 32")
    settings = Settings(
        device=args.device, amp=args.amp, batch=args.batch, size=args.size, warmup=args.warmup, iters=args.iters,
        memory_iters=args.memory_iters, threads=args.threads, seed=args.seed,
        fold_teacher=not args.no_fold_teacher, teacher_channels_last=not args.teacher_nchw,
        student_channels_last=args.student_channels_last, compile=args.compile, cuda_graphs=not args.no_cuda_graphs,
        with_eager=args.with_eager, with_uncompiled=args.with_uncompiled,
    )  # fmt: skip
    return settings, args


def main(argv: Sequence[str] | None = None) -> None:
    settings, args = parse_arguments(argv)
    if args.worker:
        print(json.dumps(memory_worker(args.worker, args.state, settings)))
        return
    run(settings, args.out)


if __name__ == "__main__":
    main()
