"""Quality Focal Loss (QFL, Li et al., "Generalized Focal Loss", NeurIPS 2020), mmdet's
``QualityFocalLoss`` with ``use_sigmoid=True``.

Each class logit is a joint class-and-quality score. A negative is pushed to 0, a positive
to the IoU of its predicted box with its target (the "quality"); binary cross-entropy is
scaled by ``|target - sigmoid(logit)| ** beta``.

Legend: ``...`` any leading shape (anchors), ``C`` classes; label ``C`` means background.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ldexport.losses.reduction import weighted_mean


def quality_focal_loss(
    pred: Tensor, labels: Tensor, scores: Tensor, beta: float = 2.0, probabilities: Tensor | None = None
) -> Tensor:
    """Element-wise QFL, on fixed-size tensors (no indexing by the positives).

    Every entry is ``BCE(logit, target) * |target - sigmoid(logit)| ** beta`` with the
    target 0 except at a positive's class, where it is the positive's quality: for the
    negatives' entries that is mmdet's ``BCE(logit, 0) * sigmoid(logit) ** beta`` value
    for value.

    Args:
        pred: ``[..., C]`` logits.
        labels: ``[...]`` int64 class of each anchor, ``0..C``; ``C`` for background.
        scores: ``[...]`` quality target of positives (ignored elsewhere).
        beta: exponent of the modulating factor.
        probabilities: ``sigmoid(pred)`` when the caller has it (the gradient flows
            through it into ``pred``).

    Returns:
        ``[...]`` loss summed over classes.
    """
    num_classes = pred.shape[-1]
    # the quality at the label's entry of C + 1 (the last one, background, dropped)
    target = pred.new_zeros((*pred.shape[:-1], num_classes + 1))
    target = target.scatter_(-1, labels[..., None], (scores if scores.dtype == pred.dtype else scores.to(pred.dtype))[..., None])[..., :num_classes]  # [..., C]
    difference = target - (pred.sigmoid() if probabilities is None else probabilities)
    # an even power needs no absolute value (the same values and gradients, one operation less)
    modulation = (difference if float(beta).is_integer() and beta % 2 == 0 else difference.abs()).pow(beta)
    return (F.binary_cross_entropy_with_logits(pred, target, reduction="none") * modulation).sum(dim=-1)


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

    def forward(
        self,
        pred: Tensor,
        labels: Tensor,
        scores: Tensor,
        weight: Tensor | None,
        avg_factor: float | Tensor,
        probabilities: Tensor | None = None,
    ) -> Tensor:
        """Args: as :func:`quality_focal_loss`; ``weight`` ``[...]``; ``avg_factor`` the
        divisor. Returns a scalar."""
        loss = quality_focal_loss(pred, labels, scores, self.beta, probabilities)
        return weighted_mean(loss, weight, avg_factor, self.loss_weight)
