"""Learning-rate schedules: linear warm-up, then a step or cosine decay, per iteration.

The rate is ``base_lr * factor(iteration)``; :class:`WarmupSchedule` gives the factor
and ``torch.optim.lr_scheduler.LambdaLR`` applies it after every optimizer step, so the
scheduler's ``state_dict`` is the iteration count (plain ints, safe to reload).

mmdet's 1x schedule is ``LinearLR(start_factor=0.001, end=500)`` per iteration times
``MultiStepLR(milestones=[8, 11], gamma=0.1)`` per epoch: the warm-up factor and the
decay factor multiply, and a step takes effect at the first iteration of its epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ldexport.errors import LdexportError

SCHEDULES = ("step", "cosine")


def scaled_lr(lr: float, global_batch: int, base_batch: int = 16) -> float:
    """The linear scaling rule: ``lr`` is given for ``base_batch`` images a step.

    Args:
        lr: the rate for a global batch of ``base_batch`` images.
        global_batch: images a step over all processes.
        base_batch: the batch ``lr`` was tuned for (16 in mmdet's configs: 8 GPUs x 2).
    """
    return lr * global_batch / base_batch


class WarmupSchedule:
    """The rate factor at an iteration (0-based, counted over the whole run).

    Args:
        iters_per_epoch: optimizer steps an epoch.
        epochs: training epochs.
        warmup_iters: iterations of linear warm-up (0 = none).
        warmup_ratio: the factor at iteration 0; it grows linearly to 1 at ``warmup_iters``.
        schedule: ``"step"`` (multiply by ``gamma`` at each epoch in ``steps``) or
            ``"cosine"`` (half a cosine from 1 to ``min_ratio`` over all iterations).
        steps: epochs (counted from 0) at whose start a step schedule decays.
        gamma: the step decay.
        min_ratio: the cosine schedule's final factor.
    """

    def __init__(
        self,
        *,
        iters_per_epoch: int,
        epochs: int,
        warmup_iters: int = 500,
        warmup_ratio: float = 0.001,
        schedule: str = "step",
        steps: Sequence[int] = (8, 11),
        gamma: float = 0.1,
        min_ratio: float = 0.0,
    ) -> None:
        if schedule not in SCHEDULES:
            raise LdexportError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if iters_per_epoch < 1 or epochs < 1:
            raise LdexportError(f"need at least one epoch of one iteration, got {epochs} x {iters_per_epoch}")
        self.iters_per_epoch = iters_per_epoch
        self.total_iters = iters_per_epoch * epochs
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        self.schedule = schedule
        self.steps = tuple(steps)
        self.gamma = gamma
        self.min_ratio = min_ratio

    def __call__(self, iteration: int) -> float:
        return self.warmup_factor(iteration) * self.decay_factor(iteration)

    def warmup_factor(self, iteration: int) -> float:
        """mmengine's ``LinearLR``: ``ratio + (1 - ratio) * iteration / warmup_iters``."""
        if iteration >= self.warmup_iters:
            return 1.0
        return self.warmup_ratio + (1.0 - self.warmup_ratio) * iteration / self.warmup_iters

    def decay_factor(self, iteration: int) -> float:
        """The step or cosine factor after warm-up."""
        if self.schedule == "step":
            epoch = iteration // self.iters_per_epoch
            return self.gamma ** sum(1 for step in self.steps if epoch >= step)
        progress = min(iteration / self.total_iters, 1.0)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: Optimizer, schedule: WarmupSchedule) -> LambdaLR:
    """A per-iteration ``LambdaLR``: call ``step()`` after every optimizer step."""
    return LambdaLR(optimizer, lr_lambda=schedule)
