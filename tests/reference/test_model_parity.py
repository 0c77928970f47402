"""ldexport's detector computes what mmdet 3.3's does, on the same weights and inputs."""

import pytest
import torch

from ldexport.model import TestConfig

from tests.reference.mmdet_reference import STUDENT, TEACHER, assert_predictions_equal, build_mmdet_ld, make_batch, to_ldexport

pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def mmdet_ld():
    detector = build_mmdet_ld()
    with torch.no_grad():  # detections above score_thr from random weights
        detector.bbox_head.gfl_cls.bias.normal_(-1.5, 0.3, generator=torch.Generator().manual_seed(5))
    return detector


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


@pytest.mark.parametrize("train_mode", [False, True])
def test_raw_outputs_equal(mmdet_ld, train_mode):
    student = to_ldexport(mmdet_ld, STUDENT).train(train_mode)
    mmdet_ld.train(train_mode)
    images = torch.randn(2, 3, 160, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = mmdet_ld.bbox_head(mmdet_ld.extract_feat(images))
        actual = student(images)
    for expected_levels, actual_levels in zip(expected, actual):
        for e, a in zip(expected_levels, actual_levels):
            assert e.shape == a.shape
            assert _relative_error(a, e) < 1e-5


def test_teacher_outputs_equal(mmdet_ld):
    teacher = to_ldexport(mmdet_ld.teacher_model, TEACHER).eval()
    # mmdet builds the teacher in train mode and puts it in eval mode in the detector's
    # train(); without this, the result depended on another test having called it first
    # (under xdist this test can be a worker's first: its BatchNorms then used batch statistics)
    mmdet_ld.teacher_model.eval()
    images = torch.randn(1, 3, 128, 192, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = mmdet_ld.teacher_model.bbox_head(mmdet_ld.teacher_model.extract_feat(images))
        actual = teacher(images)
    for e, a in zip(expected[1], actual[1]):
        assert _relative_error(a, e) < 1e-5


@pytest.mark.parametrize("sizes", [[(160, 224), (128, 96)], [(320, 256)]])
def test_predict_equal(mmdet_ld, sizes):
    student = to_ldexport(mmdet_ld, STUDENT).eval()
    mmdet_ld.eval()
    images, samples, _, image_sizes = make_batch(sizes, [[] for _ in sizes], [[] for _ in sizes], seed=7)
    with torch.no_grad():
        expected = mmdet_ld.predict(images, samples, rescale=False)
    actual = student.predict(images, image_sizes, TestConfig())
    total = assert_predictions_equal(actual, expected)
    assert total > 10  # the comparison covered real detections
