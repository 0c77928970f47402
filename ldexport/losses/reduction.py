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


def weighted_mean(loss: Tensor, weight: Tensor | None, avg_factor: float | Tensor) -> Tensor:
    """``sum(loss * weight) / (avg_factor + eps)``, mmdet's ``weight_reduce_loss``.

    Args:
        loss: element-wise loss, any shape.
        weight: element weights shaped like ``loss``, or ``None`` for ones.
        avg_factor: the divisor (a tensor stays on the device: nothing is read back).

    Returns:
        A scalar.
    """
    if weight is not None:
        loss = loss * weight
    return loss.sum() / (avg_factor + FLOAT32_EPS)


def reduce_mean(tensor: Tensor) -> Tensor:
    """The mean of ``tensor`` over the processes of a distributed run (a copy), or
    ``tensor`` itself when ``torch.distributed`` is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor.div_(dist.get_world_size()), op=dist.ReduceOp.SUM)
    return tensor
