"""Every shipped COCO config exports and checks parity on a machine without the ImageNet
backbone file it names: the checkpoint holds every weight.

The configs' architectures are kept (depth, classes, strides, ``pretrained`` path), only
their widths are shrunk by ``--set`` so that an R101 exports in seconds on a CPU.
"""

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ldexport.cli import main
from ldexport.config import load_config
from ldexport.export.metadata import read_onnx_info
from ldexport.model import build_detector

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
COCO_CONFIGS = sorted(path for path in CONFIGS.glob("*.yaml") if path.name.endswith("_coco.yaml"))
NARROW = ("model.base_channels=8", "model.neck_channels=16", "model.feat_channels=16", "model.stacked_convs=1", "model.norm_groups=4")


def test_the_shipped_coco_configs_name_an_imagenet_file_that_is_not_here():
    assert len(COCO_CONFIGS) >= 8
    for path in COCO_CONFIGS:
        pretrained = load_config(path).model.pretrained
        assert pretrained and not Path(pretrained).exists(), (path.name, pretrained)


@pytest.mark.parametrize("config_path", COCO_CONFIGS, ids=lambda path: path.stem)
def test_export_and_parity_without_the_imagenet_file(config_path, tmp_path):
    overrides = [item for override in NARROW for item in ("--set", override)]
    config = load_config(config_path, NARROW)
    torch.manual_seed(0)
    model = build_detector(config.model.__class__(**{**config.model.__dict__, "pretrained": None}))
    checkpoint = tmp_path / "student.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    graph = tmp_path / "student.onnx"
    runner = CliRunner()
    result = runner.invoke(
        main, ["onnx", str(config_path), str(checkpoint), "-o", str(graph), "--dynamic", "--shape", "128x128", "--no-trt-check", *overrides]
    )
    assert result.exit_code == 0, result.output + result.stderr
    info = read_onnx_info(graph)
    assert info.model_config.pretrained is None and info.model_config.depth == config.model.depth
    result = runner.invoke(main, ["parity", "--onnx", str(graph), str(config_path), str(checkpoint), "--sizes", "64x96", "--batch", "1", *overrides])
    assert result.exit_code == 0, result.output + result.stderr
    assert "parity PASSED" in result.output
