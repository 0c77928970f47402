"""``bench``: percentiles and throughput from real timed runs, on every model kind here."""

import json

import pytest
from click.testing import CliRunner

from ldexport.cli import main
from ldexport.errors import LdexportError
from ldexport.runtime.bench import bench_feeds, bench_model
from ldexport.runtime.model import open_checkpoint, open_onnx


def test_bench_onnx_and_checkpoint(shapes_student, tmp_path):
    report = tmp_path / "bench.json"
    args = ["bench", "--onnx", str(shapes_student.onnx), "--shape", "128x128,224x160", "--batch", "1", "--batch", "2",
            "--warmup", "1", "--runs", "5", "--report", str(report)]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = json.loads(report.read_text())
    assert [(row["height"], row["width"], row["batch"]) for row in rows] == [(128, 128, 1), (128, 128, 2), (224, 160, 1), (224, 160, 2)]
    for row in rows:
        assert row["model"] == "onnxruntime CPUExecutionProvider" and row["runs"] == 5
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["images_per_s"] == pytest.approx(row["batch"] * 1000 / row["p50_ms"])
    eager = bench_model(open_checkpoint(shapes_student.config, shapes_student.checkpoint), 128, 128, warmup=0, runs=3)
    assert eager.model == "pytorch cpu fp32" and eager.p50_ms > 0


def test_bench_feeds_keep_the_shape_and_refuse_what_the_model_cannot_take(shapes_student):
    model = open_onnx(shapes_student.onnx)
    assert bench_feeds(model, 96, 224, 3)["images"].shape == (3, 3, 96, 224)
    with pytest.raises(LdexportError, match="multiple of 32"):
        bench_feeds(model, 100, 100, 1)


def test_bench_without_shape_times_the_size_the_model_is_fed(shapes_student, tmp_path):
    from ldexport.export.options import ExportOptions
    from ldexport.export.student import export_student

    def sizes(*model):
        report = tmp_path / "sizes.json"
        args = ["bench", *map(str, model), "--warmup", "0", "--runs", "1", "--report", str(report)]
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return [(row["height"], row["width"]) for row in json.loads(report.read_text())]

    # shapes_student's data.scale is [128, 128]: a landscape photograph there is 128x128
    assert sizes("--onnx", shapes_student.onnx) == [(128, 128)]
    assert sizes("--config", shapes_student.config_path, "--checkpoint", shapes_student.checkpoint, "--set", "data.scale=[1333,800]") == [(800, 1344)]
    static = export_student(shapes_student.config, shapes_student.checkpoint, tmp_path / "s.onnx", ExportOptions(height=96, width=160)).path
    assert sizes("--onnx", static) == [(96, 160)]  # a static model's own (640x640 was refused)
