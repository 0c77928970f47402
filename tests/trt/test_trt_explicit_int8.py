"""``ldexport trt`` on a Q/DQ graph: explicit INT8, no calibrator.

The command's checks run anywhere; the engine builds need a real TensorRT and a CUDA GPU
and are skipped without them (``-m trt`` selects them).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))

from export_helpers import COCO128_IMAGES, export_tiny, tiny_detector  # noqa: E402

from ldexport.cli import main  # noqa: E402
from ldexport.io import list_images  # noqa: E402
from ldexport.quantize.qdq import QuantizeSettings, quantize_onnx  # noqa: E402
from ldexport.trt.backend import backend_missing_reason  # noqa: E402

_MISSING = backend_missing_reason()


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, Path]:
    if not COCO128_IMAGES.is_dir():
        pytest.skip(f"coco128 not found at {COCO128_IMAGES}")
    folder = tmp_path_factory.mktemp("explicit")
    fp32 = export_tiny(tiny_detector(), folder / "tiny.onnx", dynamic=True)
    photos = list_images(COCO128_IMAGES)[:8]
    int8 = quantize_onnx(fp32, folder / "tiny.int8.onnx", photos, QuantizeSettings(method="minmax", num_images=8), progress=False).path
    return {"fp32": fp32, "int8": int8, "folder": folder}


def _invoke(*args: object):
    return CliRunner().invoke(main, ["trt", *map(str, args)], catch_exceptions=False)


def _one_line(result, message: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_int8_flags_follow_the_graph(graphs: dict[str, Path]) -> None:
    _one_line(_invoke(graphs["fp32"], "--int8"), "run `ldexport quantize")
    _one_line(_invoke(graphs["int8"], "--int8-implicit", "--calib-images", graphs["folder"]), "already quantized")
    _one_line(_invoke(graphs["int8"], "--calib-images", graphs["folder"]), "only apply with --int8-implicit")


def test_quantized_graph_is_ready_for_tensorrt(graphs: dict[str, Path]) -> None:
    result = _invoke(graphs["int8"], "--check-only")
    assert result.exit_code == 0, result.output
    assert "ready for TensorRT" in result.output


def _images(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, 128, 160)).astype(np.float32)


@pytest.mark.trt
@pytest.mark.skipif(_MISSING is not None, reason=f"needs a real TensorRT and a CUDA GPU: {_MISSING}")
@pytest.mark.parametrize("strongly_typed", [False, True], ids=["int8+fp16", "strongly-typed"])
def test_explicit_int8_engine_matches_onnxruntime_int8(graphs: dict[str, Path], strongly_typed: bool) -> None:
    import json

    from ldexport.parity.runners import OnnxRuntimeRunner
    from ldexport.trt.build import BuildOptions, build_engine
    from ldexport.trt.runner import TensorRTRunner

    engine = graphs["folder"] / f"tiny_{strongly_typed}.engine"
    result = build_engine(graphs["int8"], engine, BuildOptions(strongly_typed=strongly_typed))
    sidecar = json.loads(result.sidecar_path.read_text())
    assert sidecar["precision"]["int8"] and sidecar["precision"]["quantization"] == "explicit (Q/DQ)"
    feeds = {"images": _images(0)}
    got, want = TensorRTRunner(engine).infer(feeds), OnnxRuntimeRunner(graphs["int8"]).infer(feeds)
    # the same scales: only rounding order (and fp16 outside the int8 layers) differ
    assert np.abs(got["scores"] - want["scores"]).mean() < 5e-3
    assert np.abs(got["boxes"] - want["boxes"]).mean() < 0.5
