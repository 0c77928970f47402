"""mmdet 3.3's GFL zoo backbones (ResNeXt, deformable convolutions) built from mmdet's own
config files, narrowed for speed, and the same models in ldexport.

mmdet's configs are read from the installed package (``mmdet/.mim/configs``). Narrowing
keeps the structure: the depth (101: 23 blocks in stage 3), ResNeXt's 32 groups of width
4, the deformable stages, ``deform_groups`` and ``fallback_on_stride``; only the base
channels (64 -> 16, which leaves ResNeXt's grouped widths as they are), the FPN and head
widths, the head's depth and the classes shrink, on both sides alike.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from ldexport.model import ModelConfig
from ldexport.model.deform_conv import DeformConv2dPack

from tests.reference.mmdet_reference import NUM_CLASSES, TEST_CFG, _perturb

NARROW = dict(num_classes=NUM_CLASSES, base_channels=16, neck_channels=32, feat_channels=32, stacked_convs=2, norm_groups=8)
# mmdet config (under configs/gfl) -> the ldexport model it must equal, narrowed alike.
ZOO = {
    "x101-32x4d": ("gfl_x101-32x4d_fpn_ms-2x_coco.py", ModelConfig(depth=101, backbone="resnext", groups=32, base_width=4, **NARROW)),
    "r101-dcn-c3-c5": ("gfl_r101-dconv-c3-c5_fpn_ms-2x_coco.py", ModelConfig(depth=101, dcn_stages=(2, 3, 4), **NARROW)),
    "x101-32x4d-dcn-c4-c5": (
        "gfl_x101-32x4d-dconv-c4-c5_fpn_ms-2x_coco.py",
        ModelConfig(depth=101, backbone="resnext", groups=32, base_width=4, dcn_stages=(3, 4), **NARROW),
    ),
}
LD_DCN_CONFIG = "ld/ld_r101-gflv1-r101-dcn_fpn_2x_coco.py"
LD_DCN_STUDENT = ModelConfig(depth=101, **NARROW)
LD_DCN_TEACHER = ModelConfig(depth=101, dcn_stages=(2, 3, 4), **NARROW)


def mmdet_config_dir() -> Path:
    """mmdet's configs as the package installs them."""
    import mmdet

    folder = Path(mmdet.__file__).parent / ".mim" / "configs"
    assert folder.is_dir(), f"mmdet's configs not installed at {folder}"
    return folder


def mmdet_model_config(relative: str, *, narrow: bool = True) -> Any:
    """``model`` of an mmdet config file, without pretrained weights, optionally narrowed."""
    from mmengine.config import Config

    model = copy.deepcopy(Config.fromfile(str(mmdet_config_dir() / relative)).model)  # a ConfigDict, as mmdet reads it
    _without_pretrained(model)
    if narrow:
        _narrow(model)
    return model


def _without_pretrained(model: dict) -> None:
    model.get("backbone", {}).pop("init_cfg", None)
    model.pop("teacher_ckpt", None)


def _narrow(model: dict) -> None:
    backbone = model["backbone"]
    backbone["base_channels"] = NARROW["base_channels"]
    model["neck"]["in_channels"] = [NARROW["base_channels"] * 4 * 2**i for i in range(4)]
    model["neck"]["out_channels"] = NARROW["neck_channels"]
    head = model["bbox_head"]
    head.update(num_classes=NUM_CLASSES, in_channels=NARROW["neck_channels"], feat_channels=NARROW["feat_channels"])
    head.update(stacked_convs=NARROW["stacked_convs"], norm_cfg=dict(type="GN", num_groups=NARROW["norm_groups"], requires_grad=True))
    from mmengine.config import ConfigDict

    model["test_cfg"] = ConfigDict(copy.deepcopy(TEST_CFG))


def build_mmdet(model: dict, seed: int = 0) -> torch.nn.Module:
    """An mmdet model from a config dict, initialised, perturbed, with moving offsets."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    torch.manual_seed(seed)
    detector = MODELS.build(model)
    detector.init_weights()
    _perturb(detector)
    move_offsets(detector)
    return detector


def move_offsets(model: torch.nn.Module, seed: int = 21) -> int:
    """Gives every deformable convolution (mmcv's or ldexport's) offsets of about a pixel
    that vary with the features; returns how many there are. A fresh DCN samples the
    regular grid (zero offsets), which would test a plain convolution only.

    The feature-dependent part is kept small: the random ResNeXt's stage-3 features grow
    to hundreds, and offsets that follow them closely make 26 stacked DCNs amplify float
    rounding (measured: offset weights 6x larger give 6e-4 relative error in the stage-4
    features, while with feature-independent offsets of +-2 px ldexport and mmcv agree to
    8e-7 through all 26; see ``test_fixed_offsets_agree_to_float_rounding``)."""
    generator = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            offset = getattr(module, "conv_offset", None)
            if isinstance(offset, torch.nn.Conv2d) and (type(module).__name__.startswith("DeformConv2d") or isinstance(module, DeformConv2dPack)):
                fan_in = offset.weight[0].numel()
                offset.weight.normal_(0, 0.05 / fan_in**0.5, generator=generator)
                offset.bias.normal_(0, 1.0, generator=generator)
                count += 1
    return count
