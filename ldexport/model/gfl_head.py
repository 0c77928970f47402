"""The Generalized Focal Loss head (GFL v1), which LD's student and teacher share.

Per pyramid level: a classification tower and a regression tower of stacked 3x3
convolutions with GroupNorm and ReLU; ``gfl_cls`` predicts the joint class-quality score
(a sigmoid logit per class); ``gfl_reg`` predicts, for each of the four box sides, logits
over ``R = reg_max + 1`` distance bins, multiplied by a learnt per-level ``Scale``.

Legend: ``N`` images, ``C`` classes, ``R`` bins, ``H_l x W_l`` the level's feature map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ldexport.model.integral import Integral
from ldexport.model.priors import AnchorGrid, anchor_grid

# Feature-map sizes whose anchor points a head keeps (the oldest is dropped past this).
_CACHED_SIZES = 32


class Scale(nn.Module):
    """A learnt scalar multiplier (mmcv's ``Scale``; parameter ``scale``)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class ConvGNReLU(nn.Module):
    """3x3 convolution without bias, GroupNorm, ReLU; mmdet ``ConvModule`` key names."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(num_groups, out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.gn(self.conv(x)))


class GFLHead(nn.Module):
    """GFL head, shared across pyramid levels.

    Args:
        num_classes: object classes ``C`` (no background class: sigmoid scores).
        in_channels: channels of the pyramid levels.
        feat_channels: channels of the conv towers.
        stacked_convs: convolutions in each tower.
        reg_max: largest distance bin; ``R = reg_max + 1`` bins.
        strides: stride of every pyramid level.
        octave_base_scale: anchor side in strides (ATSS uses anchors of this size).
        norm_groups: GroupNorm groups.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 4,
        reg_max: int = 16,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        octave_base_scale: float = 8.0,
        norm_groups: int = 32,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.strides = tuple(strides)
        self.octave_base_scale = octave_base_scale
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        for index in range(stacked_convs):
            channels = in_channels if index == 0 else feat_channels
            self.cls_convs.append(ConvGNReLU(channels, feat_channels, norm_groups))
            self.reg_convs.append(ConvGNReLU(channels, feat_channels, norm_groups))
        self.gfl_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.gfl_reg = nn.Conv2d(feat_channels, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)
        self.integral = Integral(reg_max)
        # a plain dict, not buffers: state dicts and exported graphs stay as they are
        self._anchor_grids: dict[tuple[object, ...], AnchorGrid] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        prior_prob = 0.01  # initial foreground probability (focal-loss initialisation)
        assert self.gfl_cls.bias is not None
        nn.init.constant_(self.gfl_cls.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Args: feats, the pyramid levels ``[N, in_channels, H_l, W_l]``.

        Returns:
            ``cls_scores``: per level ``[N, C, H_l, W_l]`` logits;
            ``bbox_preds``: per level ``[N, 4 * R, H_l, W_l]`` bin logits (scaled, float32).
        """
        return self.cls_scores(feats), self.bbox_preds(feats)

    def cls_scores(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """The classification tower alone: per level ``[N, C, H_l, W_l]`` logits."""
        return [self.gfl_cls(_tower(feat, self.cls_convs)) for feat in feats]

    def bbox_preds(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """The regression tower alone: per level ``[N, 4 * R, H_l, W_l]`` bin logits
        (scaled, float32)."""
        preds = [scale(self.gfl_reg(_tower(feat, self.reg_convs))) for feat, scale in zip(feats, self.scales)]
        return [pred if pred.dtype == torch.float32 else pred.float() for pred in preds]

    def anchor_grid(self, featmap_sizes: Sequence[Sequence[int]], device: torch.device | str) -> AnchorGrid:
        """The anchors of these feature-map sizes (``(H_l, W_l)``), built once per sizes and
        device: decoding then costs no operation to rebuild them."""
        key = (tuple((int(h), int(w)) for h, w in featmap_sizes), str(torch.device(device)))
        found = self._anchor_grids.get(key)
        if found is None:
            if len(self._anchor_grids) >= _CACHED_SIZES:
                del self._anchor_grids[next(iter(self._anchor_grids))]
            found = anchor_grid(key[0], self.strides, self.octave_base_scale, device=device)
            self._anchor_grids[key] = found
        return found


def _tower(feat: Tensor, convs: nn.ModuleList) -> Tensor:
    for conv in convs:
        feat = conv(feat)
    return feat
