"""What a run shows while it trains: a progress bar, a JSON-lines log, TensorBoard.

Only rank 0 builds a live :class:`Monitor`; the other ranks get one with
``enabled=False`` whose methods do nothing. The JSON-lines log (``log.jsonl`` in the
work dir; on resume, the records past the checkpoint are dropped and the rest appended
to) has one object a line::

    {"kind": "train", "epoch": 1, "iteration": 50, "lr": 0.0099, "loss": 1.9,
     "loss_cls": ..., "images_per_s": 31.2, "eta_s": 5400.0, "time": 1732400000.0}
    {"kind": "eval", "epoch": 1, "iteration": 7330, "AP": 0.31, "AP50": ..., ...}

Epochs are counted from 1 in logs and from 0 in code.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ldexport.io import atomic_write_text

logger = logging.getLogger("ldexport.engine")


class Monitor:
    """Progress bar, JSON-lines log and (when importable) TensorBoard scalars.

    Args:
        work_dir: where ``log.jsonl`` and ``tensorboard/`` go.
        total_iters: optimizer steps of the whole run (for the ETA).
        enabled: ``False`` on ranks other than 0.
        tensorboard: write TensorBoard scalars when ``torch.utils.tensorboard`` imports.
    """

    def __init__(self, work_dir: Path, *, total_iters: int, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.total_iters = total_iters
        self.log_path = Path(work_dir) / "log.jsonl"
        self._bar: tqdm | None = None
        self._writer = _tensorboard_writer(Path(work_dir) / "tensorboard") if enabled and tensorboard else None
        self._seconds_per_iter: float | None = None

    def start_epoch(self, epoch: int, epochs: int, iters_per_epoch: int, done: int) -> None:
        """Opens the progress bar of an epoch (``done`` steps of it already made)."""
        if not self.enabled:
            return
        # disable=None: no bar when stderr is not a terminal (logs, CI, tests).
        self._bar = tqdm(
            total=iters_per_epoch, initial=done, desc=f"epoch {epoch + 1}/{epochs}", disable=None, dynamic_ncols=True
        )

    def step(self, iteration: int, seconds: float, images: int, losses: Mapping[str, float], lr: float) -> None:
        """Advances the bar after one optimizer step.

        Args:
            iteration: steps done so far in the run.
            seconds: wall time of this step.
            images: images of this step over all ranks.
            losses: the step's loss terms, averaged over ranks.
            lr: the rate the step used.
        """
        if not self.enabled:
            return
        # An exponential average keeps the ETA steady through slow first steps.
        previous = self._seconds_per_iter
        self._seconds_per_iter = seconds if previous is None else 0.9 * previous + 0.1 * seconds
        if self._bar is not None:
            shown = {_short(k): f"{v:.4f}" for k, v in losses.items()}
            shown.update(lr=f"{lr:.2e}", img_s=f"{images / max(seconds, 1e-9):.1f}", eta=_duration(self.eta(iteration)))
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(1)

    def eta(self, iteration: int) -> float:
        """Seconds left for the run's remaining steps."""
        return (self.total_iters - iteration) * (self._seconds_per_iter or 0.0)

    def end_epoch(self) -> None:
        """Closes the epoch's progress bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def log_train(
        self, epoch: int, iteration: int, losses: Mapping[str, float], lr: float, images_per_s: float
    ) -> None:
        """Writes one training record (losses averaged over the last interval)."""
        record = {"kind": "train", "epoch": epoch + 1, "iteration": iteration, "lr": lr, **losses}
        record.update(images_per_s=images_per_s, eta_s=self.eta(iteration))
        self._write(record, "train")
        if self.enabled and (self._bar is None or self._bar.disable):  # no bar (not a terminal): a line instead
            terms = " ".join(f"{_short(k)} {v:.4f}" for k, v in losses.items())
            self.message(
                f"iteration {iteration}/{self.total_iters} (epoch {epoch + 1}): {terms}, lr {lr:.2e}, "
                f"{images_per_s:.1f} img/s, eta {_duration(self.eta(iteration))}"
            )

    def log_eval(self, epoch: int, iteration: int, metrics: Mapping[str, float]) -> None:
        """Writes one evaluation record and prints it."""
        self._write({"kind": "eval", "epoch": epoch + 1, "iteration": iteration, **metrics}, "val")
        if self.enabled:
            self.message(f"epoch {epoch + 1} evaluation: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def message(self, text: str) -> None:
        """Prints a line without breaking the progress bar."""
        if self.enabled:
            if self._bar is not None and not self._bar.disable:
                self._bar.write(text)
            else:
                logger.info(text)

    def rewind(self, iteration: int, evaluated: int) -> None:
        """Drops the log records a resumed run will write again: training records past
        ``iteration`` (the checkpoint's) and evaluation records past ``evaluated`` (its
        last settled evaluation), left by a run killed before its next checkpoint."""
        if not self.enabled or not self.log_path.is_file():
            return
        lines = self.log_path.read_text().splitlines()
        records = [_parse(line) for line in lines]
        kept = [line for line, record in zip(lines, records) if record is not None and _kept(record, iteration, evaluated)]
        if len(kept) != len(lines):
            atomic_write_text(self.log_path, "".join(line + "\n" for line in kept))

    def close(self) -> None:
        """Closes the bar and flushes TensorBoard."""
        self.end_epoch()
        if self._writer is not None:
            self._writer.close()

    def _write(self, record: dict[str, Any], group: str) -> None:
        if not self.enabled:
            return
        record["time"] = time.time()
        with open(self.log_path, "a") as file:
            file.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "iteration", "time"):
                    self._writer.add_scalar(f"{group}/{key}", value, record["iteration"])


def read_log(work_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a work dir's ``log.jsonl`` (only those of ``kind`` when given)."""
    path = Path(work_dir) / "log.jsonl"
    if not path.is_file():
        return []
    records = [_parse(line) for line in path.read_text().splitlines()]
    return [r for r in records if r is not None and (kind is None or r.get("kind") == kind)]


def _parse(line: str) -> dict[str, Any] | None:
    """One record, or ``None`` for a blank line or one a killed run left half-written."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _kept(record: dict[str, Any], iteration: int, evaluated: int) -> bool:
    last = evaluated if record.get("kind") == "eval" else iteration
    return int(record.get("iteration", 0)) <= last


def _tensorboard_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(folder))


def _short(name: str) -> str:
    return name[len("loss_"):] if name.startswith("loss_") else name


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"
