"""Entry points: :func:`train` a student (with or without a teacher), :func:`evaluate_checkpoint`.

``train`` is what ``ldexport train`` runs, in one process or in each process that
``torchrun`` starts; it can also be called from Python (the demo does)::

    from ldexport.config import load_config
    from ldexport.engine.run import train

    result = train(load_config("configs/shapes_ld_tiny.yaml"), work_dir="work_dirs/ld",
                   teacher_checkpoint="work_dirs/teacher/best.pth")
    result.best_checkpoint, result.metrics["AP"]

A work dir holds ``config.yaml`` (the resolved config), ``latest.pth`` (everything to
resume), ``best.pth`` (the student with the best AP), ``log.jsonl`` and, when
tensorboard is installed, ``tensorboard/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ldexport.config import Config, config_to_dict, save_config
from ldexport.data.records import RecordSet
from ldexport.distill import Distiller, check_compatible
from ldexport.engine.build import (
    amp_settings,
    build_criterion,
    build_optimizer,
    build_schedule,
    build_teacher,
    check_classes,
    configure_determinism,
)
from ldexport.engine.checkpoints import BEST, LATEST, seed_everything
from ldexport.engine.data import build_train_loader, build_val_loader, load_split, prepare_shapes
from ldexport.engine.distributed import DistributedContext, barrier, init_distributed
from ldexport.engine.graphs import MIN_BOXES, graphs_apply
from ldexport.engine.loop import BUCKET, StepSettings, TrainState, evaluate, graphed_step
from ldexport.engine.monitor import Monitor
from ldexport.engine.resume import load_training_state
from ldexport.engine.schedule import build_scheduler, scaled_lr
from ldexport.engine.trainer import Trainer
from ldexport.errors import LdexportError
from ldexport.interop.checkpoint import load_detector
from ldexport.io import make_folder
from ldexport.model.build import build_detector
from ldexport.model.detector import GFLDetector

@dataclass
class TrainResult:
    """What a call to :func:`train` produced.

    Attributes:
        work_dir: the run's folder.
        latest_checkpoint: ``latest.pth`` (resumable).
        best_checkpoint: ``best.pth``, or ``None`` when nothing was evaluated.
        metrics: the last evaluation's metrics (empty when none ran).
        best_ap: the best AP seen, or ``None``.
        epochs_done: whole epochs trained.
        iteration: optimizer steps done.
        interrupted: a SIGINT/SIGTERM stopped the run (it can be resumed).
        student: the trained student (on its training device, in eval mode).
        teacher: the frozen teacher, or ``None`` for plain GFL training.
    """

    work_dir: Path
    latest_checkpoint: Path
    best_checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    best_ap: float | None = None
    epochs_done: int = 0
    iteration: int = 0
    interrupted: bool = False
    student: GFLDetector | None = None
    teacher: nn.Module | None = None


def train(
    config: Config, *, work_dir: str | Path, teacher_checkpoint: str | Path | None = None, resume: bool = False
) -> TrainResult:
    """Trains ``config.model`` on ``config.data``; with a teacher, by LD.

    Args:
        config: the resolved config.
        work_dir: where checkpoints and logs go.
        teacher_checkpoint: the teacher's weights (``config.distill.teacher_checkpoint``
            when ``None``); no teacher trains plain GFL.
        resume: continue from ``work_dir/latest.pth``.

    Raises:
        LdexportError: bad config values, missing files, an incompatible teacher, a
            NaN or infinite loss, or a work dir that holds another run (without ``resume``).
    """
    ctx = init_distributed(config.train.device)
    return _train(config, Path(work_dir), teacher_checkpoint, resume, ctx)


def _train(
    config: Config, work_dir: Path, teacher_checkpoint: str | Path | None, resume: bool, ctx: DistributedContext
) -> TrainResult:
    latest = work_dir / LATEST
    if resume and not latest.is_file():
        raise LdexportError(f"nothing to resume: {latest} does not exist")
    if not resume and latest.is_file():
        raise LdexportError(f"{work_dir} already holds a run: pass --resume to continue it, or another --work-dir")
    if ctx.is_main:
        make_folder(work_dir)  # an unwritable work dir fails now, not after the models and data are built
    trainer = _build(config, work_dir, teacher_checkpoint, resume, ctx)
    try:
        interrupted, metrics = trainer.fit()
    finally:
        trainer.monitor.close()
    trainer.student.eval()
    best = work_dir / BEST
    return TrainResult(
        work_dir=work_dir, latest_checkpoint=latest, best_checkpoint=best if best.is_file() else None,
        metrics=metrics, best_ap=trainer.state.best_ap, epochs_done=trainer.state.iteration // trainer.iters_per_epoch,
        iteration=trainer.state.iteration, interrupted=interrupted, student=trainer.student,
        teacher=trainer.distiller.teacher,
    )


def _build(
    config: Config, work_dir: Path, teacher_checkpoint: str | Path | None, resume: bool, ctx: DistributedContext
) -> Trainer:
    """Builds every part of a run from the config (the only place ``train`` reads it)."""
    train_cfg = config.train
    amp_dtype, scaler = amp_settings(train_cfg, ctx.device)
    graphed = train_cfg.cuda_graphs and graphs_apply(
        ctx.device, world_size=ctx.world_size, amp_dtype=amp_dtype
    ) is None
    configure_determinism(train_cfg.deterministic, ctx.device, shapes_repeat=train_cfg.compile)
    # Teacher and student first: a wrong teacher fails before minutes of data loading.
    student, teacher = _build_models(config, teacher_checkpoint, ctx)
    train_records, val_records = _load_data(config, ctx)
    min_boxes = MIN_BOXES if graphed else 4
    loader, batches = build_train_loader(
        train_records, config.data, rank=ctx.rank, world_size=ctx.world_size, seed=train_cfg.seed,
        pin_memory=ctx.device.type == "cuda", min_boxes=min_boxes,
    )
    global_batch = config.data.batch_size * ctx.world_size
    optimizer = build_optimizer(student, train_cfg, scaled_lr(train_cfg.lr, global_batch, train_cfg.base_batch_size))
    scheduler = build_scheduler(optimizer, build_schedule(train_cfg, batches.batches_per_epoch))
    saved_config = config_to_dict(config)
    state, rng_state = TrainState(), None
    if resume:
        state, rng_state = load_training_state(
            work_dir / LATEST, student=student, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
            iters_per_epoch=batches.batches_per_epoch, ctx=ctx, config=saved_config,
        )
    distiller = _build_distiller(config, student, teacher, ctx)
    if ctx.is_main:
        save_config(config, work_dir / "config.yaml")
    monitor = Monitor(work_dir, total_iters=batches.batches_per_epoch * train_cfg.epochs, enabled=ctx.is_main)
    if resume:
        monitor.rewind(state.iteration, state.evaluated)
        monitor.message(
            f"resuming {work_dir / LATEST} after {state.iteration} of {batches.batches_per_epoch * train_cfg.epochs} "
            "iterations"
        )
    monitor.message(
        f"{len(train_records)} training images, {batches.batches_per_epoch} iterations an epoch, global batch "
        f"{global_batch}, lr {optimizer.param_groups[0]['initial_lr']:.4g}, "
        f"{'LD from the teacher' if teacher is not None else 'no teacher (GFL)'}, {ctx.world_size} x {ctx.device}"
        + (", steps replayed as CUDA graphs" if graphed else "")
    )
    settings = StepSettings(
        amp_dtype=amp_dtype, grad_clip=train_cfg.grad_clip, channels_last=train_cfg.channels_last,
        log_interval=max(1, train_cfg.log_interval), checkpoint_interval=train_cfg.checkpoint_interval,
        bucket=BUCKET if train_cfg.compile else 0, min_boxes=min_boxes,
    )
    graphs = graphed_step(distiller, optimizer, amp_dtype, ctx.device) if graphed else None
    seed_everything(train_cfg.seed + ctx.rank)  # each rank its own random streams
    return Trainer(
        distiller=distiller, student=student, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
        loader=loader, batches=batches,
        val_loader=(
            build_val_loader(val_records, config.data, pin_memory=ctx.device.type == "cuda")
            if val_records is not None else None
        ),
        val_records=val_records, state=state, rng_state=rng_state, epochs=train_cfg.epochs,
        eval_interval=train_cfg.eval_interval, settings=settings, test_cfg=config.test, ctx=ctx, monitor=monitor,
        work_dir=work_dir, saved_config=saved_config, class_names=list(train_records.class_names),
        graphs=graphs,
    )


def _build_models(
    config: Config, teacher_checkpoint: str | Path | None, ctx: DistributedContext
) -> tuple[GFLDetector, GFLDetector | None]:
    """The student (same initial weights on every rank) and the frozen teacher, on the device."""
    teacher = build_teacher(config.distill, teacher_checkpoint)
    seed_everything(config.train.seed)
    student = build_detector(config.model)
    if teacher is not None:
        check_compatible(student, teacher)
    for model in (student, teacher):
        if model is not None:
            model.to(ctx.device)
            if config.train.channels_last:
                model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # missing in torch's stubs
    return student, teacher


def _load_data(config: Config, ctx: DistributedContext) -> tuple[RecordSet, RecordSet | None]:
    """The training records (every rank) and the validation records (rank 0, which evaluates)."""
    if ctx.is_main:
        prepare_shapes(config.data)
    barrier(ctx)
    train_records = load_split(config.data, "train")
    check_classes(config.model, train_records.class_names, "the training data")
    return train_records, load_split(config.data, "val") if ctx.is_main else None


def _build_distiller(
    config: Config, student: GFLDetector, teacher: GFLDetector | None, ctx: DistributedContext
) -> Distiller:
    """Student (compiled, DDP-wrapped as asked), teacher and criterion."""
    if config.train.compile:
        student.compile()  # in place: the state dict keeps its key names
    trained: nn.Module = student
    if ctx.distributed:  # the student alone: the teacher is never wrapped
        trained = nn.parallel.DistributedDataParallel(
            student, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    distiller = Distiller(student=trained, teacher=teacher, criterion=build_criterion(config, teacher is not None))
    distiller.to(ctx.device)
    if config.train.compile:
        distiller.compile()  # the frozen teacher and the criterion
    return distiller


def evaluate_checkpoint(config: Config, checkpoint: str | Path) -> dict[str, float]:
    """COCO box AP of a checkpoint (ldexport or mmdet) on ``config.data``'s validation split.

    Raises:
        LdexportError: a missing or mismatching checkpoint, or missing data.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise LdexportError("ldexport eval runs in one process; start it without torchrun")
    ctx = init_distributed(config.train.device)
    model = load_detector(config.model, checkpoint).model.to(ctx.device)
    prepare_shapes(config.data)
    records = load_split(config.data, "val")
    check_classes(config.model, records.class_names, "the validation data")
    loader = build_val_loader(records, config.data, pin_memory=ctx.device.type == "cuda")
    return evaluate(model, loader, records, device=ctx.device, test_cfg=config.test, progress=True)
