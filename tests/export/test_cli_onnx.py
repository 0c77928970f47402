"""``ldexport onnx`` and ``ldexport parity`` on real files, and every bad input they refuse."""

import json
import logging
import os
import sys
from pathlib import Path

import onnx
import pytest
import torch
import yaml
from export_helpers import CLASS_NAMES, COCO128_IMAGES, TINY, assert_user_error, ldexport_cli, tiny_detector

from ldexport.commands import onnx as onnx_command
from ldexport.config import config_to_dict
from ldexport.export.metadata import read_onnx_info
from ldexport.interop.checkpoint import weights_sha256
from ldexport.interop.mmdet import save_mmdet_checkpoint
from ldexport.io import sha256_file


_ldexport = ldexport_cli
_assert_user_error = assert_user_error


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny config, its checkpoint in ldexport's and in mmdet's format, and a graph."""
    folder = tmp_path_factory.mktemp("cli")
    model = tiny_detector()
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": config_to_dict(TINY)}))
    checkpoint = folder / "tiny.pt"
    torch.save({"model": model.state_dict(), "class_names": list(CLASS_NAMES)}, checkpoint)
    mmdet = folder / "tiny_mmdet.pth"
    save_mmdet_checkpoint(model, mmdet, meta={"dataset_meta": {"classes": list(CLASS_NAMES)}})
    graph = folder / "dynamic_nms.onnx"
    result = _ldexport("onnx", config, checkpoint, "-o", graph, "--dynamic", "--shape", "128x160", "--nms", "--simplify")
    assert result.exit_code == 0, result.output
    return {"folder": folder, "config": config, "checkpoint": checkpoint, "mmdet": mmdet, "graph": graph, "export_output": result.output}


def test_export_writes_a_checked_graph_and_reports_readiness(files):
    output = files["export_output"]
    assert "wrote" in output and "num_dets, det_boxes, det_scores, det_labels" in output
    assert "ready for TensorRT 10.13" in output
    info = read_onnx_info(files["graph"])
    assert info.dynamic and info.nms == "onnx" and info.class_names == CLASS_NAMES
    assert info.checkpoint_sha256 == sha256_file(files["checkpoint"])
    assert info.weights_sha256 == weights_sha256(tiny_detector())  # the checkpoint holds tiny_detector()'s weights
    onnx.checker.check_model(onnx.load(str(files["graph"])), full_check=True)


def test_a_dynamic_profile_reaches_the_largest_input_the_config_makes(files, tmp_path, caplog):
    # data.scale (1333, 800), mmdet's, the config's default: a 1333-px long side pads to 1344
    assert read_onnx_info(files["graph"]).max_shape == (1, 3, 1344, 1344)
    graph = tmp_path / "wide.onnx"
    args = (files["config"], files["checkpoint"], "-o", graph, "--dynamic", "--shape", "128x160", "--no-trt-check")
    result = _ldexport("onnx", *args, "--set", "data.scale=[2000, 1200]", "--max-batch", 4)
    assert result.exit_code == 0, result.output
    assert "1x3x64x64 .. 4x3x2016x2016 (opt 1x3x128x160)" in result.output
    assert read_onnx_info(graph).max_shape == (4, 3, 2016, 2016)
    # a smaller profile given: kept, with a warning that an engine would refuse large images
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="ldexport.export.student"):
        result = _ldexport("onnx", *args, "--set", "data.scale=[2000, 1200]", "--max-shape", "1344x1344")
    assert result.exit_code == 0, result.output
    assert read_onnx_info(graph).max_shape == (1, 3, 1344, 1344)
    assert "below the 2016x2016 that data.scale [2000, 1200] makes" in caplog.text


def test_the_default_shape_is_a_landscape_image_at_data_scale_when_dynamic_and_640_when_static(files, tmp_path):
    graph = tmp_path / "default.onnx"
    result = _ldexport("onnx", files["config"], files["checkpoint"], "-o", graph, "--dynamic", "--no-trt-check")
    assert result.exit_code == 0, result.output
    assert "(opt 1x3x800x1344)" in result.output  # data.scale (1333, 800): 800x1333 padded
    assert read_onnx_info(graph).opt_shape == (1, 3, 800, 1344)
    result = _ldexport("onnx", files["config"], files["checkpoint"], "-o", graph, "--no-trt-check")
    assert result.exit_code == 0, result.output
    assert read_onnx_info(graph).opt_shape == (1, 3, 640, 640)


@pytest.mark.skipif(not COCO128_IMAGES.is_dir(), reason="coco128 not found")
def test_parity_command_passes_on_photographs_and_random_sizes(files):
    report = files["folder"] / "parity.json"
    result = _ldexport(
        "parity", "--onnx", files["graph"], files["config"], files["checkpoint"],
        "--images", COCO128_IMAGES, "--max-images", 3, "--sizes", "192x256,96x320", "--report", report,
    )
    assert result.exit_code == 0, result.output
    assert "parity PASSED" in result.output
    data = json.loads(report.read_text())
    assert data["passed"] and data["runners"] == ["onnxruntime"]
    names = [case["case"] for case in data["cases"]]
    assert names[:3] == [path.name for path in sorted(COCO128_IMAGES.glob("*.jpg"))[:3]]
    assert [case["shape"][0] for case in data["cases"]] == [1, 1, 1, 2, 2, 2]
    detections = [result["detections"] for case in data["cases"] for result in case["results"]]
    assert all(found["reference_recall"] == found["candidate_precision"] == 1.0 for found in detections)
    assert sum(found["reference"] for found in detections) > 50


def test_parity_command_exits_1_on_a_mismatch(files):
    report = files["folder"] / "strict.json"
    result = _ldexport(
        "parity", "--onnx", files["graph"], files["config"], files["checkpoint"], "--sizes", "192x256", "--box-atol", 0,
        "--report", report,
    )
    assert result.exit_code == 1
    assert "parity FAILED (1 of 1 cases)" in result.output and "FAIL" in result.output
    assert json.loads(report.read_text())["passed"] is False


@pytest.mark.skipif(not COCO128_IMAGES.is_dir(), reason="coco128 not found")
def test_mmdet_checkpoint_static_preprocessing_export_and_parity(files):
    graph = files["folder"] / "static_preprocess.onnx"
    result = _ldexport("onnx", files["config"], files["mmdet"], "-o", graph, "--shape", "128x160", "--batch", 2, "--preprocess")
    assert result.exit_code == 0, result.output
    info = read_onnx_info(graph)
    assert info.preprocess and not info.dynamic and info.opt_shape == (2, 128, 160, 3) and info.class_names == CLASS_NAMES
    result = _ldexport("parity", "--onnx", graph, files["config"], files["mmdet"], "--images", COCO128_IMAGES, "--max-images", 3)
    assert result.exit_code == 0, result.output
    # two cases of two photographs (the last one repeated) and one random batch, all 2x128x160x3
    assert result.output.count("2x128x160x3") == 3 * 3


def test_readiness_check_is_skipped_when_its_module_is_missing(files, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ldexport.trt.readiness", None)
    onnx_command._print_readiness(files["graph"], "10.13")
    assert "readiness check skipped" in capsys.readouterr().out


def _write(folder: Path, name: str, content: bytes) -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


def test_export_bad_inputs_are_one_line_errors(files, tmp_path):
    config, checkpoint = files["config"], files["checkpoint"]
    other = tmp_path / "other.pt"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, other)
    four_classes = tmp_path / "four.yaml"
    four_classes.write_text(yaml.safe_dump({"model": {**config_to_dict(TINY), "num_classes": 4}}))
    output = tmp_path / "out.onnx"
    cases = [
        ((config, other), "is not a GFL/LD detector checkpoint"),
        ((four_classes, checkpoint), "does not match the config"),
        ((config, tmp_path / "missing.pt"), "checkpoint not found"),
        ((config, _write(tmp_path, "garbage.pt", b"\x00" * 64)), "not a torch checkpoint"),
        ((config, checkpoint, "--shape", "100x100"), "multiple of 32"),
        ((config, checkpoint, "--shape", "32x640"), "at least 64"),
        ((config, checkpoint, "--opset", "16"), "opset 16"),
        ((config, checkpoint, "--set", "test.nms_pre=5000", "--nms"), "nms_pre=5000"),
        ((config, checkpoint, "--shape", "100000x100000"), "the height is over 8192"),  # was an allocation traceback
        ((config, checkpoint, "--trt-version", "banana"), "not a TensorRT version"),  # was checked after the export
        # were ignored: a static batch-1 graph came out
        ((config, checkpoint, "--max-batch", "8"), "--max-batch only applies with --dynamic"),
        ((config, checkpoint, "--shape", "128x160", "--max-shape", "256x320"), "--max-shape only applies with --dynamic"),
    ]
    for args, message in cases:
        _assert_user_error(_ldexport("onnx", *args, "-o", output), message)
        assert list(tmp_path.glob("*.onnx*")) == [] and list(tmp_path.glob(".out.onnx*")) == []
    # -o naming an input replaced the checkpoint with the graph
    before = checkpoint.read_bytes()
    _assert_user_error(_ldexport("onnx", config, checkpoint, "-o", checkpoint), "would replace the input")
    assert checkpoint.read_bytes() == before
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if not os.access(read_only, os.W_OK):  # root writes anywhere
        _assert_user_error(_ldexport("onnx", config, checkpoint, "-o", read_only / "x.onnx"), "cannot write")


def test_parity_bad_inputs_are_one_line_errors(files, graph, tmp_path):
    config, checkpoint, dynamic = files["config"], files["checkpoint"], files["graph"]
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    _write(broken, "photo.jpg", b"not a jpeg")
    not_ours = tmp_path / "other.onnx"
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    result_value = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([node], "g", [value], [result_value])), not_ours)
    other_weights = tmp_path / "other_weights.pt"
    state = torch.load(checkpoint, weights_only=True)["model"]
    torch.save({"model": {**state, "head.gfl_reg.bias": state["head.gfl_reg.bias"] + 0.01}}, other_weights)
    report = tmp_path / "report.json"
    cases = [
        ((dynamic, config, checkpoint, "--images", empty), "no images"),
        ((dynamic, config, checkpoint, "--images", tmp_path / "nowhere"), "image file or folder not found"),
        ((dynamic, config, checkpoint, "--images", broken), "cannot read image"),
        ((not_ours, config, checkpoint), "not an ldexport detector graph"),
        ((dynamic, config, other_weights), "was exported from other weights than those of"),
        ((graph(nms="efficient"), config, checkpoint), "EfficientNMS_TRT"),
        ((dynamic, config, checkpoint, "--sizes", "100x100"), "multiple of 32"),
        ((dynamic, config, checkpoint, "--trt", tmp_path / "model.engine"), "TensorRT/CUDA is not available"),
    ]
    for (onnx_path, *args), message in cases:
        _assert_user_error(_ldexport("parity", "--onnx", onnx_path, *args, "--report", report), message)
        assert not report.exists()
