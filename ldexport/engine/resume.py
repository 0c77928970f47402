"""Resuming a run from its ``latest.pth``: weights, optimizer, schedule, scaler, progress, RNG."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ldexport.engine.checkpoints import CHECKPOINT_FORMAT
from ldexport.engine.distributed import DistributedContext
from ldexport.engine.loop import TrainState
from ldexport.errors import LdexportError
from ldexport.interop.checkpoint import read_checkpoint
from ldexport.interop.mmdet import load_state_dict_checked

logger = logging.getLogger("ldexport.engine")

_REQUIRED = ("model", "optimizer", "scheduler", "iteration", "iters_per_epoch", "rng")


def load_training_state(
    path: str | Path,
    *,
    student: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    scaler: torch.amp.GradScaler | None,
    iters_per_epoch: int,
    ctx: DistributedContext,
    config: Mapping[str, Any] | None = None,
) -> tuple[TrainState, dict[str, Any] | None]:
    """Loads a training checkpoint into the parts of a freshly built run.

    The schedule's shape (warm-up, steps, epochs) comes from the current config; only
    the iteration count is taken from the checkpoint. The optimizer's settings (learning
    rate, momentum, weight decay) are the checkpoint's. Settings of ``config`` (the run's
    resolved config, as saved) that differ from the checkpoint's are logged, one line.

    Returns:
        The progress to continue from, and this rank's RNG state to restore right
        before the first batch is drawn (``None`` if the checkpoint has none for it).

    Raises:
        LdexportError: the file is not a resumable ldexport checkpoint, or the run's
            iterations per epoch changed (data set, batch size or process count).
    """
    checkpoint = read_checkpoint(path)
    missing = [key for key in _REQUIRED if key not in checkpoint]
    if checkpoint.get("format") != CHECKPOINT_FORMAT or missing:
        what = missing[0] if missing else f"format {CHECKPOINT_FORMAT!r}"
        raise LdexportError(f"{path} is not a resumable ldexport training checkpoint (no {what})")
    if checkpoint["iters_per_epoch"] != iters_per_epoch:
        raise LdexportError(
            f"cannot resume {path}: it has {checkpoint['iters_per_epoch']} iterations an epoch, this run "
            f"{iters_per_epoch} (the data, data.batch_size or the number of processes changed)"
        )
    if config is not None and isinstance(checkpoint.get("config"), Mapping):
        _log_changes(path, checkpoint["config"], config)
    load_state_dict_checked(student, checkpoint["model"], str(path))
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler_state = dict(checkpoint["scheduler"])
    # Keep the current config's schedule; take only the position in it.
    scheduler_state["lr_lambdas"] = [None] * len(scheduler_state.get("lr_lambdas", [None]))
    scheduler.load_state_dict(scheduler_state)
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    rng = checkpoint["rng"] or []
    rng_state = rng[ctx.rank] if len(rng) == ctx.world_size else None
    if rng_state is None:
        message = "%s was written by %d processes, this run has %d: random streams start afresh"
        logger.warning(message, path, len(rng), ctx.world_size)
    iteration = int(checkpoint["iteration"])
    state = TrainState(
        epoch=iteration // iters_per_epoch, iteration=iteration, best_ap=checkpoint.get("best_ap"),
        # Checkpoints from before this key left no evaluation pending.
        evaluated=int(checkpoint.get("evaluated", iteration)),
    )
    return state, rng_state


# Kept from the checkpoint whatever the config says now (the optimizer's state).
_OPTIMIZER_KEYS = ("train.lr", "train.base_batch_size", "train.momentum", "train.weight_decay")


def _log_changes(path: str | Path, saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    before, now = _flat(saved), _flat(current)
    changed = [key for key in sorted(before.keys() | now.keys()) if before.get(key) != now.get(key)]
    if not changed:
        return
    listed = ", ".join(f"{key} {before.get(key)!r} -> {now.get(key)!r}" for key in changed)
    kept = [key for key in changed if key in _OPTIMIZER_KEYS]
    note = f"; kept from the checkpoint (the optimizer's state): {', '.join(kept)}" if kept else ""
    logger.warning("resuming %s with settings changed since it was written: %s%s", path, listed, note)


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
