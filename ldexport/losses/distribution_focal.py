"""Distribution Focal Loss (DFL, Li et al., "Generalized Focal Loss", NeurIPS 2020),
mmdet's ``DistributionFocalLoss``.

A continuous target distance ``y`` in stride units lies between bins ``floor(y)`` and
``floor(y) + 1``; DFL is their cross-entropies weighted by the linear interpolation
weights, which is minimal when the predicted distribution puts its mass on the two.

Legend: ``...`` any leading shape (box sides), ``R = reg_max + 1`` bins.
"""

from __future__ import annotations

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
    left = target.long()
    right = left + 1
    weight_left = right.float() - target
    weight_right = target - left.float()
    log_probs = F.log_softmax(pred, dim=-1)
    log_left = log_probs.gather(-1, left[..., None]).squeeze(-1)
    log_right = log_probs.gather(-1, right[..., None]).squeeze(-1)
    return -log_left * weight_left + -log_right * weight_right


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
        return self.loss_weight * weighted_mean(distribution_focal_loss(pred, target), weight, avg_factor)
