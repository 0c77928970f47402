"""Stop a run with real signals, resume it, and reach the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
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


# A real run whose real monitor sends the process SIGINT once step AT is done.
_STOP_AT_STEP = """
import os, signal
import ldexport.engine.run as run
from ldexport.cli import main

class StopAt(run.Monitor):
    def step(self, iteration, *args):
        super().step(iteration, *args)
        if iteration == {at}:
            os.kill(os.getpid(), signal.SIGINT)

run.Monitor = StopAt
main({args!r})
"""


@pytest.mark.parametrize("at", [3, 4], ids=["stop-on-the-last-step", "stop-during-evaluation"])
def test_a_run_stopped_at_its_end_is_evaluated_when_resumed(tmp_path, teacher_checkpoint, at):
    """One epoch of 4 steps, evaluated at its end. A stop that lands on the epoch's
    last step (asked during step 3, seen in step 4) or during its evaluation (asked
    after step 4) used to leave the run unevaluated for good: the resumed run found
    nothing left to train and ended without evaluating or writing best.pth."""
    work_dir = tmp_path / "run"
    args = ["train", "configs/coco128_ld_tiny.yaml", "--teacher", str(teacher_checkpoint), "--work-dir",
            str(work_dir), *set_args("train.epochs=1", "train.eval_interval=1", "data.workers=0")]
    stopped = subprocess.run(
        [sys.executable, "-c", _STOP_AT_STEP.format(at=at, args=args)], cwd=REPO, env=cli_env(),
        capture_output=True, text=True, timeout=300,
    )
    assert stopped.returncode == 0, stopped.stderr
    assert "SIGINT: checkpoint written" in stopped.stdout + stopped.stderr
    # no terminal here, so no progress bar: a line a logged step instead (there was nothing)
    assert "iteration 1/4 (epoch 1): loss " in stopped.stdout + stopped.stderr
    assert read_checkpoint(work_dir / "latest.pth")["iteration"] == 4
    assert read_log(work_dir, "eval") == [] and not (work_dir / "best.pth").exists()

    resumed = ldexport(*args, "--resume", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "latest.pth after 4 of 4 iterations" in resumed.stdout + resumed.stderr  # where it resumes
    evaluations = read_log(work_dir, "eval")
    assert [(r["epoch"], r["iteration"]) for r in evaluations] == [(1, 4)]
    best = read_checkpoint(work_dir / "best.pth")
    assert best["metrics"]["AP"] == evaluations[0]["AP"]
    assert read_checkpoint(work_dir / "latest.pth")["evaluated"] == 4
    assert sorted(r["iteration"] for r in read_log(work_dir, "train")) == [1, 2, 3, 4]
    again = ldexport(*args, "--resume", timeout=300)  # a finished run: nothing to do, nothing added
    assert again.returncode == 0, again.stderr
    assert len(read_log(work_dir, "eval")) == 1


def test_resume_drops_the_log_records_past_the_checkpoint(tmp_path):
    """A run killed outright (SIGKILL, out of memory) logged steps after its last
    checkpoint, maybe half a line; the resumed run logs them again, once."""
    from ldexport.engine.monitor import Monitor

    records = [{"kind": "train", "iteration": i, "loss": 1.0} for i in range(1, 7)]
    records.insert(4, {"kind": "eval", "epoch": 1, "iteration": 4, "AP": 0.1})
    lines = [json.dumps(r) for r in records] + ['{"kind": "train", "itera']
    (tmp_path / "log.jsonl").write_text("\n".join(lines))
    monitor = Monitor(tmp_path, total_iters=8, tensorboard=False)
    monitor.rewind(iteration=5, evaluated=0)  # its evaluation at 4 was not saved: it runs again
    assert [(r["kind"], r["iteration"]) for r in read_log(tmp_path)] == [("train", i) for i in range(1, 6)]
    monitor.log_train(1, 6, {"loss": 2.0}, 0.01, 1.0)
    assert [r["iteration"] for r in read_log(tmp_path)] == [1, 2, 3, 4, 5, 6]
    monitor.rewind(iteration=6, evaluated=4)
    assert len(read_log(tmp_path)) == 6


def test_resume_says_which_settings_changed(tmp_path, teacher_checkpoint, caplog):
    """A changed train.lr was ignored without a word (the optimizer's state is the
    checkpoint's); now every changed setting is named, and what is kept."""
    from ldexport.engine.run import train

    from .conftest import small_config

    config = small_config("train.epochs=1", "data.max_images=2", "train.eval_interval=0")
    train(config, work_dir=tmp_path, teacher_checkpoint=teacher_checkpoint)
    longer = small_config("train.epochs=2", "data.max_images=2", "train.eval_interval=0", "train.lr=0.04")
    with caplog.at_level("WARNING", logger="ldexport.engine"):
        train(longer, work_dir=tmp_path, teacher_checkpoint=teacher_checkpoint, resume=True)
    (line,) = [r.getMessage() for r in caplog.records if "settings changed" in r.getMessage()]
    assert "train.epochs 1 -> 2" in line and "train.lr 0.16 -> 0.04" in line
    assert line.endswith("kept from the checkpoint (the optimizer's state): train.lr")
