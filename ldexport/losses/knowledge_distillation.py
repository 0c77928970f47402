"""The knowledge-distillation KL divergence, mmdet's ``KnowledgeDistillationKLDivLoss``.

Both logit vectors are softened by the temperature ``T``; the loss is
``KL(softmax(teacher / T) || softmax(student / T))`` averaged over the vector's entries
and multiplied by ``T ** 2`` (which keeps gradient magnitudes comparable across
temperatures). LD applies it to the ``R`` bins of each box side (``T = 10``, weight 0.25);
the original LD recipe also applies it to the ``C`` class logits of positives (``T = 2``,
weight 10).

Legend: ``...`` any leading shape (rows), ``D`` entries per row (``R`` bins or ``C`` classes).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ldexport.losses.reduction import weighted_mean


def knowledge_distillation_kl_div(
    pred: Tensor, soft_label: Tensor, temperature: float, *, scaled: bool = True
) -> Tensor:
    """Element-wise KD loss.

    Args:
        pred: ``[..., D]`` student logits.
        soft_label: ``[..., D]`` teacher logits (no gradient flows into them).
        temperature: softening temperature ``T``.
        scaled: times ``T ** 2``; ``False`` leaves it to the caller's multiplier (one
            operation less; the result differs from mmdet's by a float32 rounding).

    Returns:
        ``[...]``.
    """
    if pred.shape != soft_label.shape:
        raise ValueError(f"student {tuple(pred.shape)} and teacher {tuple(soft_label.shape)} logits differ in shape")
    target = F.softmax(soft_label / temperature, dim=-1)
    target = target.detach() if target.requires_grad else target
    log_pred = F.log_softmax(pred / temperature, dim=-1)
    loss = F.kl_div(log_pred, target, reduction="none").mean(-1)
    return loss * (temperature * temperature) if scaled else loss


class KnowledgeDistillationKLDivLoss(nn.Module):
    """KD loss, weighted and averaged as mmdet does.

    Args:
        temperature: softening temperature ``T`` (at least 1).
        loss_weight: multiplier of the averaged loss.
    """

    def __init__(self, *, temperature: float = 10.0, loss_weight: float = 0.25):
        super().__init__()
        if temperature < 1:
            raise ValueError(f"temperature must be at least 1, got {temperature}")
        self.temperature = temperature
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, soft_label: Tensor, weight: Tensor | None, avg_factor: float | Tensor) -> Tensor:
        """Args: as :func:`knowledge_distillation_kl_div`; ``weight`` ``[...]``;
        ``avg_factor`` the divisor. Returns a scalar."""
        loss = knowledge_distillation_kl_div(pred, soft_label, self.temperature)
        return weighted_mean(loss, weight, avg_factor, self.loss_weight)
