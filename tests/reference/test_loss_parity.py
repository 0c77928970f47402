"""Loss parity with mmdet 3.3: ``LDHead`` / ``GFLHead`` losses, and the losses and student
gradients of ``KnowledgeDistillationSingleStageDetector`` (the ``ld_r18-gflv1-r101``
settings, narrowed: see ``mmdet_reference``), equal ldexport's.

The batch has non-square images of different sizes (so that mmdet's per-image
``pad_shape`` differs from the batch shape), boxes from 6 px to a whole image, and an
image without boxes. Skipped (by ``conftest.py``) when the reference is not installed.
"""

from __future__ import annotations

import math

import pytest
import torch

from ldexport.distill import Distiller
from ldexport.losses.ld_criterion import LDCriterion

from tests.reference.mmdet_reference import (
    NUM_CLASSES,
    STUDENT,
    TEACHER,
    assert_student_grads_equal,
    build_mmdet_ld,
    make_batch,
    to_ldexport,
)

pytestmark = pytest.mark.reference

STRIDES = (8, 16, 32, 64, 128)
# Sizes that are not multiples of 32: each image's pad_shape (32-multiple) is smaller than
# the batch's (192, 224), so mmdet marks anchors of the batch padding invalid per image.
SIZES = [(520, 610), (185, 120), (100, 140)]
BOXES = [
    # 6 px to the whole image, one box for each of the levels of strides 8 to 64
    [[10.0, 12.0, 16.0, 18.0], [50.0, 20.0, 150.0, 110.0], [300.0, 250.0, 560.0, 500.0], [5.0, 8.0, 600.0, 510.0]],
    [],  # no box
    [[60.0, 5.0, 138.0, 96.0], [1.0, 40.0, 13.0, 52.0], [70.0, 40.0, 90.0, 60.0]],
]
LABELS = [[0, 3, 1, 1], [], [2, 2, 0]]
LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-4


def batch():
    """Images, mmdet data samples with DetDataPreprocessor's per-image ``pad_shape``, targets."""
    images, samples, targets, image_sizes = make_batch(SIZES, BOXES, LABELS, seed=7)
    for sample, (h, w) in zip(samples, SIZES):
        sample.set_metainfo({"pad_shape": (math.ceil(h / 32) * 32, math.ceil(w / 32) * 32)})
    return images, samples, targets, image_sizes


def summed(losses: dict) -> dict[str, torch.Tensor]:
    """mmdet's per-level lists summed as its ``parse_losses`` does."""
    return {name: sum(value) if isinstance(value, (list, tuple)) else value for name, value in losses.items()}


def assert_losses_equal(ours: dict, reference: dict) -> None:
    assert set(ours) == set(reference), (sorted(ours), sorted(reference))
    for name, value in reference.items():
        assert value.item() != 0, f"{name} is 0: the comparison would prove nothing"
        assert ours[name].item() == pytest.approx(value.item(), rel=LOSS_RTOL), name


def assert_grads_close(ours: torch.Tensor, reference: torch.Tensor, name: str) -> None:
    error = (ours - reference).norm() / reference.norm().clamp(min=1e-30)
    assert error.item() < GRAD_RTOL, f"{name}: relative gradient error {error.item():.3g}"


@pytest.fixture(scope="module")
def mmdet_ld():
    detector = build_mmdet_ld()
    # mmdet zero-initialises the last BatchNorm weight of every residual block
    # (zero_init_residual); left at 0, the blocks' inner convolutions get no gradient
    # and the gradient comparison would prove nothing about them.
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for model in (detector, detector.teacher_model):
            for name, tensor in model.state_dict().items():
                if name.endswith((".bn2.weight", ".bn3.weight")) and not tensor.any():
                    tensor.copy_(1 + 0.1 * torch.randn(tensor.shape, generator=generator))
    return detector


@pytest.mark.parametrize("head", ["GFLHead", "LDHead"])
@pytest.mark.parametrize("logit_offset", [-2.0, -6.0])
def test_head_losses_equal_mmdet_on_the_same_predictions(mmdet_ld, head, logit_offset):
    """The criterion alone: identical head outputs into mmdet's ``loss_by_feat`` and ours.

    At class logits near -6 the positives' weights sum to less than 1, where GFLHead's
    clamp at 1 and LDHead's + 1e-6 give different ``loss_bbox`` / ``loss_dfl``.
    """
    bbox_head = mmdet_ld.bbox_head if head == "LDHead" else mmdet_ld.teacher_model.bbox_head
    images, samples, targets, image_sizes = batch()
    generator = torch.Generator().manual_seed(3)
    sizes = [(math.ceil(images.shape[2] / s), math.ceil(images.shape[3] / s)) for s in STRIDES]
    cls = [torch.randn(3, NUM_CLASSES, h, w, generator=generator) + logit_offset for h, w in sizes]
    reg = [torch.randn(3, 68, h, w, generator=generator) * 2 for h, w in sizes]
    soft = [torch.randn(3, 68, h, w, generator=generator) * 2 for h, w in sizes] if head == "LDHead" else None
    theirs_cls, theirs_reg, ours_cls, ours_reg = ([t.clone().requires_grad_() for t in g] for g in (cls, reg, cls, reg))
    args = [theirs_cls, theirs_reg, [s.gt_instances for s in samples], [s.metainfo for s in samples]]
    reference = summed(bbox_head.loss_by_feat(*args, soft) if soft is not None else bbox_head.loss_by_feat(*args))
    ours = LDCriterion(num_classes=NUM_CLASSES)(ours_cls, ours_reg, targets, image_sizes, soft_targets=soft)
    assert_losses_equal(ours, reference)
    sum(reference.values()).backward()
    sum(ours.values()).backward()
    for level in range(len(STRIDES)):
        assert_grads_close(ours_cls[level].grad, theirs_cls[level].grad, f"cls level {level}")
        assert_grads_close(ours_reg[level].grad, theirs_reg[level].grad, f"reg level {level}")


def test_distillation_losses_and_student_gradients_equal_mmdet(mmdet_ld):
    """End to end: mmdet's LD detector against a Distiller holding the same weights."""
    student = to_ldexport(mmdet_ld, STUDENT)
    teacher = to_ldexport(mmdet_ld.teacher_model, TEACHER)
    distiller = Distiller(student=student, teacher=teacher, criterion=LDCriterion(num_classes=NUM_CLASSES))
    distiller.train()
    mmdet_ld.train()
    mmdet_ld.zero_grad()

    images, samples, targets, image_sizes = batch()
    reference = summed(mmdet_ld.loss(images, samples))
    ours = distiller(images, targets, image_sizes)
    assert ours.pop("loss").item() == pytest.approx(sum(v.item() for v in ours.values()), rel=1e-6)
    assert_losses_equal(ours, reference)

    sum(reference.values()).backward()
    sum(ours.values()).backward()
    checked, nonzero = assert_student_grads_equal(student, mmdet_ld, GRAD_RTOL)
    # everything trainable but the Scale of stride 128 (no positive there) gets a gradient
    assert checked > 50 and nonzero == checked - 1, (checked, nonzero)
    assert all(p.grad is None for p in teacher.parameters())
