"""``torchrun --nproc_per_node 2`` on CPU (gloo): the ranks train one student in step."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from ldexport.interop.checkpoint import read_checkpoint

from .conftest import CONFIG, REPO, SMALL, cli_env, requires_coco128

# Each rank trains, then writes a digest of its student's weights.
WORKER = textwrap.dedent(
    """
    import hashlib, os, sys
    from pathlib import Path
    from ldexport.config import load_config
    from ldexport.engine.run import train

    config_path, work_dir, teacher, *overrides = sys.argv[1:]
    result = train(load_config(config_path, overrides), work_dir=work_dir, teacher_checkpoint=teacher)
    digest = hashlib.sha256(b"".join(t.cpu().numpy().tobytes() for t in result.student.state_dict().values()))
    Path(work_dir, f"rank{os.environ['RANK']}.sha256").write_text(digest.hexdigest())
    """
)


def _digest(state: dict[str, torch.Tensor]) -> str:
    return hashlib.sha256(b"".join(t.numpy().tobytes() for t in state.values())).hexdigest()


def train_two_ranks(tmp_path: Path, teacher_checkpoint: Path, *overrides: str) -> tuple[str, dict]:
    """Trains with ``torchrun --nproc_per_node 2``; checks that both ranks ended with the
    checkpoint's student and returns that student's digest and the checkpoint."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    work_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(worker), str(CONFIG), str(work_dir), str(teacher_checkpoint), *SMALL, *overrides]
    run = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = ((work_dir / f"rank{rank}.sha256").read_text() for rank in (0, 1))
    checkpoint = read_checkpoint(work_dir / "latest.pth")
    assert rank0 == rank1 == _digest(checkpoint["model"])
    return rank0, checkpoint


@requires_coco128
def test_two_cpu_processes_keep_identical_students(tmp_path, teacher_checkpoint):
    # 8 images over 2 ranks of 2: 2 iterations an epoch, 3 epochs.
    rank0, checkpoint = train_two_ranks(tmp_path, teacher_checkpoint, "train.epochs=3", "train.eval_interval=3")
    work_dir = tmp_path / "run"
    assert checkpoint["iteration"] == 6 and checkpoint["iters_per_epoch"] == 2
    # The rate is scaled to the global batch of 4 (0.16 for 16 images), RNG kept per rank.
    assert checkpoint["optimizer"]["param_groups"][0]["initial_lr"] == 0.16 * 4 / 16
    assert len(checkpoint["rng"]) == 2 and not torch.equal(checkpoint["rng"][0]["torch"], checkpoint["rng"][1]["torch"])
    torch.manual_seed(0)
    from ldexport.config import load_config
    from ldexport.model import build_detector

    initial = build_detector(load_config(CONFIG, SMALL).model).state_dict()
    assert _digest(initial) != rank0  # the student did train
    assert sorted(p.name for p in work_dir.glob("*.pth")) == ["best.pth", "latest.pth"]


# Joins the group, runs the collectives a training run ends with (DDP's gradient
# all-reduce, the gathered RNG states, the stop flag) and exits at once: the exit is left
# to the handler that init_distributed registers.
EXIT_WORKER = textwrap.dedent(
    """
    import torch
    from ldexport.engine.distributed import all_reduce_sum, gather_objects, init_distributed

    ctx = init_distributed("cpu")
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 64))
    for _ in range(5):
        model(torch.randn(2, 64)).sum().backward()
        gather_objects({"rng": torch.randn(3)}, ctx)
        all_reduce_sum(torch.ones(1), ctx).item()
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ranks_exit_without_aborting(tmp_path):
    # Without the pause in shutdown_distributed a rank aborted ("terminate called without
    # an active exception") by the 1st, 4th and 5th of these runs in three tries.
    worker = tmp_path / "exit_worker.py"
    worker.write_text(EXIT_WORKER)
    for attempt in range(12):
        env = {**cli_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
        ranks = [
            subprocess.Popen([sys.executable, str(worker)], cwd=REPO, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for r in (0, 1)
        ]
        for rank, process in enumerate(ranks):
            _, stderr = process.communicate(timeout=120)
            assert process.returncode == 0, f"run {attempt}, rank {rank} exited {process.returncode}: {stderr[-2000:]}"
