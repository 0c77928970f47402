"""``ldexport quantize`` and ``ldexport parity`` on a quantized graph, from files, as a user runs them."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from export_helpers import CLASS_NAMES, COCO128_IMAGES, TINY, assert_user_error, ldexport_cli, tiny_detector

from ldexport.config import config_to_dict
from ldexport.export.metadata import read_onnx_info

pytestmark = pytest.mark.skipif(not COCO128_IMAGES.is_dir(), reason="coco128 not found")


_ldexport = ldexport_cli
_assert_user_error = assert_user_error


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny config and checkpoint, its dynamic graph with NMS, and that graph quantized by the CLI."""
    folder = tmp_path_factory.mktemp("quantize_cli")
    config = folder / "tiny.yaml"
    # the dynamic graph resizes as training does: to the export size here
    config.write_text(yaml.safe_dump({"model": config_to_dict(TINY), "data": {"scale": [160, 128]}}))
    checkpoint = folder / "tiny.pt"
    torch.save({"model": tiny_detector().state_dict(), "class_names": list(CLASS_NAMES)}, checkpoint)
    graph = folder / "model.onnx"
    result = _ldexport("onnx", config, checkpoint, "-o", graph, "--dynamic", "--shape", "128x160", "--nms", "--no-trt-check")
    assert result.exit_code == 0, result.output
    result = _ldexport("quantize", graph, "--calib-images", COCO128_IMAGES, "--num-images", 16, "--method", "minmax")
    assert result.exit_code == 0, result.output
    return {"folder": folder, "config": config, "checkpoint": checkpoint, "graph": graph, "int8": folder / "model.int8.onnx", "output": result.output}


def test_quantize_writes_an_ldexport_graph_beside_the_float_one(files):
    assert files["int8"].is_file() and f"wrote {files['int8']}" in files["output"]
    assert "minmax on 16 images" in files["output"]
    info = read_onnx_info(files["int8"])
    assert info.nms == "onnx" and info.dynamic and info.class_names == CLASS_NAMES


def test_parity_judges_int8_at_its_tolerances_and_fails_it_at_fp32s(files):
    args = ("parity", "--onnx", files["int8"], files["config"], files["checkpoint"], "--images", COCO128_IMAGES, "--max-images", 12, "--sizes", "")
    report = files["folder"] / "int8.json"
    result = _ldexport(*args, "--report", report)
    assert result.exit_code == 0, result.output
    assert "parity PASSED at int8 tolerances" in result.output
    data = json.loads(report.read_text())
    assert data["precision"] == "int8" and data["tolerance"]["match_iou"] == 0.5 and data["tolerance"]["min_matched"] > 0.5
    found = data["detections"]["onnxruntime"]
    assert found["passed"] and found["reference"] > 100 and found["reference_recall"] >= data["tolerance"]["min_matched"]
    assert 0.9 < found["mean_iou"] < 1 and 0 < found["mean_score_error"] < 0.02
    # int8 noise moves boxes by more than fp32's rounding: at fp32's tolerances the same graph fails
    strict = files["folder"] / "fp32.json"
    result = _ldexport(*args, "--precision", "fp32", "--report", strict)
    assert result.exit_code == 1
    assert "parity FAILED" in result.output and json.loads(strict.read_text())["precision"] == "fp32"


def test_float_graph_is_still_judged_at_fp32(files):
    result = _ldexport("parity", "--onnx", files["graph"], files["config"], files["checkpoint"], "--images", COCO128_IMAGES, "--max-images", 2, "--sizes", "")
    assert result.exit_code == 0, result.output
    assert "parity PASSED at fp32 tolerances" in result.output


def test_bad_inputs_are_one_line_errors(files, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    output = tmp_path / "out.onnx"
    _assert_user_error(_ldexport("quantize", files["graph"], "-o", output, "--calib-images", empty), "no images")
    _assert_user_error(_ldexport("quantize", files["int8"], "-o", output, "--calib-images", COCO128_IMAGES), "already quantized")
    _assert_user_error(
        _ldexport("quantize", files["graph"], "-o", output, "--calib-images", COCO128_IMAGES, "--exclude", "("), "not a regular expression"
    )
    _assert_user_error(_ldexport("quantize", tmp_path / "missing.onnx", "--calib-images", COCO128_IMAGES), "not found")
    _assert_user_error(
        _ldexport("quantize", files["graph"], "-o", output, "--calib-images", COCO128_IMAGES, "--method", "minmax", "--percentile", 99),
        "--percentile only applies",
    )
    assert not output.exists() and sorted(path.name for path in tmp_path.iterdir()) == ["empty"]


def test_parity_on_an_int8_graph_skips_random_noise_by_default_and_says_so(files):
    # the README's INT8 command, without --sizes: noise lies outside the calibrated ranges
    report = files["folder"] / "int8_default.json"
    args = ("parity", "--onnx", files["int8"], files["config"], files["checkpoint"], "--images", COCO128_IMAGES, "--max-images", 12)
    result = _ldexport(*args, "--report", report)
    assert result.exit_code == 0, result.output
    assert "parity PASSED at int8 tolerances" in result.output
    assert "note: random-noise inputs skipped: the graph is quantized" in result.output
    data = json.loads(report.read_text())
    assert data["precision"] == "int8" and any("random-noise inputs skipped" in note for note in data["notes"])
    assert not any(case["case"].startswith("random") for case in data["cases"])
    # an explicit --sizes still runs them
    explicit = files["folder"] / "int8_sizes.json"
    _ldexport(*args[:5], "--sizes", "128x160", "--report", explicit)  # may fail: noise
    data = json.loads(explicit.read_text())
    assert [case["case"] for case in data["cases"]] == ["random 2x128x160"] and data["notes"] == []
