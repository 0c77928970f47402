"""Hand-computed values of QFL, DFL, GIoU and the KD KL divergence on tiny inputs."""

import math

import pytest
import torch

from ldexport.losses.distribution_focal import DistributionFocalLoss, distribution_focal_loss
from ldexport.losses.giou import GIoULoss, giou_loss
from ldexport.losses.knowledge_distillation import KnowledgeDistillationKLDivLoss, knowledge_distillation_kl_div
from ldexport.losses.quality_focal import QualityFocalLoss, quality_focal_loss
from ldexport.losses.reduction import FLOAT32_EPS, weighted_mean

LN3 = math.log(3.0)  # a logit whose sigmoid is 0.75


def test_qfl_negative_and_positive_terms():
    pred = torch.full((2, 2), LN3)
    labels = torch.tensor([1, 2])  # row 0: class 1 positive; row 1: background (label C = 2)
    scores = torch.tensor([0.25, 0.9])  # row 1's score must be ignored
    # negative entry: BCE(p=0.75, 0) * 0.75^2 = log(4) * 0.5625
    negative = math.log(4.0) * 0.5625
    # positive entry: BCE(p=0.75, 0.25) * |0.25 - 0.75|^2
    positive = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25)) * 0.25
    loss = quality_focal_loss(pred, labels, scores)
    torch.testing.assert_close(loss, torch.tensor([negative + positive, 2 * negative]))


def test_qfl_module_weights_and_avg_factor():
    pred = torch.full((2, 2), LN3)
    labels, scores = torch.tensor([1, 2]), torch.tensor([0.25, 0.0])
    negative = math.log(4.0) * 0.5625
    positive = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25)) * 0.25
    loss = QualityFocalLoss(loss_weight=3.0)(pred, labels, scores, torch.tensor([1.0, 0.5]), avg_factor=2.0)
    expected = 3.0 * ((negative + positive) + 0.5 * 2 * negative) / (2.0 + FLOAT32_EPS)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_qfl_is_zero_gradient_at_its_target():
    # sigmoid(logit) == quality target: the modulating factor is 0.
    logit = torch.tensor([[math.log(0.6 / 0.4)]], requires_grad=True)
    loss = quality_focal_loss(logit, torch.tensor([0]), torch.tensor([0.6]))
    loss.sum().backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert logit.grad.abs().item() < 1e-7


def test_dfl_interpolates_the_two_neighbouring_bins():
    pred = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))  # CE at bin 0: log 2, at bin 1: log 4
    loss = distribution_focal_loss(pred, torch.tensor([0.25]))
    # 0.75 * log 2 + 0.25 * log 4
    assert loss.item() == pytest.approx(1.25 * math.log(2.0), rel=1e-6)


def test_dfl_integer_target_is_the_cross_entropy_of_its_bin():
    pred = torch.tensor([[0.3, -1.0, 2.0, 0.5]])
    loss = distribution_focal_loss(pred, torch.tensor([2.0]))
    assert loss.item() == pytest.approx(-torch.log_softmax(pred, 1)[0, 2].item(), rel=1e-6)


def test_dfl_module_weight_and_divisor():
    pred = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
    loss = DistributionFocalLoss(loss_weight=0.25)(pred, torch.tensor([0.25, 1.0]), torch.tensor([1.0, 2.0]), 4.0)
    expected = 0.25 * (1.25 * math.log(2.0) + 2.0 * math.log(4.0)) / (4.0 + FLOAT32_EPS)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_giou_hand_values():
    pred = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [5, 5, 9, 8]])
    target = torch.tensor([[1.0, 1, 3, 3], [2, 0, 3, 1], [5, 5, 9, 8]])
    # IoU 1/7, enclosing 9, union 7: GIoU = 1/7 - 2/9; disjoint: 0 - (3 - 2)/3; identical: 1
    expected = torch.tensor([1 - (1 / 7 - 2 / 9), 1 + 1 / 3, 0.0])
    torch.testing.assert_close(giou_loss(pred, target), expected)


def test_giou_module_weight_avg_factor_and_all_zero_weights():
    pred = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1]], requires_grad=True)
    target = torch.tensor([[1.0, 1, 3, 3], [2, 0, 3, 1]])
    loss = GIoULoss(loss_weight=2.0)(pred, target, torch.tensor([1.0, 0.5]), avg_factor=1.0)
    expected = 2.0 * ((1 - (1 / 7 - 2 / 9)) + 0.5 * (4 / 3)) / (1.0 + FLOAT32_EPS)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    zero = GIoULoss(loss_weight=2.0)(pred, target, torch.zeros(2), avg_factor=1.0)
    zero.backward()
    assert zero.item() == 0.0 and pred.grad is not None and not pred.grad.any()


def test_kl_hand_value_at_temperature_1_and_2():
    pred, soft = torch.zeros(1, 2), torch.tensor([[LN3, 0.0]])
    # T = 1: teacher (0.75, 0.25) against student (0.5, 0.5), mean over 2 entries
    kl1 = (0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)) / 2
    assert knowledge_distillation_kl_div(pred, soft, 1.0).item() == pytest.approx(kl1, rel=1e-5)
    # T = 2: teacher softmax(ln3 / 2, 0) = (sqrt3, 1) / (sqrt3 + 1), times T^2 = 4
    t0 = math.sqrt(3) / (math.sqrt(3) + 1)
    kl2 = (t0 * math.log(t0 / 0.5) + (1 - t0) * math.log((1 - t0) / 0.5)) / 2 * 4
    assert knowledge_distillation_kl_div(pred, soft, 2.0).item() == pytest.approx(kl2, rel=1e-5)


def test_kl_is_zero_for_equal_logits_and_never_trains_the_teacher():
    torch.manual_seed(0)
    student = torch.randn(5, 17, requires_grad=True)
    teacher = student.detach().clone().requires_grad_(True)
    # float32 rounding of log(softmax) against log_softmax, times T^2 = 100
    assert knowledge_distillation_kl_div(student, teacher, 10.0).abs().max().item() < 1e-5
    loss = KnowledgeDistillationKLDivLoss(temperature=10.0, loss_weight=0.25)(
        student, teacher + torch.randn(5, 17), torch.ones(5), avg_factor=4.0
    )
    loss.backward()
    assert loss.item() > 0 and student.grad.abs().sum() > 0 and teacher.grad is None


def test_kl_rejects_mismatched_shapes_and_low_temperature():
    with pytest.raises(ValueError, match="shape"):
        knowledge_distillation_kl_div(torch.zeros(2, 3), torch.zeros(2, 4), 10.0)
    with pytest.raises(ValueError, match="temperature"):
        KnowledgeDistillationKLDivLoss(temperature=0.5)


def test_weighted_mean_divides_by_avg_factor_plus_float32_eps():
    loss = weighted_mean(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.25]), avg_factor=0.0)
    assert loss.item() == pytest.approx(1.0 / FLOAT32_EPS, rel=1e-6)
