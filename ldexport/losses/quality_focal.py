"""Quality Focal Loss (QFL, Li et al., "Generalized Focal Loss", NeurIPS 2020), mmdet's
``QualityFocalLoss`` with ``use_sigmoid=True``.

Each class logit is a joint class-and-quality score. A negative is pushed to 0, a positive
to the IoU of its predicted box with its target (the "quality"); binary cross-entropy is
scaled by ``|target - sigmoid(logit)| ** beta``.

Legend: ``K`` anchors, ``C`` classes; label ``C`` (or anything outside ``0..C-1``) means
background.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ldexport.losses.reduction import weighted_mean


def quality_focal_loss(pred: Tensor, labels: Tensor, scores: Tensor, beta: float = 2.0) -> Tensor:
    """Element-wise QFL.

    Args:
        pred: ``[K, C]`` logits.
        labels: ``[K]`` int64 class of each anchor; ``C`` for background.
        scores: ``[K]`` quality target of positives (ignored elsewhere).
        beta: exponent of the modulating factor.

    Returns:
        ``[K]`` loss summed over classes.
    """
    pred_sigmoid = pred.sigmoid()
    loss = F.binary_cross_entropy_with_logits(pred, pred.new_zeros(pred.shape), reduction="none")
    loss = loss * pred_sigmoid.pow(beta)
    pos = ((labels >= 0) & (labels < pred.shape[1])).nonzero().squeeze(1)
    pos_labels = labels[pos].long()
    modulation = (scores[pos] - pred_sigmoid[pos, pos_labels]).abs().pow(beta)
    loss[pos, pos_labels] = (
        F.binary_cross_entropy_with_logits(pred[pos, pos_labels], scores[pos], reduction="none") * modulation
    )
    return loss.sum(dim=1)


class QualityFocalLoss(nn.Module):
    """QFL, weighted and averaged as mmdet does.

    Args:
        beta: exponent of the modulating factor.
        loss_weight: multiplier of the averaged loss.
    """

    def __init__(self, *, beta: float = 2.0, loss_weight: float = 1.0):
        super().__init__()
        self.beta = beta
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, labels: Tensor, scores: Tensor, weight: Tensor | None, avg_factor: float) -> Tensor:
        """Args: as :func:`quality_focal_loss`; ``weight`` ``[K]``; ``avg_factor`` the
        divisor. Returns a scalar."""
        return self.loss_weight * weighted_mean(quality_focal_loss(pred, labels, scores, self.beta), weight, avg_factor)
