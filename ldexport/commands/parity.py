"""``ldexport parity``: prove that the exported graph computes what the PyTorch student does.

Examples::

    ldexport parity --onnx model.onnx configs/ld_r18.yaml work/latest.pt \\
        --images data/coco/val2017 --max-images 32 --report parity.json
    ldexport parity --onnx model.onnx configs/ld_r18.yaml work/latest.pt --trt model.engine

The reference is the student in PyTorch, decoded with the model's own functions and
``predict`` (thresholds as recorded in the graph's metadata). Inputs: the photographs of
``--images`` resized as deployment would, random images at ``--sizes`` (by default three
sizes and the largest input the contract makes on a dynamic graph, its own size on a
static one, and none on a quantized graph, whose int8 ranges were calibrated on
photographs; ``--sizes ""``: none), and batches of
``--batch`` images. The command prints a table (with a note on what it chose and a warning
when no detection was compared), writes ``--report``, and exits 1 when anything differs.
"""

from __future__ import annotations

from pathlib import Path

import click

from ldexport.config import load_config

_FILE = click.Path(dir_okay=False, path_type=Path)


@click.command("parity")
@click.option("--onnx", "onnx_path", type=_FILE, required=True, help="The exported graph (ldexport onnx).")
@click.argument("config", type=_FILE)
@click.argument("checkpoint", type=_FILE)
@click.option("--images", type=click.Path(file_okay=False, path_type=Path), help="Folder of photographs.")
@click.option(
    "--sizes", metavar="HxW,...",
    help='Random-noise input sizes; --sizes "" runs none. [192x256,320x480,448x352 and the largest input '
    "the graph's contract makes, on a dynamic graph (those an engine's profile takes); "
    "a static graph's own size (it takes no other); none on a quantized graph]",
)
@click.option("--max-images", type=click.IntRange(min=1), default=16, show_default=True, help="Photographs used at most.")
@click.option("--batch", type=click.IntRange(min=1), default=2, show_default=True, help="Images of a batched case (dynamic graphs).")
@click.option("--report", type=_FILE, help="Write the report as JSON (not over an input file).")
@click.option("--trt", "engine", type=_FILE, help="Also compare this TensorRT engine (built from the graph).")
@click.option(
    "--box-atol", type=float,
    help="fp32 tolerance on boxes, pixels, >= 0 [fp32 rounding at the largest stride, at least 1e-3: 4.2e-3 for reg_max 16, stride 128].",
)  # fmt: skip
@click.option("--score-atol", type=float, help="fp32 tolerance on scores, >= 0 [1e-05].")
@click.option(
    "--reference", type=click.Choice(["pytorch", "onnxruntime"]), default="pytorch", show_default=True,
    help="The runner the others are compared with (onnxruntime: the ONNX model is the reference of --trt).",
)  # fmt: skip
@click.option(
    "--precision", type=click.Choice(["auto", "fp32", "int8"]), default="auto", show_default=True,
    help="Whose tolerances judge the graph: auto is int8 for a quantized (Q/DQ) graph, else fp32.",
)  # fmt: skip
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value (repeatable).")
def command(
    onnx_path: Path,
    config: Path,
    checkpoint: Path,
    images: Path | None,
    sizes: str | None,
    max_images: int,
    batch: int,
    report: Path | None,
    engine: Path | None,
    box_atol: float | None,
    score_atol: float | None,
    reference: str,
    precision: str,
    overrides: tuple[str, ...],
) -> None:
    """Compare the ONNX graph (and a TensorRT engine) with the student of CONFIG + CHECKPOINT."""
    from ldexport.export.metadata import read_onnx_info
    from ldexport.export.options import parse_size
    from ldexport.io import check_output, list_images
    from ldexport.parity.report import format_table, write_json
    from ldexport.runtime.model import model_files
    from ldexport.runtime.parity import parity_session

    if report is not None:
        check_output(report, [*model_files(onnx=onnx_path, engine=engine, config=config, checkpoint=checkpoint), images])  # before the work, not after it
    info = read_onnx_info(onnx_path)
    cfg = load_config(config, overrides)
    random_sizes = None if sizes is None else [parse_size(size) for size in sizes.split(",") if size.strip()]
    paths = list_images(images, max_images=max_images) if images is not None else []
    result = parity_session(
        cfg,
        checkpoint,
        onnx_path,
        info=info,
        engine=engine,
        reference=reference,
        images=paths,
        sizes=random_sizes,
        batch=batch,
        box_atol=box_atol,
        score_atol=score_atol,
        precision=precision,  # type: ignore[arg-type]
    )
    click.echo(format_table(result))
    if report is not None:
        write_json(result, report, onnx=str(onnx_path), checkpoint=str(checkpoint), config=str(config), engine=str(engine) if engine else None)
        click.echo(f"wrote {report}")
    if not result.passed:
        click.get_current_context().exit(1)
