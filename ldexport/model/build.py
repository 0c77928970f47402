"""Builds a detector from a :class:`ModelConfig` (the only place a model config is read)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ldexport.errors import LdexportError
from ldexport.model.detector import GFLDetector
from ldexport.model.fpn import FPN
from ldexport.model.gfl_head import GFLHead
from ldexport.model.resnet import ResNet, load_pretrained


@dataclass
class ModelConfig:
    """A GFL detector's architecture.

    Attributes:
        backbone: ``resnet`` or ``resnext`` (mmdet's ``ResNeXt``: grouped bottlenecks).
        depth: ResNet depth (18, 34, 50, 101; ResNeXt 50, 101).
        num_classes: object classes.
        base_channels: ResNet stem width (64 for published models).
        neck_channels: FPN channels.
        feat_channels: head tower channels.
        stacked_convs: convolutions per head tower.
        reg_max: largest distance bin.
        strides: pyramid strides.
        octave_base_scale: anchor side in strides.
        norm_groups: GroupNorm groups in the head.
        frozen_stages: ResNet stages frozen during training.
        norm_eval: keep ResNet BatchNorm in eval mode during training.
        pretrained: optional local path of ImageNet backbone weights (torchvision names).
        groups: ResNeXt's groups (32 for 32x4d); 1 for a ResNet.
        base_width: ResNeXt's width per group (4 for 32x4d).
        dcn_stages: backbone stages (1-4) with deformable 3x3 convolutions, mmdet's
            ``stage_with_dcn`` as a list: ``[2, 3, 4]`` is "dconv-c3-c5", ``[3, 4]`` "c4-c5".
        deform_groups: deformable groups of those convolutions (mmdet's GFL models: 1).
    """

    depth: int = 18
    num_classes: int = 80
    base_channels: int = 64
    neck_channels: int = 256
    feat_channels: int = 256
    stacked_convs: int = 4
    reg_max: int = 16
    strides: tuple[int, ...] = field(default=(8, 16, 32, 64, 128))
    octave_base_scale: float = 8.0
    norm_groups: int = 32
    frozen_stages: int = 1
    norm_eval: bool = True
    pretrained: str | None = None
    backbone: Literal["resnet", "resnext"] = "resnet"
    groups: int = 1
    base_width: int = 4
    dcn_stages: tuple[int, ...] = ()
    deform_groups: int = 1

    def __post_init__(self) -> None:
        # Lists from JSON or YAML (e.g. ONNX metadata) compare equal to the tuples they mean.
        self.strides = tuple(self.strides)
        self.dcn_stages = tuple(self.dcn_stages)


def build_detector(cfg: ModelConfig) -> GFLDetector:
    """Builds a randomly initialised detector (backbone from ``cfg.pretrained`` if set).

    Raises:
        LdexportError: an unknown backbone, or settings it cannot take.
    """
    if cfg.backbone not in ("resnet", "resnext"):
        raise LdexportError(f"model.backbone must be resnet or resnext, got {cfg.backbone!r}")
    if cfg.backbone == "resnet" and cfg.groups != 1:
        raise LdexportError(f"model.groups {cfg.groups} makes a ResNeXt: set model.backbone: resnext")
    if cfg.backbone == "resnext" and (cfg.groups < 2 or cfg.depth not in (50, 101)):
        raise LdexportError(
            f"a ResNeXt needs model.groups > 1 (32 for 32x4d) and depth 50 or 101, got groups {cfg.groups}, depth {cfg.depth}"
        )
    backbone = ResNet(
        depth=cfg.depth,
        frozen_stages=cfg.frozen_stages,
        norm_eval=cfg.norm_eval,
        base_channels=cfg.base_channels,
        groups=cfg.groups,
        base_width=cfg.base_width,
        dcn_stages=cfg.dcn_stages,
        deform_groups=cfg.deform_groups,
    )
    if cfg.pretrained:
        load_pretrained(backbone, cfg.pretrained)
    neck = FPN(in_channels=backbone.out_channels, out_channels=cfg.neck_channels, start_level=1, num_outs=len(cfg.strides))
    head = GFLHead(
        num_classes=cfg.num_classes,
        in_channels=cfg.neck_channels,
        feat_channels=cfg.feat_channels,
        stacked_convs=cfg.stacked_convs,
        reg_max=cfg.reg_max,
        strides=cfg.strides,
        octave_base_scale=cfg.octave_base_scale,
        norm_groups=cfg.norm_groups,
    )
    return GFLDetector(backbone=backbone, neck=neck, head=head)
