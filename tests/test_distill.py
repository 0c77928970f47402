"""Distiller: a frozen, unchanged teacher; a trained student; mismatched teachers rejected."""

import pytest
import torch
from torch import nn

from ldexport.distill import Distiller, check_compatible
from ldexport.errors import LdexportError
from ldexport.losses.ld_criterion import LDCriterion
from ldexport.model import ModelConfig, build_detector
from ldexport.model.fuse import FrozenTeacher

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
    """``loss_kd`` is the criterion's KD between the student's class logits and the
    (unfolded) teacher's own, on the same batch: not the student's against themselves,
    not another teacher output."""
    student, teacher = tiny(), opinionated_teacher()
    criterion = LDCriterion(num_classes=3, loss_kd_weight=10.0)
    distiller = Distiller(student=student, teacher=teacher, criterion=criterion, fold_teacher=False)
    images, targets, sizes = batch()
    losses = distiller(images, targets, sizes)
    with torch.no_grad():
        cls_scores, bbox_preds = student(images)
        teacher_cls, teacher_bbox = teacher(images)
    expected = criterion(cls_scores, bbox_preds, targets, sizes, soft_targets=teacher_bbox, teacher_cls_scores=teacher_cls)
    assert losses["loss_kd"].item() > 1e-3
    assert losses["loss_kd"].item() == pytest.approx(expected["loss_kd"].item(), rel=1e-5)
    itself = criterion(cls_scores, bbox_preds, targets, sizes, teacher_cls_scores=cls_scores)["loss_kd"]
    assert itself.item() < 1e-6  # the check above can fail: KD against the student itself is 0


@pytest.mark.parametrize(
    "overrides,field",
    [({"num_classes": 4}, "num_classes"), ({"reg_max": 8}, "reg_max"), ({"strides": (8, 16, 32, 64)}, "strides")],
)
def test_mismatched_teacher_is_a_user_error(overrides, field):
    with pytest.raises(LdexportError, match=field) as error:
        Distiller(student=tiny(), teacher=tiny(**overrides), criterion=LDCriterion(num_classes=3))
    assert "\n" not in str(error.value)


def test_check_compatible_reads_the_heads_inside_a_wrapper():
    """A DataParallel / DDP student is checked by the head it wraps: a matching teacher
    passes, and a mismatch is still found through the wrapper (either side wrapped)."""
    student, teacher = tiny(), tiny(seed=1)
    check_compatible(nn.DataParallel(student), teacher)
    check_compatible(student, nn.DataParallel(teacher))
    with pytest.raises(LdexportError, match="reg_max 8 vs student's 16"):
        check_compatible(nn.DataParallel(student), tiny(reg_max=8))
    with pytest.raises(LdexportError, match="num_classes 4 vs student's 3"):
        check_compatible(student, nn.DataParallel(tiny(num_classes=4)))


def opinionated_teacher() -> nn.Module:
    """A teacher whose box and class distributions are far from the fresh student's
    near-uniform ones: the KD losses are then not differences of nearly equal terms, which
    float rounding would dominate. Its BatchNorm statistics are off (0, 1) too."""
    teacher = tiny(seed=1)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for predictor in (teacher.head.gfl_reg, teacher.head.gfl_cls):
            predictor.weight.normal_(0, 0.3, generator=generator)
        for module in teacher.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.3, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return teacher


@pytest.mark.parametrize("kd_weight", [0.0, 10.0])
def test_teacher_runs_folded_and_gives_the_plain_teachers_losses(kd_weight):
    """The FrozenTeacher (folded BatchNorm, no class tower unless KD reads it) changes the
    losses by float rounding only."""
    criterion = LDCriterion(num_classes=3, loss_ld_vlr_weight=0.25, loss_kd_weight=kd_weight)
    fast = Distiller(student=tiny(), teacher=opinionated_teacher(), criterion=criterion)
    assert isinstance(fast.teacher, FrozenTeacher)
    assert fast.teacher.with_cls_scores == (kd_weight > 0)
    plain = Distiller(student=tiny(), teacher=opinionated_teacher(), criterion=criterion, fold_teacher=False)
    assert not isinstance(plain.teacher, FrozenTeacher)  # the teacher's own forward
    fast.train(), plain.train()
    expected, actual = plain(*batch()), fast(*batch())
    assert set(actual) == set(expected) and ("loss_kd" in actual) == (kd_weight > 0)
    for name, value in expected.items():
        assert actual[name].item() == pytest.approx(value.item(), rel=1e-5), name


def test_teacher_runs_before_the_student():
    """The teacher's transient feature maps come and go before the student's activations
    are held for the backward pass, so that they do not add to the step's peak memory."""
    student, teacher = tiny(), tiny(seed=1)
    distiller = Distiller(student=student, teacher=teacher, criterion=LDCriterion(num_classes=3))
    order = []
    student.register_forward_pre_hook(lambda *_: order.append("student"))
    teacher.neck.register_forward_pre_hook(lambda *_: order.append("teacher"))
    distiller(*batch())
    assert order == ["teacher", "student"]


def test_compiled_teacher_and_criterion_give_the_eager_losses():
    """``train.compile``'s path: the frozen teacher and the fixed-shape assignment + losses
    traced by ``torch.compile`` whole (no graph break), with the eager losses and gradients
    (inductor's code generation, a minute on 2 cores, is left to ``bench_train.py --compile``)."""
    from torch._dynamo.utils import counters

    from ldexport.assign.ground_truth import pad_ground_truth

    images, targets, sizes = batch()
    ground_truth = pad_ground_truth(targets, sizes)
    criterion = LDCriterion(num_classes=3, loss_ld_vlr_weight=0.25)
    distiller = Distiller(student=tiny(), teacher=opinionated_teacher(), criterion=criterion).train()
    eager = distiller(images, ground_truth)
    eager["loss"].backward()
    eager_grads = [p.grad.clone() for p in distiller.student.parameters() if p.grad is not None]
    distiller.student.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    counters.clear()
    distiller.compile(backend="aot_eager")  # dynamo's tracing and autograd, without code generation
    compiled = distiller(images, ground_truth)
    compiled["loss"].backward()
    assert not counters["graph_break"], dict(counters["graph_break"])
    for name, value in eager.items():
        assert compiled[name].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-7), name
    grads = [p.grad for p in distiller.student.parameters() if p.grad is not None]
    for ours, reference in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-3, atol=1e-6)
