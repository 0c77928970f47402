"""CUDA graphs replay the step as the eager step runs it (``ldexport.engine.graphs``).

Where graphs apply is checked everywhere; the replays themselves need a CUDA device
(marked ``cuda``): the same batches through a graphed and an eager copy of one tiny LD
setup give the same losses and the same weights, over batches of two shapes (two
graphs, one memory pool), repeated shapes (replays with new inputs), and a batch beyond
``max_graphs`` (run eagerly between replays).
"""

from __future__ import annotations

import copy

import pytest
import torch

from ldexport.assign.ground_truth import pad_ground_truth
from ldexport.distill import Distiller
from ldexport.engine.distributed import DistributedContext
from ldexport.engine.graphs import GraphedStep, graphs_apply
from ldexport.engine.loop import StepSettings, TrainState, forward_backward, loss_flags, train_step
from ldexport.losses.ld_criterion import LDCriterion
from ldexport.model import ModelConfig, build_detector

TINY = dict(num_classes=3, base_channels=8, neck_channels=16, feat_channels=16, stacked_convs=2, norm_groups=4)


def test_graphs_apply_only_where_a_graph_can_hold_the_step():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert graphs_apply(cuda, world_size=1, amp_dtype=None) is None
    assert graphs_apply(cuda, world_size=1, amp_dtype=torch.bfloat16) is None
    assert "CUDA device" in graphs_apply(cpu, world_size=1, amp_dtype=None)
    assert "single-process" in graphs_apply(cuda, world_size=2, amp_dtype=None)
    assert "bf16" in graphs_apply(cuda, world_size=1, amp_dtype=torch.float16)


def test_a_batch_shape_is_captured_only_when_it_comes_again():
    """The first batch of a key runs eagerly (``None``) without a warm-up pass or a capture:
    a shape that never returns costs nothing (on a CPU, a capture would fail)."""
    calls = []

    def step(images, ground_truth):
        calls.append(images.shape)
        return torch.zeros(2), ["loss"]

    graphs = GraphedStep(step, [], [])
    # three image shapes, and the first one with more boxes (32 padded, not 16): four keys
    for size, boxes in (((64, 96), 3), ((96, 64), 3), ((64, 128), 3), ((64, 96), 20)):
        images, ground_truth = _batch(0, size, boxes, torch.device("cpu"))
        assert graphs(images, ground_truth) is None
    assert calls == [] and len(graphs) == 0 and graphs.failed is None
    assert sorted(graphs._sightings.values()) == [1, 1, 1, 1]


def test_loss_flags_stack_the_terms_and_the_flags():
    outputs = {"loss": torch.tensor(float("inf")), "loss_b": torch.tensor(2.0), "loss_a": torch.tensor(1.0)}
    flags, names = loss_flags(outputs, stop_requested=True)
    assert names == ["loss", "loss_a", "loss_b"]
    assert flags.tolist() == [float("inf"), 1.0, 2.0, 1.0, 1.0]  # terms, not finite, stop
    flags, _ = loss_flags({"loss": torch.tensor(3.0)})
    assert flags.tolist() == [3.0, 0.0]


def _batch(seed: int, size: tuple[int, int], boxes: int, device: torch.device):
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    targets = []
    for count in (boxes, max(boxes - 2, 0)):
        corner = torch.rand(count, 2, generator=generator) * torch.tensor([width * 0.6, height * 0.6])
        side = 8 + torch.rand(count, 2, generator=generator) * torch.tensor([width * 0.3, height * 0.3])
        targets.append({"boxes": torch.cat([corner, corner + side], 1), "labels": torch.randint(0, 3, (count,), generator=generator)})
    images = torch.randn(2, 3, height, width, generator=generator).to(device)
    return images, pad_ground_truth(targets, [size, (height - 8, width - 16)], minimum=16).to(device)


@pytest.mark.cuda
@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16])
def test_graphed_steps_train_as_the_eager_steps(amp_dtype):
    device = torch.device("cuda")
    torch.manual_seed(0)
    student, teacher = build_detector(ModelConfig(depth=18, **TINY)), build_detector(ModelConfig(depth=18, **TINY))
    criterion = LDCriterion(num_classes=3, loss_ld_vlr_weight=0.25)
    students = [student, copy.deepcopy(student)]
    runs = []
    for graphed, model in zip((False, True), students):
        distiller = Distiller(student=model, teacher=copy.deepcopy(teacher), criterion=copy.deepcopy(criterion))
        distiller.to(device).train()
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(parameters, lr=0.01, momentum=0.9, fused=True)
        graphs = GraphedStep(forward_backward(distiller, amp_dtype, device), parameters, [model], max_graphs=2) if graphed else None
        runs.append((distiller, optimizer, graphs))
    ctx = DistributedContext(device=device)
    settings = StepSettings(amp_dtype=amp_dtype, grad_clip=10.0)
    # two shapes, each eager the first time and captured the second (two graphs), then a
    # third shape beyond max_graphs (eager, between replays), then both first shapes
    # again (replays with new inputs)
    plan = [((64, 96), 5), ((96, 64), 3), ((64, 96), 4), ((96, 64), 6), ((128, 64), 5), ((64, 96), 7), ((96, 64), 2)]
    # fp32: the same kernels, the same numbers (passed on an H200 at 1e-5). bf16: the losses
    # agree to 1e-3 step by step there, the weights after six steps not to 1e-3 / 1e-5
    # (inside a capture cuBLAS may take other bf16 kernels); a wrong gradient moves weights
    # by the size of an update, 1e-3 and more, far beyond the bf16 bound below.
    tolerance = 1e-5 if amp_dtype is None else 1e-3
    weight_rtol, weight_atol = (1e-5, 1e-5) if amp_dtype is None else (1e-2, 2e-4)
    for seed, (size, boxes) in enumerate(plan):
        images, ground_truth = _batch(seed, size, boxes, device)
        results = [
            train_step(distiller, images, ground_truth, optimizer, settings, ctx, False, TrainState(), graphs=graphs)
            for distiller, optimizer, graphs in runs
        ]
        (eager, _), (replayed, _) = results
        assert eager.keys() == replayed.keys()
        for name, value in eager.items():
            assert replayed[name] == pytest.approx(value, rel=tolerance, abs=1e-6), (seed, name)
    assert len(runs[1][2]) == 2  # the third shape ran eagerly
    for (name, eager), replayed in zip(students[0].state_dict().items(), students[1].state_dict().values()):
        torch.testing.assert_close(
            replayed, eager, rtol=weight_rtol, atol=weight_atol, msg=lambda message, name=name: f"{name}: {message}"
        )


@pytest.mark.cuda
def test_compiled_steps_replay_as_the_eager_steps():
    """``train.compile`` with graphs: the parts compiled in the warm-up passes, the graphs
    holding their kernels, the same losses and weights as the eager, uncompiled step
    (inductor reorders sums: 1e-4, far below an update's size)."""
    pytest.importorskip("triton", reason="torch.compile's CUDA kernels need triton")
    from torch._dynamo.utils import counters

    device = torch.device("cuda")
    torch.manual_seed(0)
    student, teacher = build_detector(ModelConfig(depth=18, **TINY)), build_detector(ModelConfig(depth=18, **TINY))
    criterion = LDCriterion(num_classes=3, loss_ld_vlr_weight=0.25)
    students = [student, copy.deepcopy(student)]
    torch._dynamo.reset()
    counters.clear()
    runs = []
    for compiled, model in zip((False, True), students):
        if compiled:
            model.compile()
        distiller = Distiller(student=model, teacher=copy.deepcopy(teacher), criterion=copy.deepcopy(criterion))
        distiller.to(device).train()
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(parameters, lr=0.01, momentum=0.9, fused=True)
        graphs = None
        if compiled:
            distiller.compile()
            graphs = GraphedStep(forward_backward(distiller, None, device), parameters, [model])
        runs.append((distiller, optimizer, graphs))
    ctx, settings = DistributedContext(device=device), StepSettings(grad_clip=10.0)
    plan = [((64, 96), 5), ((96, 64), 3), ((64, 96), 4), ((96, 64), 6), ((64, 96), 7), ((96, 64), 2)]
    for seed, (size, boxes) in enumerate(plan):
        images, ground_truth = _batch(seed, size, boxes, device)
        (eager, _), (replayed, _) = [
            train_step(distiller, images, ground_truth, optimizer, settings, ctx, False, TrainState(), graphs=graphs)
            for distiller, optimizer, graphs in runs
        ]
        for name, value in eager.items():
            assert replayed[name] == pytest.approx(value, rel=1e-4, abs=1e-6), (seed, name)
    graphs = runs[1][2]
    assert graphs.failed is None and len(graphs) == 2
    assert counters["stats"]["unique_graphs"] >= 3 and not counters["graph_break"]  # student, teacher, criterion
    for (name, eager), replayed in zip(students[0].state_dict().items(), students[1].state_dict().values()):
        torch.testing.assert_close(
            replayed, eager, rtol=1e-4, atol=1e-5, msg=lambda message, name=name: f"{name}: {message}"
        )
