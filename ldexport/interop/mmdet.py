"""mmdet checkpoints <-> ldexport models.

mmdet's GFL and LD detectors name their parts ``backbone``, ``neck`` and ``bbox_head``;
ldexport's ``backbone``, ``neck`` and ``head``, with the same names below them. An mmdet
LD checkpoint holds only the student (mmdet keeps its teacher out of the state dict);
stray ``teacher_model.`` keys from other tools are dropped, as is ``meta``.

All six GFL models of mmdet's zoo load: ResNet-50/101, ResNeXt-101 32x4d (the same key
names, grouped ``conv2``) and their deformable variants (mmcv's ``conv2.weight`` and
``conv2.conv_offset.*``; mmdet 1.x's ``conv2_offset.*`` is renamed to that). A checkpoint
whose backbone differs from the config's is named in one line with the settings to use
(:func:`backbone_settings`); one whose backbone ldexport does not build says so.
"""

from __future__ import annotations

import re

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ldexport import __version__
from ldexport.errors import LdexportError
from ldexport.io import atomic_path

_MMDET_HEAD, _HEAD = "bbox_head.", "head."
_DROPPED_PREFIXES = ("teacher_model.", "data_preprocessor.", "teacher.")
# Keys every GFL/LD detector has; their absence means the file holds another model.
_SIGNATURE_KEYS = ("head.gfl_cls.weight", "head.gfl_reg.weight", "head.integral.project")
# mmdet 1.x kept a DCN's offset convolution beside it: layerI.J.conv2_offset.*
_LEGACY_OFFSET = re.compile(r"^(backbone\.layer\d+\.\d+\.conv2)_offset\.(weight|bias)$")
_BLOCK_KEY = re.compile(r"^backbone\.layer([1-4])\.(\d+)\.")
_DEPTHS: dict[tuple[int, ...], int] = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34, (3, 4, 23, 3): 101}  # 34 and 50 share (3, 4, 6, 3)


def from_mmdet_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Renames an mmdet GFL/LD state dict to ldexport's keys."""
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(_DROPPED_PREFIXES):
            continue
        if key.startswith(_MMDET_HEAD):
            key = _HEAD + key[len(_MMDET_HEAD):]
        key = _LEGACY_OFFSET.sub(r"\1.conv_offset.\2", key)
        converted[key] = value
    return converted


def to_mmdet_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Renames an ldexport state dict to mmdet's GFL/LD keys."""
    return {
        (_MMDET_HEAD + key[len(_HEAD):] if key.startswith(_HEAD) else key): value
        for key, value in state_dict.items()
    }


def is_mmdet_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    """Whether a loaded checkpoint dict uses mmdet's layout (``state_dict`` + ``bbox_head.``)."""
    state = checkpoint.get("state_dict", checkpoint)
    return isinstance(state, Mapping) and any(str(key).startswith(_MMDET_HEAD) for key in state)


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Loads weights strictly, turning mismatches into one clear line.

    Raises:
        LdexportError: the weights are not a GFL/LD detector's, or their shapes say
            the model was built with another config.
    """
    missing_signature = [key for key in _SIGNATURE_KEYS if key not in state_dict]
    if missing_signature:
        raise LdexportError(f"{source} is not a GFL/LD detector checkpoint (no {missing_signature[0]})")
    _check_backbone(model, state_dict, source)
    expected = model.state_dict()
    wrong_shapes = [
        f"{key} {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
        for key, value in state_dict.items()
        if key in expected and expected[key].shape != value.shape
    ]
    if wrong_shapes:
        raise LdexportError(
            f"{source} does not match the config ({len(wrong_shapes)} shapes differ, e.g. {wrong_shapes[0]})"
        )
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise LdexportError(
            f"{source} does not match the config: {len(missing)} missing and {len(unexpected)} "
            f"unexpected keys (e.g. {example})"
        )
    model.load_state_dict(state_dict)


def backbone_settings(state_dict: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """The ``model`` settings of the backbone a state dict holds (ldexport key names).

    Returns:
        ``backbone``, ``depth``, ``groups``, ``base_width``, ``dcn_stages`` as a
        :class:`~ldexport.model.build.ModelConfig` takes them (``base_width`` assumes the
        published 64 base channels), or ``None`` when the weights are not a ResNet/ResNeXt
        ldexport builds.
    """
    blocks: dict[int, set[int]] = defaultdict(set)
    for key in state_dict:
        match = _BLOCK_KEY.match(key)
        if match:
            blocks[int(match[1])].add(int(match[2]))
    if "backbone.conv1.weight" not in state_dict or sorted(blocks) != [1, 2, 3, 4]:
        return None
    counts = tuple(len(blocks[stage]) for stage in (1, 2, 3, 4))
    bottleneck = "backbone.layer1.0.conv3.weight" in state_dict
    depth = 50 if bottleneck and counts == (3, 4, 6, 3) else _DEPTHS.get(counts)
    conv2 = state_dict.get("backbone.layer1.0.conv2.weight")
    if depth is None or bottleneck != (depth >= 50) or conv2 is None or conv2.dim() != 4:
        return None
    groups = conv2.shape[0] // conv2.shape[1]
    dcn_stages = [stage for stage in (1, 2, 3, 4) if f"backbone.layer{stage}.0.conv2.conv_offset.weight" in state_dict]
    return {
        "backbone": "resnext" if groups > 1 else "resnet",
        "depth": depth,
        "groups": groups,
        "base_width": conv2.shape[0] // groups if groups > 1 else 4,
        "dcn_stages": dcn_stages,
    }


def _check_backbone(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Names the checkpoint's backbone in one line when the model's is another."""
    backbone = getattr(model, "backbone", None)
    from ldexport.model.resnet import ResNet  # model is a lower layer; kept local to the check

    if not isinstance(backbone, ResNet):
        return
    found = backbone_settings(state_dict)
    if found is None:
        example = next((key for key in state_dict if key.startswith("backbone.")), "no backbone.* key")
        raise LdexportError(
            f"{source} has a backbone ldexport does not build (e.g. {example}); it builds ResNet-18/34/50/101 "
            "and ResNeXt-50/101, each optionally with deformable convolutions (mmdet's DCN)"
        )
    wanted: dict[str, Any] = {"backbone": "resnext" if backbone.groups > 1 else "resnet", "depth": backbone.depth}
    wanted.update(groups=backbone.groups, dcn_stages=list(backbone.dcn_stages))
    if any(found[key] != value for key, value in wanted.items()):
        settings = ", ".join(f"{key}: {value}" for key, value in found.items() if key != "base_width" or found["groups"] > 1)
        raise LdexportError(
            f"{source} holds another backbone than the config's {backbone.name}: set {settings} in its model section"
        )


def save_mmdet_checkpoint(
    model: nn.Module, path: str | Path, meta: Mapping[str, Any] | None = None, *, class_names: Sequence[str] = ()
) -> None:
    """Saves a model in mmdet's checkpoint layout (``{"meta": ..., "state_dict": ...}``).

    Args:
        model: the detector.
        path: the file written.
        meta: more of mmdet's ``meta``.
        class_names: written as ``meta.dataset_meta.classes``, where mmdet's
            ``init_detector`` (and ldexport's loader) read a model's class names.
    """
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    meta = {"ldexport_version": __version__, **(meta or {})}
    if class_names:
        meta["dataset_meta"] = {**meta.get("dataset_meta", {}), "classes": tuple(class_names)}
    checkpoint = {"meta": meta, "state_dict": to_mmdet_state_dict(state)}
    with atomic_path(path) as temporary:
        torch.save(checkpoint, temporary)
