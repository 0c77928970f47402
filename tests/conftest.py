"""Suite-wide settings: one torch thread a worker under pytest-xdist, and the ``cuda`` marker.

Under ``pytest -n K`` every worker is a process of its own; with torch's default of one
thread a core, K workers on a 16-core machine would run 16K threads and starve each
other (and the subprocesses they start). Each worker therefore runs one thread, and the
processes it starts inherit ``OMP_NUM_THREADS=1``.

Tests marked ``cuda`` need a CUDA device; they are skipped, with the reason, where there
is none (``pytest -m cuda`` runs only them on a GPU machine).
"""

from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = "1"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: torch.cuda.is_available() is False")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
