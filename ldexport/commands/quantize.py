"""``ldexport quantize``: INT8 Q/DQ graph from an exported one, calibrated on images.

Examples::

    ldexport quantize model.onnx -o model.int8.onnx --calib-images data/coco/val2017
    ldexport quantize model.onnx -o model.int8.onnx --calib-images calib/ \\
        --method percentile --num-images 512 --exclude '/detector/head/gfl_cls'

The result runs in ONNX Runtime (``ldexport parity``/``eval --onnx`` check it on the CPU)
and ``ldexport trt model.int8.onnx`` builds it as an explicitly quantized engine. The
decoding, NMS, in-graph preprocessing and the convolution that reads the image stay float.
"""

from __future__ import annotations

from pathlib import Path

import click

from ldexport.errors import LdexportError

_FILE = click.Path(dir_okay=False, path_type=Path)


@click.command("quantize")
@click.argument("onnx_path", metavar="MODEL.onnx", type=_FILE)
@click.option("-o", "--output", type=_FILE, help="Quantized graph to write [MODEL.int8.onnx].")
@click.option(
    "--calib-images", type=click.Path(file_okay=False, path_type=Path), required=True,
    help="Folder of calibration images (read recursively; a few hundred from the deployment's domain).",
)  # fmt: skip
@click.option("--num-images", type=click.IntRange(min=1), help="Calibration images used at most, spread over the folder [128].")
@click.option(
    "--method", type=click.Choice(["minmax", "entropy", "percentile"]),
    help="Calibration: min/max, KL entropy or the 99.999th percentile of |x| [entropy].",
)  # fmt: skip
@click.option("--percentile", type=click.FloatRange(min=0, max=100, min_open=True), help="With --method percentile [99.999].")
@click.option("--exclude", multiple=True, metavar="REGEX", help="Keep the nodes whose name matches float too (repeatable).")
@click.option(
    "--quantize-stem", is_flag=True,
    help="Quantize the convolution that reads the image too (float by default: it costs the most accuracy).",
)  # fmt: skip
def command(
    onnx_path: Path,
    output: Path | None,
    calib_images: Path,
    num_images: int | None,
    method: str | None,
    percentile: float | None,
    exclude: tuple[str, ...],
    quantize_stem: bool,
) -> None:
    """Quantize MODEL.onnx to INT8 (Q/DQ), calibrated on --calib-images."""
    import re

    from ldexport.quantize.qdq import DEFAULT_METHOD, DEFAULT_NUM_IMAGES, DEFAULT_PERCENTILE, QuantizeSettings, quantize_onnx
    from ldexport.io import check_not_an_input, list_images

    for pattern in exclude:
        try:
            re.compile(pattern)
        except re.error as error:
            raise LdexportError(f"--exclude {pattern!r} is not a regular expression: {error}") from None
    if percentile is not None and (method or DEFAULT_METHOD) != "percentile":
        raise LdexportError("--percentile only applies with --method percentile")
    settings = QuantizeSettings(
        method=method or DEFAULT_METHOD,  # type: ignore[arg-type]
        num_images=num_images or DEFAULT_NUM_IMAGES,
        percentile=percentile or DEFAULT_PERCENTILE,
        exclude=exclude,
        quantize_stem=quantize_stem,
    )
    output = output or onnx_path.with_name(f"{onnx_path.stem}.int8.onnx")
    check_not_an_input(output, [onnx_path])
    images = list_images(calib_images, recursive=True)
    result = quantize_onnx(onnx_path, output, images, settings)
    click.echo(
        f"wrote {result.path}: {result.quantized_nodes} nodes quantized (int8, {settings.method} on "
        f"{len(result.images)} images), {result.float_nodes} left float, {result.qdq_nodes} Q/DQ nodes, "
        f"{result.seconds:.1f} s; calibration set sha256 {result.calibration_sha256[:16]}"
    )
