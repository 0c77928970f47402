"""``ldexport onnx``: export a trained student to ONNX with the box decoding in the graph.

Examples::

    ldexport onnx configs/ld_r18.yaml work/latest.pt -o model.onnx
    ldexport onnx configs/ld_r18.yaml ld_r18_mmdet.pth -o model.onnx --dynamic --nms
    ldexport onnx configs/ld_r18.yaml work/latest.pt -o model.onnx --shape 800x1344 \\
        --nms-plugin efficient --preprocess

The graph's outputs are ``boxes [N, A, 4]`` (xyxy input pixels) and ``scores [N, A, C]``,
or with ``--nms`` ``num_dets``, ``det_boxes``, ``det_scores``, ``det_labels``. The
TensorRT readiness report is printed after the export (``--no-trt-check`` skips it).
"""

from __future__ import annotations

from pathlib import Path

import click

from ldexport.config import load_config
from ldexport.errors import LdexportError

_FILE = click.Path(dir_okay=False, path_type=Path)


@click.command("onnx")
@click.argument("config", type=_FILE)
@click.argument("checkpoint", type=_FILE)
@click.option("-o", "--output", type=_FILE, required=True, help="ONNX file to write.")
@click.option("--dynamic", is_flag=True, help="Dynamic batch, height and width (anchor points computed in the graph).")
@click.option(
    "--shape", metavar="HxW",
    help="Input size; with --dynamic the typical one (traced at, TensorRT's opt). "
    "[640x640; with --dynamic a landscape image at the config's data.scale: 800x1344 for (1333, 800)]",
)
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Batch; with --dynamic the typical one.")
@click.option("--max-shape", metavar="HxW", help="With --dynamic: the TensorRT profile's largest size [the largest the config's data.scale makes: 1344x1344 for (1333, 800)].")
@click.option("--max-batch", type=click.IntRange(min=1), help="With --dynamic: the TensorRT profile's largest batch [--batch].")
@click.option("--nms", is_flag=True, help="NMS in the graph, as ONNX NonMaxSuppression.")
@click.option("--nms-plugin", type=click.Choice(["efficient"]), help="NMS as TensorRT's EfficientNMS_TRT plugin (implies --nms).")
@click.option("--preprocess", is_flag=True, help="Take uint8 BGR [N, H, W, 3]; normalise in the graph.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (17 to 20).")
@click.option("--simplify/--no-simplify", default=True, show_default=True, help="Simplify the graph with onnxslim (when installed); --no-simplify keeps it as traced.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value (repeatable).")
@click.option("--no-trt-check", is_flag=True, help="Skip the TensorRT readiness check.")
@click.option("--trt-version", default="10.13", show_default=True, help="TensorRT version the readiness check is for.")
def command(
    config: Path,
    checkpoint: Path,
    output: Path,
    dynamic: bool,
    shape: str | None,
    batch: int,
    max_shape: str | None,
    max_batch: int | None,
    nms: bool,
    nms_plugin: str | None,
    preprocess: bool,
    opset: int,
    simplify: bool,
    overrides: tuple[str, ...],
    no_trt_check: bool,
    trt_version: str,
) -> None:
    """Export the student of CONFIG with weights CHECKPOINT (ldexport or mmdet) to ONNX."""
    from ldexport.data.input_spec import typical_input_size
    from ldexport.export.options import ExportOptions, parse_size
    from ldexport.export.student import export_student
    from ldexport.io import check_not_an_input
    from ldexport.trt.onnx_ops import parse_trt_version

    check_not_an_input(output, [config, checkpoint])
    if not dynamic and (max_shape is not None or max_batch is not None):
        given = " and ".join(name for name, value in (("--max-shape", max_shape), ("--max-batch", max_batch)) if value is not None)
        verb = "apply" if " and " in given else "applies"
        raise LdexportError(f"{given} only {verb} with --dynamic (a static graph takes --shape and --batch)")
    if not no_trt_check:
        parse_trt_version(trt_version)  # before the export, not after it
    cfg = load_config(config, overrides)
    if shape is not None:
        height, width = parse_size(shape)
    else:
        height, width = typical_input_size(cfg.data.scale) if dynamic else (640, 640)
    max_height, max_width = parse_size(max_shape) if max_shape is not None else (None, None)
    options = ExportOptions(
        height=height,
        width=width,
        batch=batch,
        dynamic=dynamic,
        max_height=max_height,
        max_width=max_width,
        max_batch=max_batch,
        nms="efficient" if nms_plugin else ("onnx" if nms else "none"),
        preprocess=preprocess,
        opset=opset,
        simplify=simplify,
    )
    exported = export_student(cfg, checkpoint, output, options)
    info = exported.info
    low, opt, high = info.min_shape, info.opt_shape, info.max_shape
    sizes = f"{_shape(low)} .. {_shape(high)} (opt {_shape(opt)})" if dynamic else _shape(opt)
    click.echo(
        f"wrote {output}: images {sizes} {'uint8 BGR' if preprocess else 'float32 RGB'} -> "
        f"{', '.join(exported.output_names)}; NMS {options.nms}; opset {opset}"
    )
    if not no_trt_check:
        _print_readiness(output, trt_version)


def _print_readiness(path: Path, trt_version: str) -> None:
    """Prints the TensorRT readiness report of the written graph (informational)."""
    try:
        from ldexport.trt.readiness import check_onnx, format_problems
    except ModuleNotFoundError as error:
        if error.name != "ldexport.trt.readiness":
            raise
        click.echo("TensorRT readiness check skipped: ldexport.trt.readiness is not installed")
        return
    import onnx

    problems = check_onnx(onnx.load(str(path)), trt_version=trt_version)
    click.echo(format_problems(problems, trt_version=trt_version))


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))
