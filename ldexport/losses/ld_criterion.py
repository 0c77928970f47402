"""The GFL / LD training losses, combined as mmdet 3.3's ``LDHead.loss_by_feat`` (and,
without a teacher, ``GFLHead.loss_by_feat``) combines them, plus the VLR and KD terms of
the original LD code.

mmdet computes each term level by level over the positives it indexes out, and adds the
levels up; here every term is one pass over the whole batch, ``[N, A]`` rows (all images,
all levels), with the positives (and the VLR) as weights that are 0 elsewhere: the same
sums up to float rounding, with fixed shapes, no per-image loop and nothing read back to
the host (the normalisers stay tensors on the device).

* ``loss_cls``: QFL on every anchor, quality target = IoU of the decoded prediction of a
  positive with its box, divided by ``avg_factor`` = sum over images of
  ``max(positives, 1)``, averaged over processes.
* ``loss_bbox`` (GIoU on boxes decoded in stride units, the stride of the anchor's level)
  and ``loss_dfl``: positives only, each weighted by the student's detached largest class
  probability, divided by the batch's summed weights (see
  :meth:`LDCriterion._weight_divisor`).
* ``loss_ld``: KD loss between the student's and the teacher's bin logits of the
  positives, same weights, divided by 4 (the sides) but not by the summed weights.
* ``loss_ld_vlr``: the same on the VLR anchors, weighted by their VLR IoU, divided by 16.
* ``loss_kd``: KD loss between student and teacher class logits of the positives,
  divided by the level's positive count.

The terms are computed in float32 whatever autocast the models ran under.

Legend: ``N`` images, ``L`` levels, ``A`` anchors of all levels (levels in order, each
row-major), ``C`` classes, ``R = reg_max + 1`` bins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ldexport.assign.ground_truth import GroundTruth, pad_ground_truth
from ldexport.assign.overlaps import aligned_iou_and_giou
from ldexport.losses.distribution_focal import DistributionFocalLoss
from ldexport.losses.gfl_targets import GFLTargets, build_gfl_targets
from ldexport.model.priors import AnchorGrid, anchor_grid, flatten_levels
from ldexport.losses.giou import GIoULoss
from ldexport.losses.knowledge_distillation import KnowledgeDistillationKLDivLoss, knowledge_distillation_kl_div
from ldexport.losses.quality_focal import QualityFocalLoss
from ldexport.losses.reduction import FLOAT32_EPS, reduce_mean, weighted_mean
from ldexport.model.bbox import bbox2distance, distance2bbox
from ldexport.model.integral import Integral


_LOSS_NAMES = ("loss_cls", "loss_bbox", "loss_dfl", "loss_ld", "loss_ld_vlr", "loss_kd")


def _flat_float32(per_level: Sequence[Tensor]) -> Tensor:
    """:func:`~ldexport.model.priors.flatten_levels`, in float32 (the losses' precision)."""
    flat = flatten_levels(per_level)
    return flat if flat.dtype == torch.float32 else flat.float()


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
            ``DetDataPreprocessor``); it decides which anchors are valid. Used where the
            criterion pads per-image targets itself; a padded ``GroundTruth`` carries its
            pad shapes.
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
        self._grids: dict[tuple[object, ...], AnchorGrid] = {}

    def anchor_grid(self, featmap_sizes: Sequence[tuple[int, int]], device: torch.device) -> AnchorGrid:
        """The anchors of these feature-map sizes, built once per shape and device."""
        key = (tuple(featmap_sizes), str(device))
        if key not in self._grids:
            self._grids[key] = anchor_grid(featmap_sizes, self.strides, self.octave_base_scale, device)
        return self._grids[key]

    def forward(
        self,
        cls_scores: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        targets: Sequence[Mapping[str, Tensor]] | GroundTruth,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        soft_targets: Sequence[Tensor] | None = None,
        teacher_cls_scores: Sequence[Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Losses of a batch.

        Args:
            cls_scores: per level ``[N, C, H_l, W_l]`` student class logits.
            bbox_preds: per level ``[N, 4 * R, H_l, W_l]`` student bin logits.
            targets: the padded :class:`~ldexport.assign.ground_truth.GroundTruth`, or
                per image ``boxes [M, 4]`` xyxy pixels, ``labels [M]`` int64 and
                optionally ``ignore_boxes [G, 4]`` (padded here).
            image_sizes: ``(h, w)`` of every image before padding; with per-image
                targets only (a ``GroundTruth`` holds them).
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
        device = cls_scores[0].device
        if not isinstance(targets, GroundTruth):
            if image_sizes is None:
                raise ValueError("per-image targets need image_sizes")
            targets = pad_ground_truth(targets, image_sizes, size_divisor=self.pad_size_divisor)
        gt = targets if targets.boxes.device == device else targets.to(device, non_blocking=True)
        distilling = soft_targets is not None
        if teacher_cls_scores is not None and self.loss_kd.loss_weight <= 0:
            teacher_cls_scores = None
        grid = self.anchor_grid([(int(s.shape[-2]), int(s.shape[-1])) for s in cls_scores], device)
        return self.compute(
            grid, gt, cls_scores, bbox_preds, soft_targets, teacher_cls_scores,
            with_vlr=distilling and self.loss_ld_vlr.loss_weight > 0,
        )  # fmt: skip

    def compute(
        self,
        grid: AnchorGrid,
        gt: GroundTruth,
        cls_scores: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        soft_targets: Sequence[Tensor] | None,
        teacher_cls_scores: Sequence[Tensor] | None,
        *,
        with_vlr: bool,
    ) -> dict[str, Tensor]:
        """Assignment and losses on fixed shapes, tensors in and out: what
        :meth:`compile` compiles (the anchor grid is looked up outside, once per shape)."""
        with torch.autocast(grid.anchors.device.type, enabled=False):  # the losses in float32 under AMP
            targets = build_gfl_targets(
                grid, gt, num_classes=self.num_classes, topk=self.topk, ignore_iof_thr=self.ignore_iof_thr,
                with_vlr=with_vlr,
            )  # fmt: skip
            return self._losses(
                grid, targets, _flat_float32(cls_scores), _flat_float32(bbox_preds),
                _flat_float32(soft_targets) if soft_targets is not None else None,
                _flat_float32(teacher_cls_scores) if teacher_cls_scores is not None else None,
            )  # fmt: skip

    def compile(self, **options: Any) -> None:  # type: ignore[override]
        """``torch.compile`` :meth:`compute` (assignment and losses) in place; ``options``
        go to ``torch.compile``.

        Before torch 2.13, inductor's vectorised C++ code for the DFL's gather of the
        bins-first predictions does not compile (pytorch#181621: seen with 2.11, not with
        2.13; 2.12 not tried); there the CPU kernels are generated unvectorised
        (``cpp.simdlen`` 1), which CUDA's kernels ignore.
        """
        inductor = options.get("backend", "inductor") == "inductor" and "mode" not in options
        if inductor and torch.torch_version.TorchVersion(torch.__version__) < "2.13":
            options = {**options, "options": {"cpp.simdlen": 1, **options.get("options", {})}}
        self.compute = torch.compile(self.compute, **options)  # type: ignore[method-assign]

    def _losses(
        self,
        grid: AnchorGrid,
        gt: GFLTargets,
        cls_score: Tensor,
        bbox_pred: Tensor,
        soft_target: Tensor | None,
        teacher_cls: Tensor | None,
    ) -> dict[str, Tensor]:
        """Every term from the flat predictions: ``cls_score [N, A, C]``, ``bbox_pred``
        and ``soft_target`` ``[N, A, 4 * R]``, ``teacher_cls [N, A, C]``."""
        num_images, num_anchors = gt.labels.shape
        bins = self.reg_max + 1
        positive = gt.positive  # [N, A]
        probabilities = cls_score.sigmoid()  # [N, A, C], read by the weights and QFL
        # the positives' weights: the student's detached top class probability, 0 elsewhere
        weight = torch.where(positive, probabilities.detach().max(dim=-1).values, 0.0)  # [N, A]
        pred_corners = bbox_pred.reshape(num_images, num_anchors, 4, bins)  # [N, A, 4, R]
        pred_boxes = distance2bbox(grid.centers, self.integral.expectation(pred_corners))  # [N, A, 4]
        target_boxes = gt.bbox_targets / grid.strides  # [N, A, 4], stride units
        # IoU and GIoU of the same pairs; the IoU, detached, is the QFL quality (mmdet computes
        # it from the detached prediction: the same values)
        ious, gious = aligned_iou_and_giou(pred_boxes, target_boxes)  # [N, A] each
        quality = torch.where(positive, ious.detach(), 0.0)
        target_corners = bbox2distance(grid.centers, target_boxes, self.reg_max)  # [N, A, 4]
        side_weight = weight[..., None].expand(-1, -1, 4)  # [N, A, 4]
        losses = {
            "loss_cls": self.loss_cls(
                cls_score, gt.labels, quality, gt.label_weights, reduce_mean(gt.num_pos), probabilities
            ),
            "loss_bbox": weighted_mean(1 - gious, weight, 1.0, self.loss_bbox.loss_weight),
            "loss_dfl": self.loss_dfl(pred_corners, target_corners, side_weight, avg_factor=4.0),
        }
        divisor = self._weight_divisor(weight.sum(), soft_target is not None)
        losses["loss_bbox"] = losses["loss_bbox"] / divisor
        losses["loss_dfl"] = losses["loss_dfl"] / divisor
        if soft_target is not None:
            # one KL per side for both LD terms (they share the temperature)
            temperature = self.loss_ld.temperature
            side_kl = knowledge_distillation_kl_div(
                pred_corners, soft_target.reshape(num_images, num_anchors, 4, bins), temperature, scaled=False
            )  # [N, A, 4], T ** 2 in the multipliers
            losses["loss_ld"] = weighted_mean(side_kl, side_weight, 4.0, self.loss_ld.loss_weight * temperature**2)
            if gt.vlr_weights is not None:
                vlr_weight = gt.vlr_weights[..., None].expand(-1, -1, 4)
                scale = self.loss_ld_vlr.loss_weight * temperature**2
                losses["loss_ld_vlr"] = weighted_mean(side_kl, vlr_weight, 16.0, scale)
        if teacher_cls is not None:
            losses["loss_kd"] = self._kd_loss(grid, gt, cls_score, teacher_cls)
        return {name: losses[name] for name in _LOSS_NAMES if name in losses}

    @staticmethod
    def _weight_divisor(weight_sum: Tensor, distilling: bool) -> Tensor:
        """The divisor of ``loss_bbox`` and ``loss_dfl``: the summed weights of all positives.

        mmdet's two heads differ here and both are kept: ``LDHead`` adds 1e-6 and does not
        clamp; ``GFLHead`` clamps at 1 (which matters early in training, when the weights,
        class probabilities near 0.01, sum to less than 1).
        """
        if distilling:
            return reduce_mean(weight_sum + 1e-6)
        return reduce_mean(weight_sum).clamp(min=1)

    def _kd_loss(self, grid: AnchorGrid, gt: GFLTargets, cls_score: Tensor, teacher_cls: Tensor) -> Tensor:
        """KD on the positives' class logits; each level's sum divided by its positive count
        (mmdet's per-level ``avg_factor``), the levels added up."""
        per_anchor = gt.positive.sum(0, dtype=cls_score.dtype)  # [A]
        counts = per_anchor.new_zeros(len(self.strides)).index_add_(0, grid.levels, per_anchor)  # [L]
        weight = torch.where(gt.positive, gt.label_weights, 0.0) / (counts.take(grid.levels) + FLOAT32_EPS)  # [N, A]
        temperature = self.loss_kd.temperature
        loss = knowledge_distillation_kl_div(cls_score, teacher_cls, temperature, scaled=False)  # [N, A]
        return (loss * weight).sum() * (self.loss_kd.loss_weight * temperature**2)
