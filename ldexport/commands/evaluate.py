"""``ldexport eval``: COCO box AP of a checkpoint, an ONNX model or a TensorRT engine.

Examples::

    ldexport eval CONFIG CKPT                               # the PyTorch student
    ldexport eval CONFIG --onnx student.onnx                 # in ONNX Runtime (CUDA when installed)
    ldexport eval CONFIG --engine student.engine             # in TensorRT
    ldexport eval CONFIG CKPT --onnx student.onnx --compare  # both, on the export's input contract

Every model goes through the same validation data (the config's ``data`` section) and the
same evaluator. A checkpoint alone is evaluated as training evaluates it (its validation
loader, ``data.val_batch_size`` images a batch); an exported model is fed by the input
contract in its metadata, ``--batch`` images a run. ``--compare`` runs the checkpoint on
the exported model's contract and batches too, so that the AP difference it prints is the
numerics' alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ldexport.config import load_config
from ldexport.errors import LdexportError

_FILE = click.Path(dir_okay=False, path_type=Path)


@click.command("eval")
@click.argument("config", type=_FILE)
@click.argument("checkpoint", type=_FILE, required=False)
@click.option("--onnx", "onnx_path", type=_FILE, help="Evaluate this ONNX model (ldexport onnx) in ONNX Runtime.")
@click.option("--engine", type=_FILE, help="Evaluate this TensorRT engine (ldexport trt).")
@click.option("--compare", is_flag=True, help="Also evaluate CHECKPOINT on the same inputs and print the AP difference (implied by CHECKPOINT with --onnx/--engine).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Images a run (dynamic models).")
@click.option("--report", "--out", "report", type=_FILE, help="Write the metrics as JSON.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value (repeatable).")
def command(
    config: Path,
    checkpoint: Path | None,
    onnx_path: Path | None,
    engine: Path | None,
    compare: bool,
    batch: int,
    report: Path | None,
    overrides: tuple[str, ...],
) -> None:
    """Evaluate CHECKPOINT, or --onnx MODEL, or --engine ENGINE on CONFIG's validation split."""
    from ldexport.commands.train import setup_logging
    from ldexport.engine.data import load_split, prepare_shapes
    from ldexport.io import atomic_write_text
    from ldexport.runtime.evaluate import Comparison, evaluate_model
    from ldexport.runtime.model import open_checkpoint, open_engine, open_onnx

    if onnx_path is not None and engine is not None:
        raise LdexportError("give --onnx or --engine, not both")
    exported_path = onnx_path or engine
    if exported_path is None and checkpoint is None:
        raise LdexportError("nothing to evaluate: give CHECKPOINT, --onnx MODEL or --engine ENGINE")
    compare = compare or (checkpoint is not None and exported_path is not None)  # both given: compare them
    if compare and (exported_path is None or checkpoint is None):
        raise LdexportError("--compare needs CHECKPOINT and --onnx MODEL (or --engine ENGINE)")
    setup_logging()
    cfg = load_config(config, overrides)
    if exported_path is None:
        # the checkpoint alone: training's own evaluation (its loader, val_batch_size)
        from ldexport.engine.run import evaluate_checkpoint

        metrics = evaluate_checkpoint(cfg, checkpoint)  # type: ignore[arg-type]
        click.echo(" ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
        if report is not None:
            atomic_write_text(report, json.dumps(metrics, indent=2) + "\n")
        return
    exported = open_onnx(exported_path) if onnx_path is not None else open_engine(exported_path)
    prepare_shapes(cfg.data)
    data = load_split(cfg.data, "val")
    results: dict[str, dict[str, float]] = {}
    if compare and checkpoint is not None:
        model = open_checkpoint(cfg, checkpoint, spec=exported.spec, device=_device(cfg.train.device))
        results[f"pytorch ({checkpoint.name})"] = evaluate_model(model, data, batch_size=batch, progress=True)
    results[f"{exported.name} ({exported.source.name})"] = evaluate_model(exported, data, batch_size=batch, progress=True)
    names = list(results)
    for name, metrics in results.items():
        click.echo(f"{name:<40} " + " ".join(f"{key} {value:.4f}" for key, value in metrics.items()))
    data_out: dict = {name: metrics for name, metrics in results.items()}
    if compare:
        comparison = Comparison(results[names[0]], results[names[1]], names[0], names[1])
        click.echo(f"{'difference (exported - checkpoint)':<40} " + " ".join(f"{key} {value:+.4f}" for key, value in comparison.difference.items()))
        data_out = comparison.to_json()
    if report is not None:
        atomic_write_text(report, json.dumps(data_out, indent=2) + "\n")
        click.echo(f"wrote {report}")


def _device(setting: str) -> str:
    """``train.device`` as a device for evaluation: ``auto`` is CUDA when present."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting
