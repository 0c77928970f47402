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
    # where each side ran: the reference's device, ONNX Runtime's providers (CPU here)
    assert data["placements"] == {"pytorch": "cpu", "onnxruntime": "CPUExecutionProvider"}
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


def _nan_score_of_second_detection(outputs):
    outputs["det_scores"] = outputs["det_scores"].copy()
    outputs["det_scores"][:, 1] = np.nan
    return outputs


def test_a_nan_score_after_nms_fails_even_behind_a_finite_one(detector, graph, photos):
    path = graph(nms="onnx", preprocess=True, simplify=True)
    info = read_onnx_info(path)
    runner = _Tampered(OnnxRuntimeRunner(path), _nan_score_of_second_detection)
    report = run_parity(_reference(detector, info), [runner], image_cases(photos[:2], info.input_spec), info)
    result = report.cases[0].results[0]
    assert result.detections.reference > 1 and result.detections.matched == result.detections.reference  # matched by box and label
    assert result.detections.max_score_error == np.inf and not result.detections_passed and not report.passed


def _straddled_threshold(detector, path, case):
    """A score threshold between PyTorch's and ONNX Runtime's score of one anchor and class
    (they differ by rounding), where the two runners' detections differ by that one."""
    import dataclasses

    from ldexport.parity.detections import graph_detections

    info = read_onnx_info(path)
    runner = OnnxRuntimeRunner(path)
    torch_scores = TorchRunner(detector, test_cfg=info.test_cfg, spec=info.input_spec).infer(case.feeds)["scores"].ravel()
    onnx_outputs = runner.infer(case.feeds)
    onnx_scores = onnx_outputs["scores"].ravel()
    differ = np.flatnonzero(torch_scores != onnx_scores)
    differ = differ[torch_scores[differ] > 0.2]  # a threshold that leaves detections above it
    for index in differ[np.argsort(torch_scores[differ])]:
        cfg = dataclasses.replace(info.test_cfg, score_thr=(float(torch_scores[index]) + float(onnx_scores[index])) / 2)
        (expected,) = TorchRunner(detector, test_cfg=cfg, spec=info.input_spec).predict(case.feeds)
        (found,) = graph_detections(onnx_outputs, input_size=case.images.shape[2:], strides=info.model_config.strides, test_cfg=cfg)
        if len(expected.scores) != len(found.scores):
            return cfg
    pytest.fail("no threshold separates the runners' detections")


def test_a_detection_at_the_score_threshold_on_one_side_only_is_no_mismatch(detector, graph, photos, tmp_path):
    from export_helpers import export_tiny

    path = graph(dynamic=True)
    info = read_onnx_info(path)
    (case,) = image_cases(photos[:1], info.input_spec)
    cfg = _straddled_threshold(detector, path, case)
    reference = TorchRunner(detector, test_cfg=cfg, spec=info.input_spec)
    check = dict(strides=info.model_config.strides, test_cfg=cfg)
    dense = check_parity(reference, [OnnxRuntimeRunner(path)], [case], detections=False, **check)
    match = dense.cases[0].results[0].detections
    assert all(stats.passed for stats in dense.cases[0].results[0].outputs)  # the dense outputs agree
    assert match.borderline_reference + match.borderline_candidate == 1 and match.passed and dense.passed, format_table(dense)
    # the same threshold inside a graph with NMS: num_dets differs by that detection
    nms_path = export_tiny(detector, tmp_path / "nms.onnx", test_cfg=cfg, dynamic=True, nms="onnx")
    nms_reference = TorchRunner(detector, test_cfg=cfg, spec=info.input_spec, detections=True)
    nms = check_parity(nms_reference, [OnnxRuntimeRunner(nms_path)], [case], detections=True, **check)
    result = nms.cases[0].results[0]
    assert result.detections.borderline_reference + result.detections.borderline_candidate == 1, format_table(nms)
    assert nms.passed and "borderline" in result.outputs[0].detail, format_table(nms)
    # a detection lost away from the threshold still fails
    lost = check_parity(nms_reference, [_Tampered(OnnxRuntimeRunner(nms_path), _drop_first_detection)], [case], detections=True, **check)
    assert not lost.passed and lost.cases[0].results[0].detections.borderline_reference == 0


def _drop_first_detection(outputs):
    for name in ("det_boxes", "det_scores", "det_labels"):
        outputs[name] = np.roll(outputs[name], -1, axis=1)
    outputs["num_dets"] = outputs["num_dets"] - 1
    return outputs


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_the_report_is_strict_json_with_versions_when_numbers_are_unbounded(detector, graph, photos, tmp_path):
    from ldexport.parity.tolerance import int8_tolerance

    path = graph(dynamic=True)
    info = read_onnx_info(path)
    cases = image_cases(photos[:1], info.input_spec)
    int8 = check_parity(
        _reference(detector, info), [OnnxRuntimeRunner(path)], cases,
        strides=info.model_config.strides, test_cfg=info.test_cfg, detections=False, tolerance=int8_tolerance(),
    )  # fmt: skip
    write_json(int8, tmp_path / "int8.json")
    data = _strict_json((tmp_path / "int8.json").read_text())
    assert data["precision"] == "int8" and data["tolerance"]["box_atol"] is None  # unbounded: null, not Infinity
    assert data["versions"]["onnxruntime"] == __import__("onnxruntime").__version__
    assert data["versions"]["torch"] == __import__("torch").__version__
    # an output of another shape: its statistics are unbounded, and it fails
    cut = check_parity(
        _reference(detector, info), [_Tampered(OnnxRuntimeRunner(path), lambda outputs: {**outputs, "boxes": outputs["boxes"][:, 1:]})],
        cases, strides=info.model_config.strides, test_cfg=info.test_cfg, detections=False,
    )  # fmt: skip
    write_json(cut, tmp_path / "cut.json")
    boxes = _strict_json((tmp_path / "cut.json").read_text())["cases"][0]["results"][0]["outputs"][0]
    assert boxes["name"] == "boxes" and not boxes["passed"] and boxes["max_abs"] is None and "shape" in boxes["detail"]


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
