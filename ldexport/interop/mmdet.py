"""mmdet checkpoints <-> ldexport models.

mmdet's GFL and LD detectors name their parts ``backbone``, ``neck`` and ``bbox_head``;
ldexport's ``backbone``, ``neck`` and ``head``, with the same names below them. An mmdet
LD checkpoint holds only the student (mmdet keeps its teacher out of the state dict);
stray ``teacher_model.`` keys from other tools are dropped, as is ``meta``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ldexport import __version__
from ldexport.errors import LdexportError

_MMDET_HEAD, _HEAD = "bbox_head.", "head."
_DROPPED_PREFIXES = ("teacher_model.", "data_preprocessor.", "teacher.")
# Keys every GFL/LD detector has; their absence means the file holds another model.
_SIGNATURE_KEYS = ("head.gfl_cls.weight", "head.gfl_reg.weight", "head.integral.project")


def from_mmdet_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Renames an mmdet GFL/LD state dict to ldexport's keys."""
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(_DROPPED_PREFIXES):
            continue
        if key.startswith(_MMDET_HEAD):
            key = _HEAD + key[len(_MMDET_HEAD):]
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


def save_mmdet_checkpoint(model: nn.Module, path: str | Path, meta: Mapping[str, Any] | None = None) -> None:
    """Saves a model in mmdet's checkpoint layout (``{"meta": ..., "state_dict": ...}``)."""
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    checkpoint = {"meta": {"ldexport_version": __version__, **(meta or {})}, "state_dict": to_mmdet_state_dict(state)}
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, temporary)
    temporary.replace(path)
