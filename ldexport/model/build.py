"""Builds a detector from a :class:`ModelConfig` (the only place a model config is read)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ldexport.model.detector import GFLDetector
from ldexport.model.fpn import FPN
from ldexport.model.gfl_head import GFLHead
from ldexport.model.resnet import ResNet, load_pretrained


@dataclass
class ModelConfig:
    """A GFL detector's architecture.

    Attributes:
        depth: ResNet depth (18, 34, 50, 101).
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


def build_detector(cfg: ModelConfig) -> GFLDetector:
    """Builds a randomly initialised detector (backbone from ``cfg.pretrained`` if set)."""
    backbone = ResNet(
        depth=cfg.depth, frozen_stages=cfg.frozen_stages, norm_eval=cfg.norm_eval, base_channels=cfg.base_channels
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
