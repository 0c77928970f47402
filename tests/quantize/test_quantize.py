"""INT8 Q/DQ graphs: what is quantized, what stays float, what the file records."""

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from ldexport.errors import LdexportError
from ldexport.export.keys import QUANTIZATION_KEY
from ldexport.export.scopes import DECODE_PATTERN, PREPROCESS_PATTERN
from ldexport.quantize.calibration import calibration_sha256
from ldexport.quantize.graph import count_qdq, input_convolutions, is_quantized, matching_nodes, qdq_touching
from ldexport.quantize.qdq import QuantizeSettings, quantize_onnx

# a quick calibration: the tests check the graph, not the accuracy
QUICK = QuantizeSettings(method="minmax", num_images=8)
_QUANTIZED: dict[tuple, Path] = {}


@pytest.fixture(scope="module")
def quantized(graph, photos, tmp_path_factory):
    """``quantized(settings, **export_options)``: a tiny graph quantized once per module."""

    def make(settings: QuantizeSettings = QUICK, **options) -> Path:
        key = (settings, tuple(sorted(options.items())))
        if key not in _QUANTIZED:
            output = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
            _QUANTIZED[key] = quantize_onnx(graph(**options), output, photos, settings, progress=False).path
        return _QUANTIZED[key]

    return make


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {tensor: node for node in model.graph.node for tensor in node.output}


@pytest.mark.parametrize("options", [{}, {"nms": "onnx", "preprocess": True, "dynamic": True}], ids=["dense", "nms-preprocess"])
def test_decode_and_preprocess_nodes_carry_no_qdq(quantized, options):
    model = onnx.load(str(quantized(**options)))
    floating = matching_nodes(model, [DECODE_PATTERN, PREPROCESS_PATTERN])
    assert len(matching_nodes(model, [DECODE_PATTERN])) > 50
    assert qdq_touching(model, floating) == []
    assert not any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node if node.name in floating)
    # ... while every convolution of the network reads int8 weights and int8 activations,
    # but the one that reads the image (float by default)
    producers = _producers(model)
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    stem = input_convolutions(model)
    assert [name.rsplit("/", 2)[-2] for name in stem] == ["conv1"] and "backbone" in next(iter(stem))
    assert len(convs) == 48 and count_qdq(model) > 100
    for conv in convs:
        quantized_input = conv.name not in stem
        for tensor in conv.input[:2]:
            producer = producers.get(tensor)
            assert (producer is not None and producer.op_type == "DequantizeLinear") == quantized_input, conv.name
    # the head's last convolutions hand the decoding float outputs, not a Q/DQ pair
    readers = {tensor: node for node in model.graph.node for tensor in node.input}
    for conv in convs:
        if "gfl_cls" in conv.name or "gfl_reg" in conv.name:
            assert readers[conv.output[0]].op_type not in ("QuantizeLinear", "DequantizeLinear"), conv.name


def test_the_stem_is_float_unless_asked(quantized):
    """The convolution that reads the image is quantized only with ``quantize_stem``."""
    model = onnx.load(str(quantized(QuantizeSettings(method="minmax", num_images=8, quantize_stem=True))))
    producers = _producers(model)
    (stem,) = input_convolutions(model)
    conv = next(node for node in model.graph.node if node.name == stem)
    assert all(producers[tensor].op_type == "DequantizeLinear" for tensor in conv.input[:2])
    assert json.loads({p.key: p.value for p in model.metadata_props}[QUANTIZATION_KEY])["stem_quantized"] is True
    default = onnx.load(str(quantized()))
    assert json.loads({p.key: p.value for p in default.metadata_props}[QUANTIZATION_KEY])["stem_quantized"] is False


def test_quantizing_the_decoding_puts_qdq_on_it(quantized):
    """The counterfactual the measurement needs, and proof that the check above can fail."""
    model = onnx.load(str(quantized(QuantizeSettings(method="minmax", num_images=8, quantize_decode=True))))
    decode = matching_nodes(model, [DECODE_PATTERN])
    touched = qdq_touching(model, decode)
    assert any("Softmax" in name for name in touched) and any("MatMul" in name for name in touched)
    assert json.loads({p.key: p.value for p in model.metadata_props}[QUANTIZATION_KEY])["decode_quantized"] is True


def test_metadata_is_carried_over_with_the_settings_and_calibration_hash(graph, quantized, photos):
    source = {prop.key: prop.value for prop in onnx.load(str(graph()), load_external_data=False).metadata_props}
    written = {prop.key: prop.value for prop in onnx.load(str(quantized()), load_external_data=False).metadata_props}
    assert {key: written[key] for key in source} == source
    settings = json.loads(written[QUANTIZATION_KEY])
    assert settings["format"] == "qdq" and settings["method"] == "minmax" and settings["calibration_images"] == 8
    assert settings["calibration_sha256"] == calibration_sha256(photos[:8])
    assert "symmetric" in settings["activations"] and "per output channel" in settings["weights"]


def test_quantized_graph_is_symmetric_int8_with_per_channel_weights(quantized):
    model = onnx.load(str(quantized()))
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    producers = _producers(model)
    dequantizers = [node for node in model.graph.node if node.op_type == "DequantizeLinear"]
    for node in dequantizers:
        zero_point = constants[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    conv = next(node for node in model.graph.node if node.name.endswith("layer1.0/conv1/Conv"))
    weight = producers[conv.input[1]]
    assert constants[weight.input[0]].dtype == np.int8
    assert constants[weight.input[1]].shape == (constants[weight.input[0]].shape[0],)  # one scale per output channel


def test_int8_scores_stay_close_to_float(graph, quantized, photos):
    from ldexport.export.metadata import read_onnx_info
    from ldexport.parity.inputs import image_cases
    from ldexport.parity.runners import OnnxRuntimeRunner

    info = read_onnx_info(graph())
    fp32, int8 = OnnxRuntimeRunner(graph()), OnnxRuntimeRunner(quantized())
    errors = [np.abs(fp32.infer(case.feeds)["scores"] - int8.infer(case.feeds)["scores"]) for case in image_cases(photos, info.input_spec)]
    assert 0 < np.mean([error.mean() for error in errors]) < 0.01
    assert max(float(np.percentile(error, 99)) for error in errors) < 0.05


def test_exclude_keeps_matching_nodes_float(graph, photos, tmp_path):
    pattern = r"/detector/head/gfl_cls"
    result = quantize_onnx(
        graph(), tmp_path / "x.onnx", photos, QuantizeSettings(method="minmax", num_images=2, exclude=(pattern,)), progress=False
    )
    model = onnx.load(str(result.path))
    excluded = matching_nodes(model, [pattern])
    assert len(excluded) == 5 and qdq_touching(model, excluded) == []
    assert result.quantized_nodes == 87 - 5  # 88 less the stem, kept float


def test_refuses_a_quantized_graph_a_pattern_matching_nothing_and_leaves_no_file(quantized, graph, photos, tmp_path):
    output = tmp_path / "again.onnx"
    assert is_quantized(onnx.load(str(quantized())))
    with pytest.raises(LdexportError, match="already quantized"):
        quantize_onnx(quantized(), output, photos, QUICK, progress=False)
    with pytest.raises(LdexportError, match="matches no node"):
        quantize_onnx(graph(), output, photos, QuantizeSettings(exclude=("/no/such/node",)), progress=False)
    with pytest.raises(LdexportError, match="not an ldexport detector graph"):
        bare = onnx.load(str(graph()))
        del bare.metadata_props[:]
        onnx.save(bare, str(tmp_path / "bare.onnx"))
        quantize_onnx(tmp_path / "bare.onnx", output, photos, QUICK, progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bare.onnx"]


def test_written_file_honours_the_umask(graph, photos, tmp_path):
    previous = os.umask(0o027)
    try:
        path = quantize_onnx(graph(), tmp_path / "m.onnx", photos, QuantizeSettings(method="minmax", num_images=1), progress=False).path
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o640


def test_refuses_graphs_it_cannot_calibrate_or_would_leave_float_and_leaves_no_file(graph, photos, tmp_path):
    output = tmp_path / "model.int8.onnx"
    # ONNX Runtime cannot run TensorRT's plugin: it was an ONNXRuntimeError traceback
    with pytest.raises(LdexportError, match="EfficientNMS_TRT"):
        quantize_onnx(graph(nms="efficient"), output, photos, QUICK, progress=False)
    # excluding the whole network wrote the float graph with a `quantization` record
    with pytest.raises(LdexportError, match="nothing of .* is left to quantize"):
        quantize_onnx(graph(), output, photos, QuantizeSettings(method="minmax", num_images=1, exclude=("/detector/",)), progress=False)
    assert list(tmp_path.iterdir()) == []
