"""Writing the file: options checked first, nothing half-written, any opset from 17."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_helpers import TEST_CFG, export_tiny

from ldexport.errors import LdexportError
from ldexport.export import exporter
from ldexport.export.deploy import build_deploy_model
from ldexport.export.options import ExportOptions, check_image_size, parse_size
from ldexport.parity.detections import detections_from_outputs, match_detections


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(height=100, width=128), "multiple of 32"),
        (dict(height=32, width=640), "at least 64"),
        (dict(batch=0), "batch"),
        (dict(opset=16), "opset 16"),
        (dict(opset=21), "opset 21"),
        (dict(dynamic=True, max_height=320), "largest input 320x- is smaller"),
        (dict(dynamic=True, max_width=100), "multiple of 32"),
        (dict(dynamic=True, batch=4, max_batch=2), "max batch"),
        (dict(nms="soft"), "NMS kind"),
    ],
)
def test_options_no_export_can_satisfy_are_user_errors(options, message):
    with pytest.raises(LdexportError, match=message):
        ExportOptions(**options).validate()


def test_sizes():
    assert parse_size("640x480") == (640, 480) and parse_size("512") == (512, 512)
    with pytest.raises(LdexportError, match="not a size"):
        parse_size("640x")
    check_image_size(64, 1344)  # the bounds themselves are taken
    check_image_size(8192, 96)
    for height, width, message in ((63, 64, "at least 64"), (64, 8224, "over 8192"), (96, 100, "multiple of 32")):
        with pytest.raises(LdexportError, match=message):
            check_image_size(height, width)


def test_a_failed_export_leaves_nothing_behind(detector, tmp_path, monkeypatch):
    def broken_trace(deploy, example, path, names, options):
        with open(path, "wb") as stream:
            stream.write(b"half a graph")
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(exporter, "_trace", broken_trace)
    with pytest.raises(RuntimeError, match="exporter exploded"):
        export_tiny(detector, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "model.onnx").write_bytes(b"previous export")
    with pytest.raises(RuntimeError, match="exporter exploded"):
        export_tiny(detector, tmp_path / "model.onnx")
    assert [path.name for path in tmp_path.iterdir()] == ["model.onnx"]
    assert (tmp_path / "model.onnx").read_bytes() == b"previous export"


def test_bad_options_fail_before_writing(detector, tmp_path):
    with pytest.raises(LdexportError, match="multiple of 32"):
        export_tiny(detector, tmp_path / "model.onnx", size=(100, 100))
    with pytest.raises(LdexportError, match="does not exist"):
        export_tiny(detector, tmp_path / "missing" / "model.onnx")
    deploy = build_deploy_model(detector, test_cfg=TEST_CFG, static_size=(128, 160))
    with pytest.raises(LdexportError, match="anchor points computed in the graph"):
        exporter.export_onnx(deploy, tmp_path / "model.onnx", options=ExportOptions(dynamic=True), metadata={})
    assert list(tmp_path.iterdir()) == []


def test_opset_18_graph_detects_like_predict(detector, tmp_path):
    path = export_tiny(detector, tmp_path / "opset18.onnx", nms="onnx", opset=18)
    assert {op.domain: op.version for op in onnx.load(str(path)).opset_import}[""] == 18
    images = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(18))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = dict(zip(("num_dets", "det_boxes", "det_scores", "det_labels"), session.run(None, {"images": images.numpy()})))
    match = match_detections(detector.predict(images, cfg=TEST_CFG), detections_from_outputs(outputs))
    assert match.passed and match.reference > 10 and np.all(outputs["num_dets"] == match.reference)
