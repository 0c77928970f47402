import pytest
import torch
from torch import nn

from ldexport.errors import LdexportError
from ldexport.model import ModelConfig, TestConfig, build_detector
from ldexport.model.integral import Integral
from ldexport.model.resnet import ResNet, load_pretrained

TINY = ModelConfig(depth=18, num_classes=3, base_channels=16, neck_channels=32, feat_channels=32, stacked_convs=2, norm_groups=8)


def test_forward_shapes_per_level():
    model = build_detector(TINY)
    cls_scores, bbox_preds = model(torch.randn(2, 3, 96, 160))
    assert [tuple(c.shape) for c in cls_scores] == [(2, 3, 12, 20), (2, 3, 6, 10), (2, 3, 3, 5), (2, 3, 2, 3), (2, 3, 1, 2)]
    assert all(b.shape[1] == 4 * 17 for b in bbox_preds)


@pytest.mark.parametrize("depth,channels", [(18, [64, 128, 256, 512]), (34, [64, 128, 256, 512]), (50, [256, 512, 1024, 2048])])
def test_resnet_stage_channels(depth, channels):
    assert ResNet(depth=depth).out_channels == channels


def test_resnet_101_has_23_blocks_in_stage_3():
    assert len(ResNet(depth=101).layer3) == 23


def test_unknown_depth_is_a_user_error():
    with pytest.raises(LdexportError, match="depth"):
        ResNet(depth=42)


def test_frozen_stages_and_norm_eval():
    backbone = ResNet(depth=18, frozen_stages=1, norm_eval=True, base_channels=16)
    backbone.train()
    assert not backbone.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in backbone.layer1.parameters())
    assert all(p.requires_grad for p in backbone.layer2.parameters())
    assert not any(m.training for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))
    trainable = ResNet(depth=18, frozen_stages=-1, norm_eval=False, base_channels=16).train()
    assert trainable.conv1.weight.requires_grad and trainable.bn1.training


def test_integral_is_the_expectation_over_bins():
    integral = Integral(reg_max=4)
    logits = torch.full((1, 4 * 5), -1e4)
    for side, bin_index in enumerate([0, 1, 3, 4]):
        logits[0, side * 5 + bin_index] = 0.0
    assert torch.allclose(integral(logits), torch.tensor([[0.0, 1.0, 3.0, 4.0]]))
    uniform = integral(torch.zeros(2, 20))
    assert torch.allclose(uniform, torch.full((2, 4), 2.0))


def test_predict_respects_image_size_threshold_and_max_per_img():
    torch.manual_seed(0)
    model = build_detector(TINY).eval()
    nn.init.constant_(model.head.gfl_cls.bias, 0.0)  # scores near 0.5: many candidates
    images = torch.randn(2, 3, 128, 128)
    cfg = TestConfig(score_thr=0.3, max_per_img=7)
    detections = model.predict(images, image_sizes=[(100, 60), (128, 128)], cfg=cfg)
    first = detections[0]
    assert 0 < len(first.scores) <= 7
    assert (first.boxes[:, [0, 2]] <= 60).all() and (first.boxes[:, [1, 3]] <= 100).all()
    assert (first.scores > 0.3).all()
    assert torch.all(first.scores[:-1] >= first.scores[1:])
    assert ((first.boxes[:, 2] - first.boxes[:, 0]) > 0).all()


def test_load_pretrained_torchvision_names(tmp_path):
    source = ResNet(depth=18, base_channels=16)
    state = {k: v + 1 if v.is_floating_point() else v for k, v in source.state_dict().items()}
    state["fc.weight"] = torch.zeros(10, 128)  # a torchvision classifier is dropped
    torch.save(state, tmp_path / "r18.pth")
    target = ResNet(depth=18, base_channels=16)
    load_pretrained(target, tmp_path / "r18.pth")
    assert torch.equal(target.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])


def test_load_pretrained_rejects_other_architecture(tmp_path):
    torch.save(ResNet(depth=50, base_channels=16).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(LdexportError, match="ResNet-18"):
        load_pretrained(ResNet(depth=18, base_channels=16), tmp_path / "r50.pth")
