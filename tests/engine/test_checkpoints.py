import random

import numpy as np
import torch

from ldexport.engine.checkpoints import capture_rng_state, restore_rng_state, save_checkpoint
from ldexport.interop.checkpoint import read_checkpoint


def _draws() -> tuple[list[float], list[float], list[float]]:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    save_checkpoint({"rng": [capture_rng_state()]}, tmp_path / "c.pth")
    expected = _draws()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    restore_rng_state(read_checkpoint(tmp_path / "c.pth")["rng"][0])
    assert _draws() == expected


def test_save_replaces_atomically_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "latest.pth"
    save_checkpoint({"iteration": 1}, path)
    save_checkpoint({"iteration": 2, "model": {"w": torch.ones(2)}}, path)
    assert read_checkpoint(path)["iteration"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pth"]
