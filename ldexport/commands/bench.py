"""``ldexport bench``: latency and throughput of a checkpoint, an ONNX model or an engine.

Examples::

    ldexport bench --onnx student.onnx --shape 640x640 --batch 1
    ldexport bench --engine student.engine --shape 640x640,800x1344 --batch 1 --batch 8
    ldexport bench --config CONFIG --checkpoint CKPT --shape 640x640 --device cuda --dtype bf16

After ``--warmup`` untimed calls, ``--runs`` calls are timed: p50/p90/p99 latency and
images/s per shape and batch, a table and ``--report bench.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

_FILE = click.Path(dir_okay=False, path_type=Path)


@click.command("bench")
@click.option("--onnx", "onnx_path", type=_FILE, help="An ONNX model (ldexport onnx), run in ONNX Runtime.")
@click.option("--engine", type=_FILE, help="A TensorRT engine (ldexport trt).")
@click.option("--config", type=_FILE, help="With --checkpoint: the PyTorch student (eager).")
@click.option("--checkpoint", type=_FILE, help="With --config: the student's weights.")
@click.option(
    "--shape", "shapes", metavar="HxW[,HxW...]",
    help="Input sizes [a static model's own; else a landscape photograph at its contract's scale: 800x1344 for (1333, 800)].",
)
@click.option("--batch", "batches", type=click.IntRange(min=1), multiple=True, help="Batch sizes (repeatable) [1, or a static model's].")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed calls first.")
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True, help="Timed calls.")
@click.option(
    "--device", metavar="DEVICE",
    help="PyTorch: auto, cpu, cuda or cuda:N [cpu]; ONNX: cpu or cuda [every installed provider, CUDA first]; not for an engine.",
)  # fmt: skip
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), help="PyTorch only: autocast precision [fp32].")
@click.option("--report", type=_FILE, help="Write the results as JSON (not over an input file).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a value of --config (repeatable).")
def command(
    onnx_path: Path | None,
    engine: Path | None,
    config: Path | None,
    checkpoint: Path | None,
    shapes: str | None,
    batches: tuple[int, ...],
    warmup: int,
    runs: int,
    device: str | None,
    dtype: str | None,
    report: Path | None,
    overrides: tuple[str, ...],
) -> None:
    """Time one model: warm-up, then p50/p90/p99 latency and images/s per shape and batch."""
    from ldexport.export.options import parse_size
    from ldexport.io import atomic_write_text, check_output
    from ldexport.runtime.bench import bench_model, format_results
    from ldexport.runtime.model import model_files, open_model

    if report is not None:
        check_output(report, model_files(onnx=onnx_path, engine=engine, config=config, checkpoint=checkpoint))  # before the work, not after it
    sizes = [parse_size(text) for text in shapes.split(",") if text.strip()] if shapes is not None else []
    model = open_model(onnx=onnx_path, engine=engine, config=config, checkpoint=checkpoint, overrides=overrides, device=device, dtype=dtype)
    sizes = sizes or [model.spec.typical_input()]
    batch_sizes = list(batches) or [model.batch_size or 1]
    results = [
        bench_model(model, height, width, batch=batch, warmup=warmup, runs=runs) for height, width in sizes for batch in batch_sizes
    ]
    click.echo(format_results(results))
    if report is not None:
        atomic_write_text(report, json.dumps([result.to_json() for result in results], indent=2) + "\n")
        click.echo(f"wrote {report}")
