"""``ldexport parity`` fails a graph whose weights are slightly wrong, and passes the right one.

The graphs are real exports with one initializer changed through the ``onnx`` package, run
by ONNX Runtime: what a broken exporter, a stale file or a bad optimisation pass would
produce. Scaling the class or box convolution by 0.1% moves scores by about 4e-4 and boxes
by about 0.08 px on these inputs, far above the fp32 tolerances (1e-5, 4.2e-3 px).
"""

import json

import numpy as np
import onnx
import pytest
import torch
import yaml
from export_helpers import CLASS_NAMES, TINY, TRAIN_SCALE, ldexport_cli
from onnx import numpy_helper

from ldexport.config import config_to_dict


def _scaled(name: str, factor: float):
    def change(array: np.ndarray) -> np.ndarray:
        return array * np.float32(factor)

    return name, change


def _swapped(name: str):
    def change(array: np.ndarray) -> np.ndarray:
        swapped = array.copy()
        swapped[[0, 1]] = array[[1, 0]]
        return swapped

    return name, change


PERTURBATIONS = {
    "gfl_cls x1.001": _scaled("detector.head.gfl_cls.weight", 1.001),
    "gfl_reg x1.001": _scaled("detector.head.gfl_reg.weight", 1.001),
    "gfl_cls channels 0,1 swapped": _swapped("detector.head.gfl_cls.weight"),
    "stride-8 scale x1.01": _scaled("detector.head.scales.0.scale", 1.01),
}


@pytest.fixture(scope="module")
def files(detector, tmp_path_factory):
    folder = tmp_path_factory.mktemp("perturbed")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": config_to_dict(TINY), "data": {"scale": list(TRAIN_SCALE)}}))
    checkpoint = folder / "tiny.pt"
    torch.save({"model": detector.state_dict(), "class_names": list(CLASS_NAMES)}, checkpoint)
    return folder, config, checkpoint


def _perturb(source, target, name, change) -> None:
    model = onnx.load(str(source))
    (initializer,) = [tensor for tensor in model.graph.initializer if tensor.name == name]
    initializer.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(initializer)), name))
    onnx.save(model, str(target))


def _parity(graph, config, checkpoint, report, photos):
    return ldexport_cli(
        "parity", "--onnx", graph, config, checkpoint, "--images", photos[0].parent, "--max-images", 4, "--report", report
    )


@pytest.mark.parametrize("nms", ["none", "onnx"])
def test_parity_fails_every_perturbed_graph_and_passes_the_exported_one(files, photos, nms):
    folder, config, checkpoint = files
    exported = folder / f"exported_{nms}.onnx"
    args = ["--nms"] if nms == "onnx" else []
    result = ldexport_cli("onnx", config, checkpoint, "-o", exported, "--dynamic", "--shape", "128x160", "--no-trt-check", *args)
    assert result.exit_code == 0, result.output
    result = _parity(exported, config, checkpoint, folder / "exported.json", photos)
    assert result.exit_code == 0, result.output
    # the rewrite alone (the same values written back) changes nothing
    _perturb(exported, folder / "rewritten.onnx", *_scaled("detector.head.gfl_cls.weight", 1.0))
    result = _parity(folder / "rewritten.onnx", config, checkpoint, folder / "rewritten.json", photos)
    assert result.exit_code == 0, result.output
    for label, (name, change) in PERTURBATIONS.items():
        perturbed = folder / f"perturbed_{nms}.onnx"
        _perturb(exported, perturbed, name, change)
        report = folder / "perturbed.json"
        result = _parity(perturbed, config, checkpoint, report, photos)
        assert result.exit_code == 1, (label, result.output)
        assert "parity FAILED" in result.output, label
        assert json.loads(report.read_text())["passed"] is False, label
