"""The one interface every parity runner implements (PyTorch, ONNX Runtime, TensorRT)."""

from __future__ import annotations

import abc

import numpy as np


class Runner(abc.ABC):
    """Runs one model on named numpy inputs and returns named numpy outputs.

    Heavy back ends are imported in ``__init__`` (or later), never at module import, so
    that ``ldexport --help`` and the CPU tests do not need them.
    """

    name: str = "runner"

    @property
    def placement(self) -> str:
        """Where it runs, as the report records it (a device, ONNX Runtime's providers)."""
        return ""

    @abc.abstractmethod
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the model.

        Args:
            feeds: input name -> array (``images``: ``[N, 3, H, W]`` float32, or
                ``[N, H, W, 3]`` uint8 BGR for a graph with preprocessing).

        Returns:
            output name -> array, named as the ONNX graph names them.
        """
