"""The demo end to end at a tiny size: every step runs and its artefacts exist."""

import json

import pytest
from click.testing import CliRunner

from ldexport.cli import main

QUICK = [
    "--set", "train.epochs=1", "--set", "data.max_images=16", "--set", "train.eval_interval=1",
    "--max-images", "2", "--no-tensorrt",
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    work = root / "out"
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=root):
        result = runner.invoke(main, ["demo", "--work-dir", str(work), *QUICK], catch_exceptions=False)
        again = runner.invoke(main, ["demo", "--work-dir", str(work), *QUICK])
    return work, result, again


def test_demo_writes_every_artefact_and_passes_parity(demo_run):
    work, result, _ = demo_run
    assert result.exit_code == 0, result.output
    summary = json.loads((work / "summary.json").read_text())
    assert summary["passed"]
    assert {item["graph"] for item in summary["parity"]} == {"student.onnx", "student_nms.onnx"}
    for path in summary["artefacts"].values():
        assert (work / path).exists() or __import__("pathlib").Path(path).exists(), path
    assert "student AP (LD)" in result.output and "teacher AP" in result.output


def test_demo_refuses_to_overwrite_an_earlier_run(demo_run):
    _, _, again = demo_run
    assert again.exit_code == 1
    assert "holds an earlier demo" in again.output and "--overwrite" in again.output
