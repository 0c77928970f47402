"""The distillation task: a student trained against ground truth and a frozen teacher.

:class:`Distiller` is a plain object, not an ``nn.Module``: the teacher can never land in
the optimizer's parameters, the student's state dict or a DDP wrapper. The teacher is
frozen when the distiller is built (``eval()``, ``requires_grad_(False)``), runs under
``torch.no_grad()``, and stays in eval mode whatever ``train()`` is called with.

A GFL teacher runs as a :class:`~ldexport.model.fuse.FrozenTeacher`: BatchNorm folded into
its convolutions once, ReLU and residual additions fused into them on CPU, channels-last,
and its classification tower skipped unless the class-logit KD term reads it. Same
outputs up to float rounding, a fifth of the operations. The distiller keeps only the
frozen teacher (whose folded backbone replaces the original's weights in memory once the
caller lets the original go). The teacher runs before the student, while none of the
student's activations are held, so that its feature maps do not add to the step's peak
memory.

Without a teacher the same object trains plain GFL (``loss_cls``, ``loss_bbox``,
``loss_dfl``).

Legend: ``N`` images, ``C`` classes, ``R = reg_max + 1`` bins, ``H_l x W_l`` level ``l``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ldexport.assign.ground_truth import GroundTruth
from ldexport.errors import LdexportError
from ldexport.losses.ld_criterion import LDCriterion
from ldexport.model.detector import GFLDetector
from ldexport.model.fuse import FrozenTeacher
from ldexport.model.resnet import ResNet


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP / DataParallel wrapper, or ``model`` itself."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def check_compatible(student: nn.Module, teacher: nn.Module) -> None:
    """Checks that the teacher's outputs line up with the student's.

    LD compares the two heads' bin logits anchor by anchor, so both must predict the same
    classes, the same number of bins and the same pyramid levels.

    Raises:
        LdexportError: ``num_classes``, ``reg_max`` or ``strides`` of ``model.head`` differ.
    """
    student_head, teacher_head = unwrap(student).head, unwrap(teacher).head
    for name in ("num_classes", "reg_max", "strides"):
        student_value, teacher_value = getattr(student_head, name), getattr(teacher_head, name)
        if name == "strides":
            student_value, teacher_value = tuple(student_value), tuple(teacher_value)
        if student_value != teacher_value:
            raise LdexportError(
                f"teacher is incompatible with the student: {name} {teacher_value} vs student's {student_value}"
            )


class Distiller:
    """Student, optional frozen teacher, and the loss criterion.

    Args:
        student: returns ``(cls_scores, bbox_preds)`` from ``student(images)``; may be
            wrapped in DDP.
        criterion: the losses.
        teacher: the same kind of model, or ``None`` for plain GFL training.
        teacher_channels_last: run the teacher on channels-last feature maps.
        fold_teacher: run a GFL/ResNet teacher as a
            :class:`~ldexport.model.fuse.FrozenTeacher` (BatchNorm folded once); ``False``
            runs the teacher's own forward (for comparisons).

    Raises:
        LdexportError: the teacher does not match the student (see
            :func:`check_compatible`).
    """

    def __init__(
        self,
        *,
        student: nn.Module,
        criterion: LDCriterion,
        teacher: nn.Module | None = None,
        teacher_channels_last: bool = True,
        fold_teacher: bool = True,
    ):
        if teacher is not None:
            check_compatible(student, teacher)
            teacher.eval()
            teacher.requires_grad_(False)
            if fold_teacher and isinstance(teacher, GFLDetector) and isinstance(teacher.backbone, ResNet):
                with_cls_scores = criterion.loss_kd.loss_weight > 0  # only the class-logit KD term reads them
                teacher = FrozenTeacher(teacher, with_cls_scores=with_cls_scores, channels_last=teacher_channels_last)
        self.student = student
        self.teacher = teacher
        self.criterion = criterion

    def __call__(
        self,
        images: Tensor,
        targets: Sequence[Mapping[str, Tensor]] | GroundTruth,
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor]:
        """Losses of a batch.

        Args:
            images: ``[N, 3, H, W]`` normalised, padded batch.
            targets: the padded :class:`~ldexport.assign.ground_truth.GroundTruth`, or per
                image ``boxes [M, 4]``, ``labels [M]``, optional ``ignore_boxes``.
            image_sizes: ``(h, w)`` of every image before padding (per-image targets only).

        Returns:
            ``loss`` (the sum, to backpropagate) and every component as a scalar.
        """
        teacher_outputs = self.teacher_outputs(images)
        return self.losses(self.student(images), teacher_outputs, targets, image_sizes)

    def teacher_outputs(self, images: Tensor) -> tuple[Sequence[Tensor] | None, Sequence[Tensor]] | None:
        """The frozen teacher's ``(cls_scores or None, bbox_preds)``, or ``None`` without a teacher."""
        if self.teacher is None:
            return None
        with torch.no_grad():
            return self.teacher(images)

    def losses(
        self,
        student_outputs: tuple[Sequence[Tensor], Sequence[Tensor]],
        teacher_outputs: tuple[Sequence[Tensor] | None, Sequence[Tensor]] | None,
        targets: Sequence[Mapping[str, Tensor]] | GroundTruth,
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor]:
        """The loss terms from both models' outputs, and their sum ``loss``."""
        cls_scores, bbox_preds = student_outputs
        teacher_cls_scores, soft_targets = teacher_outputs if teacher_outputs is not None else (None, None)
        losses = self.criterion(
            cls_scores, bbox_preds, targets, image_sizes,
            soft_targets=soft_targets, teacher_cls_scores=teacher_cls_scores,
        )  # fmt: skip
        first, *rest = losses.values()
        return {"loss": sum(rest, first), **losses}  # from the first term: no "0 +" operation

    def compile(self, **options: Any) -> None:
        """``torch.compile`` the teacher and the criterion in place (the student is
        compiled by whoever wraps it, before DDP)."""
        if self.teacher is not None:
            self.teacher.compile(**options)
        self.criterion.compile(**options)

    def train(self, mode: bool = True) -> Distiller:
        """Sets the student's mode; the teacher stays in eval mode."""
        self.student.train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def eval(self) -> Distiller:
        """Puts the student (and the teacher, already there) in eval mode."""
        return self.train(False)

    def to(self, device: torch.device | str) -> Distiller:
        """Moves student, teacher and criterion to ``device``."""
        self.student.to(device)
        self.criterion.to(device)
        if self.teacher is not None:
            self.teacher.to(device)
        return self
