"""Shared pieces of the engine tests: the tiny coco128 config, a teacher, CLI runs.

Every run uses ``configs/coco128_ld_tiny.yaml`` shrunk to a few images of at most 128 px,
on CPU with one thread a process, so that runs are deterministic and fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ldexport.config import Config, config_to_dict, load_config
from ldexport.model import build_detector

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "coco128_ld_tiny.yaml"
# The repository sits beside ../shared; LDEXPORT_COCO128 points elsewhere (a worktree).
COCO128 = Path(os.environ.get("LDEXPORT_COCO128", REPO.parent / "shared/data/coco128")).resolve()
# A few images, CPU, deterministic kernels, one record a step in log.jsonl.
SMALL = (
    f"data.root={COCO128}",
    "data.max_images=8",
    "data.batch_size=2",
    "train.device=cpu",
    "train.deterministic=true",
    "train.log_interval=1",
    "train.warmup_iters=0",
    "train.lr=0.16",  # 0.02 for the global batch of 2
    "distill.ld_weight=0.25",  # mmdet's weight for 2 images a process
)

requires_coco128 = pytest.mark.skipif(
    not COCO128.is_dir(), reason=f"coco128 is not in {COCO128} (set LDEXPORT_COCO128)"
)


def small_config(*overrides: str) -> Config:
    """The tiny coco128 config with :data:`SMALL` and ``overrides`` applied."""
    return load_config(CONFIG, (*SMALL, *overrides))


def make_teacher(config: Config, path: Path, *, sharpness: float = 2.0) -> Path:
    """Writes a teacher checkpoint of ``config.distill.teacher``'s architecture.

    Its bin logits get a random per-bin bias ``sharpness`` times larger than the
    initial ones, so its distributions are far from the student's near-uniform ones and
    LD has something to teach.
    """
    torch.manual_seed(1234)
    teacher = build_detector(config.distill.teacher)
    with torch.no_grad():
        teacher.head.gfl_reg.bias.copy_(torch.randn_like(teacher.head.gfl_reg.bias) * sharpness * 10)
    saved_config = {"model": config_to_dict(config.distill.teacher)}
    torch.save({"format": "ldexport", "model": teacher.state_dict(), "config": saved_config}, path)
    return path


def cli_env() -> dict[str, str]:
    """One thread a process: the shared cores stay usable and results reproducible."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def ldexport(*args: str | Path, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess[str]:
    """Runs ``ldexport ARGS`` in a real process, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "ldexport.cli", *map(str, args)],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=timeout, **kwargs,
    )


def set_args(*overrides: str) -> list[str]:
    """``--set`` arguments for the CLI."""
    return [item for override in (*SMALL, *overrides) for item in ("--set", override)]


@pytest.fixture(scope="session")
def teacher_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A teacher checkpoint for the tiny config, shared by the tests."""
    return make_teacher(small_config(), tmp_path_factory.mktemp("teacher") / "teacher.pth")
