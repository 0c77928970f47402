"""The epochs of a run: train, evaluate on rank 0, write checkpoints, stop on a signal.

:class:`Trainer` only holds the parts that :func:`ldexport.engine.run.train` built and
drives :func:`~ldexport.engine.loop.train_one_epoch` and
:func:`~ldexport.engine.loop.evaluate` over the remaining epochs, as detr's ``main``
does; it reads no config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ldexport.data.records import RecordSet
from ldexport.distill import Distiller
from ldexport.engine.checkpoints import (
    BEST,
    CHECKPOINT_FORMAT,
    LATEST,
    capture_rng_state,
    model_is_finite,
    restore_rng_state,
    save_checkpoint,
)
from ldexport.engine.data import ResumableBatchSampler
from ldexport.engine.distributed import DistributedContext, all_reduce_sum, barrier, gather_objects
from ldexport.engine.graphs import GraphedStep
from ldexport.engine.loop import StepSettings, TrainState, evaluate, train_one_epoch
from ldexport.engine.monitor import Monitor
from ldexport.engine.signals import StopRequest
from ldexport.errors import LdexportError
from ldexport.model.detector import GFLDetector, TestConfig


@dataclass
class Trainer:
    """A built run.

    Attributes:
        distiller: student (maybe DDP-wrapped), frozen teacher, criterion.
        student: the plain student (saved, evaluated).
        optimizer, scheduler, scaler: the optimisation state.
        loader, batches: the training loader and its resumable batch sampler.
        val_loader, val_records: the validation split (rank 0 only; ``None`` elsewhere).
        state: progress; ``rng_state`` is restored before the first batch when resuming.
        epochs: epochs of the run.
        eval_interval: epochs between evaluations (0 = never; the last epoch always).
        settings: per-step settings.
        test_cfg: decoding for evaluation.
        ctx: this process's rank and device.
        monitor: progress bar and logs.
        work_dir: where checkpoints go.
        saved_config: the resolved config, as saved in checkpoints.
        class_names: the data's classes, as saved in checkpoints.
        graphs: the CUDA graphs that replay each step's forward and backward pass, or
            ``None`` (eager).
    """

    distiller: Distiller
    student: GFLDetector
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    loader: DataLoader
    batches: ResumableBatchSampler
    val_loader: DataLoader | None
    val_records: RecordSet | None
    state: TrainState
    rng_state: dict[str, Any] | None
    epochs: int
    eval_interval: int
    settings: StepSettings
    test_cfg: TestConfig
    ctx: DistributedContext
    monitor: Monitor
    work_dir: Path
    saved_config: dict[str, Any]
    class_names: list[str]
    graphs: GraphedStep | None = None

    @property
    def iters_per_epoch(self) -> int:
        """Optimizer steps an epoch."""
        return self.batches.batches_per_epoch

    def fit(self) -> tuple[bool, dict[str, float]]:
        """Trains the remaining epochs, each followed by its evaluation when due.

        A resumed run first evaluates the epoch it stopped at the end of, if a stop came
        before that epoch's evaluation was done.

        Returns:
            ``(interrupted, metrics)``: whether a signal stopped the run (its checkpoint
            is written) and the last evaluation's metrics.
        """
        metrics: dict[str, float] = {}
        with StopRequest() as stop:
            while True:
                if self._evaluation_pending():
                    new_metrics, improved = self._evaluate_epoch(stop)
                    metrics = new_metrics or metrics
                    if improved:  # before latest.pth, which records the new best AP
                        self.save_best(new_metrics)
                    self.save_latest()
                    if self._any_rank(stop.requested):
                        self._stopped(stop)
                        return True, metrics
                if self.state.iteration >= self.epochs * self.iters_per_epoch:
                    return False, metrics
                if self._train_epoch(stop):
                    return True, metrics

    def _evaluation_pending(self) -> bool:
        iteration = self.state.iteration
        return iteration > 0 and iteration % self.iters_per_epoch == 0 and self.state.evaluated != iteration

    def _train_epoch(self, stop: StopRequest) -> bool:
        state = self.state
        state.epoch = state.iteration // self.iters_per_epoch
        done = state.iteration - state.epoch * self.iters_per_epoch
        self.batches.set_epoch(state.epoch, skip=done)
        if self.rng_state is not None:
            # A resumed run continues this process's random streams where it stopped.
            restore_rng_state(self.rng_state, self.ctx.device)
            self.rng_state = None
        self.distiller.train()
        self.monitor.start_epoch(state.epoch, self.epochs, self.iters_per_epoch, done)
        stopped = train_one_epoch(
            self.distiller, self.loader, self.optimizer, self.scheduler, state=state,
            iters_per_epoch=self.iters_per_epoch, settings=self.settings, ctx=self.ctx, monitor=self.monitor,
            stop=stop, save_checkpoint=self.save_latest, scaler=self.scaler, graphs=self.graphs,
        )
        self.monitor.end_epoch()
        if stopped:
            self._stopped(stop)
        return stopped

    def _evaluate_epoch(self, stop: StopRequest) -> tuple[dict[str, float], bool]:
        """Evaluates on rank 0 when the epoch just ended is due; the others wait.

        Marks the epoch's evaluation settled unless a stop abandoned it.
        """
        iteration = self.state.iteration
        epoch = iteration // self.iters_per_epoch  # epochs done, from 1
        if self.eval_interval <= 0 or (epoch % self.eval_interval != 0 and epoch != self.epochs):
            self.state.evaluated = iteration
            return {}, False
        metrics: dict[str, float] = {}
        improved = False
        settled = True
        if self.ctx.is_main:
            assert self.val_loader is not None and self.val_records is not None
            metrics = evaluate(
                self.student, self.val_loader, self.val_records, device=self.ctx.device, test_cfg=self.test_cfg,
                channels_last=self.settings.channels_last, progress=True, stop=stop,
            )
            settled = bool(metrics)  # empty: abandoned on a stop
            if metrics:
                self.monitor.log_eval(epoch - 1, iteration, metrics)
                improved = self.state.best_ap is None or metrics["AP"] > self.state.best_ap
            if improved:
                self.state.best_ap = metrics["AP"]
        if settled:
            self.state.evaluated = iteration
        barrier(self.ctx)
        return metrics, improved

    def save_latest(self) -> None:
        """Writes ``latest.pth``; every rank calls it (their RNG states are gathered)."""
        if not model_is_finite(self.student):
            kept = (
                f"the last good checkpoint, {self.work_dir / LATEST}, was kept" if (self.work_dir / LATEST).is_file()
                else "no checkpoint had been written yet"
            )
            raise LdexportError(
                f"the weights became NaN or infinite by iteration {self.state.iteration}; training stopped and "
                f"{kept} (try a lower train.lr, or set train.grad_clip)"
            )
        rng = gather_objects(capture_rng_state(self.ctx.device), self.ctx)
        if self.ctx.is_main:
            training = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "iters_per_epoch": self.iters_per_epoch,
                "rng": rng,
                "best_ap": self.state.best_ap,
                "evaluated": self.state.evaluated,
            }
            save_checkpoint({**self._weights(), **training}, self.work_dir / LATEST)

    def save_best(self, metrics: dict[str, float]) -> None:
        """Writes ``best.pth`` (rank 0): the student, config, classes and metrics."""
        if self.ctx.is_main:
            save_checkpoint({**self._weights(), "metrics": metrics}, self.work_dir / BEST)

    def _weights(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.student.state_dict(),
            "config": self.saved_config,
            "class_names": self.class_names,
            "epoch": self.state.iteration // self.iters_per_epoch,
            "iteration": self.state.iteration,
        }

    def _any_rank(self, flag: bool) -> bool:
        return all_reduce_sum(torch.tensor([float(flag)], device=self.ctx.device), self.ctx).item() > 0

    def _stopped(self, stop: StopRequest) -> None:
        self.monitor.message(
            f"{stop.signal_name or 'stop'}: checkpoint written to {self.work_dir / LATEST}"
        )
