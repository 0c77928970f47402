"""The GFL zoo's ResNeXt and deformable-convolution models equal mmdet 3.3's (mmcv's own
DCN kernel, on CPU): raw head outputs, ``predict`` detections, the frozen teacher, and the
LD losses of ``ld_r101-gflv1-r101-dcn_fpn_2x_coco``; and every shipped zoo config builds
the state dict of mmdet's model built from mmdet's own config file (so mmdet's released
checkpoints of all six GFL models load)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from ldexport.config import load_config
from ldexport.distill import Distiller
from ldexport.interop.mmdet import from_mmdet_state_dict, load_state_dict_checked
from ldexport.losses.ld_criterion import LDCriterion
from ldexport.model import TestConfig, build_detector
from ldexport.model.fuse import FrozenTeacher

from tests.reference.mmdet_reference import NUM_CLASSES, assert_predictions_equal, assert_student_grads_equal, make_batch, to_ldexport
from tests.reference.test_loss_parity import GRAD_RTOL, assert_losses_equal, batch, summed
from tests.reference.zoo_reference import (
    LD_DCN_CONFIG,
    LD_DCN_STUDENT,
    LD_DCN_TEACHER,
    ZOO,
    build_mmdet,
    mmdet_model_config,
    move_offsets,
)

pytestmark = pytest.mark.reference
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RTOL = 1e-4


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


@pytest.fixture(scope="module", params=sorted(ZOO))
def pair(request):
    """(mmdet's GFL detector, the same weights in ldexport), one per zoo backbone."""
    mmdet_file, cfg = ZOO[request.param]
    detector = build_mmdet(mmdet_model_config(f"gfl/{mmdet_file}"))
    with torch.no_grad():  # detections above score_thr from random weights
        detector.bbox_head.gfl_cls.bias.normal_(-1.5, 0.3, generator=torch.Generator().manual_seed(5))
    detector.eval()
    assert move_offsets(detector) == len([m for m in detector.modules() if hasattr(m, "conv_offset")])
    return detector, to_ldexport(detector, cfg).eval(), cfg


@pytest.mark.parametrize("size", [(128, 160), (192, 96)])
def test_raw_outputs_equal(pair, size):
    detector, ours, _ = pair
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = detector.bbox_head(detector.extract_feat(images))
        actual = ours(images)
    for expected_levels, actual_levels in zip(expected, actual):
        for e, a in zip(expected_levels, actual_levels):
            assert e.shape == a.shape
            assert _relative_error(a, e) < RTOL


def test_fixed_offsets_agree_to_float_rounding(pair):
    """Offsets of up to several pixels that do not depend on the features: the backbone's
    stage outputs equal mmcv's to float rounding (1e-5), whatever the depth of the stack."""
    detector, ours, _ = pair
    detector, ours = copy.deepcopy(detector), copy.deepcopy(ours)
    theirs_dcn = [m for m in detector.modules() if hasattr(m, "conv_offset")]
    our_dcn = [m for m in ours.modules() if hasattr(m, "conv_offset")]
    assert len(theirs_dcn) == len(our_dcn)
    generator = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for theirs, mine in zip(theirs_dcn, our_dcn):
            bias = torch.randn(theirs.conv_offset.bias.shape, generator=generator) * 2
            for module in (theirs, mine):
                module.conv_offset.weight.zero_()
                module.conv_offset.bias.copy_(bias)
        images = torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(3))
        for expected, actual in zip(detector.backbone(images), ours.backbone(images)):
            assert _relative_error(actual, expected) < 1e-5


def test_frozen_teacher_equals_mmdet(pair):
    """The folded path LD runs (BatchNorm folded into grouped and deformable convolutions)."""
    detector, ours, _ = pair
    images = torch.randn(1, 3, 128, 192, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = detector.bbox_head(detector.extract_feat(images))
    actual = FrozenTeacher(copy.deepcopy(ours), with_cls_scores=True)(images)
    for expected_levels, actual_levels in zip(expected, actual):
        for e, a in zip(expected_levels, actual_levels):
            assert _relative_error(a, e) < RTOL


@pytest.mark.parametrize("sizes", [[(160, 224), (128, 96)], [(256, 192)]])
def test_predict_equal(pair, sizes):
    detector, ours, _ = pair
    images, samples, _, image_sizes = make_batch(sizes, [[] for _ in sizes], [[] for _ in sizes], seed=7)
    with torch.no_grad():
        expected = detector.predict(images, samples, rescale=False)
    actual = ours.predict(images, image_sizes, TestConfig())
    total = assert_predictions_equal(actual, expected)
    assert total > 10  # the comparison covered real detections


def test_ld_losses_from_a_dcn_teacher_equal_mmdet():
    """mmdet's KnowledgeDistillationSingleStageDetector from ld_r101-gflv1-r101-dcn_fpn_2x_coco
    (its teacher from gfl_r101-dconv-c3-c5_fpn_ms-2x_coco), narrowed, against a Distiller
    with the same weights: every loss term and the student's gradients."""
    model = mmdet_model_config(LD_DCN_CONFIG)
    teacher_file = Path(model.pop("teacher_config")).relative_to("configs")
    model["teacher_config"] = dict(model=mmdet_model_config(str(teacher_file)))
    for part in ("neck", "bbox_head"):  # the student's LDHead gets the same narrowing checks
        assert model[part]["type"] in ("FPN", "LDHead")
    mmdet_ld = build_mmdet(model)
    _perturb_teacher(mmdet_ld.teacher_model)
    student = to_ldexport(mmdet_ld, LD_DCN_STUDENT)
    teacher = to_ldexport(mmdet_ld.teacher_model, LD_DCN_TEACHER)
    distiller = Distiller(student=student, teacher=teacher, criterion=LDCriterion(num_classes=NUM_CLASSES))
    assert isinstance(distiller.teacher, FrozenTeacher)  # the folded DCN path
    distiller.train()
    mmdet_ld.train()
    mmdet_ld.zero_grad()

    images, samples, targets, image_sizes = batch()
    reference = summed(mmdet_ld.loss(images, samples))
    ours = distiller(images, targets, image_sizes)
    ours.pop("loss")
    assert set(reference) == {"loss_cls", "loss_bbox", "loss_dfl", "loss_ld"}
    assert_losses_equal(ours, reference)

    sum(reference.values()).backward()
    sum(ours.values()).backward()
    checked, _ = assert_student_grads_equal(student, mmdet_ld, GRAD_RTOL)
    assert checked > 100


def _perturb_teacher(teacher: torch.nn.Module) -> None:
    """The teacher's zero-initialised residual norms and offsets moved (see build_mmdet)."""
    from tests.reference.mmdet_reference import _perturb

    _perturb(teacher)
    assert move_offsets(teacher, seed=22) == 30


ZOO_CONFIGS = {
    "gfl_r50_fpn_1x_coco": "gfl/gfl_r50_fpn_1x_coco.py",
    "gfl_r50_fpn_ms-2x_coco": "gfl/gfl_r50_fpn_ms-2x_coco.py",
    "gfl_r101_fpn_ms-2x_coco": "gfl/gfl_r101_fpn_ms-2x_coco.py",
    "gfl_r101-dconv-c3-c5_fpn_ms-2x_coco": "gfl/gfl_r101-dconv-c3-c5_fpn_ms-2x_coco.py",
    "gfl_x101-32x4d_fpn_ms-2x_coco": "gfl/gfl_x101-32x4d_fpn_ms-2x_coco.py",
    "gfl_x101-32x4d-dconv-c4-c5_fpn_ms-2x_coco": "gfl/gfl_x101-32x4d-dconv-c4-c5_fpn_ms-2x_coco.py",
}


@pytest.mark.parametrize("name", sorted(ZOO_CONFIGS))
def test_zoo_config_has_mmdets_state_dict(name):
    """Full size, from mmdet's own config file: the same keys and shapes after the interop
    renaming, so the released checkpoint of that model loads strictly."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    reference = MODELS.build(mmdet_model_config(ZOO_CONFIGS[name], narrow=False))
    ours = build_detector(dataclasses.replace(load_config(CONFIGS / f"{name}.yaml").model, pretrained=None))
    expected = {key: tuple(value.shape) for key, value in from_mmdet_state_dict(reference.state_dict()).items()}
    actual = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    assert actual == expected
    load_state_dict_checked(ours, from_mmdet_state_dict(reference.state_dict()), name)
