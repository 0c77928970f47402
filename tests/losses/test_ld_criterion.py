"""LDCriterion on a hand-built one-level batch, and its invariants on a random one.

The hand-built batch: stride 8, a 2 x 2 feature map (anchors 64 px wide centred on
(0, 0), (8, 0), (0, 8), (8, 8)), ``reg_max = 2`` (3 bins), 2 classes, two 16 x 16 images.
Image 0 has the box (0, 0, 16, 16), class 1; image 1 has none. Every anchor contains the
box (IoU 1/16 each, so the ATSS threshold is 1/16), but only the centre (8, 8) lies inside
it: one positive, anchor 3 of image 0. The other three anchors of image 0 form its VLR
(DIoU 1/16 - 128/8192, 1/16 - 64/8192, 1/16 - 64/8192, all in [1/64, 1/16)).
"""

import math

import pytest
import torch

from ldexport.losses.ld_criterion import LDCriterion
from ldexport.losses.reduction import FLOAT32_EPS

LOG2, LOG3, LN3, LN4 = math.log(2), math.log(3), math.log(3), math.log(4)


def hand_batch():
    cls_score = torch.zeros(2, 2, 2, 2)
    cls_score[0, 1, 1, 1] = LN3  # positive anchor: class 1 probability 0.75
    bbox_pred = torch.zeros(2, 12, 2, 2)
    bbox_pred[0, 6:9, 1, 1] = torch.tensor([0.0, 0.0, LN4])  # its right side: mean 1.5 bins
    teacher_bbox = torch.zeros(2, 12, 2, 2)
    teacher_bbox[0, 0:3, 0, 0] = torch.tensor([LN4, 0.0, 0.0])  # anchor 0 (VLR), left side
    targets = [
        {"boxes": torch.tensor([[0.0, 0.0, 16.0, 16.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    return [cls_score.requires_grad_()], [bbox_pred.requires_grad_()], [teacher_bbox], targets


def criterion(**weights):
    return LDCriterion(num_classes=2, reg_max=2, strides=(8,), **weights)


def kl_mean(teacher: list[float], student: list[float], temperature: float) -> float:
    """mean_i t_i log(t_i / s_i) * T^2 with both softened by T (written out by hand)."""
    t = [math.exp(v / temperature) for v in teacher]
    s = [math.exp(v / temperature) for v in student]
    t = [v / sum(t) for v in t]
    s = [v / sum(s) for v in s]
    return sum(ti * math.log(ti / si) for ti, si in zip(t, s)) / len(t) * temperature**2


WEIGHT = 0.75  # the positive's largest class probability
# predicted box (0, 0, 2.5, 2) vs target (0, 0, 2, 2) in strides: IoU = GIoU = 0.8
QUALITY = 0.8
BBOX_RAW = 2.0 * WEIGHT * (1 - QUALITY) / (1 + FLOAT32_EPS)
# target distance 1 bin on every side: CE at bin 1; uniform sides log 3, the right side log 6
DFL_RAW = 0.25 * WEIGHT * (3 * LOG3 + math.log(6)) / (4 + FLOAT32_EPS)
POSITIVE_QFL = -(QUALITY * math.log(0.75) + (1 - QUALITY) * math.log(0.25)) * (QUALITY - 0.75) ** 2
# 15 negative entries (8 anchors x 2 classes, less the positive) of BCE(0.5, 0) * 0.5^2;
# avg_factor: max(1, 1) + max(0, 1) = 2 (an image without boxes counts 1)
QFL = (15 * 0.25 * LOG2 + POSITIVE_QFL) / (2 + FLOAT32_EPS)


def test_plain_gfl_terms_hand_values():
    cls_scores, bbox_preds, _, targets = hand_batch()
    losses = criterion()(cls_scores, bbox_preds, targets, [(16, 16), (16, 16)])
    assert list(losses) == ["loss_cls", "loss_bbox", "loss_dfl"]
    assert losses["loss_cls"].item() == pytest.approx(QFL, rel=1e-6)
    # GFLHead divides by the summed weights clamped at 1: max(0.75, 1) = 1
    assert losses["loss_bbox"].item() == pytest.approx(BBOX_RAW, rel=1e-6)
    assert losses["loss_dfl"].item() == pytest.approx(DFL_RAW, rel=1e-6)


def test_distillation_terms_hand_values():
    cls_scores, bbox_preds, teacher_bbox, targets = hand_batch()
    teacher_cls = [torch.zeros(2, 2, 2, 2)]
    losses = criterion(loss_ld_vlr_weight=0.25, loss_kd_weight=10.0)(
        cls_scores, bbox_preds, targets, [(16, 16), (16, 16)], soft_targets=teacher_bbox, teacher_cls_scores=teacher_cls
    )
    assert list(losses) == ["loss_cls", "loss_bbox", "loss_dfl", "loss_ld", "loss_ld_vlr", "loss_kd"]
    assert losses["loss_cls"].item() == pytest.approx(QFL, rel=1e-6)
    # LDHead divides by the summed weights + 1e-6, without clamping
    assert losses["loss_bbox"].item() == pytest.approx(BBOX_RAW / (WEIGHT + 1e-6), rel=1e-6)
    assert losses["loss_dfl"].item() == pytest.approx(DFL_RAW / (WEIGHT + 1e-6), rel=1e-6)
    # LD: only the positive's right side differs from the (uniform) teacher; not divided
    # by the summed weights
    ld = 0.25 * WEIGHT * kl_mean([0, 0, 0], [0, 0, LN4], 10.0) / (4 + FLOAT32_EPS)
    assert losses["loss_ld"].item() == pytest.approx(ld, rel=1e-4)
    # VLR: anchors 0-2 of image 0, weight IoU 1/16; only anchor 0's left side differs
    vlr = 0.25 * (1 / 16) * kl_mean([LN4, 0, 0], [0, 0, 0], 10.0) / (16 + FLOAT32_EPS)
    assert losses["loss_ld_vlr"].item() == pytest.approx(vlr, rel=1e-4)
    # KD on the positive's class logits (T = 2), divided by the level's positive count 1
    kd = 10.0 * kl_mean([0, 0], [0, LN3], 2.0) / (1 + FLOAT32_EPS)
    assert losses["loss_kd"].item() == pytest.approx(kd, rel=1e-5)


def test_terms_need_their_teacher_outputs_and_positive_weights():
    cls_scores, bbox_preds, teacher_bbox, targets = hand_batch()
    sizes = [(16, 16), (16, 16)]
    with_ld = criterion()(cls_scores, bbox_preds, targets, sizes, soft_targets=teacher_bbox)
    assert list(with_ld) == ["loss_cls", "loss_bbox", "loss_dfl", "loss_ld"]
    kd_only = criterion(loss_kd_weight=10.0)(cls_scores, bbox_preds, targets, sizes, teacher_cls_scores=cls_scores)
    assert "loss_kd" in kd_only and "loss_ld" not in kd_only


def random_batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    sizes = [(12, 20), (6, 10), (3, 5), (2, 3), (1, 2)]  # a 96 x 160 padded batch
    cls_scores = [torch.randn(2, 3, h, w, generator=generator).requires_grad_() for h, w in sizes]
    bbox_preds = [torch.randn(2, 68, h, w, generator=generator).requires_grad_() for h, w in sizes]
    targets = [
        {
            "boxes": torch.tensor([[10.0, 12, 40, 50], [5, 30, 150, 90], [60, 8, 68, 20]]),
            "labels": torch.tensor([0, 2, 1]),
        },
        {"boxes": torch.tensor([[20.0, 20, 60, 70]]), "labels": torch.tensor([1])},
    ]
    return cls_scores, bbox_preds, targets, [(96, 160), (70, 100)]


def test_ld_is_zero_when_the_teacher_is_the_student():
    cls_scores, bbox_preds, targets, sizes = random_batch()
    crit = LDCriterion(num_classes=3, loss_ld_vlr_weight=0.25)
    same = crit(cls_scores, bbox_preds, targets, sizes, soft_targets=[b.detach() for b in bbox_preds])
    assert same["loss_ld"].abs().item() < 1e-5 and same["loss_ld_vlr"].abs().item() < 1e-5
    other = crit(cls_scores, bbox_preds, targets, sizes, soft_targets=[b.detach() * 3 for b in bbox_preds])
    assert other["loss_ld"].item() > 1e-3 and other["loss_ld_vlr"].item() > 1e-4


def test_ld_gradient_reaches_only_the_student_bins():
    cls_scores, bbox_preds, targets, sizes = random_batch()
    soft = [b.detach() * 3 for b in bbox_preds]
    LDCriterion(num_classes=3)(cls_scores, bbox_preds, targets, sizes, soft_targets=soft)["loss_ld"].backward()
    assert sum(b.grad.abs().sum() for b in bbox_preds) > 0
    # the weights are the student's detached class probabilities: no gradient there
    assert all(c.grad is None for c in cls_scores)


# One rank of a two-process gloo group: the criterion on this rank's saved batch, its
# losses saved back. The parent computes what each rank must find from the same batches.
_RANK_WORKER = """
import sys
import torch
import torch.distributed as dist
from ldexport.losses.ld_criterion import LDCriterion
from ldexport.losses.reduction import reduce_mean

rank, folder = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", rank=rank, world_size=2)
mean = reduce_mean(torch.tensor([1.0 + 2.0 * rank]))  # 1 and 3: mean 2
cls_scores, bbox_preds, targets, sizes = torch.load(f"{folder}/batch{rank}.pt")
losses = LDCriterion(num_classes=3)(cls_scores, bbox_preds, targets, sizes)
torch.save({"mean": mean, **{name: value.detach() for name, value in losses.items()}}, f"{folder}/losses{rank}.pt")
dist.barrier()
dist.destroy_process_group()
"""


def _rank_batch(rank: int):
    """Rank 0: :func:`random_batch`; rank 1: other predictions and fewer boxes, so that
    the ranks' positive counts and positive weights differ."""
    cls_scores, bbox_preds, targets, sizes = random_batch(seed=rank)
    if rank == 1:
        targets = [{"boxes": t["boxes"][:1], "labels": t["labels"][:1]} for t in targets]
    return [c.detach() for c in cls_scores], [b.detach() for b in bbox_preds], targets, sizes


def _positive_counts_and_weights(cls_scores, targets, sizes) -> tuple[float, float]:
    """mmdet's ``num_total_pos`` (an image without positives counts 1) and the summed
    positive weights (each positive's top class probability), for one batch."""
    from ldexport.assign.ground_truth import pad_ground_truth
    from ldexport.losses.gfl_targets import build_gfl_targets
    from ldexport.model.priors import anchor_grid

    grid = anchor_grid([tuple(c.shape[-2:]) for c in cls_scores], (8, 16, 32, 64, 128), 8.0)
    gt = build_gfl_targets(grid, pad_ground_truth(targets, sizes), num_classes=3)
    scores = torch.cat([c.permute(0, 2, 3, 1).reshape(c.shape[0], -1, 3) for c in cls_scores], 1).sigmoid()  # [N, A, C]
    weight_sum = scores.max(-1).values[gt.positive].sum().item()
    return gt.num_pos.item(), weight_sum


def test_without_a_process_group_the_reduction_is_the_identity():
    from ldexport.losses.reduction import reduce_mean

    value = torch.tensor([3.0, 5.0])
    assert reduce_mean(value) is value


def test_two_ranks_divide_by_the_mean_positive_count_and_weight_over_the_ranks(tmp_path):
    """mmdet divides ``loss_cls`` by the mean over the ranks of their positive counts,
    and ``loss_bbox`` / ``loss_dfl`` by the mean of their summed positive weights
    (``reduce_mean``), not by this rank's own. Ranks with identical batches cannot tell
    a mean from a rank's own value or from a sum (the two-rank training run of
    tests/engine/test_distributed.py keeps identical students either way): here the
    ranks' batches differ, and each rank's losses are checked against the values
    rescaled from its losses alone."""
    import os
    import socket
    import subprocess
    import sys

    for rank in range(2):
        torch.save(_rank_batch(rank), tmp_path / f"batch{rank}.pt")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    ranks = [
        subprocess.Popen([sys.executable, "-c", _RANK_WORKER, str(rank), str(tmp_path)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for rank in range(2)
    ]
    for rank, process in enumerate(ranks):
        _, stderr = process.communicate(timeout=240)
        assert process.returncode == 0, f"rank {rank}: {stderr[-3000:]}"
    grouped = [torch.load(tmp_path / f"losses{rank}.pt") for rank in range(2)]
    assert [g["mean"].item() for g in grouped] == [2.0, 2.0]

    counts, weights, alone = [], [], []
    for rank in range(2):
        cls_scores, bbox_preds, targets, sizes = _rank_batch(rank)
        count, weight_sum = _positive_counts_and_weights(cls_scores, targets, sizes)
        counts.append(count)
        weights.append(weight_sum)
        alone.append(LDCriterion(num_classes=3)(cls_scores, bbox_preds, targets, sizes))
    assert counts[0] != counts[1] and min(weights) > 1  # the ranks differ; GFLHead's clamp at 1 stays out
    mean_count, mean_weight = sum(counts) / 2, sum(weights) / 2
    for rank in range(2):
        expected_cls = alone[rank]["loss_cls"].item() * (counts[rank] + FLOAT32_EPS) / (mean_count + FLOAT32_EPS)
        assert grouped[rank]["loss_cls"].item() == pytest.approx(expected_cls, rel=1e-5), rank
        for name in ("loss_bbox", "loss_dfl"):
            expected = alone[rank][name].item() * weights[rank] / mean_weight
            assert grouped[rank][name].item() == pytest.approx(expected, rel=1e-5), (rank, name)


def test_wrong_number_of_levels_is_rejected():
    cls_scores, bbox_preds, targets, sizes = random_batch()
    with pytest.raises(ValueError, match="levels"):
        LDCriterion(num_classes=3, strides=(8, 16, 32))(cls_scores, bbox_preds, targets, sizes)


def test_kd_divides_each_level_by_its_own_positive_count():
    """mmdet's KD ``avg_factor`` is the positive count of the level; the levels are computed
    in one pass here, so the per-level division is checked against a level-by-level sum."""
    from ldexport.assign.ground_truth import pad_ground_truth
    from ldexport.losses.gfl_targets import build_gfl_targets
    from ldexport.model.priors import anchor_grid
    from ldexport.losses.knowledge_distillation import knowledge_distillation_kl_div

    cls_scores, bbox_preds, targets, sizes = random_batch()
    teacher_cls = [c.detach() * 2 + 1 for c in cls_scores]
    crit = LDCriterion(num_classes=3, loss_kd_weight=10.0, kd_temperature=2.0)
    loss_kd = crit(cls_scores, bbox_preds, targets, sizes, teacher_cls_scores=teacher_cls)["loss_kd"]
    featmap_sizes = [tuple(c.shape[-2:]) for c in cls_scores]
    grid = anchor_grid(featmap_sizes, crit.strides, 8.0)
    gt = build_gfl_targets(grid, pad_ground_truth(targets, sizes), num_classes=3)
    levels_labels = gt.labels.split(list(grid.num_level_anchors), dim=1)
    levels_weights = gt.label_weights.split(list(grid.num_level_anchors), dim=1)
    expected, counts = 0.0, []
    for student, teacher, labels, weights in zip(cls_scores, teacher_cls, levels_labels, levels_weights):
        pos = (labels.reshape(-1) < 3).nonzero().squeeze(1)  # mmdet's order: image, row, column
        counts.append(pos.numel())
        if pos.numel():
            flat = lambda t: t.permute(0, 2, 3, 1).reshape(-1, 3)[pos]  # noqa: E731
            kd = knowledge_distillation_kl_div(flat(student), flat(teacher), 2.0)
            expected += 10.0 * (kd * weights.reshape(-1)[pos]).sum().item() / (pos.numel() + FLOAT32_EPS)
    assert len({count for count in counts if count}) > 1  # levels with different counts
    assert loss_kd.item() == pytest.approx(expected, rel=1e-5)


def test_padded_ground_truth_gives_the_same_losses_as_per_image_targets():
    from ldexport.assign.ground_truth import pad_ground_truth

    cls_scores, bbox_preds, targets, sizes = random_batch()
    crit = LDCriterion(num_classes=3, loss_ld_vlr_weight=0.25)
    soft = [b.detach() * 3 for b in bbox_preds]
    listed = crit(cls_scores, bbox_preds, targets, sizes, soft_targets=soft)
    padded = crit(cls_scores, bbox_preds, pad_ground_truth(targets, sizes, minimum=16), soft_targets=soft)
    assert set(listed) == set(padded)
    for name, value in listed.items():
        assert value.item() != 0 and padded[name].item() == pytest.approx(value.item(), rel=1e-6), name


def test_losses_are_float32_under_autocast():
    cls_scores, bbox_preds, targets, sizes = random_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = LDCriterion(num_classes=3)(
            [c.bfloat16() for c in cls_scores], [b.bfloat16() for b in bbox_preds], targets, sizes
        )
    assert all(value.dtype == torch.float32 for value in low.values())
    full = LDCriterion(num_classes=3)([c.bfloat16().float() for c in cls_scores], [b.bfloat16().float() for b in bbox_preds], targets, sizes)
    for name, value in full.items():
        assert low[name].item() == pytest.approx(value.item(), rel=1e-5), name


def test_the_criterion_compiled_by_inductor_gives_the_eager_losses_and_gradients():
    """``train.compile``'s assignment and losses through inductor's code generation (C++
    kernels on a CPU, about 20 s on 2 cores; before torch 2.13 its vectorised kernels do not
    compile, see :meth:`LDCriterion.compile`): the eager losses and gradients."""
    from ldexport.assign.ground_truth import pad_ground_truth

    cls_scores, bbox_preds, targets, sizes = random_batch()
    ground_truth = pad_ground_truth(targets, sizes, minimum=16)
    soft = [b.detach() * 3 for b in bbox_preds]
    crit = LDCriterion(num_classes=3, loss_ld_vlr_weight=0.25)
    results = []
    for compiled in (False, True):
        if compiled:
            torch._dynamo.reset()
            crit.compile()
        losses = crit(cls_scores, bbox_preds, ground_truth, soft_targets=soft)
        sum(losses.values()).backward()
        results.append((losses, [p.grad.clone() for p in (*cls_scores, *bbox_preds)]))
        for p in (*cls_scores, *bbox_preds):
            p.grad = None
    (eager, eager_grads), (compiled, compiled_grads) = results
    assert set(eager) == set(compiled)
    for name, value in eager.items():
        assert compiled[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-7), name
    for ours, reference in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-7)
