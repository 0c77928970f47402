"""The shipped configs of mmdet's six GFL models and of ``ld_r101-gflv1-r101-dcn_fpn_2x_coco``
build the published architectures (built on the meta device: shapes only, no memory)."""

import dataclasses
from pathlib import Path

import pytest
import torch

from ldexport.config import load_config
from ldexport.model import build_detector
from ldexport.model.deform_conv import DeformConv2dPack

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# Backbone parameters without the classifier: torchvision's resnet50/101 (25,557,032 and
# 44,549,160) and ResNeXt-101 32x4d (44,177,704) less their 2,049,000-parameter fc layer.
R50, R101, X101 = 23_508_032, 42_500_160, 42_128_704


def offset_parameters(channels_and_blocks: list[tuple[int, int]]) -> int:
    """The offset convolutions' parameters: 18 channels, 3x3, bias, per DCN block."""
    return sum(blocks * (18 * channels * 9 + 18) for channels, blocks in channels_and_blocks)


ZOO = {
    "gfl_r50_fpn_1x_coco": (R50, 0, (1333, 800), None),
    "gfl_r50_fpn_ms-2x_coco": (R50, 0, (1333, 800), (480, 800)),
    "gfl_r101_fpn_ms-2x_coco": (R101, 0, (1333, 800), (480, 800)),
    "gfl_r101-dconv-c3-c5_fpn_ms-2x_coco": (R101 + offset_parameters([(128, 4), (256, 23), (512, 3)]), 30, (1333, 800), (480, 800)),
    "gfl_x101-32x4d_fpn_ms-2x_coco": (X101, 0, (1333, 800), (480, 800)),
    # ResNeXt's 3x3 convolutions are 512 / 1024 wide in stages 3 / 4
    "gfl_x101-32x4d-dconv-c4-c5_fpn_ms-2x_coco": (X101 + offset_parameters([(512, 23), (1024, 3)]), 26, (1333, 800), (480, 800)),
}


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", sorted(ZOO))
def test_gfl_zoo_config_builds_the_published_backbone(name):
    backbone_parameters, dcn_blocks, scale, scale_range = ZOO[name]
    config = load_config(CONFIGS / f"{name}.yaml")
    with torch.device("meta"):
        model = build_detector(dataclasses.replace(config.model, pretrained=None))  # ImageNet files not here
    assert parameters(model.backbone) == backbone_parameters
    assert sum(isinstance(m, DeformConv2dPack) for m in model.modules()) == dcn_blocks
    assert (config.data.scale, config.data.scale_range) == (scale, scale_range)
    assert config.model.num_classes == 80 and config.train.epochs == (12 if "1x" in name else 24)


def test_ld_r101_student_from_the_r101_dcn_teacher():
    config = load_config(CONFIGS / "ld_r101-gflv1-r101-dcn_fpn_2x_coco.yaml")
    teacher_config = load_config(CONFIGS / "gfl_r101-dconv-c3-c5_fpn_ms-2x_coco.yaml").model
    assert config.distill.teacher == dataclasses.replace(teacher_config, pretrained=None)
    with torch.device("meta"):
        student = build_detector(dataclasses.replace(config.model, pretrained=None))
    assert parameters(student.backbone) == R101 and not any(isinstance(m, DeformConv2dPack) for m in student.modules())
    assert (config.distill.ld_weight, config.distill.ld_temperature) == (0.25, 10.0)
    assert config.data.scale_range == (480, 800)  # mmdet's RandomResize [(1333, 480), (1333, 800)]
    assert (config.train.epochs, config.train.steps) == (24, (16, 22))
    assert "134b07df" in config.distill.teacher_checkpoint


def test_model_config_from_json_lists_equals_the_tuples():
    """ONNX metadata stores the config as JSON: lists come back and must compare equal."""
    from ldexport.model import ModelConfig

    assert ModelConfig(strides=[8, 16], dcn_stages=[3, 4]) == ModelConfig(strides=(8, 16), dcn_stages=(3, 4))


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.backbone=swin", "'model.backbone' must be one of resnet, resnext, got 'swin'"),
        ("model.dcn_stages=[2,5]", "'model.dcn_stages' must be stages among 1, 2, 3, 4 (layer1..layer4), got [2, 5]"),
        ("distill.teacher.groups=0", "'distill.teacher.groups' must be at least 1, got 0"),
        ("distill.teacher.deform_groups=0", "'distill.teacher.deform_groups' must be at least 1, got 0"),
    ],
)
def test_bad_backbone_keys_are_refused_at_load(override, message):
    from ldexport.errors import LdexportError

    with pytest.raises(LdexportError) as error:
        load_config(CONFIGS / "ld_r101-gflv1-r101-dcn_fpn_2x_coco.yaml", [override])
    assert message in str(error.value)
