"""``ldexport trt`` through the real click group: --check-only, and no TensorRT/CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from ldexport.cli import main
from ldexport.trt.backend import backend_missing_reason


def _topk_onnx(path: Path, k: int) -> Path:
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="pre_nms_topk")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8000])],
        [
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, k]),
            helper.make_tensor_value_info("i", TensorProto.INT64, [1, k]),
        ],
        initializer=[numpy_helper.from_array(np.array([k], np.int64), "k")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, ["trt", *args])


def test_check_only_passes_on_a_ready_export(tiny_onnx: Path) -> None:
    result = _invoke(str(tiny_onnx), "--check-only", "--trt-version", "10.13")
    assert result.exit_code == 0, result.output
    assert "ready for TensorRT 10.13 (no problems found)" in result.stdout
    assert result.stderr == ""


def test_check_only_fails_with_the_report_and_one_line(tmp_path: Path) -> None:
    path = _topk_onnx(tmp_path / "topk.onnx", 5000)
    result = _invoke(str(path), "--check-only", "--trt-version", "10.13")
    assert result.exit_code == 1
    assert "error [topk-k] TopK 'pre_nms_topk'" in result.stdout
    assert "fix:" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ldexport: error: ")
    assert "not ready for TensorRT 10.13 (1 error" in lines[0]


def test_check_only_uses_the_shape_arguments(tiny_onnx: Path) -> None:
    # The graph fixes 3 channels; a profile with 4 is outside it.
    args = ["--min", "1x4x32x32", "--opt", "1x4x64x64", "--max", "1x4x96x96"]
    result = _invoke(str(tiny_onnx), "--check-only", *args)
    assert result.exit_code == 1
    assert "error [profile] graph input 'images'" in result.stdout
    ok = ["--min", "images:1x3x32x32", "--opt", "images:1x3x64x64", "--max", "images:1x3x96x96"]
    assert _invoke(str(tiny_onnx), "--check-only", *ok).exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min", "1x3x32x32"], "give --min, --opt and --max together"),
        (["--min", "1x3xbadx32", "--opt", "1x3x64x64", "--max", "1x3x96x96"], "not a shape"),
        (["--int8-implicit"], "--int8-implicit needs --calib-images"),
        (["--calib-images", "somewhere"], "only apply with --int8-implicit"),
    ],
)
def test_user_errors_are_one_line(tiny_onnx: Path, args: list[str], message: str) -> None:
    result = _invoke(str(tiny_onnx), *args)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_missing_or_broken_file_is_one_line(tmp_path: Path) -> None:
    result = _invoke(str(tmp_path / "absent.onnx"), "--check-only")
    assert result.exit_code == 1 and "no ONNX file" in result.stderr
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00\xffnot protobuf at all")
    result = _invoke(str(broken), "--check-only")
    assert result.exit_code == 1 and "cannot read" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(backend_missing_reason() is None, reason="a real TensorRT and CUDA are here")
def test_without_tensorrt_the_report_is_printed_then_one_line(tiny_onnx: Path, tmp_path: Path) -> None:
    engine = tmp_path / "tiny.engine"
    result = _invoke(str(tiny_onnx), "-o", str(engine), "--fp16")
    assert result.exit_code == 1
    assert "TensorRT readiness: ready" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ldexport: error: cannot build an engine: TensorRT/CUDA is not available")
    assert not engine.exists()
    # A graph that is also not ready says both on the same line.
    bad = _topk_onnx(tmp_path / "topk.onnx", 5000)
    result = _invoke(str(bad), "-o", str(engine))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1
    assert "not available" in lines[0] and "not ready" in lines[0]


def _one_line_error(result, message: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ldexport: error: ") and message in lines[0], result.stderr


def test_check_only_refuses_files_that_are_no_onnx_model(tmp_path: Path) -> None:
    # a 0-byte file parses as an empty ModelProto: nothing is "ready", it is no model
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    _one_line_error(_invoke(str(empty), "--check-only"), "empty.onnx is not an ONNX model: it is empty")
    no_graph = tmp_path / "no_graph.onnx"
    no_graph.write_bytes(onnx.ModelProto(ir_version=8).SerializeToString())
    _one_line_error(_invoke(str(no_graph), "--check-only"), "is not an ONNX model: no graph")
    no_outputs = tmp_path / "no_outputs.onnx"
    graph = helper.make_graph([], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(no_outputs))
    _one_line_error(_invoke(str(no_outputs), "--check-only"), "its graph has no outputs")
    for path in (empty, no_graph, no_outputs):
        assert "ready for TensorRT" not in _invoke(str(path), "--check-only").stdout


def test_the_engine_never_replaces_the_onnx_model(tiny_onnx: Path, tmp_path: Path) -> None:
    graph = tmp_path / "tiny.onnx"
    graph.write_bytes(tiny_onnx.read_bytes())
    _one_line_error(_invoke(str(graph), "-o", str(graph)), "would replace the input")
    assert graph.read_bytes() == tiny_onnx.read_bytes()


def test_calib_max_images_is_described_and_refused_without_int8_implicit(tiny_onnx: Path) -> None:
    help_text = " ".join(CliRunner().invoke(main, ["trt", "--help"]).output.split())
    assert "--calib-max-images INTEGER RANGE Calibrate on the first N images" in help_text
    _one_line_error(_invoke(str(tiny_onnx), "--check-only", "--calib-max-images", "8"), "only apply with --int8-implicit")
