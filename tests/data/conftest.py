"""Fixtures of the data tests: coco128 read in place, small generated data sets."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from data_helpers import TINY_SHAPES

from ldexport.data.shapes import generate_shapes

# The repository sits beside ../shared; coco128 is read there, never copied.
COCO128 = Path(os.environ.get("LDEXPORT_COCO128", Path(__file__).resolve().parents[3] / "shared/data/coco128"))


@pytest.fixture(scope="session")
def coco128() -> Path:
    """The coco128 root (``images/train2017``, ``labels/train2017``, ``classes.txt``)."""
    if not (COCO128 / "classes.txt").is_file():
        pytest.skip(f"coco128 not found at {COCO128}")
    return COCO128


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated shapes data set (8 train and 4 val images, 64-112 px)."""
    return generate_shapes(tmp_path_factory.mktemp("shapes"), TINY_SHAPES)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Runs each data test on one intra-op thread, as DataLoader workers do.

    Thread pools spin on tiny images and, on a busy 2-core machine, turn milliseconds
    into tenths of a second.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
