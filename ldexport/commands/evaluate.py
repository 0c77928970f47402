"""``ldexport eval CONFIG CKPT [--set key=value ...] [--out metrics.json]``: COCO box AP."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ldexport.config import load_config


@click.command("eval")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value (repeatable).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the metrics as JSON.")
def command(config: Path, checkpoint: Path, overrides: tuple[str, ...], out: Path | None) -> None:
    """Evaluate a checkpoint (ldexport or mmdet) on the config's validation split."""
    from ldexport.commands.train import setup_logging
    from ldexport.engine.run import evaluate_checkpoint

    setup_logging()
    metrics = evaluate_checkpoint(load_config(config, overrides), checkpoint)
    click.echo(" ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
    if out is not None:
        out.write_text(json.dumps(metrics, indent=2) + "\n")
