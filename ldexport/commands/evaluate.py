"""``ldexport eval``: COCO box AP of a checkpoint, an ONNX model or a TensorRT engine.

Examples::

    ldexport eval CONFIG CKPT                               # the PyTorch student
    ldexport eval CONFIG --onnx student.onnx                 # in ONNX Runtime (CUDA when installed)
    ldexport eval CONFIG --engine student.engine             # in TensorRT
    ldexport eval CONFIG CKPT --onnx student.onnx --compare  # both, on the export's input contract

Every model goes through the same validation data (the config's ``data`` section) and the
same evaluator. A checkpoint alone is evaluated as training evaluates it (its validation
loader); an exported model is fed by the input contract in its metadata. ``--compare``
runs the checkpoint on the exported model's contract and decoding settings (``test``) too,
so that the AP difference it prints is the numerics' alone. ``--batch`` is the images a
run of every model evaluated, the checkpoint included, alone or compared
(``data.val_batch_size`` when not given; a static model takes only its own batch); the
batch used is printed.
"""

from __future__ import annotations

import dataclasses
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
@click.option(
    "--batch", type=click.IntRange(min=1),
    help="Images a run of each model evaluated, CHECKPOINT alone or compared included "
    "[data.val_batch_size; a static model: its own batch, no other].",
)  # fmt: skip
@click.option("--report", "--out", "report", type=_FILE, help="Write the metrics as JSON (not over an input file).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value (repeatable).")
def command(
    config: Path,
    checkpoint: Path | None,
    onnx_path: Path | None,
    engine: Path | None,
    compare: bool,
    batch: int | None,
    report: Path | None,
    overrides: tuple[str, ...],
) -> None:
    """Evaluate CHECKPOINT, or --onnx MODEL, or --engine ENGINE on CONFIG's validation split."""
    from ldexport.commands.train import setup_logging
    from ldexport.engine.data import load_split, prepare_shapes
    from ldexport.io import atomic_write_text, check_output
    from ldexport.runtime.evaluate import Comparison, evaluate_model
    from ldexport.devices import torch_device
    from ldexport.export.metadata import check_exported_from
    from ldexport.runtime.model import model_files, open_checkpoint, open_engine, open_onnx

    if onnx_path is not None and engine is not None:
        raise LdexportError("give --onnx or --engine, not both")
    exported_path = onnx_path or engine
    if exported_path is None and checkpoint is None:
        raise LdexportError("nothing to evaluate: give CHECKPOINT, --onnx MODEL or --engine ENGINE")
    compare = compare or (checkpoint is not None and exported_path is not None)  # both given: compare them
    if compare and (exported_path is None or checkpoint is None):
        raise LdexportError("--compare needs CHECKPOINT and --onnx MODEL (or --engine ENGINE)")
    if report is not None:
        check_output(report, model_files(onnx=onnx_path, engine=engine, config=config, checkpoint=checkpoint))  # before the work, not after it
    setup_logging()
    cfg = load_config(config, overrides)
    if exported_path is None:
        # the checkpoint alone: training's own evaluation (its loader), --batch images a batch
        from ldexport.engine.run import evaluate_checkpoint

        batch = batch or cfg.data.val_batch_size
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val_batch_size=batch))
        metrics = evaluate_checkpoint(cfg, checkpoint)  # type: ignore[arg-type]
        click.echo(f"{batch} images a batch")
        click.echo(" ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
        if report is not None:
            atomic_write_text(report, json.dumps(metrics, indent=2) + "\n")
            click.echo(f"wrote {report}")
        return
    exported = open_onnx(exported_path) if onnx_path is not None else open_engine(exported_path)
    batch = exported.run_batch(batch, default=cfg.data.val_batch_size)
    prepare_shapes(cfg.data)
    data = load_split(cfg.data, "val")
    results: dict[str, dict[str, float]] = {}
    if compare and checkpoint is not None:
        # the exported model's input contract and decoding settings (its metadata's, which
        # `ldexport onnx --set test.*` may have changed): the difference is the numerics' alone
        same_settings = dataclasses.replace(cfg, test=exported.test_cfg)
        model = open_checkpoint(same_settings, checkpoint, spec=exported.spec, device=torch_device(cfg.train.device))
        info, loaded = exported.info, model.loaded
        assert info is not None and loaded is not None  # an exported model, a checkpoint
        check_exported_from(
            exported.source, (info.checkpoint_sha256, info.weights_sha256), checkpoint, (loaded.checkpoint_sha256, lambda: loaded.weights_sha256)
        )
        results[f"pytorch ({checkpoint.name})"] = evaluate_model(model, data, batch_size=batch, progress=True)
    results[f"{exported.name} ({exported.source.name})"] = evaluate_model(exported, data, batch_size=batch, progress=True)
    names = list(results)
    click.echo(f"{batch} images a batch")
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
