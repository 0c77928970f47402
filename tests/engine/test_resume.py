"""Stop a run with real signals, resume it, and reach the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from ldexport.engine.monitor import read_log
from ldexport.interop.checkpoint import read_checkpoint

from .conftest import REPO, cli_env, ldexport, requires_coco128, set_args

pytestmark = requires_coco128

# 12 images, batch 2: 6 iterations an epoch, 2 epochs; random flips on (RNG state matters).
RUN = ("data.max_images=12", "train.epochs=2", "train.eval_interval=0", "data.flip_prob=0.5")


def _train_args(teacher: Path, work_dir: Path) -> list[str]:
    config = "configs/coco128_ld_tiny.yaml"
    return ["train", config, "--teacher", str(teacher), "--work-dir", str(work_dir), *set_args(*RUN)]


def _interrupt(
    teacher: Path, work_dir: Path, sig: signal.Signals, after: int, resume: bool, *extra: str, group: bool = False
) -> int:
    """Starts a run, sends ``sig`` once ``after`` steps are logged; returns the checkpoint's iteration.

    With ``group``, the signal goes to the run's whole process group (DataLoader workers
    included), as Ctrl-C in a terminal or a cluster scheduler sends it.
    """
    args = _train_args(teacher, work_dir) + list(extra) + (["--resume"] if resume else [])
    process = subprocess.Popen(
        [sys.executable, "-m", "ldexport.cli", *args], cwd=REPO, env=cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not any(r["iteration"] >= after for r in read_log(work_dir, "train")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run logged no progress"
        time.sleep(0.05)
    if group:
        os.killpg(process.pid, sig)  # the group this test started (start_new_session)
    else:
        process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert f"{sig.name}: checkpoint written" in stdout
    return read_checkpoint(work_dir / "latest.pth")["iteration"]


def assert_same_weights(full: Path, parts: Path, iterations: int = 12) -> tuple[dict, dict]:
    """The resumed run's last checkpoint holds the uninterrupted run's student, bit for bit."""
    expected = read_checkpoint(full / "latest.pth")
    resumed = read_checkpoint(parts / "latest.pth")
    assert resumed["iteration"] == expected["iteration"] == iterations
    for key, value in expected["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    return expected, resumed


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, teacher_checkpoint):
    full = ldexport(*_train_args(teacher_checkpoint, tmp_path / "full"))
    assert full.returncode == 0, full.stderr

    parts = tmp_path / "parts"
    first = _interrupt(teacher_checkpoint, parts, signal.SIGINT, after=2, resume=False)
    second = _interrupt(teacher_checkpoint, parts, signal.SIGTERM, after=8, resume=True)
    # Both stops landed mid-epoch (6 iterations an epoch), the second in the second epoch.
    assert 2 <= first < 6 and 8 <= second < 12, (first, second)
    last = ldexport(*_train_args(teacher_checkpoint, parts), "--resume")
    assert last.returncode == 0, last.stderr

    expected, resumed = assert_same_weights(tmp_path / "full", parts)
    momentum = [s["momentum_buffer"] for s in expected["optimizer"]["state"].values()]
    assert all(torch.equal(a["momentum_buffer"], b) for a, b in zip(resumed["optimizer"]["state"].values(), momentum))
    # Each step was logged once, with the same losses as the uninterrupted run.
    logged = {r["iteration"]: r["loss"] for r in read_log(parts, "train")}
    assert sorted(logged) == list(range(1, 13))
    assert logged == {r["iteration"]: r["loss"] for r in read_log(tmp_path / "full", "train")}


def test_signal_to_the_process_group_with_dataloader_workers(tmp_path, teacher_checkpoint):
    overrides = ["--set", "data.workers=2", "--set", "train.epochs=50"]
    stopped_at = _interrupt(teacher_checkpoint, tmp_path / "run", signal.SIGTERM, 2, False, *overrides, group=True)
    assert 2 <= stopped_at < 50 * 6
