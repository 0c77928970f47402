"""The integral of a general distribution: softmax over the ``R = reg_max + 1`` bins, then
the expectation ``sum_i P(i) * i``, one distance per box side, in stride units."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Integral(nn.Module):
    """Expected distance under the predicted bin distribution.

    The bin positions ``0..reg_max`` are the persistent buffer ``project`` (mmdet saves
    it in checkpoints under the same name).
    """

    def __init__(self, reg_max: int = 16):
        super().__init__()
        self.reg_max = reg_max
        self.project: Tensor
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1))

    def forward(self, x: Tensor) -> Tensor:
        """Args: x ``[..., 4 * R]`` bin logits. Returns ``[prod(...), 4]`` distances."""
        return self.expectation(x.reshape(-1, self.reg_max + 1)).reshape(-1, 4)

    def expectation(self, x: Tensor) -> Tensor:
        """Args: x ``[..., R]`` bin logits. Returns ``[...]`` expected bins (same shape
        otherwise, the same values as :meth:`forward`)."""
        x = F.softmax(x, dim=-1)
        project = self.project if self.project.dtype == x.dtype else self.project.to(x.dtype)
        return F.linear(x, project)
