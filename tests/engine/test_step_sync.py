"""The training step asks the device nothing: no operation that makes the host wait for
the device's result (``nonzero``, ``item``, ``masked_select``, ``unique``, boolean-mask
indexing) runs anywhere in :func:`ldexport.engine.loop.train_step`, forward or backward;
its one read-back is a non-blocking copy of the loss terms, which runs none of these
either.

Checked on CPU, where the same operations run as on CUDA, twice: with the torch profiler,
which records every operator the step calls (the backward's included, and those called
from C++ inside other operators' backward formulas), and with a dispatch mode, which sees
the arguments (a boolean tensor used as an index). The profiler is needed as well: some
backward formulas take another, synchronisation-free path while a dispatch mode is active
(``prod``'s reads ``item`` only without one).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ldexport.assign.ground_truth import pad_ground_truth
from ldexport.distill import Distiller
from ldexport.engine.distributed import DistributedContext
from ldexport.engine.loop import StepSettings, TrainState, train_step
from ldexport.losses.ld_criterion import LDCriterion
from ldexport.model import ModelConfig, build_detector

TINY = dict(num_classes=3, base_channels=8, neck_channels=16, feat_channels=16, stacked_convs=2, norm_groups=4)
SYNCHRONISING = {"nonzero", "_local_scalar_dense", "masked_select", "masked_scatter", "_unique", "_unique2",
                 "unique_dim", "unique_consecutive", "is_nonzero", "equal", "argwhere", "nonzero_static"}


class RecordOps(TorchDispatchMode):
    """Records every aten operation, and the boolean-mask indexing among them."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.boolean_indexing: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.names.append(name)
        if name.startswith("index"):  # index, index_put, index_put_ with a bool tensor index
            indices = args[1] if len(args) > 1 else ()
            if isinstance(indices, (list, tuple)) and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices
            ):
                self.boolean_indexing.append(name)
        return func(*args, **(kwargs or {}))


def tiny_step(device: torch.device):
    """A tiny LD setup (VLR, KD, ignore boxes, an image without boxes) and a step runner."""
    torch.manual_seed(0)
    student, teacher = build_detector(ModelConfig(depth=18, **TINY)), build_detector(ModelConfig(depth=18, **TINY))
    criterion = LDCriterion(num_classes=3, loss_ld_vlr_weight=0.25, loss_kd_weight=1.0, ignore_iof_thr=0.5)
    distiller = Distiller(student=student, teacher=teacher, criterion=criterion).to(device).train()
    optimizer = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.01, momentum=0.9, foreach=True)
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 8.0, 90.0, 60.0]]), "labels": torch.tensor([0, 2]),
         "ignore_boxes": torch.tensor([[60.0, 40.0, 90.0, 64.0]])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},  # an image without boxes
    ]
    ground_truth = pad_ground_truth(targets, [(64, 96), (50, 70)]).to(device)
    images = torch.randn(2, 3, 64, 96, device=device)
    ctx = DistributedContext(rank=0, world_size=1, local_rank=0, device=device)

    def step(settings: StepSettings):
        return train_step(distiller, images, ground_truth, optimizer, settings, ctx, False, TrainState())

    return step


def test_the_step_dispatches_no_synchronising_operation():
    step = tiny_step(torch.device("cpu"))
    settings = StepSettings(grad_clip=10.0)
    step(settings)  # warm-up
    recorder = RecordOps()
    with recorder:
        losses, stop = step(settings)
    assert not stop and {"loss_ld", "loss_ld_vlr", "loss_kd"} <= set(losses)
    assert all(value == value for value in losses.values())  # finite numbers came back
    seen = set(recorder.names)
    # the whole step was watched: assignment, losses, the backward pass and the update
    assert {"topk", "scatter_", "convolution_backward", "_foreach_add_"} <= seen, sorted(seen)
    assert not seen & SYNCHRONISING, sorted(seen & SYNCHRONISING)
    assert not recorder.boolean_indexing
    profiled = profiled_operators(lambda: step(settings))
    assert {"topk", "convolution_backward"} <= profiled
    assert not profiled & SYNCHRONISING, sorted(profiled & SYNCHRONISING)


def profiled_operators(run) -> set[str]:
    """The names (without ``aten::``) of every aten operator ``run()`` calls."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run()
    return {event.name[len("aten::"):] for event in profile.events() if event.name.startswith("aten::")}


@pytest.mark.cuda
@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16])
def test_on_cuda_the_step_does_not_synchronise(amp_dtype):
    """CUDA's own check: every synchronising call raises under the sync debug mode (the
    read-back waits on an event, which the mode does not count)."""
    step = tiny_step(torch.device("cuda"))
    settings = StepSettings(grad_clip=10.0, amp_dtype=amp_dtype)
    step(settings)  # warm-up: lazy initialisation, cuDNN and the optimizer's state
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses, _ = step(settings)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(value == value for value in losses.values())


def test_the_recorder_sees_what_it_forbids():
    """The check is real: the operations it forbids are seen when they run."""
    recorder = RecordOps()
    values = torch.randn(10)
    with recorder:
        values[values > 0].sum()
        (values > 0).nonzero()
        values.max().item()
    assert {"nonzero", "_local_scalar_dense"} <= set(recorder.names)
    assert recorder.boolean_indexing == ["index"]
    # the profiler sees the item() that prod's backward runs outside a dispatch mode
    area = torch.rand(5, 2, requires_grad=True)
    assert "_local_scalar_dense" in profiled_operators(lambda: area.prod(-1).sum().backward())
