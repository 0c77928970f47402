"""Image preprocessing inside the exported graph: uint8 BGR bytes in, normalised tensor out.

Deployment code then feeds decoded frames as they come from OpenCV (``[N, H, W, 3]``
uint8, BGR), resized and padded but not converted. The graph transposes them to
``[N, 3, H, W]``, casts them to float32 and normalises them with the model's mean and std
(pixel scale 0-255). The BGR -> RGB swap costs nothing at run time: it is folded into
the backbone's first convolution, whose input channels are reversed in a copy of the
detector (a permutation of the input channels commutes with its zero padding, so the
result is the same convolution of the same pixels).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ldexport.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ldexport.model.detector import GFLDetector


class Preprocess(nn.Module):
    """``[N, H, W, 3]`` uint8 BGR -> ``[N, 3, H, W]`` float32, normalised, still BGR.

    Args:
        mean: per-channel mean, RGB order.
        std: per-channel standard deviation, RGB order.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.mean_rgb = tuple(float(value) for value in mean)
        self.std_rgb = tuple(float(value) for value in std)
        # BGR order, [1, 3, 1, 1]
        self.register_buffer("mean", torch.tensor(self.mean_rgb[::-1]).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.std_rgb[::-1]).reshape(1, 3, 1, 1))

    mean: Tensor
    std: Tensor

    def forward(self, images: Tensor) -> Tensor:
        """Args: images ``[N, H, W, 3]`` uint8 BGR. Returns ``[N, 3, H, W]`` normalised BGR."""
        pixels = images.permute(0, 3, 1, 2).to(torch.float32)
        return (pixels - self.mean) / self.std


def with_bgr_input(detector: GFLDetector) -> GFLDetector:
    """A copy of ``detector`` that takes BGR channels (the first convolution's reversed).

    The given detector is not modified.
    """
    folded = copy.deepcopy(detector)
    stem = folded.backbone.conv1
    with torch.no_grad():
        stem.weight.copy_(stem.weight.flip(1))
    return folded
