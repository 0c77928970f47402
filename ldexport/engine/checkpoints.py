"""Training checkpoints: written atomically, read back safely, with the RNG state.

A checkpoint is a plain dict that ``torch.load(weights_only=True)`` reads (see
:func:`ldexport.interop.checkpoint.read_checkpoint`)::

    {"format": "ldexport", "model": student state dict, "config": resolved config,
     "class_names": [...], "optimizer": ..., "scheduler": ..., "scaler": ... or None,
     "epoch": epoch in progress, "iteration": optimizer steps done,
     "iters_per_epoch": ..., "rng": [state of rank 0, rank 1, ...], "best_ap": ...,
     "evaluated": the iteration of the last settled epoch-end evaluation}

RNG states are stored as tensors, ints and lists only (numpy's key array becomes an
int64 tensor), so that no pickled class is needed to read them back.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldexport.io import atomic_path

CHECKPOINT_FORMAT = "ldexport"
LATEST = "latest.pth"
BEST = "best.pth"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Writes ``state`` to ``path`` atomically (:func:`ldexport.io.atomic_path`).

    A reader (or a crash) sees the previous file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        torch.save(state, temporary)
    return path


def capture_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's torch, CUDA, numpy and Python RNG states, as plain types."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    version, mt_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(position), int(has_gauss),
                  float(cached_gaussian)],
        "python": [version, list(mt_state), gauss_next],
        "cuda": None,
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restores a state from :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    version, mt_state, gauss_next = state["python"]
    random.setstate((version, tuple(mt_state), gauss_next))
    if device is not None and device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    """Seeds torch (all devices), numpy and Python."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def model_is_finite(model: torch.nn.Module) -> bool:
    """Whether every parameter and buffer of ``model`` is finite (no NaN, no inf)."""
    tensors = [*model.parameters(), *model.buffers()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())
