"""``ldexport parity`` from files, as a user runs it: what it refuses, and what it says it did."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from export_helpers import CLASS_NAMES, COCO128_IMAGES, TINY, assert_user_error, ldexport_cli, tiny_detector

from ldexport.config import config_to_dict


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny config and checkpoint; its graphs: dynamic (dense), static 128x160, and with
    dynamic NMS at a score threshold nothing reaches."""
    folder = tmp_path_factory.mktemp("parity_cli")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": config_to_dict(TINY), "data": {"scale": [160, 128]}}))
    checkpoint = folder / "tiny.pt"
    torch.save({"model": tiny_detector().state_dict(), "class_names": list(CLASS_NAMES)}, checkpoint)
    graphs = {
        "dynamic": ("--dynamic",),
        "static": (),
        "silent_nms": ("--dynamic", "--nms", "--set", "test.score_thr=0.999"),
    }
    for name, options in graphs.items():
        result = ldexport_cli("onnx", config, checkpoint, "-o", folder / f"{name}.onnx", "--shape", "128x160", "--no-trt-check", *options)
        assert result.exit_code == 0, result.output
    return {"folder": folder, "config": config, "checkpoint": checkpoint, **{name: folder / f"{name}.onnx" for name in graphs}}


def _parity(files, graph: str, *args):  # type: ignore[no-untyped-def]
    return ldexport_cli("parity", "--onnx", files[graph], files["config"], files["checkpoint"], *args)


@pytest.mark.parametrize("option", ["--box-atol", "--score-atol"])
@pytest.mark.parametrize("value", ["-1", "nan", "inf", "-inf"])
def test_a_tolerance_must_be_a_finite_number_at_least_0(files, option, value):
    # not a parity failure (exit 1 after running): bad input, refused before anything runs
    result = _parity(files, "dynamic", "--sizes", "128x160", option, value)
    assert_user_error(result, f"{option} must be a finite number >= 0")
    assert "parity" not in result.stdout


def test_fp32_tolerances_are_refused_where_int8_judges(files):
    result = _parity(files, "dynamic", "--sizes", "128x160", "--precision", "int8", "--score-atol", "0.1")
    assert_user_error(result, "--box-atol/--score-atol are fp32's tolerances")


def test_the_report_never_replaces_an_input(files, tmp_path):
    graph = files["dynamic"].read_bytes()
    for target in ("dynamic", "config", "checkpoint"):
        assert_user_error(_parity(files, "dynamic", "--sizes", "128x160", "--report", files[target]), "would replace the input")
    assert files["dynamic"].read_bytes() == graph
    assert yaml.safe_load(files["config"].read_text())["model"]["depth"] == 18


def test_sizes_a_static_graph_cannot_take_are_refused(files):
    result = _parity(files, "static", "--sizes", "320x320")
    assert_user_error(result, "static: it takes 128x160 only, not 320x320")
    # its own size is fine, and said
    result = _parity(files, "static", "--sizes", "128x160")
    assert result.exit_code == 0, result.output
    assert "random 1x128x160" in result.output


def test_the_default_on_a_static_graph_says_which_size_ran(files, tmp_path):
    report = tmp_path / "static.json"
    result = _parity(files, "static", "--report", report)
    assert result.exit_code == 0, result.output
    assert "note: random inputs at 128x160 only: the graph is static" in result.output
    data = json.loads(report.read_text())
    assert data["notes"] == ["random inputs at 128x160 only: the graph is static"] and data["warnings"] == []
    assert [case["shape"] for case in data["cases"]] == [[1, 3, 128, 160]]


def test_the_default_on_a_dynamic_graph_runs_three_random_sizes_and_the_largest_input(files, tmp_path):
    report = tmp_path / "dynamic.json"
    result = _parity(files, "dynamic", "--report", report)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    # and 160x160: data.scale [160, 128] makes inputs up to 160 either way round
    assert [case["shape"][2:] for case in data["cases"]] == [[192, 256], [320, 480], [448, 352], [160, 160]]
    assert data["notes"] == [] and "note:" not in result.output



def test_nothing_compared_is_a_warning_in_the_output_and_the_report(files, tmp_path):
    report = tmp_path / "silent.json"
    result = _parity(files, "silent_nms", "--sizes", "128x160,192x256", "--report", report)
    assert result.exit_code == 0, result.output  # pass/fail unchanged: nothing differed
    assert "WARNING: no detections were compared" in result.output and "test.score_thr" in result.output
    data = json.loads(report.read_text())
    assert data["passed"] and len(data["warnings"]) == 1 and "score threshold (0.999)" in data["warnings"][0]


@pytest.mark.skipif(not COCO128_IMAGES.is_dir(), reason="coco128 not found")
def test_no_warning_when_detections_were_compared(files, tmp_path):
    report = tmp_path / "found.json"
    result = _parity(files, "dynamic", "--images", COCO128_IMAGES, "--max-images", 2, "--sizes", "", "--report", report)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["warnings"] == [] and sum(found["reference"] for found in data["detections"].values()) > 0


def test_help_says_how_to_turn_the_random_cases_off():
    help_text = " ".join(ldexport_cli("parity", "--help").output.split())
    assert '--sizes "" runs none' in help_text and "none on a quantized graph" in help_text
