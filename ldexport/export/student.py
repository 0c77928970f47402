"""The trained student a command exports or checks: built from the config, weights from an
ldexport or mmdet checkpoint, with its class names and the checkpoint's hash."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldexport.config import Config
from ldexport.interop.checkpoint import load_weights
from ldexport.model.build import build_detector
from ldexport.model.detector import GFLDetector
from ldexport.trt.files import sha256_file


@dataclass
class Student:
    """A loaded student.

    Attributes:
        model: the detector, in eval mode.
        class_names: ``C`` names in label order.
        checkpoint_sha256: SHA-256 of the checkpoint file.
    """

    model: GFLDetector
    class_names: tuple[str, ...]
    checkpoint_sha256: str


def load_student(config: Config, checkpoint: str | Path) -> Student:
    """Builds ``config.model`` and loads ``checkpoint`` into it.

    Raises:
        LdexportError: the checkpoint is missing, unreadable, not a GFL/LD detector, or
            does not match the config.
    """
    model = build_detector(config.model)
    loaded = load_weights(model, checkpoint)
    model.eval()
    names = checkpoint_class_names(loaded, config.model.num_classes)
    return Student(model=model, class_names=names, checkpoint_sha256=sha256_file(Path(checkpoint)))


def checkpoint_class_names(checkpoint: Mapping[str, Any], num_classes: int) -> tuple[str, ...]:
    """Class names saved in a checkpoint (ldexport's ``class_names`` or mmdet's
    ``meta.dataset_meta.classes``), else ``class_0 ... class_{C-1}``.

    Names whose count differs from ``num_classes`` are ignored.
    """
    meta = checkpoint.get("meta")
    meta = meta if isinstance(meta, Mapping) else {}
    dataset_meta = meta.get("dataset_meta")
    dataset_meta = dataset_meta if isinstance(dataset_meta, Mapping) else {}
    for names in (checkpoint.get("class_names"), dataset_meta.get("classes"), meta.get("CLASSES"), meta.get("classes")):
        if isinstance(names, (list, tuple)) and len(names) == num_classes:
            return tuple(str(name) for name in names)
    return tuple(f"class_{index}" for index in range(num_classes))
