"""ResNeXt and deformable-convolution backbones: structure, key names, the frozen teacher's
folded path and the errors (numerics against mmdet: tests/reference/test_zoo_parity.py)."""

import pytest
import torch
from torch import nn

from ldexport.errors import LdexportError
from ldexport.model import ModelConfig, build_detector
from ldexport.model import fuse
from ldexport.model.deform_conv import DeformConv2dPack
from ldexport.model.fuse import FoldedDeformConv, FrozenTeacher
from ldexport.model.resnet import ResNet, load_pretrained

TINY = dict(num_classes=3, base_channels=16, neck_channels=32, feat_channels=32, stacked_convs=2, norm_groups=8)
X50_DCN = ModelConfig(depth=50, backbone="resnext", groups=4, base_width=4, dcn_stages=(3, 4), **TINY)
R50_DCN = ModelConfig(depth=50, dcn_stages=(2, 3, 4), **TINY)


def test_resnext_widths_are_mmdets():
    """mmdet: width = floor(planes * base_width / base_channels) * groups; 32x4d at 64 base
    channels is 128, 256, 512, 1024 wide, outputs as ResNet's."""
    backbone = ResNet(depth=101, groups=32, base_width=4)
    assert [getattr(backbone, f"layer{i}")[0].conv2.weight.shape for i in range(1, 5)] == [
        (128, 4, 3, 3), (256, 8, 3, 3), (512, 16, 3, 3), (1024, 32, 3, 3)
    ]  # fmt: skip
    assert backbone.out_channels == [256, 512, 1024, 2048]
    assert len(backbone.layer3) == 23
    assert backbone.name == "ResNeXt-101 (groups 32)"


def test_dcn_stages_and_key_names():
    backbone = ResNet(depth=101, dcn_stages=(2, 3, 4))
    kinds = [type(getattr(backbone, f"layer{i}")[0].conv2) for i in range(1, 5)]
    assert kinds == [nn.Conv2d, DeformConv2dPack, DeformConv2dPack, DeformConv2dPack]
    keys = backbone.state_dict()
    assert keys["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)
    assert keys["layer2.0.conv2.conv_offset.weight"].shape == (18, 128, 3, 3)
    assert keys["layer2.0.conv2.conv_offset.bias"].shape == (18,)
    assert not keys["layer4.2.conv2.conv_offset.weight"].any()  # zero offsets at first, as mmcv
    assert backbone.layer3[0].conv2.stride == (2, 2)  # fallback_on_stride=False: the strided one too


@pytest.mark.parametrize(
    "cfg, message",
    [
        (ModelConfig(depth=18, dcn_stages=(2,)), "bottleneck depth"),
        (ModelConfig(depth=50, dcn_stages=(5,)), "stages 1-4"),
        (ModelConfig(depth=50, backbone="resnext", groups=1), "groups > 1"),
        (ModelConfig(depth=50, groups=32), "backbone: resnext"),
        (ModelConfig(depth=34, backbone="resnext", groups=32), "depth 50 or 101"),
        (ModelConfig(depth=50, backbone="swin"), "resnet or resnext"),
    ],
)
def test_bad_backbone_settings_are_user_errors(cfg, message):
    with pytest.raises(LdexportError, match=message):
        build_detector(cfg)


def perturbed(cfg: ModelConfig, seed: int = 0) -> nn.Module:
    """BatchNorm statistics, affine and offsets far from their initial values."""
    torch.manual_seed(seed)
    model = build_detector(cfg)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5, generator=generator)
                module.running_var.uniform_(0.3, 3.0, generator=generator)
                module.weight.uniform_(0.2, 1.5, generator=generator)
                module.bias.normal_(0, 0.3, generator=generator)
            elif isinstance(module, DeformConv2dPack):
                module.conv_offset.weight.normal_(0, 0.05, generator=generator)
                module.conv_offset.bias.normal_(0, 1.0, generator=generator)
    return model.eval()


@pytest.mark.parametrize("cfg", [X50_DCN, R50_DCN], ids=["x50-dcn-c4-c5", "r50-dcn-c3-c5"])
@pytest.mark.parametrize("fused", [True, False])
def test_frozen_teacher_folds_grouped_and_deformable_convolutions(cfg, fused, monkeypatch):
    monkeypatch.setattr(fuse, "FUSE_ON_CPU", fused)
    model = perturbed(cfg)
    images = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected_cls, expected_reg = model(images)
        offsets = model.backbone.layer3[0].conv2.conv_offset(torch.randn(1, model.backbone.layer3[0].conv2.in_channels, 12, 16))
    assert offsets.abs().max() > 0.5  # the sampling really moves
    teacher = FrozenTeacher(model, with_cls_scores=True)
    blocks_with_dcn = sum(len(getattr(model.backbone, f"layer{stage}")) for stage in cfg.dcn_stages)
    assert sum(isinstance(m, FoldedDeformConv) for m in teacher.modules()) == blocks_with_dcn
    actual_cls, actual_reg = teacher(images)
    for expected, actual in zip(expected_cls + expected_reg, actual_cls + actual_reg):
        assert ((actual - expected).abs().max() / expected.abs().max()).item() < 1e-4


def test_pretrained_backbone_fills_the_deformable_weights(tmp_path):
    """An ImageNet ResNet has no offset convolutions: they stay at zero, the 3x3 weights load."""
    source = ResNet(depth=50, base_channels=16)
    path = tmp_path / "resnet50.pth"
    torch.save({**source.state_dict(), "fc.weight": torch.zeros(10, 128)}, path)
    target = ResNet(depth=50, base_channels=16, dcn_stages=(2, 3, 4))
    load_pretrained(target, path)
    assert torch.equal(target.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    assert not target.layer3[1].conv2.conv_offset.weight.any()
    with pytest.raises(LdexportError, match=r"ResNeXt-50 \(groups 4\)"):
        load_pretrained(ResNet(depth=50, base_channels=16, groups=4), path)


def test_dcn_teacher_trains():
    """A DCN model takes gradient steps (a user may train a DCN teacher): every offset
    convolution receives a gradient."""
    model = build_detector(R50_DCN).train()
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cls_scores, bbox_preds = model(images)
    (sum(c.sum() for c in cls_scores) + sum(b.square().mean() for b in bbox_preds)).backward()
    offsets = [m.conv_offset.weight.grad for m in model.modules() if isinstance(m, DeformConv2dPack)]
    assert len(offsets) == 13 and all(g is not None and g.abs().sum() > 0 for g in offsets)


def test_dcn_teacher_under_cpu_autocast():
    """bf16 autocast: the offsets are promoted to float32 before the taps are placed, so
    the outputs stay within bf16 rounding of float32's (about 2% here, as for the same
    model without DCN). Offsets that depend strongly on the features (the perturbed
    offset weights) amplify bf16's rounding through 13 stacked DCNs to about 10% in this
    random model, with or without the frozen teacher, so they are made milder here."""
    model = perturbed(R50_DCN)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DeformConv2dPack):
                module.conv_offset.weight.mul_(0.1)  # the bias still moves every tap by ~1 px
    images = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _, expected = model(images)
    teacher = FrozenTeacher(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, actual = teacher(images)
    for e, a in zip(expected, actual):
        assert a.dtype == torch.float32
        assert ((a - e).abs().max() / e.abs().max()).item() < 0.04
