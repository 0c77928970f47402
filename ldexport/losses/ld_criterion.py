"""The GFL / LD training losses, combined as mmdet 3.3's ``LDHead.loss_by_feat`` (and,
without a teacher, ``GFLHead.loss_by_feat``) combines them, plus the VLR and KD terms of
the original LD code.

mmdet computes each term level by level, over the ``N * A_l`` anchors of a level, and
adds the levels up; here one pass over the rows of all levels computes the same sums (the
same up to float rounding, with a fifth of the operations):

* ``loss_cls``: QFL on every anchor, quality target = IoU of the decoded prediction of a
  positive with its box, divided by ``avg_factor`` = sum over images of
  ``max(positives, 1)``, averaged over processes.
* ``loss_bbox`` (GIoU on boxes decoded in stride units, the stride of the positive's
  level) and ``loss_dfl``: positives only, each weighted by the student's detached largest
  class probability, divided by the batch's summed weights (see
  :meth:`LDCriterion._weight_divisor`).
* ``loss_ld``: KD loss between the student's and the teacher's bin logits of the
  positives, same weights, divided by 4 (the sides) but not by the summed weights.
* ``loss_ld_vlr``: the same on the VLR anchors, weighted by their VLR IoU, divided by 16.
* ``loss_kd``: KD loss between student and teacher class logits of the positives,
  divided by the level's positive count.

The returned terms are the sums over levels (mmdet's ``parse_losses`` adds its per-level
lists the same way).

Legend: ``N`` images, ``L`` levels, ``A_l`` anchors of level ``l``, ``R_all`` the
``sum_l N * A_l`` rows of all levels, ``C`` classes, ``R = reg_max + 1`` bins, ``P``
positives and ``V`` VLR anchors (all levels).
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
from ldexport.losses.knowledge_distillation import KnowledgeDistillationKLDivLoss, knowledge_distillation_kl_div
from ldexport.losses.quality_focal import QualityFocalLoss
from ldexport.losses.reduction import FLOAT32_EPS, reduce_mean
from ldexport.model.bbox import anchor_centers, bbox2distance, distance2bbox
from ldexport.model.integral import Integral
from ldexport.model.priors import grid_anchors


_LOSS_NAMES = ("loss_cls", "loss_bbox", "loss_dfl", "loss_ld", "loss_ld_vlr", "loss_kd")
_DIVIDED_BY_WEIGHTS = ("loss_bbox", "loss_dfl")


@dataclass
class _Flat:
    """Predictions and targets of the batch, every level's ``N * A_l`` rows concatenated
    (levels in order; within a level mmdet's order: image, row, column)."""

    anchors: Tensor  # [R_all, 4]
    strides: Tensor  # [R_all] the stride of each row's level
    levels: Tensor  # [R_all] int64 level index
    cls_score: Tensor  # [R_all, C]
    bbox_pred: Tensor  # [R_all, 4 * R]
    labels: Tensor  # [R_all]
    label_weights: Tensor  # [R_all]
    bbox_targets: Tensor  # [R_all, 4]
    soft_target: Tensor | None  # [R_all, 4 * R] teacher bin logits
    teacher_cls: Tensor | None  # [R_all, C] teacher class logits
    vlr_weights: Tensor | None  # [R_all]


def _flat(prediction: Tensor) -> Tensor:
    """``[N, D, H_l, W_l]`` -> ``[N * H_l * W_l, D]`` (mmdet's order: image, row, column)."""
    return prediction.permute(0, 2, 3, 1).reshape(-1, prediction.shape[1])


def _cat_levels(per_level: Sequence[Tensor]) -> Tensor:
    return torch.cat([_flat(level) for level in per_level])


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
        flat = self._flatten(anchors, cls_scores, bbox_preds, gt, soft_targets, teacher_cls_scores)
        pos = ((flat.labels >= 0) & (flat.labels < self.num_classes)).nonzero().squeeze(1)  # [P]
        quality = flat.label_weights.new_zeros(flat.labels.shape)  # [R_all]
        if pos.numel() > 0:
            losses, pos_quality = self._positive_losses(flat, pos)
            quality[pos] = pos_quality
        else:
            zero = flat.bbox_pred.sum() * 0  # as mmdet: zero, still attached to the graph
            losses = {"loss_bbox": zero, "loss_dfl": zero, "weight_sum": flat.bbox_pred.new_tensor(0)}
            if flat.soft_target is not None:
                losses["loss_ld"] = zero
            if flat.teacher_cls is not None:
                losses["loss_kd"] = zero
        if flat.vlr_weights is not None:
            losses["loss_ld_vlr"] = self._vlr_loss(flat)
        losses["loss_cls"] = self.loss_cls(flat.cls_score, flat.labels, quality, flat.label_weights, cls_avg_factor)
        divisor = self._weight_divisor(losses.pop("weight_sum"), distilling)
        for name in _DIVIDED_BY_WEIGHTS:
            losses[name] = losses[name] / divisor
        return {name: losses[name] for name in _LOSS_NAMES if name in losses}

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

    def _flatten(
        self,
        anchors: Sequence[Tensor],
        cls_scores: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        gt: GFLTargets,
        soft_targets: Sequence[Tensor] | None,
        teacher_cls_scores: Sequence[Tensor] | None,
    ) -> _Flat:
        """The batch as one set of rows: mmdet's per-level flattening, levels concatenated.

        mmdet computes every term level by level and adds the levels up; one pass over all
        levels computes the same sums (in another order: the same up to float rounding)
        with a fifth of the operations, which is what a step's time is made of on a GPU
        or a loaded CPU.
        """
        num_images = cls_scores[0].shape[0]
        level_rows = [num_images * level.shape[0] for level in anchors]
        device = cls_scores[0].device
        return _Flat(
            anchors=torch.cat([level.repeat(num_images, 1) for level in anchors]),
            strides=torch.cat([
                torch.full((rows,), float(stride), device=device) for rows, stride in zip(level_rows, self.strides)
            ]),  # fmt: skip
            levels=torch.cat([torch.full((rows,), index, device=device) for index, rows in enumerate(level_rows)]),
            cls_score=_cat_levels(cls_scores),
            bbox_pred=_cat_levels(bbox_preds),
            labels=torch.cat([labels.reshape(-1) for labels in gt.labels]),
            label_weights=torch.cat([weights.reshape(-1) for weights in gt.label_weights]),
            bbox_targets=torch.cat([boxes.reshape(-1, 4) for boxes in gt.bbox_targets]),
            soft_target=_cat_levels(soft_targets) if soft_targets is not None else None,
            teacher_cls=_cat_levels(teacher_cls_scores) if teacher_cls_scores is not None else None,
            vlr_weights=torch.cat([w.reshape(-1) for w in gt.vlr_weights]) if gt.vlr_weights is not None else None,
        )

    def _positive_losses(self, flat: _Flat, pos: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Terms on the ``P`` positives (all levels), ``weight_sum``, and their quality
        targets ``[P]``; ``loss_bbox`` and ``loss_dfl`` not yet divided by the weights."""
        bins = self.reg_max + 1
        pos_pred = flat.bbox_pred[pos]  # [P, 4 * R]
        stride = flat.strides[pos][:, None]  # [P, 1]
        centers = anchor_centers(flat.anchors[pos]) / stride  # [P, 2], stride units
        weight = flat.cls_score.detach()[pos].sigmoid().max(dim=1)[0]  # [P]
        pred_boxes = distance2bbox(centers, self.integral(pos_pred))  # [P, 4]
        target_boxes = flat.bbox_targets[pos] / stride  # [P, 4]
        quality = aligned_overlaps(pred_boxes.detach(), target_boxes)  # [P]
        pred_corners = pos_pred.reshape(-1, bins)  # [4P, R]
        target_corners = bbox2distance(centers, target_boxes, self.reg_max).reshape(-1)  # [4P]
        side_weight = weight[:, None].expand(-1, 4).reshape(-1)  # [4P]
        losses = {
            "loss_bbox": self.loss_bbox(pred_boxes, target_boxes, weight, avg_factor=1.0),
            "loss_dfl": self.loss_dfl(pred_corners, target_corners, side_weight, avg_factor=4.0),
            "weight_sum": weight.sum(),
        }
        if flat.soft_target is not None:
            soft_corners = flat.soft_target[pos].reshape(-1, bins)  # [4P, R]
            losses["loss_ld"] = self.loss_ld(pred_corners, soft_corners, side_weight, avg_factor=4.0)
        if flat.teacher_cls is not None:
            losses["loss_kd"] = self._kd_loss(flat, pos)
        return losses, quality

    def _kd_loss(self, flat: _Flat, pos: Tensor) -> Tensor:
        """KD on the positives' class logits; each level's sum divided by its positive count
        (mmdet's per-level ``avg_factor``), the levels added up."""
        assert flat.teacher_cls is not None
        levels = flat.levels[pos]  # [P]
        counts = torch.bincount(levels, minlength=len(self.strides)).to(flat.cls_score.dtype)  # [L]
        weight = flat.label_weights[pos] / (counts[levels] + FLOAT32_EPS)  # [P]
        loss = knowledge_distillation_kl_div(flat.cls_score[pos], flat.teacher_cls[pos], self.loss_kd.temperature)
        return self.loss_kd.loss_weight * (loss * weight).sum()

    def _vlr_loss(self, flat: _Flat) -> Tensor:
        """LD on the ``V`` anchors of the VLR, weighted by their VLR IoU, divided by 16."""
        assert flat.vlr_weights is not None and flat.soft_target is not None
        region = (flat.vlr_weights > 0).nonzero().squeeze(1)
        if region.numel() == 0:
            return flat.bbox_pred.sum() * 0
        bins = self.reg_max + 1
        pred_corners = flat.bbox_pred[region].reshape(-1, bins)  # [4V, R]
        soft_corners = flat.soft_target[region].reshape(-1, bins)  # [4V, R]
        weight = flat.vlr_weights[region][:, None].expand(-1, 4).reshape(-1)  # [4V]
        return self.loss_ld_vlr(pred_corners, soft_corners, weight, avg_factor=16.0)
