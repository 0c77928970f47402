"""Reading checkpoint files without running any code they contain, and the one loader of
"a detector from its architecture and a checkpoint" (:func:`load_detector`).

Every checkpoint is read with ``torch.load(..., weights_only=True)``. mmdet 3.x
checkpoints also pickle training bookkeeping (mmengine's message hub, numpy scalars in
``meta``); those objects are not needed, so each such class is replaced by an inert
placeholder for the load (its constructor and state are ignored) instead of being
imported. Nothing from the file is ever executed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ldexport.errors import LdexportError
from ldexport.io import sha256_file

# The first byte of a pickle of protocol 2 or later: torch.save's legacy (non-zip) format.
_PICKLE_PROTOCOL = b"\x80"

if TYPE_CHECKING:
    from ldexport.model.build import ModelConfig
    from ldexport.model.detector import GFLDetector


class _Ignored:
    """Stands in for any non-tensor class pickled in a checkpoint; keeps nothing."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Ignored":
        return _Ignored()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Loads a checkpoint file as a dict, safely (``weights_only=True``).

    Raises:
        LdexportError: the file is missing or is not a readable torch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise LdexportError(f"checkpoint not found: {path}")
    placeholders: list[Any] = []
    is_zip = zipfile.is_zipfile(path)
    with open(path, "rb") as stream:
        if not is_zip and stream.read(1) != _PICKLE_PROTOCOL:
            raise LdexportError(f"{path} is not a torch checkpoint (torch.save writes a zip archive, or a pickle)")
    if is_zip:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as error:
            raise LdexportError(f"{path} is not a readable torch checkpoint: {error}") from None
        placeholders = [(_Ignored, name) for name in unsafe]
    try:
        with torch.serialization.safe_globals(placeholders):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        text = str(error)
        if "Unsupported global" in text:  # torch's advice, to unpickle anything, is not ours to pass on
            raise LdexportError(
                f"{path} holds Python objects other than tensors and plain values; ldexport reads checkpoints "
                "only as weights (torch.load(weights_only=True))"
            ) from None
        text = text.split("WeightsUnpickler error:", 1)[-1]
        first_line = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
        raise LdexportError(f"{path} is not a readable torch checkpoint: {first_line}") from None
    if not isinstance(checkpoint, dict):
        raise LdexportError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def model_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The detector weights of a loaded checkpoint, in ldexport's key names.

    Accepts ldexport training checkpoints (``{"model": state_dict, ...}``), mmdet GFL/LD
    checkpoints (``{"state_dict": ..., "meta": ...}`` with ``bbox_head.`` keys) and bare
    state dicts of either.
    """
    from ldexport.interop.mmdet import from_mmdet_state_dict, is_mmdet_checkpoint

    if is_mmdet_checkpoint(checkpoint):
        return from_mmdet_state_dict(checkpoint.get("state_dict", checkpoint))
    state = checkpoint.get("model", checkpoint.get("state_dict", checkpoint))
    if not isinstance(state, dict):
        raise LdexportError("checkpoint has no model weights")
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


def load_weights(model: torch.nn.Module, path: str | Path) -> dict[str, Any]:
    """Loads an ldexport or mmdet checkpoint file into ``model``, strictly.

    Returns:
        The whole checkpoint dict (for its config, class names, training state).
    """
    from ldexport.interop.mmdet import load_state_dict_checked

    checkpoint = read_checkpoint(path)
    load_state_dict_checked(model, model_state_dict(checkpoint), str(path))
    return checkpoint


@dataclass
class LoadedDetector:
    """A detector with a checkpoint's weights.

    Attributes:
        model: the detector, in eval mode, on the CPU.
        class_names: ``C`` names in label order (the checkpoint's, else ``class_<i>``).
        checkpoint_sha256: SHA-256 of the checkpoint file.
        checkpoint: the whole checkpoint dict (config, training state).
    """

    model: GFLDetector
    class_names: tuple[str, ...]
    checkpoint_sha256: str
    checkpoint: dict[str, Any]

    @functools.cached_property
    def weights_sha256(self) -> str:
        """SHA-256 of the weights themselves (:func:`weights_sha256`)."""
        return weights_sha256(self.model)


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and values, in name order):
    the same for every file that holds these weights (``best.pth`` and ``latest.pth`` of
    one epoch, an mmdet copy), unlike the file's own hash."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu()
        digest.update(f"{name} {value.dtype} {tuple(value.shape)}\n".encode())
        digest.update(value.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_detector(architecture: ModelConfig | None, checkpoint: str | Path) -> LoadedDetector:
    """Builds ``architecture`` and loads an ldexport or mmdet ``checkpoint`` into it.

    The backbone's ImageNet file (``architecture.pretrained``) is never read: every
    weight comes from the checkpoint, so a config naming a file that is not on this
    machine still loads.

    Args:
        architecture: the detector's ``model`` section; ``None`` reads it from the config
            an ldexport checkpoint saves.
        checkpoint: the weights.

    Raises:
        LdexportError: the checkpoint is missing, unreadable, not a GFL/LD detector, does
            not match the architecture, or (``architecture=None``) does not say it.
    """
    from ldexport.config import from_dict
    from ldexport.interop.mmdet import load_state_dict_checked
    from ldexport.model.build import ModelConfig, build_detector

    loaded = read_checkpoint(checkpoint)
    if architecture is None:
        saved = loaded.get("config", {}).get("model") if isinstance(loaded.get("config"), dict) else None
        if saved is None:
            raise LdexportError(f"{checkpoint} does not say its architecture: set distill.teacher in the config")
        architecture = from_dict(ModelConfig, saved, "the checkpoint's model")
    model = build_detector(dataclasses.replace(architecture, pretrained=None))
    load_state_dict_checked(model, model_state_dict(loaded), str(checkpoint))
    model.eval()
    return LoadedDetector(
        model=model,
        class_names=checkpoint_class_names(loaded, architecture.num_classes),
        checkpoint_sha256=sha256_file(checkpoint),
        checkpoint=loaded,
    )


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
