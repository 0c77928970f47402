"""Distribution Focal Loss (DFL, Li et al., "Generalized Focal Loss", NeurIPS 2020),
mmdet's ``DistributionFocalLoss``.

A continuous target distance ``y`` in stride units lies between bins ``floor(y)`` and
``floor(y) + 1``; DFL is their cross-entropies weighted by the linear interpolation
weights, which is minimal when the predicted distribution puts its mass on the two.

Legend: ``...`` any leading shape (box sides), ``R = reg_max + 1`` bins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldexport.losses.reduction import weighted_mean


def distribution_focal_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Element-wise DFL.

    The two cross-entropies read one log-softmax (``F.cross_entropy`` is the negated
    log-softmax at the target bin: the same values, one softmax instead of two).

    Args:
        pred: ``[..., R]`` bin logits.
        target: ``[...]`` distances in ``[0, reg_max)``.

    Returns:
        ``[...]``.
    """
    return -_log_likelihood(pred, target)


def _log_likelihood(pred: Tensor, target: Tensor) -> Tensor:
    """Element-wise negated DFL, ``log p_left * w_left + log p_right * w_right`` (each
    cross-entropy is ``-log p``); negating is exact, so the loss can fold its sign into
    its multiplier."""
    left = target.long()
    bins = torch.stack((left, left + 1), dim=-1)  # [..., 2] the two bins around the target
    left_position = left.to(target.dtype)  # integers: "+ 1" is exact, the right bin's position
    weights = torch.stack((left_position + 1 - target, target - left_position), dim=-1)
    return (F.log_softmax(pred, dim=-1).gather(-1, bins) * weights).sum(-1)


class DistributionFocalLoss(nn.Module):
    """DFL, weighted and averaged as mmdet does.

    Args:
        loss_weight: multiplier of the averaged loss.
    """

    def __init__(self, *, loss_weight: float = 0.25):
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None, avg_factor: float | Tensor) -> Tensor:
        """Args: as :func:`distribution_focal_loss`; ``weight`` shaped like ``target``; ``avg_factor`` the
        divisor. Returns a scalar."""
        # the sign in the multiplier: one operation less, the same bits
        return weighted_mean(_log_likelihood(pred, target), weight, avg_factor, -self.loss_weight)
