"""Real engines: build from a small ONNX, run through the runner, compare with ONNX Runtime.

Needs a real TensorRT 10 and a CUDA GPU; skipped otherwise (``-m trt`` selects them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldexport.errors import LdexportError
from ldexport.trt.backend import backend_missing_reason
from ldexport.trt.sidecar import sidecar_path

_MISSING = backend_missing_reason()
pytestmark = [
    pytest.mark.trt,
    pytest.mark.skipif(_MISSING is not None, reason=f"needs a real TensorRT and a CUDA GPU: {_MISSING}"),
]


def _onnxruntime(path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": images})))


def _images(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_fp32_engine_matches_onnxruntime_at_several_shapes(tiny_onnx: Path, tmp_path: Path) -> None:
    from ldexport.trt.build import BuildOptions, build_engine
    from ldexport.trt.runner import TensorRTRunner

    engine = tmp_path / "tiny.engine"
    timing = tmp_path / "tiny.timing"
    result = build_engine(tiny_onnx, engine, BuildOptions(timing_cache=timing, workspace_gib=1))
    assert engine.is_file() and timing.stat().st_size > 0
    sidecar = json.loads(sidecar_path(engine).read_text())
    assert sidecar["profile"]["images"] == {"min": [1, 3, 32, 32], "opt": [1, 3, 64, 64], "max": [2, 3, 96, 96]}
    assert sidecar["precision"]["fp16"] is False and len(sidecar["onnx"]["sha256"]) == 64
    assert result.decode_layers == []
    runner = TensorRTRunner(engine)
    for seed, shape in enumerate([(1, 3, 64, 64), (2, 3, 96, 96), (1, 3, 32, 48)]):
        images = _images(shape, seed)
        got, want = runner.infer({"images": images}), _onnxruntime(tiny_onnx, images)
        assert set(got) == {"scores", "boxes"}
        for name in want:
            assert got[name].shape == want[name].shape
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-3)
    with pytest.raises(LdexportError, match="outside the engine's profile"):
        runner.infer({"images": _images((1, 3, 128, 128), 0)})


def test_fp16_engine_keeps_decode_in_fp32(tiny_onnx: Path, tmp_path: Path) -> None:
    from ldexport.trt.build import BuildOptions, build_engine
    from ldexport.trt.runner import TensorRTRunner

    engine = tmp_path / "tiny16.engine"
    result = build_engine(tiny_onnx, engine, BuildOptions(fp16=True))
    assert result.decode_layers, "no decode/ layer was constrained"
    assert all("decode/" in name for name in result.decode_layers)
    images = _images((1, 3, 64, 64), 3)
    got, want = TensorRTRunner(engine).infer({"images": images}), _onnxruntime(tiny_onnx, images)
    np.testing.assert_allclose(got["boxes"], want["boxes"], atol=0.5)
    np.testing.assert_allclose(got["scores"], want["scores"], atol=2e-2)


def test_int8_engine_calibrates_from_images_then_from_the_cache(tiny_onnx: Path, tmp_path: Path) -> None:
    from ldexport.trt.build import BuildOptions, build_engine
    from ldexport.trt.runner import TensorRTRunner

    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    cache = tmp_path / "tiny.calib"
    options = BuildOptions(int8=True, calib_images=folder, calib_cache=cache)
    build_engine(tiny_onnx, tmp_path / "tiny8.engine", options)
    assert cache.stat().st_size > 0
    rebuilt = tmp_path / "tiny8b.engine"
    build_engine(tiny_onnx, rebuilt, BuildOptions(int8=True, calib_cache=cache))
    images = _images((1, 3, 64, 64), 4)
    got, want = TensorRTRunner(rebuilt).infer({"images": images}), _onnxruntime(tiny_onnx, images)
    assert got["boxes"].shape == want["boxes"].shape and np.isfinite(got["boxes"]).all()
    assert np.abs(got["boxes"] - want["boxes"]).mean() < 4.0  # int8 features, fp32 decoding


def test_sidecar_mismatch_refuses_to_load(tiny_onnx: Path, tmp_path: Path) -> None:
    from ldexport.trt.build import build_engine
    from ldexport.trt.engine import load_engine

    engine = tmp_path / "tiny.engine"
    build_engine(tiny_onnx, engine)
    assert load_engine(engine).engine.num_io_tensors == 3
    path = sidecar_path(engine)
    sidecar = json.loads(path.read_text())
    sidecar["tensorrt_version"] = "10.0.0.1"
    path.write_text(json.dumps(sidecar))
    with pytest.raises(LdexportError, match="TensorRT 10.0.0.1 built it"):
        load_engine(engine)
    path.unlink()
    with pytest.raises(LdexportError, match="no sidecar"):
        load_engine(engine)
    with pytest.warns(UserWarning):
        load_engine(engine, missing_sidecar="warn")


def test_cli_builds_an_engine(tiny_onnx: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ldexport.cli import main

    engine = tmp_path / "cli.engine"
    args = ["trt", str(tiny_onnx), "-o", str(engine), "--fp16", "--min", "1x3x32x32", "--opt", "1x3x64x64",
            "--max", "1x3x64x64", "--timing-cache", str(tmp_path / "t.cache")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert engine.is_file() and sidecar_path(engine).is_file()
    assert json.loads(sidecar_path(engine).read_text())["profile"]["images"]["max"] == [1, 3, 64, 64]


def _efficient_nms_graph(path: Path) -> Path:
    """boxes [1, 3, 4], scores [1, 3, 2] -> TensorRT's EfficientNMS_TRT plugin, nothing else."""
    from onnx import TensorProto, helper

    node = helper.make_node(
        "EfficientNMS_TRT", ["boxes", "scores"], ["num_dets", "det_boxes", "det_scores", "det_labels"],
        name="nms", domain="TRT", plugin_version="1", background_class=-1, box_coding=0,
        iou_threshold=0.5, max_output_boxes=4, score_activation=0, score_threshold=0.1,
    )
    outputs = [
        helper.make_tensor_value_info("num_dets", TensorProto.INT32, [1, 1]),
        helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, [1, 4, 4]),
        helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, [1, 4]),
        helper.make_tensor_value_info("det_labels", TensorProto.INT32, [1, 4]),
    ]
    inputs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 3, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3, 2]),
    ]
    graph = helper.make_graph([node], "nms", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("TRT", 1)])
    import onnx

    onnx.save(model, str(path))
    return path


def test_efficient_nms_plugin_builds_loads_and_runs(tmp_path: Path) -> None:
    # the parser and the runtime find EfficientNMS_TRT only once libnvinfer_plugin is registered
    from ldexport.trt.build import build_engine
    from ldexport.trt.runner import TensorRTRunner

    engine = tmp_path / "nms.engine"
    build_engine(_efficient_nms_graph(tmp_path / "nms.onnx"), engine)
    boxes = np.array([[[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]]], np.float32)
    scores = np.array([[[0.9, 0.0], [0.8, 0.0], [0.0, 0.7]]], np.float32)
    got = TensorRTRunner(engine).infer({"boxes": boxes, "scores": scores})
    assert got["num_dets"].tolist() == [[2]]  # the second box overlaps the first (IoU 0.81)
    np.testing.assert_allclose(got["det_scores"][0, :2], [0.9, 0.7], rtol=1e-6)
    assert got["det_labels"][0, :2].tolist() == [0, 1]
    np.testing.assert_allclose(got["det_boxes"][0, :2], boxes[0, [0, 2]])
