"""The one parser of a device setting (``train.device``, every ``--device``)."""

from __future__ import annotations

import typing
from typing import Literal

import torch

from ldexport.errors import LdexportError

DeviceChoice = Literal["auto", "cuda", "cpu"]
"""``train.device``'s choices."""

DEVICE_NAMES = (*typing.get_args(DeviceChoice), "cuda:N")
"""What a ``--device`` takes: ``train.device``'s choices, and a CUDA device by index."""


def torch_device(setting: str) -> torch.device:
    """The torch device of a ``--device`` (or ``train.device``) setting.

    ``auto`` is CUDA when torch has it, else the CPU; ``cuda`` and ``cuda:N`` need a CUDA
    GPU (``N`` below the number of them).

    Raises:
        LdexportError: anything else, or a CUDA device that is not there.
    """
    name, _, index = setting.partition(":")
    if setting not in typing.get_args(DeviceChoice) and not (name == "cuda" and index.isdigit()):
        raise LdexportError(f"device {setting!r} is not one of {', '.join(DEVICE_NAMES)}")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise LdexportError(f"device {setting}: no CUDA GPU is available to torch")
    if index and int(index) >= torch.cuda.device_count():
        raise LdexportError(f"device {setting}: torch sees {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    return torch.device(setting)
