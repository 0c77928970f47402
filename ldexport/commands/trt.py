"""``ldexport trt``: check an ONNX graph for TensorRT, then build an engine from it.

Examples::

    ldexport trt model.onnx --check-only
    ldexport trt model.onnx -o model.engine --fp16 \\
        --min 1x3x320x320 --opt 1x3x640x640 --max 1x3x1024x1024
    ldexport quantize model.onnx -o model.int8.onnx --calib-images data/calib
    ldexport trt model.int8.onnx                      # explicit INT8: the graph's Q/DQ scales
    ldexport trt model.onnx -o model.int8.engine --int8-implicit \\
        --calib-images data/calib --calib-cache model.calib   # TensorRT's deprecated calibrator

The readiness report is always printed first. ``--check-only`` exits 0 when the graph is
ready and 1 when it is not, on any machine. Without a real TensorRT or a CUDA GPU the
command prints the report and then exits 1 saying so.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ldexport.errors import LdexportError

if TYPE_CHECKING:
    import onnx

DEFAULT_TRT_VERSION = "10.13"


_SHAPE = "[NAME:]NxCxHxW"
_FILE = click.Path(path_type=Path)


@click.command("trt")
@click.argument("onnx_path", metavar="MODEL.onnx", type=_FILE)
@click.option("-o", "--output", type=_FILE, help="Engine to write, and its .json sidecar [MODEL.engine]; not over an input.")
@click.option("--fp16", is_flag=True, help="Allow fp16 kernels.")
@click.option(
    "--int8", is_flag=True,
    help="INT8 engine: the graph must be quantized (ldexport quantize); a Q/DQ graph is built as int8 without it.",
)  # fmt: skip
@click.option(
    "--int8-implicit", is_flag=True,
    help="INT8 of a float graph by TensorRT's calibrator (deprecated since TensorRT 10.1); needs --calib-images or --calib-cache.",
)  # fmt: skip
@click.option("--strongly-typed", is_flag=True, help="Take every precision from the graph (recommended by TensorRT for Q/DQ graphs).")
@click.option("--calib-images", type=_FILE, help="Folder of calibration images (--int8-implicit).")
@click.option("--calib-cache", type=_FILE, help="Calibration cache, read and written (--int8-implicit).")
@click.option(
    "--calib-max-images", type=click.IntRange(min=1), default=512, show_default=True,
    help="Calibrate on the first N images of --calib-images at most (--int8-implicit).",
)  # fmt: skip
@click.option("--min", "min_shapes", multiple=True, metavar=_SHAPE, help="Smallest input shape.")
@click.option("--opt", "opt_shapes", multiple=True, metavar=_SHAPE, help="Shape to tune for.")
@click.option("--max", "max_shapes", multiple=True, metavar=_SHAPE, help="Largest input shape.")
@click.option(
    "--workspace", type=click.FloatRange(min=0, min_open=True), metavar="GiB", help="Workspace limit."
)
@click.option("--timing-cache", type=_FILE, help="Timing cache, read and written.")
@click.option(
    "--decode-precision",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="Precision of the decode/ layers in fp16/int8 engines.",
)
@click.option("--trt-version", help="TensorRT version to check for [installed one, else 10.13].")
@click.option("--check-only", is_flag=True, help="Only run the readiness check; exit 1 if not ready.")
@click.option("--device", type=click.IntRange(min=0), default=0, show_default=True, help="CUDA device.")
@click.option("--verbose", is_flag=True, help="Show TensorRT's INFO log.")
def command(
    onnx_path: Path,
    output: Path | None,
    fp16: bool,
    int8: bool,
    int8_implicit: bool,
    strongly_typed: bool,
    calib_images: Path | None,
    calib_cache: Path | None,
    calib_max_images: int,
    min_shapes: tuple[str, ...],
    opt_shapes: tuple[str, ...],
    max_shapes: tuple[str, ...],
    workspace: float | None,
    timing_cache: Path | None,
    decode_precision: str,
    trt_version: str | None,
    check_only: bool,
    device: int,
    verbose: bool,
) -> None:
    """Check MODEL.onnx for TensorRT and build an engine from it."""
    calib_max_given = click.get_current_context().get_parameter_source("calib_max_images") != click.core.ParameterSource.DEFAULT
    if (calib_images or calib_cache or calib_max_given) and not int8_implicit:
        raise LdexportError(
            "--calib-images/--calib-cache/--calib-max-images only apply with --int8-implicit (a Q/DQ graph carries its own scales)"
        )
    if int8_implicit and calib_images is None and (calib_cache is None or not calib_cache.is_file()):
        raise LdexportError("--int8-implicit needs --calib-images DIR (or an existing --calib-cache file)")
    from ldexport.quantize.graph import is_quantized
    from ldexport.trt.backend import backend_missing_reason, tensorrt_missing_reason
    from ldexport.trt.problem import format_problems, has_errors, summary
    from ldexport.trt.profile import profile_from_args
    from ldexport.trt.readiness import check_onnx

    model = _load_onnx(onnx_path)
    if not check_only:
        from ldexport.io import check_output
        from ldexport.trt.sidecar import sidecar_path

        engine_path = output or onnx_path.with_suffix(".engine")
        for written in (engine_path, sidecar_path(engine_path)):
            check_output(written, [onnx_path, calib_images, calib_cache, timing_cache])  # before the work, not after it
    quantized = is_quantized(model)
    if int8 and not quantized:
        raise LdexportError(
            f"--int8 builds a quantized graph and {onnx_path} is float: run `ldexport quantize {onnx_path} "
            "--calib-images DIR` first (or --int8-implicit --calib-images DIR for TensorRT's deprecated calibrator)"
        )
    if int8_implicit and quantized:
        raise LdexportError(f"{onnx_path} is already quantized (Q/DQ): build it without --int8-implicit")
    profile = profile_from_args(model, min_shapes, opt_shapes, max_shapes)
    if trt_version is None:
        trt_version = DEFAULT_TRT_VERSION
        if tensorrt_missing_reason() is None:
            import tensorrt

            trt_version = tensorrt.__version__
    problems = check_onnx(model, trt_version=trt_version, profile=profile)
    click.echo(format_problems(problems, trt_version=trt_version))
    verdict = f"{onnx_path} is not ready for TensorRT {trt_version} ({summary(problems)})"
    if check_only:
        if has_errors(problems):
            raise LdexportError(verdict)
        return
    reason = backend_missing_reason()
    if reason is not None:
        extra = f"; besides, {verdict}" if has_errors(problems) else ""
        raise LdexportError(
            f"cannot build an engine: TensorRT/CUDA is not available: {reason}{extra}"
        )
    if has_errors(problems):
        raise LdexportError(verdict)

    from ldexport.trt.build import BuildOptions, build_engine

    options = BuildOptions(
        fp16=fp16,
        int8=int8_implicit,
        strongly_typed=strongly_typed,
        calib_images=calib_images,
        calib_cache=calib_cache,
        calib_max_images=calib_max_images,
        profile=profile,
        workspace_gib=workspace,
        timing_cache=timing_cache,
        decode_precision="fp16" if decode_precision == "fp16" else "fp32",
        check=False,  # done above, with the report printed
        device=device,
        verbose=verbose,
    )
    result = build_engine(onnx_path, engine_path, options)
    click.echo(f"wrote {result.engine_path} and {result.sidecar_path}")
    if quantized:
        kind = "every type from the graph" if strongly_typed else "int8 where the graph quantizes, fp16 allowed elsewhere"
        click.echo(f"explicit INT8 (Q/DQ, no calibration): {kind}")
    if (fp16 or int8_implicit or quantized) and not strongly_typed:
        click.echo(f"decode layers kept in {decode_precision}: {len(result.decode_layers)}")


def _load_onnx(path: Path) -> onnx.ModelProto:
    try:
        from ldexport.trt.readiness import read_onnx
    except ModuleNotFoundError as error:
        if error.name != "onnx":
            raise
        raise LdexportError("the onnx package is missing: pip install 'ldexport[onnx]'") from None
    return read_onnx(path)
