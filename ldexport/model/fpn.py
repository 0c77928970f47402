"""Feature pyramid as mmdet builds it for GFL.

``start_level=1`` skips the stride-4 stage, ``add_extra_convs='on_output'`` makes the two
extra levels with stride-2 3x3 convolutions on the last pyramid output: strides 8 to 128.
Key names follow mmdet's ``ConvModule`` (``lateral_convs.{i}.conv``, ``fpn_convs.{i}.conv``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class _Conv(nn.Module):
    """A convolution under the name mmdet's ``ConvModule`` gives it (``.conv``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """Top-down feature pyramid with extra levels.

    Args:
        in_channels: channels of every backbone stage (strides 4, 8, 16, 32).
        out_channels: channels of every pyramid level.
        start_level: first backbone stage used.
        num_outs: pyramid levels produced.
    """

    def __init__(self, *, in_channels: Sequence[int], out_channels: int = 256, start_level: int = 1, num_outs: int = 5):
        super().__init__()
        self.start_level = start_level
        self.num_outs = num_outs
        used = list(in_channels[start_level:])
        self.lateral_convs = nn.ModuleList(_Conv(c, out_channels, 1) for c in used)
        self.fpn_convs = nn.ModuleList(_Conv(out_channels, out_channels, 3) for _ in used)
        for _ in range(num_outs - len(used)):
            self.fpn_convs.append(_Conv(out_channels, out_channels, 3, stride=2))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                assert module.bias is not None
                nn.init.zeros_(module.bias)

    def forward(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        """Args: inputs, the backbone stages. Returns ``num_outs`` maps, finest first."""
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
        outs = [self.fpn_convs[i](lateral) for i, lateral in enumerate(laterals)]
        for conv in self.fpn_convs[len(laterals):]:
            outs.append(conv(outs[-1]))
        return outs
