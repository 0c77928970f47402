"""The parts of a run, built from a :class:`~ldexport.config.Config`.

These are the outermost builders: each reads one section of the config and hands the
parts below it plain keyword arguments.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ldexport.config import Config, DistillConfig, TrainConfig
from ldexport.engine.schedule import WarmupSchedule
from ldexport.errors import LdexportError
from ldexport.interop.checkpoint import load_detector
from ldexport.losses.ld_criterion import LDCriterion
from ldexport.model.build import ModelConfig
from ldexport.model.detector import GFLDetector

_AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_teacher(distill: DistillConfig, checkpoint: str | Path | None) -> GFLDetector | None:
    """The frozen teacher, or ``None`` for plain GFL training.

    The teacher's architecture is ``distill.teacher``; when that is unset and the
    checkpoint is an ldexport one, the ``model`` section of the config saved in it.

    Args:
        distill: the distillation section.
        checkpoint: the teacher's weights; ``distill.teacher_checkpoint`` when ``None``.

    Raises:
        LdexportError: a missing or unreadable checkpoint, an architecture that does
            not match the weights, or a teacher architecture without weights.
    """
    path = checkpoint or distill.teacher_checkpoint
    if path is None:
        if distill.teacher is not None:
            raise LdexportError("distill.teacher is set but no teacher weights: pass --teacher CKPT")
        return None
    # The weights come from the checkpoint: an ImageNet backbone would be overwritten.
    teacher = load_detector(distill.teacher, path).model
    teacher.eval().requires_grad_(False)
    return teacher


def build_criterion(config: Config, with_teacher: bool) -> LDCriterion:
    """The GFL losses, with LD (and VLR LD, KD) when there is a teacher."""
    distill = config.distill
    return LDCriterion(
        num_classes=config.model.num_classes,
        reg_max=config.model.reg_max,
        strides=config.model.strides,
        octave_base_scale=config.model.octave_base_scale,
        loss_ld_weight=distill.ld_weight if with_teacher else 0.0,
        ld_temperature=distill.ld_temperature,
        loss_ld_vlr_weight=distill.vlr_weight if with_teacher else 0.0,
        loss_kd_weight=distill.kd_weight if with_teacher else 0.0,
        kd_temperature=distill.kd_temperature,
    )


def build_optimizer(student: nn.Module, train: TrainConfig, lr: float) -> torch.optim.SGD:
    """SGD over the student's trainable parameters (frozen stages left out): one fused
    kernel for all parameters on CUDA, the ``foreach`` multi-tensor form elsewhere."""
    parameters = [p for p in student.parameters() if p.requires_grad]
    fused = bool(parameters) and all(p.is_cuda for p in parameters)
    return torch.optim.SGD(
        parameters, lr=lr, momentum=train.momentum, weight_decay=train.weight_decay,
        foreach=None if fused else True, fused=fused or None,
    )  # fmt: skip


def build_schedule(train: TrainConfig, iters_per_epoch: int) -> WarmupSchedule:
    """The warm-up and decay of ``train``, per iteration."""
    return WarmupSchedule(
        iters_per_epoch=iters_per_epoch,
        epochs=train.epochs,
        warmup_iters=train.warmup_iters,
        warmup_ratio=train.warmup_ratio,
        schedule=train.schedule,
        steps=train.steps,
        min_ratio=train.min_lr_ratio,
    )


def amp_settings(train: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """The autocast dtype and, for fp16, the gradient scaler.

    AMP is meant for CUDA. On CPU it runs too (autocast and the scaler exist there), which
    is how the tests exercise this path without a GPU, but it is rarely faster.

    Raises:
        LdexportError: an unknown ``train.amp``, or AMP on a device without autocast.
    """
    if train.amp not in _AMP_DTYPES:
        raise LdexportError(f"train.amp must be one of {', '.join(_AMP_DTYPES)}, got {train.amp!r}")
    dtype = _AMP_DTYPES[train.amp]
    if dtype is not None and device.type not in ("cuda", "cpu"):
        raise LdexportError(f"train.amp={train.amp} needs a CUDA (or CPU) device; use train.amp=none on {device.type}")
    return dtype, torch.amp.GradScaler(device.type) if dtype is torch.float16 else None


def configure_determinism(deterministic: bool, device: torch.device, shapes_repeat: bool = False) -> None:
    """Deterministic kernels when asked (exact resume); cuDNN autotuning when the batches'
    shapes repeat (bucketed, ``train.compile``) and determinism is not asked for."""
    torch.backends.cudnn.benchmark = shapes_repeat and not deterministic
    if deterministic:
        # cuBLAS reads it when it creates its first handle, after this point.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True


def check_classes(model: ModelConfig, class_names: tuple[str, ...], where: str) -> None:
    """Raises a user error when the data's class count differs from the model's."""
    if model.num_classes != len(class_names):
        raise LdexportError(
            f"model.num_classes is {model.num_classes} but {where} has {len(class_names)} classes"
        )
