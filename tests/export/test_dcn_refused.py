"""``ldexport onnx`` refuses a model with deformable convolutions in one line, writing nothing."""

import yaml
from click.testing import CliRunner

from ldexport.cli import main
from ldexport.config import config_to_dict
from ldexport.interop.mmdet import save_mmdet_checkpoint
from ldexport.model import ModelConfig, build_detector

DCN = ModelConfig(
    depth=50, dcn_stages=(3, 4), num_classes=3, base_channels=16, neck_channels=32, feat_channels=32, stacked_convs=1, norm_groups=8
)


def test_export_of_a_deformable_model_is_refused(tmp_path):
    config = tmp_path / "dcn.yaml"
    config.write_text(yaml.safe_dump({"model": config_to_dict(DCN)}))
    checkpoint = tmp_path / "dcn.pth"
    save_mmdet_checkpoint(build_detector(DCN), checkpoint)
    output = tmp_path / "dcn.onnx"
    result = CliRunner().invoke(main, ["onnx", str(config), str(checkpoint), "-o", str(output), "--shape", "128x128"])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot export a model with deformable convolutions" in lines[0], result.stderr
    assert list(tmp_path.glob("*.onnx*")) == []
