"""mmdet checkpoints of ResNeXt and deformable-convolution GFL models: keys, legacy names,
and the one-line errors for another or an unknown backbone."""

import pytest
import torch

from ldexport.errors import LdexportError
from ldexport.interop.checkpoint import load_weights
from ldexport.interop.mmdet import backbone_settings, from_mmdet_state_dict, save_mmdet_checkpoint, to_mmdet_state_dict
from ldexport.model import ModelConfig, build_detector

TINY = dict(num_classes=3, base_channels=16, neck_channels=32, feat_channels=32, stacked_convs=1, norm_groups=8)
X50_DCN = ModelConfig(depth=50, backbone="resnext", groups=4, base_width=2, dcn_stages=(3, 4), **TINY)


def test_resnext_dcn_checkpoint_round_trip(tmp_path):
    source = build_detector(X50_DCN)
    with torch.no_grad():
        source.backbone.layer3[0].conv2.conv_offset.bias.normal_()
    save_mmdet_checkpoint(source, tmp_path / "x.pth")
    saved = torch.load(tmp_path / "x.pth", weights_only=True)["state_dict"]
    assert "backbone.layer3.0.conv2.conv_offset.weight" in saved and "bbox_head.gfl_reg.weight" in saved
    target = build_detector(X50_DCN)
    load_weights(target, tmp_path / "x.pth")
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key


def test_legacy_offset_names_are_renamed():
    source = build_detector(ModelConfig(depth=50, dcn_stages=(4,), **TINY))
    state = to_mmdet_state_dict(source.state_dict())
    legacy = {key.replace("conv2.conv_offset.", "conv2_offset."): value for key, value in state.items()}
    assert "backbone.layer4.1.conv2_offset.weight" in legacy
    assert set(from_mmdet_state_dict(legacy)) == set(source.state_dict())


def test_backbone_settings_read_from_the_weights():
    assert backbone_settings(build_detector(X50_DCN).state_dict()) == {
        "backbone": "resnext", "depth": 50, "groups": 4, "base_width": 2, "dcn_stages": [3, 4]
    }  # fmt: skip
    r34 = backbone_settings(build_detector(ModelConfig(depth=34, **TINY)).state_dict())
    assert r34 == {"backbone": "resnet", "depth": 34, "groups": 1, "base_width": 4, "dcn_stages": []}


def test_another_backbone_is_named_in_one_line(tmp_path):
    save_mmdet_checkpoint(build_detector(X50_DCN), tmp_path / "x.pth")
    with pytest.raises(LdexportError) as error:
        load_weights(build_detector(ModelConfig(depth=50, **TINY)), tmp_path / "x.pth")
    message = str(error.value)
    assert "\n" not in message and "config's ResNet-50" in message
    assert "backbone: resnext, depth: 50, groups: 4, base_width: 2, dcn_stages: [3, 4]" in message


def test_unknown_backbone_is_one_clear_line(tmp_path):
    state = to_mmdet_state_dict(build_detector(ModelConfig(depth=50, **TINY)).state_dict())
    state = {key: value for key, value in state.items() if not key.startswith("backbone.")}
    state["backbone.patch_embed.projection.weight"] = torch.zeros(96, 3, 4, 4)  # a Swin
    torch.save({"state_dict": state}, tmp_path / "swin.pth")
    with pytest.raises(LdexportError, match="backbone ldexport does not build .*patch_embed.*ResNeXt-50/101"):
        load_weights(build_detector(ModelConfig(depth=50, **TINY)), tmp_path / "swin.pth")
