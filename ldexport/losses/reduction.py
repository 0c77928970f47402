"""How mmdet reduces weighted losses, and its cross-process mean.

mmdet divides a weighted loss sum by ``avg_factor + eps`` (``eps`` the float32 machine
epsilon, so that an ``avg_factor`` of 0 cannot divide by zero); its ``reduce_mean``
averages a tensor over the processes of a distributed run and is the identity otherwise.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

FLOAT32_EPS = torch.finfo(torch.float32).eps


def weighted_mean(loss: Tensor, weight: Tensor | None, avg_factor: float | Tensor, scale: float = 1.0) -> Tensor:
    """``scale * sum(loss * weight) / (avg_factor + eps)``: mmdet's ``weight_reduce_loss``,
    times a loss's ``loss_weight``.

    Args:
        loss: element-wise loss, any shape.
        weight: element weights shaped like ``loss``, or ``None`` for ones.
        avg_factor: the divisor (a tensor stays on the device: nothing is read back).
        scale: the multiplier (mmdet's ``loss_weight``).

    Returns:
        A scalar. A number ``avg_factor`` is folded into ``scale`` (one multiplication
        instead of a division and a multiplication: the training step counts its
        operations; the result differs from mmdet's two roundings by at most one float32
        rounding); a multiplier of 1 is skipped.
    """
    if weight is not None:
        loss = loss * weight
    if not isinstance(avg_factor, Tensor):
        return loss.sum() * (scale / (avg_factor + FLOAT32_EPS))
    mean = loss.sum() / (avg_factor + FLOAT32_EPS)
    return mean if scale == 1.0 else scale * mean


def reduce_mean(tensor: Tensor) -> Tensor:
    """The mean of ``tensor`` over the processes of a distributed run (a copy), or
    ``tensor`` itself when ``torch.distributed`` is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor.div_(dist.get_world_size()), op=dist.ReduceOp.SUM)
    return tensor
