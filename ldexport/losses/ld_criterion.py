"""The GFL / LD training losses, combined as mmdet 3.3's ``LDHead.loss_by_feat`` (and,
without a teacher, ``GFLHead.loss_by_feat``) combines them, plus the VLR and KD terms of
the original LD code.

Per level, over the ``N * A_l`` anchors of the batch:

* ``loss_cls``: QFL on every anchor, quality target = IoU of the decoded prediction of a
  positive with its box, divided by ``avg_factor`` = sum over images of
  ``max(positives, 1)``, averaged over processes.
* ``loss_bbox`` (GIoU on boxes decoded in stride units) and ``loss_dfl``: positives only,
  each weighted by the student's detached largest class probability; the level sums are
  divided by the batch's summed weights (see :meth:`LDCriterion._weight_divisor`).
* ``loss_ld``: KD loss between the student's and the teacher's bin logits of the
  positives, same weights, divided by 4 (the sides) but not by the summed weights.
* ``loss_ld_vlr``: the same on the VLR anchors, weighted by their VLR IoU, divided by 16.
* ``loss_kd``: KD loss between student and teacher class logits of the positives,
  divided by the level's positive count.

The returned terms are the sums over levels (mmdet's ``parse_losses`` adds its per-level
lists the same way).

Legend: ``N`` images, ``L`` levels, ``A_l`` anchors of level ``l``, ``C`` classes,
``R = reg_max + 1`` bins, ``P`` positives of a level, ``V`` VLR anchors of a level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ldexport.assign.overlaps import aligned_overlaps
from ldexport.losses.distribution_focal import DistributionFocalLoss
from ldexport.losses.gfl_targets import GFLTargets, build_gfl_targets
from ldexport.losses.giou import GIoULoss
from ldexport.losses.knowledge_distillation import KnowledgeDistillationKLDivLoss
from ldexport.losses.quality_focal import QualityFocalLoss
from ldexport.losses.reduction import reduce_mean
from ldexport.model.bbox import anchor_centers, bbox2distance, distance2bbox
from ldexport.model.integral import Integral
from ldexport.model.priors import grid_anchors


_LOSS_NAMES = ("loss_cls", "loss_bbox", "loss_dfl", "loss_ld", "loss_ld_vlr", "loss_kd")
_DIVIDED_BY_WEIGHTS = ("loss_bbox", "loss_dfl")


@dataclass
class _Level:
    """One level's predictions and targets, images flattened into the anchor axis."""

    anchors: Tensor  # [N * A_l, 4]
    cls_score: Tensor  # [N * A_l, C]
    bbox_pred: Tensor  # [N * A_l, 4 * R]
    labels: Tensor  # [N * A_l]
    label_weights: Tensor  # [N * A_l]
    bbox_targets: Tensor  # [N * A_l, 4]
    stride: int
    soft_target: Tensor | None  # [N * A_l, 4 * R] teacher bin logits
    teacher_cls: Tensor | None  # [N * A_l, C] teacher class logits
    vlr_weights: Tensor | None  # [N * A_l]


def _level_sum(terms: Sequence[Tensor]) -> Tensor:
    """Sum over levels, left to right as Python's ``sum`` (mmdet's ``parse_losses``) adds."""
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _flat(prediction: Tensor) -> Tensor:
    """``[N, D, H_l, W_l]`` -> ``[N * H_l * W_l, D]`` (mmdet's order: image, row, column)."""
    return prediction.permute(0, 2, 3, 1).reshape(-1, prediction.shape[1])


class LDCriterion(nn.Module):
    """GFL losses with localization distillation.

    Args:
        num_classes: ``C``.
        reg_max: largest distance bin.
        strides: stride of every level.
        octave_base_scale: anchor side in strides.
        topk: ATSS candidates per level.
        loss_cls_weight: QFL weight.
        loss_bbox_weight: GIoU weight.
        loss_dfl_weight: DFL weight.
        loss_ld_weight: LD weight (positives).
        ld_temperature: LD temperature, for the positives and the VLR.
        loss_ld_vlr_weight: LD weight on the VLR; 0 leaves ``loss_ld_vlr`` out.
        loss_kd_weight: class-logit KD weight; 0 leaves ``loss_kd`` out.
        kd_temperature: class-logit KD temperature.
        pad_size_divisor: images are padded to a multiple of this (mmdet's
            ``DetDataPreprocessor``); it decides which anchors are valid.
        ignore_iof_thr: IoF with an ignore box above which ATSS ignores an anchor;
            mmdet's default -1 leaves ignore boxes unused.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        reg_max: int = 16,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        octave_base_scale: float = 8.0,
        topk: int = 9,
        loss_cls_weight: float = 1.0,
        loss_bbox_weight: float = 2.0,
        loss_dfl_weight: float = 0.25,
        loss_ld_weight: float = 0.25,
        ld_temperature: float = 10.0,
        loss_ld_vlr_weight: float = 0.0,
        loss_kd_weight: float = 0.0,
        kd_temperature: float = 2.0,
        pad_size_divisor: int = 32,
        ignore_iof_thr: float = -1.0,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.strides = tuple(strides)
        self.octave_base_scale = octave_base_scale
        self.topk = topk
        self.pad_size_divisor = pad_size_divisor
        self.ignore_iof_thr = ignore_iof_thr
        self.integral = Integral(reg_max)
        self.loss_cls = QualityFocalLoss(beta=2.0, loss_weight=loss_cls_weight)
        self.loss_bbox = GIoULoss(loss_weight=loss_bbox_weight)
        self.loss_dfl = DistributionFocalLoss(loss_weight=loss_dfl_weight)
        self.loss_ld = KnowledgeDistillationKLDivLoss(temperature=ld_temperature, loss_weight=loss_ld_weight)
        self.loss_ld_vlr = KnowledgeDistillationKLDivLoss(temperature=ld_temperature, loss_weight=loss_ld_vlr_weight)
        self.loss_kd = KnowledgeDistillationKLDivLoss(temperature=kd_temperature, loss_weight=loss_kd_weight)

    def forward(
        self,
        cls_scores: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        image_sizes: Sequence[tuple[int, int]],
        soft_targets: Sequence[Tensor] | None = None,
        teacher_cls_scores: Sequence[Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Losses of a batch.

        Args:
            cls_scores: per level ``[N, C, H_l, W_l]`` student class logits.
            bbox_preds: per level ``[N, 4 * R, H_l, W_l]`` student bin logits.
            targets: per image ``boxes [M, 4]`` xyxy pixels, ``labels [M]`` int64 and
                optionally ``ignore_boxes [G, 4]``.
            image_sizes: ``(h, w)`` of every image before padding.
            soft_targets: per level ``[N, 4 * R, H_l, W_l]`` teacher bin logits; enables
                ``loss_ld`` (and ``loss_ld_vlr`` when its weight is positive).
            teacher_cls_scores: per level ``[N, C, H_l, W_l]`` teacher class logits;
                enables ``loss_kd`` when its weight is positive.

        Returns:
            Scalars ``loss_cls``, ``loss_bbox``, ``loss_dfl`` and, as enabled,
            ``loss_ld``, ``loss_ld_vlr``, ``loss_kd``.
        """
        if len(cls_scores) != len(self.strides) or len(bbox_preds) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} levels, got {len(cls_scores)} and {len(bbox_preds)}")
        distilling = soft_targets is not None
        if teacher_cls_scores is not None and self.loss_kd.loss_weight <= 0:
            teacher_cls_scores = None
        featmap_sizes = [(int(score.shape[-2]), int(score.shape[-1])) for score in cls_scores]
        device = cls_scores[0].device
        anchors = grid_anchors(featmap_sizes, self.strides, self.octave_base_scale, device=device)
        gt = build_gfl_targets(
            anchors, featmap_sizes, self.strides, targets, image_sizes,
            num_classes=self.num_classes, topk=self.topk, ignore_iof_thr=self.ignore_iof_thr,
            pad_size_divisor=self.pad_size_divisor, with_vlr=distilling and self.loss_ld_vlr.loss_weight > 0,
        )  # fmt: skip
        cls_avg_factor = reduce_mean(torch.tensor(gt.num_pos, dtype=torch.float, device=device)).item()
        levels = []
        for index in range(len(self.strides)):
            level = self._level(index, anchors, cls_scores, bbox_preds, gt, soft_targets, teacher_cls_scores)
            levels.append(self._level_losses(level, cls_avg_factor))
        divisor = self._weight_divisor(_level_sum([level["weight_sum"] for level in levels]), distilling)
        losses = {}
        for name in _LOSS_NAMES:
            if name in levels[0]:
                terms = [level[name] / divisor if name in _DIVIDED_BY_WEIGHTS else level[name] for level in levels]
                losses[name] = _level_sum(terms)
        return losses

    @staticmethod
    def _weight_divisor(weight_sum: Tensor, distilling: bool) -> float:
        """The divisor of ``loss_bbox`` and ``loss_dfl``: the summed weights of all positives.

        mmdet's two heads differ here and both are kept: ``LDHead`` adds 1e-6 and does not
        clamp; ``GFLHead`` clamps at 1 (which matters early in training, when the weights,
        class probabilities near 0.01, sum to less than 1).
        """
        if distilling:
            return reduce_mean(weight_sum + 1e-6).item()
        return reduce_mean(weight_sum).clamp_(min=1).item()

    def _level(
        self,
        index: int,
        anchors: Sequence[Tensor],
        cls_scores: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        gt: GFLTargets,
        soft_targets: Sequence[Tensor] | None,
        teacher_cls_scores: Sequence[Tensor] | None,
    ) -> _Level:
        """Level ``index`` of the batch, flattened as mmdet's ``loss_by_feat_single`` does."""
        num_images = cls_scores[index].shape[0]
        return _Level(
            anchors=anchors[index].repeat(num_images, 1),
            cls_score=_flat(cls_scores[index]),
            bbox_pred=_flat(bbox_preds[index]),
            labels=gt.labels[index].reshape(-1),
            label_weights=gt.label_weights[index].reshape(-1),
            bbox_targets=gt.bbox_targets[index].reshape(-1, 4),
            stride=self.strides[index],
            soft_target=_flat(soft_targets[index]) if soft_targets is not None else None,
            teacher_cls=_flat(teacher_cls_scores[index]) if teacher_cls_scores is not None else None,
            vlr_weights=gt.vlr_weights[index].reshape(-1) if gt.vlr_weights is not None else None,
        )

    def _level_losses(self, level: _Level, cls_avg_factor: float) -> dict[str, Tensor]:
        """One level's terms (``loss_bbox``/``loss_dfl`` not yet divided) and ``weight_sum``."""
        pos = ((level.labels >= 0) & (level.labels < self.num_classes)).nonzero().squeeze(1)
        quality = level.label_weights.new_zeros(level.labels.shape)  # [N * A_l]
        if pos.numel() > 0:
            losses, pos_quality = self._positive_losses(level, pos)
            quality[pos] = pos_quality
        else:
            zero = level.bbox_pred.sum() * 0  # as mmdet: zero, still attached to the graph
            losses = {"loss_bbox": zero, "loss_dfl": zero, "weight_sum": level.bbox_pred.new_tensor(0)}
            if level.soft_target is not None:
                losses["loss_ld"] = zero
            if level.teacher_cls is not None:
                losses["loss_kd"] = zero
        if level.vlr_weights is not None:
            losses["loss_ld_vlr"] = self._vlr_loss(level)
        losses["loss_cls"] = self.loss_cls(level.cls_score, level.labels, quality, level.label_weights, cls_avg_factor)
        return losses

    def _positive_losses(self, level: _Level, pos: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Terms on the ``P`` positives, and their quality targets ``[P]``."""
        bins = self.reg_max + 1
        pos_pred = level.bbox_pred[pos]  # [P, 4 * R]
        centers = anchor_centers(level.anchors[pos]) / level.stride  # [P, 2], stride units
        weight = level.cls_score.detach().sigmoid().max(dim=1)[0][pos]  # [P]
        pred_boxes = distance2bbox(centers, self.integral(pos_pred))  # [P, 4]
        target_boxes = level.bbox_targets[pos] / level.stride  # [P, 4]
        quality = aligned_overlaps(pred_boxes.detach(), target_boxes)  # [P]
        pred_corners = pos_pred.reshape(-1, bins)  # [4P, R]
        target_corners = bbox2distance(centers, target_boxes, self.reg_max).reshape(-1)  # [4P]
        side_weight = weight[:, None].expand(-1, 4).reshape(-1)  # [4P]
        losses = {
            "loss_bbox": self.loss_bbox(pred_boxes, target_boxes, weight, avg_factor=1.0),
            "loss_dfl": self.loss_dfl(pred_corners, target_corners, side_weight, avg_factor=4.0),
            "weight_sum": weight.sum(),
        }
        if level.soft_target is not None:
            soft_corners = level.soft_target[pos].reshape(-1, bins)  # [4P, R]
            losses["loss_ld"] = self.loss_ld(pred_corners, soft_corners, side_weight, avg_factor=4.0)
        if level.teacher_cls is not None:
            losses["loss_kd"] = self.loss_kd(
                level.cls_score[pos], level.teacher_cls[pos], level.label_weights[pos], avg_factor=float(pos.numel())
            )
        return losses, quality

    def _vlr_loss(self, level: _Level) -> Tensor:
        """LD on the ``V`` anchors of the VLR, weighted by their VLR IoU, divided by 16."""
        assert level.vlr_weights is not None and level.soft_target is not None
        region = (level.vlr_weights > 0).nonzero().squeeze(1)
        if region.numel() == 0:
            return level.bbox_pred.sum() * 0
        bins = self.reg_max + 1
        pred_corners = level.bbox_pred[region].reshape(-1, bins)  # [4V, R]
        soft_corners = level.soft_target[region].reshape(-1, bins)  # [4V, R]
        weight = level.vlr_weights[region][:, None].expand(-1, 4).reshape(-1)  # [4V]
        return self.loss_ld_vlr(pred_corners, soft_corners, weight, avg_factor=16.0)
