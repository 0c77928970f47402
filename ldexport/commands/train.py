"""``ldexport train CONFIG [--teacher CKPT] [--work-dir DIR] [--resume] [--set key=value ...]``.

Runs in one process, or in every process ``torchrun`` starts::

    torchrun --nproc_per_node 8 -m ldexport.cli train configs/ld_r18-gflv1-r101_fpn_1x_coco.yaml \\
        --teacher checkpoints/gfl_r101_fpn_ms-2x_coco.pth
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from ldexport.config import load_config


@click.command("train")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--teacher",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Teacher weights (ldexport or mmdet checkpoint); without one, plain GFL training.",
)
@click.option(
    "--work-dir", type=click.Path(file_okay=False, path_type=Path), help="Checkpoints and logs [work_dirs/CONFIG_NAME]."
)
@click.option("--resume", is_flag=True, help="Continue the run in the work dir from its latest.pth.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. train.epochs=1 (repeatable).",
)
def command(
    config: Path, teacher: Path | None, work_dir: Path | None, resume: bool, overrides: tuple[str, ...]
) -> None:
    """Train a student with Localization Distillation (or plain GFL without --teacher)."""
    from ldexport.engine.run import train

    resolved = load_config(config, overrides)
    if teacher is not None:
        resolved.distill.teacher_checkpoint = str(teacher)
    setup_logging()
    result = train(resolved, work_dir=work_dir or Path("work_dirs") / config.stem, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        done = "interrupted" if result.interrupted else "finished"
        resume_hint = "; continue with --resume" if result.interrupted else ""
        click.echo(f"{done} after {result.iteration} iterations; latest checkpoint {result.latest_checkpoint}{resume_hint}")
        if result.best_checkpoint is not None:
            click.echo(f"best AP {result.best_ap:.4f}: {result.best_checkpoint}")


def setup_logging() -> None:
    """Engine messages to stdout on rank 0 (stderr is kept for the one-line errors)."""
    engine = logging.getLogger("ldexport")
    if not engine.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        engine.addHandler(handler)
    engine.setLevel(logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)
