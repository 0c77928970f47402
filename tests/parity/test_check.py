"""Parity end to end on photographs, and mismatches it must catch."""

import json

import numpy as np
import pytest

from ldexport.export.metadata import read_onnx_info
from ldexport.parity.base import Runner
from ldexport.parity.check import check_parity
from ldexport.parity.inputs import image_cases, random_cases
from ldexport.parity.report import format_table, write_json
from ldexport.parity.runners import OnnxRuntimeRunner, TorchRunner


def _reference(detector, info) -> TorchRunner:
    return TorchRunner(detector, test_cfg=info.test_cfg, spec=info.input_spec, detections=info.detections)


def run_parity(reference, runners, cases, info):
    return check_parity(
        reference, runners, cases, strides=info.model_config.strides, test_cfg=info.test_cfg, detections=info.detections
    )


class _Tampered(Runner):
    """Another runner's outputs, changed by a function."""

    name = "tampered"

    def __init__(self, runner: Runner, change):
        self.runner, self.change = runner, change

    def infer(self, feeds):
        return self.change(dict(self.runner.infer(feeds)))


def test_dense_dynamic_graph_matches_on_photographs_random_sizes_and_batches(detector, graph, photos, tmp_path):
    path = graph(dynamic=True)
    info = read_onnx_info(path)
    cases = image_cases(photos, info.input_spec) + image_cases(photos[:2], info.input_spec, batch=2) + random_cases([(96, 224), (256, 192)], info.input_spec, batch=2)
    report = run_parity(_reference(detector, info), [OnnxRuntimeRunner(path)], cases, info)
    assert report.passed, format_table(report)
    assert len(report.cases) == len(photos) + 3
    found = [result.detections for case in report.cases for result in case.results]
    assert all(match.passed for match in found) and sum(match.reference for match in found) > 200
    write_json(report, tmp_path / "report.json", onnx=str(path))
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["passed"] and data["onnx"] == str(path)
    boxes = data["cases"][0]["results"][0]["outputs"][0]
    assert boxes["name"] == "boxes" and boxes["max_abs"] <= 1e-3 and set(boxes) >= {"mean_abs", "p99_abs", "max_rel", "p99_rel"}


def test_static_nms_preprocessing_graph_matches_on_photographs(detector, graph, photos):
    path = graph(nms="onnx", preprocess=True, simplify=True)
    info = read_onnx_info(path)
    report = run_parity(_reference(detector, info), [OnnxRuntimeRunner(path)], image_cases(photos, info.input_spec), info)
    assert report.passed, format_table(report)
    assert "parity PASSED" in format_table(report)
    assert all(result.outputs[0].name == "num_dets" for case in report.cases for result in case.results)


def _shift_boxes(outputs):
    outputs["boxes"] = outputs["boxes"] + 2e-3
    return outputs


def _drop_last_detection(outputs):
    outputs["num_dets"] = np.maximum(outputs["num_dets"] - 1, 0)
    return outputs


@pytest.mark.parametrize(
    "options,change,failing",
    [(dict(dynamic=True), _shift_boxes, "boxes"), (dict(nms="onnx", preprocess=True, simplify=True), _drop_last_detection, "num_dets")],
)
def test_mismatches_are_caught(detector, graph, photos, options, change, failing):
    path = graph(**options)
    info = read_onnx_info(path)
    report = run_parity(_reference(detector, info), [_Tampered(OnnxRuntimeRunner(path), change)], image_cases(photos[:2], info.input_spec), info)
    assert not report.passed
    result = report.cases[0].results[0]
    assert [stats.name for stats in result.outputs if not stats.passed] == [failing]
    table = format_table(report)
    assert "FAIL" in table and "parity FAILED (2 of 2 cases)" in table
    if failing == "num_dets":
        assert not result.detections_passed and result.detections.candidate_precision == 1.0
        assert result.detections.reference_recall < 1.0


def test_default_box_atol_bounds_fp32_decoding_at_the_largest_stride():
    import torch
    import torch.nn.functional as F

    from ldexport.parity.check import default_box_atol

    strides = (8, 16, 32, 64, 128)
    atol = default_box_atol(16, strides)
    assert atol == pytest.approx(2 * 17 * 2.0**-24 * 16 * 128)
    assert default_box_atol(4, (8, 16, 32)) == 1e-3  # never below the fixed floor
    # Either implementation's fp32 distances stay within half the tolerance of the exact ones,
    # for flat and for sharp distributions, at stride 128.
    torch.manual_seed(0)
    project = torch.arange(17.0)
    for sharpness in (1.0, 8.0, 16.0):
        logits = torch.randn(100_000, 17) * sharpness
        exact = logits.double().softmax(-1) @ project.double()
        fp32 = F.linear(logits.softmax(-1), project)
        assert (fp32.double() - exact).abs().max().item() * max(strides) <= atol / 2
