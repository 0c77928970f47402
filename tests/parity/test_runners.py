"""The runners share one interface; heavy back ends load only when asked for."""

import numpy as np
import pytest
import torch
from export_helpers import TEST_CFG

from ldexport.errors import LdexportError
from ldexport.parity.base import Runner
from ldexport.data.input_spec import InputSpec
from ldexport.parity.runners import OnnxRuntimeRunner, TorchRunner
from ldexport.runtime.model import tensorrt_runner
from ldexport.trt.backend import backend_missing_reason


def test_onnxruntime_and_torch_runners_agree(detector, graph):
    feeds = {"images": np.random.default_rng(0).standard_normal((2, 3, 96, 160), dtype=np.float32)}
    runners = [OnnxRuntimeRunner(graph(dynamic=True)), TorchRunner(detector, test_cfg=TEST_CFG, spec=InputSpec())]
    assert all(isinstance(runner, Runner) for runner in runners)
    assert runners[0].providers[-1] == "CPUExecutionProvider" and "AzureExecutionProvider" not in runners[0].providers
    graph_outputs, torch_outputs = (runner.infer(feeds) for runner in runners)
    assert set(graph_outputs) == set(torch_outputs) == {"boxes", "scores"}
    np.testing.assert_allclose(graph_outputs["boxes"], torch_outputs["boxes"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(graph_outputs["scores"], torch_outputs["scores"], atol=1e-5, rtol=0)


def test_torch_runner_detections_are_predicts(detector):
    images = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(4))
    outputs = TorchRunner(detector, test_cfg=TEST_CFG, spec=InputSpec(), detections=True).infer({"images": images.numpy()})
    expected = detector.predict(images, cfg=TEST_CFG)
    for index, found in enumerate(expected):
        count = len(found.scores)
        assert outputs["num_dets"][index, 0] == count > 0
        np.testing.assert_array_equal(outputs["det_boxes"][index, :count], found.boxes.numpy())
        assert not outputs["det_scores"][index, count:].any()


def test_unknown_provider_is_a_user_error(graph):
    with pytest.raises(LdexportError, match="not installed"):
        OnnxRuntimeRunner(graph(dynamic=True), providers=["NoSuchExecutionProvider"])


@pytest.mark.skipif(backend_missing_reason() is None, reason="TensorRT and CUDA are here")
def test_tensorrt_runner_without_tensorrt_is_one_clear_error(tmp_path):
    with pytest.raises(LdexportError, match="TensorRT/CUDA is not available"):
        tensorrt_runner(tmp_path / "model.engine")
