"""Distiller: a frozen, unchanged teacher; a trained student; mismatched teachers rejected."""

import pytest
import torch
from torch import nn

from ldexport.distill import Distiller, check_compatible
from ldexport.errors import LdexportError
from ldexport.losses.ld_criterion import LDCriterion
from ldexport.model import ModelConfig, build_detector

TINY = dict(depth=18, base_channels=16, neck_channels=32, feat_channels=32, stacked_convs=1, norm_groups=8)


def tiny(**overrides) -> nn.Module:
    torch.manual_seed(overrides.pop("seed", 0))
    return build_detector(ModelConfig(**{**TINY, "num_classes": 3, **overrides}))


def batch():
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    targets = [
        {"boxes": torch.tensor([[4.0, 6, 40, 50], [50, 10, 90, 30]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    return images, targets, [(64, 96), (50, 70)]


def test_teacher_is_frozen_and_unchanged_after_a_training_step():
    student, teacher = tiny(), tiny(seed=1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher.train()
    criterion = LDCriterion(num_classes=3, loss_ld_vlr_weight=0.25)
    distiller = Distiller(student=student, teacher=teacher, criterion=criterion)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    distiller.train()
    assert student.training and not teacher.training
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    losses = distiller(*batch())
    assert set(losses) == {"loss", "loss_cls", "loss_bbox", "loss_dfl", "loss_ld", "loss_ld_vlr"}
    torch.testing.assert_close(losses["loss"], sum(v for k, v in losses.items() if k != "loss"))
    losses["loss"].backward()
    optimizer.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # BN stats too
    assert any(not torch.equal(student_before[k], v) for k, v in student.state_dict().items())


def test_teacher_stays_out_of_the_student_and_the_optimizer():
    student, teacher = tiny(), tiny(seed=1)
    distiller = Distiller(student=student, teacher=teacher, criterion=LDCriterion(num_classes=3))
    assert not isinstance(distiller, nn.Module)
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in distiller.student.parameters()}
    assert not any(k.startswith("teacher") for k in student.state_dict())


def test_without_a_teacher_only_gfl_losses():
    criterion = LDCriterion(num_classes=3, loss_ld_vlr_weight=0.25, loss_kd_weight=10)
    distiller = Distiller(student=tiny(), criterion=criterion)
    losses = distiller(*batch())
    assert set(losses) == {"loss", "loss_cls", "loss_bbox", "loss_dfl"}


def test_kd_uses_the_teacher_class_logits():
    student, teacher = tiny(), tiny(seed=1)
    distiller = Distiller(student=student, teacher=teacher, criterion=LDCriterion(num_classes=3, loss_kd_weight=10.0))
    losses = distiller(*batch())
    assert losses["loss_kd"].item() > 0


@pytest.mark.parametrize(
    "overrides,field",
    [({"num_classes": 4}, "num_classes"), ({"reg_max": 8}, "reg_max"), ({"strides": (8, 16, 32, 64)}, "strides")],
)
def test_mismatched_teacher_is_a_user_error(overrides, field):
    with pytest.raises(LdexportError, match=field) as error:
        Distiller(student=tiny(), teacher=tiny(**overrides), criterion=LDCriterion(num_classes=3))
    assert "\n" not in str(error.value)


def test_check_compatible_accepts_a_wrapped_student():
    student, teacher = tiny(), tiny(seed=1)
    check_compatible(nn.DataParallel(student), teacher)  # unwraps .module
