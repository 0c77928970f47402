"""Distribution Focal Loss (DFL, Li et al., "Generalized Focal Loss", NeurIPS 2020),
mmdet's ``DistributionFocalLoss``.

A continuous target distance ``y`` in stride units lies between bins ``floor(y)`` and
``floor(y) + 1``; DFL is their cross-entropies weighted by the linear interpolation
weights, which is minimal when the predicted distribution puts its mass on the two.

Legend: ``K`` box sides, ``R = reg_max + 1`` bins.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ldexport.losses.reduction import weighted_mean


def distribution_focal_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Element-wise DFL.

    Args:
        pred: ``[K, R]`` bin logits.
        target: ``[K]`` distances in ``[0, reg_max)``.

    Returns:
        ``[K]``.
    """
    left = target.long()
    right = left + 1
    weight_left = right.float() - target
    weight_right = target - left.float()
    return (
        F.cross_entropy(pred, left, reduction="none") * weight_left
        + F.cross_entropy(pred, right, reduction="none") * weight_right
    )


class DistributionFocalLoss(nn.Module):
    """DFL, weighted and averaged as mmdet does.

    Args:
        loss_weight: multiplier of the averaged loss.
    """

    def __init__(self, *, loss_weight: float = 0.25):
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None, avg_factor: float) -> Tensor:
        """Args: as :func:`distribution_focal_loss`; ``weight`` ``[K]``; ``avg_factor`` the
        divisor. Returns a scalar."""
        return self.loss_weight * weighted_mean(distribution_focal_loss(pred, target), weight, avg_factor)
