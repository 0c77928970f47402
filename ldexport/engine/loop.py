"""The training loop: :func:`train_one_epoch` and :func:`evaluate`.

One step (:func:`train_step`): forward the batch through the
:class:`~ldexport.distill.Distiller` (student, frozen teacher, criterion), agree across
ranks on whether the loss is finite and whether a stop was asked for (one all-reduce that
also averages the loss terms for the log), queue the backward pass, read those values
back (the step's one host synchronisation), then clip, step, and advance the
per-iteration schedule. On a GPU the forward and backward pass replay as a CUDA graph
where :mod:`ldexport.engine.graphs` applies.

Legend: ``N`` images of a batch, ``K`` detections of one image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ldexport.assign.ground_truth import GroundTruth, pad_ground_truth
from ldexport.data.coco_eval import evaluate_coco
from ldexport.data.collate import Batch
from ldexport.data.pipeline import boxes_to_original
from ldexport.data.records import RecordSet
from ldexport.data.transforms import normalize_batch
from ldexport.distill import Distiller
from ldexport.engine.distributed import DistributedContext, all_reduce_sum
from ldexport.engine.graphs import GraphedStep, StepFunction
from ldexport.engine.monitor import Monitor
from ldexport.engine.signals import StopRequest
from ldexport.errors import LdexportError
from ldexport.model.detector import Detections, GFLDetector, TestConfig


@dataclass
class TrainState:
    """Progress of a run, saved in every checkpoint.

    Attributes:
        epoch: the epoch in progress, from 0.
        iteration: optimizer steps done since the start of the run.
        best_ap: the best evaluation AP so far, or ``None``.
        evaluated: the iteration at the end of the last epoch whose evaluation is
            settled (done, or not due). An epoch that ended without it (a stop on its
            last step or during its evaluation) is evaluated when the run resumes.
    """

    epoch: int = 0
    iteration: int = 0
    best_ap: float | None = None
    evaluated: int = 0


@dataclass(frozen=True)
class StepSettings:
    """How each step runs.

    Attributes:
        amp_dtype: ``torch.bfloat16`` / ``torch.float16`` autocast on CUDA, or ``None``.
        grad_clip: max global gradient norm, or ``None``.
        channels_last: feed images in the channels-last memory format.
        log_interval: steps between JSON-lines records.
        checkpoint_interval: steps between checkpoints (0 = at epoch ends only).
        bucket: pad every batch's height and width further, to a multiple of this
            (0: no further padding), so that a compiled step sees few shapes.
        min_boxes: pad every batch's box count to at least this (a power of two).
    """

    amp_dtype: torch.dtype | None = None
    grad_clip: float | None = None
    channels_last: bool = False
    log_interval: int = 50
    checkpoint_interval: int = 0
    bucket: int = 0
    min_boxes: int = 4


# The padded shapes a compiled step sees: batches padded to a multiple of 128 px, which
# keeps mmdet's 1333x800 scales to a handful of shapes. The extra padding holds no valid
# anchor (validity follows each image's own size), so the targets do not change; but it
# enters the head's GroupNorm statistics, so the losses do (0.5% on the first step of a
# small coco128 run): a bucketed run is not mmdet's. Only ``train.compile`` buckets; CUDA
# graphs take mmdet's own padded shapes, one graph each.
BUCKET = 128


def train_one_epoch(
    distiller: Distiller,
    loader: Iterable[Batch],
    optimizer: Optimizer,
    scheduler: LRScheduler,
    *,
    state: TrainState,
    iters_per_epoch: int,
    settings: StepSettings,
    ctx: DistributedContext,
    monitor: Monitor,
    stop: StopRequest,
    save_checkpoint: Callable[[], None],
    scaler: torch.amp.GradScaler | None = None,
    graphs: GraphedStep | None = None,
) -> bool:
    """Trains the student for the rest of epoch ``state.epoch`` (its forward and backward
    passes replayed by ``graphs`` when given).

    ``loader`` yields only the steps not made yet (a resumed epoch starts mid-way);
    ``state.iteration`` advances with every step.

    Returns:
        ``True`` when a SIGINT/SIGTERM stopped the epoch early (a checkpoint has been
        written), ``False`` when the epoch ran to its end.

    Raises:
        LdexportError: a loss became NaN or infinite (nothing is written: the last
            checkpoint on disk stays the last good one).
    """
    window = _LogWindow()
    last = time.perf_counter()
    for batch in loader:
        lr = optimizer.param_groups[0]["lr"]
        losses, stop_requested = _train_step(distiller, batch, optimizer, settings, ctx, stop, state, scaler, graphs)
        scheduler.step()
        state.iteration += 1
        # Wall time since the previous step ended: waiting for data counts too.
        now = time.perf_counter()
        seconds, last = now - last, now
        images = len(batch) * ctx.world_size
        monitor.step(state.iteration, seconds, images, losses, lr)
        window.add(losses, images, seconds)
        if state.iteration % settings.log_interval == 0:
            monitor.log_train(state.epoch, state.iteration, window.mean_losses(), lr, window.images_per_second())
            window = _LogWindow()
        interval, epoch_done = settings.checkpoint_interval, state.iteration % iters_per_epoch == 0
        # The epoch's end has its own checkpoint, written after evaluation.
        if stop_requested or (interval and state.iteration % interval == 0 and not epoch_done):
            save_checkpoint()
        if stop_requested:
            return True
    return False


@dataclass
class _LogWindow:
    """The steps since the last JSON-lines record."""

    losses: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    seconds: float = 0.0

    def add(self, losses: dict[str, float], images: int, seconds: float) -> None:
        for key, value in losses.items():
            self.losses[key] = self.losses.get(key, 0.0) + value
        self.steps, self.images, self.seconds = self.steps + 1, self.images + images, self.seconds + seconds

    def mean_losses(self) -> dict[str, float]:
        return {key: value / self.steps for key, value in self.losses.items()}

    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def _train_step(
    distiller: Distiller,
    batch: Batch,
    optimizer: Optimizer,
    settings: StepSettings,
    ctx: DistributedContext,
    stop: StopRequest,
    state: TrainState,
    scaler: torch.amp.GradScaler | None,
    graphs: GraphedStep | None,
) -> tuple[dict[str, float], bool]:
    """One optimizer step; returns the loss terms averaged over ranks and the stop flag."""
    images, ground_truth = _to_device(batch, ctx.device, settings.channels_last, settings.bucket, settings.min_boxes)
    return train_step(
        distiller, images, ground_truth, optimizer, settings, ctx, stop.requested, state, scaler, graphs
    )


def loss_flags(outputs: dict[str, Tensor], stop_requested: bool | None = None) -> tuple[Tensor, list[str]]:
    """The ``T`` loss terms of ``outputs`` (sorted by name), a "loss not finite" flag and,
    when given, a "stop asked for" flag, stacked into one float32 ``[T + 1]`` (``[T + 2]``)
    tensor for a single read-back; and the names."""
    names = sorted(key for key in outputs if key.startswith("loss"))
    loss = outputs["loss"]
    # one stack of the terms, detached once (the losses are float32 under autocast too)
    flags = [*(outputs[name] for name in names), (~torch.isfinite(loss)).float()]
    if stop_requested is not None:
        flags.append(torch.full_like(loss, float(stop_requested), dtype=torch.float32))
    return torch.stack(flags).detach().float(), names


def forward_backward(distiller: Distiller, amp_dtype: torch.dtype | None, device: torch.device) -> StepFunction:
    """The step's forward and backward pass as :class:`~ldexport.engine.graphs.GraphedStep`
    captures it (autocast's weight cache off: a graph must cast on every replay)."""

    def step(images: Tensor, ground_truth: GroundTruth) -> tuple[Tensor, list[str]]:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None, cache_enabled=False):
            outputs = distiller(images, ground_truth)
        flags, names = loss_flags(outputs)
        outputs["loss"].backward()
        return flags, names

    return step


def graphed_step(distiller: Distiller, optimizer: Optimizer, amp_dtype: torch.dtype | None,
                 device: torch.device, capture_at: int = 2) -> GraphedStep:
    """:func:`forward_backward` of ``distiller`` replayed as CUDA graphs, writing the
    gradients of ``optimizer``'s parameters (the student's buffers kept across warm-ups);
    a batch shape is captured the ``capture_at``-th time it comes."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    step = forward_backward(distiller, amp_dtype, device)
    return GraphedStep(step, parameters, [distiller.student], capture_at=capture_at)


def train_step(
    distiller: Distiller,
    images: Tensor,
    ground_truth: GroundTruth,
    optimizer: Optimizer,
    settings: StepSettings,
    ctx: DistributedContext,
    stop_requested: bool,
    state: TrainState,
    scaler: torch.amp.GradScaler | None = None,
    graphs: GraphedStep | None = None,
) -> tuple[dict[str, float], bool]:
    """One optimizer step on a batch already on the device.

    Nothing waits for the device before the backward pass is queued: the loss terms and
    the "not finite" and "stop" flags (one all-reduce across ranks) are copied to the host
    without blocking, the backward pass is launched, and only then does the host wait for
    that copy, the step's one read-back. A non-finite loss raises there, before the
    optimizer's update, so the weights stay those of the last good step.

    With ``graphs``, the forward and backward pass (the flags included) are one graph
    replay; a batch ``graphs`` declines runs eagerly, zeroing the gradients in place.

    Returns:
        The loss terms averaged over ranks, and whether any rank asked to stop.

    Raises:
        LdexportError: the loss is NaN or infinite.
    """
    replayed = graphs(images, ground_truth) if graphs is not None else None
    if replayed is not None:  # forward and backward already queued, by one graph launch
        flags, names = replayed
        host, copied = _copy_to_host(flags)
        assert copied is not None  # graphs run on CUDA only
        copied.synchronize()
        values = [*host.tolist(), float(stop_requested)]  # one process: nothing to agree on
    else:
        with torch.autocast(ctx.device.type, dtype=settings.amp_dtype, enabled=settings.amp_dtype is not None):
            outputs = distiller(images, ground_truth)
        flags, names = loss_flags(outputs, stop_requested)
        flags = all_reduce_sum(flags, ctx)  # [T + 2], summed over ranks
        host, copied = _copy_to_host(flags)
        if graphs is not None:
            graphs.zero_grad()  # in place: the graphs write these very gradient tensors
        else:
            optimizer.zero_grad(set_to_none=True)
        (scaler.scale(outputs["loss"]) if scaler is not None else outputs["loss"]).backward()
        if copied is not None:
            copied.synchronize()  # the forward's values, while the backward runs on the device
        values = host.tolist()
    if values[-2] > 0:
        raise LdexportError(
            f"the loss became NaN or infinite at epoch {state.epoch + 1}, iteration {state.iteration + 1}; training "
            "stopped without saving this step: the last good checkpoint, if one was written, stays on disk (try a "
            "lower train.lr, or set train.grad_clip)"
        )
    if scaler is not None:
        scaler.unscale_(optimizer)
        _clip(optimizer, settings.grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        _clip(optimizer, settings.grad_clip)
        optimizer.step()
    losses = {name: value / ctx.world_size for name, value in zip(names, values)}
    return losses, values[-1] > 0


def _copy_to_host(flags: Tensor) -> tuple[Tensor, torch.cuda.Event | None]:
    """A non-blocking copy of ``flags`` to the host, and on CUDA the event that marks it done."""
    host = flags.to("cpu", non_blocking=True)
    copied = torch.cuda.Event() if flags.is_cuda else None
    if copied is not None:
        copied.record()
    return host, copied


def _clip(optimizer: Optimizer, max_norm: float | None) -> None:
    if max_norm is not None:
        parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(parameters, max_norm, foreach=True)


def _to_device(
    batch: Batch, device: torch.device, channels_last: bool, bucket: int = 0, min_boxes: int = 4
) -> tuple[Tensor, GroundTruth]:
    """The step's input on ``device``: the uint8 batch copied (non-blocking), padded further
    to a multiple of ``bucket`` when positive, and normalised there; the ground truth as
    the loader's workers padded it (else padded here, to at least ``min_boxes``) and copied
    (non-blocking)."""
    truth = batch.ground_truth
    if truth is None:
        truth = pad_ground_truth(batch.targets, batch.image_sizes, minimum=min_boxes)
    ground_truth = truth.to(device, non_blocking=True)
    images = batch.images.to(device, non_blocking=True)
    if bucket > 0:
        height, width = images.shape[-2:]
        images = F.pad(images, (0, -width % bucket, 0, -height % bucket))
    return normalize_batch(images, batch.image_sizes, channels_last=channels_last), ground_truth


@torch.no_grad()
def evaluate(
    model: GFLDetector,
    loader: Iterable[Batch],
    data: RecordSet,
    *,
    device: torch.device,
    test_cfg: TestConfig,
    channels_last: bool = False,
    progress: bool = False,
    stop: StopRequest | None = None,
) -> dict[str, float]:
    """COCO box AP of ``model`` on the images of ``loader`` (one process, fp32).

    Args:
        model: the detector (not DDP-wrapped); left in eval mode.
        loader: the validation batches (test pipeline, no flip).
        data: the records ``loader`` reads, for the ground truth and category ids.
        device: where to run the model.
        test_cfg: decoding settings.
        channels_last: feed images in the channels-last memory format.
        progress: show a progress bar.
        stop: abandons the evaluation when a stop is requested (a scheduler's grace
            period is shorter than a COCO evaluation).

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}``, or ``{}`` when abandoned.
    """
    from tqdm import tqdm

    model.eval()
    detections: dict[int, Detections] = {}
    for batch in tqdm(loader, desc="evaluate", disable=None if progress else True, leave=False):
        if stop is not None and stop.requested:
            return {}
        images, _ = batch.inputs(device, channels_last=channels_last)
        found = model.predict(images, batch.image_sizes, test_cfg)  # the whole batch at once
        counts = [len(item.scores) for item in found]
        # one copy to the host for the batch: [sum K, 4], [sum K], [sum K]
        boxes = torch.cat([item.boxes for item in found]).float().cpu().split(counts)
        scores = torch.cat([item.scores for item in found]).float().cpu().split(counts)
        labels = torch.cat([item.labels for item in found]).cpu().split(counts)
        for meta, image_boxes, image_scores, image_labels in zip(batch.metas, boxes, scores, labels):
            # [K, 4] in the pixels of the image file
            detections[meta.image_id] = Detections(boxes_to_original(image_boxes, meta), image_scores, image_labels)
    return evaluate_coco(detections, data)
