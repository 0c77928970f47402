import math

import pytest
import torch

from ldexport.engine.schedule import WarmupSchedule, build_scheduler, scaled_lr
from ldexport.errors import LdexportError


def test_linear_scaling_rule():
    assert scaled_lr(0.01, 16) == pytest.approx(0.01)
    assert scaled_lr(0.01, 6) == pytest.approx(0.00375)  # the LD repo's 2 GPUs x 3 images


def test_warmup_then_steps_at_epoch_starts():
    schedule = WarmupSchedule(iters_per_epoch=10, epochs=12, warmup_iters=5, warmup_ratio=0.001, steps=(8, 11))
    assert schedule(0) == pytest.approx(0.001)
    assert schedule(2) == pytest.approx(0.001 + 0.999 * 2 / 5)
    assert schedule(5) == 1.0
    assert schedule(79) == 1.0  # last iteration of epoch 8 (counted from 1)
    assert schedule(80) == pytest.approx(0.1)
    assert schedule(109) == pytest.approx(0.1)
    assert schedule(110) == pytest.approx(0.01)


def test_cosine_reaches_min_ratio():
    schedule = WarmupSchedule(iters_per_epoch=10, epochs=2, warmup_iters=0, schedule="cosine", min_ratio=0.05)
    assert schedule(0) == 1.0
    assert schedule(10) == pytest.approx(0.05 + 0.95 * 0.5)
    assert schedule(20) == pytest.approx(0.05)
    assert all(schedule(i) > schedule(i + 1) for i in range(19))


def test_unknown_schedule_is_a_user_error():
    with pytest.raises(LdexportError, match="train.schedule"):
        WarmupSchedule(iters_per_epoch=1, epochs=1, schedule="poly")


def test_scheduler_sets_the_rate_of_every_step():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.02)
    schedule = WarmupSchedule(iters_per_epoch=3, epochs=3, warmup_iters=2, warmup_ratio=0.5, steps=(1, 2))
    scheduler = build_scheduler(optimizer, schedule)
    rates = []
    for _ in range(9):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.01, 0.015, 0.02, 0.002, 0.002, 0.002, 0.0002, 0.0002, 0.0002]
    assert rates == pytest.approx(expected)
    assert not any(math.isnan(r) for r in rates)
