"""What an exported file says about itself, and the checks every file passes."""

import json

import onnx
import pytest
from export_helpers import CLASS_NAMES, EXPORT_SIZE, SHA256, TEST_CFG, TINY

from ldexport import __version__
from ldexport.errors import LdexportError
from ldexport.export.metadata import read_export_info, read_onnx_info
from ldexport.trt.profile import profile_from_metadata

OPTIONS = [
    dict(dynamic=True),
    dict(dynamic=False),
    dict(dynamic=True, nms="onnx"),
    dict(nms="onnx", preprocess=True, simplify=True),
    dict(nms="efficient"),
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda options: ",".join(f"{k}={v}" for k, v in options.items()))
def test_every_graph_passes_the_checker_and_strict_shape_inference(graph, options):
    model = onnx.load(str(graph(**options)))
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    assert {op.domain: op.version for op in model.opset_import}[""] == 17


def test_metadata_describes_the_model(graph):
    model = onnx.load(str(graph(dynamic=True, nms="onnx")))
    props = {prop.key: prop.value for prop in model.metadata_props}
    assert props["ldexport_format"] == "gfl-detector" and props["ldexport_version"] == __version__
    assert props["checkpoint_sha256"] == SHA256
    assert json.loads(props["class_names"]) == list(CLASS_NAMES)
    assert json.loads(props["strides"]) == [8, 16, 32, 64, 128] and json.loads(props["reg_max"]) == 16
    assert props["input_layout"] == "NCHW" and props["channel_order"] == "RGB"
    assert json.loads(props["mean"]) == [123.675, 116.28, 103.53] and json.loads(props["std"]) == [58.395, 57.12, 57.375]
    spec = json.loads(props["input_spec"])
    assert spec["resize"] == "keep_ratio" and spec["scale"] == [160, 128] and spec["size_divisor"] == 32
    assert spec["layout"] == "NCHW" and spec["dtype"] == "float32" and spec["fixed_size"] is None
    assert json.loads(props["score_thr"]) == TEST_CFG.score_thr and json.loads(props["iou_threshold"]) == 0.6
    assert json.loads(props["nms_pre"]) == 1000 and json.loads(props["max_det"]) == 100
    assert props["nms"] == "onnx" and json.loads(props["dynamic"]) is True
    # the profile's largest input is the largest the contract makes: TRAIN_SCALE's 160-px long
    # side, either way round
    assert profile_from_metadata(model) == {"images": ((1, 3, 64, 64), (1, 3, *EXPORT_SIZE), (1, 3, 160, 160))}
    info = read_export_info(props, "model.onnx")
    assert info.model_config == TINY and info.test_cfg == TEST_CFG and info.class_names == CLASS_NAMES
    assert info.input_size == EXPORT_SIZE and info.dynamic and not info.preprocess


def test_static_preprocessing_metadata(graph):
    info = read_onnx_info(graph(nms="onnx", preprocess=True, simplify=True))
    assert info.preprocess and not info.dynamic and info.nms == "onnx"
    assert info.min_shape == info.opt_shape == info.max_shape == (1, *EXPORT_SIZE, 3)
    spec = info.input_spec
    assert (spec.layout, spec.dtype, spec.channel_order) == ("NHWC", "uint8", "BGR")
    assert spec.resize == "letterbox" and spec.fixed_size == EXPORT_SIZE and spec.fixed_batch == 1


def test_a_graph_without_the_input_contract_is_refused(graph, tmp_path):
    model = onnx.load(str(graph(dynamic=True)))
    kept = [prop for prop in model.metadata_props if prop.key != "input_spec"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, tmp_path / "old.onnx")
    with pytest.raises(LdexportError, match="input contract"):
        read_onnx_info(tmp_path / "old.onnx")


def test_an_onnx_file_that_is_not_ldexports_is_refused(tmp_path):
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([node], "other", [value], [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), tmp_path / "other.onnx")
    with pytest.raises(LdexportError, match="not an ldexport detector graph"):
        read_onnx_info(tmp_path / "other.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"\x00not onnx at all" * 10)
    with pytest.raises(LdexportError, match="not a readable ONNX model"):
        read_onnx_info(tmp_path / "garbage.onnx")
    with pytest.raises(LdexportError, match="not found"):
        read_onnx_info(tmp_path / "missing.onnx")
