"""A checkpoint ldexport writes in mmdet's layout is one mmdet itself loads: every weight,
the class names, and the same outputs."""

import pytest
import torch

from ldexport.interop.checkpoint import load_detector
from ldexport.interop.mmdet import save_mmdet_checkpoint
from ldexport.model import build_detector

from tests.reference.mmdet_reference import NUM_CLASSES, STUDENT, _mmdet_gfl_parts, _perturb

pytestmark = pytest.mark.reference

CLASSES = ("person", "bicycle", "car", "dog")[:NUM_CLASSES]


def test_mmdet_loads_what_ldexport_saves(tmp_path):
    from mmdet.apis import init_detector
    from mmengine.config import Config

    torch.manual_seed(0)
    student = build_detector(STUDENT).eval()
    _perturb(student)
    path = tmp_path / "student_mmdet.pth"
    save_mmdet_checkpoint(student, path, class_names=CLASSES)

    config = Config(dict(model=dict(type="GFL", **_mmdet_gfl_parts(STUDENT, "GFLHead"))))
    mmdet_model = init_detector(config, str(path), palette="random", device="cpu")  # no data set to read a palette from
    assert tuple(mmdet_model.dataset_meta["classes"]) == CLASSES
    images = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = mmdet_model.bbox_head(mmdet_model.extract_feat(images))
        actual = student(images)
    for expected_levels, actual_levels in zip(expected, actual):
        for e, a in zip(expected_levels, actual_levels):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    # and ldexport reads the names back
    assert load_detector(STUDENT, path).class_names == CLASSES
