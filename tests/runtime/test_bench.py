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
