"""Generalized IoU loss (Rezatofighi et al., CVPR 2019), mmdet's ``GIoULoss`` (``eps=1e-6``).

Legend: ``...`` any leading shape (aligned pairs of xyxy boxes).
"""

from __future__ import annotations

from torch import Tensor, nn

from ldexport.assign.overlaps import aligned_overlaps
from ldexport.losses.reduction import weighted_mean


def giou_loss(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """Element-wise ``1 - GIoU``.

    Args:
        pred: ``[..., 4]`` xyxy.
        target: ``[..., 4]`` xyxy.
        eps: lower clamp of union and enclosing area.

    Returns:
        ``[...]``.
    """
    return 1 - aligned_overlaps(pred.float(), target, mode="giou", eps=eps)


class GIoULoss(nn.Module):
    """GIoU loss, weighted and averaged as mmdet does.

    Args:
        loss_weight: multiplier of the averaged loss.
        eps: as in :func:`giou_loss`.
    """

    def __init__(self, *, loss_weight: float = 2.0, eps: float = 1e-6):
        super().__init__()
        self.loss_weight = loss_weight
        self.eps = eps

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None, avg_factor: float | Tensor) -> Tensor:
        """Args: as :func:`giou_loss`; ``weight`` ``[...]``; ``avg_factor`` the divisor.

        Returns:
            A scalar. When no weight is positive, mmdet returns ``sum(pred * weight)``
            without computing GIoU: zero, as this returns (it does not ask the device
            whether a weight is positive).
        """
        return weighted_mean(giou_loss(pred, target, self.eps), weight, avg_factor, self.loss_weight)
