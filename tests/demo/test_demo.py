"""The demo end to end at a tiny size: every step runs and its artefacts exist."""

import json
from pathlib import Path

import pytest
import torch
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
        assert (work / path).exists() or Path(path).exists(), path
    assert "student AP (LD)" in result.output and "teacher AP" in result.output
    # photographs and parity's random inputs of other sizes, in both graphs' reports
    for item in summary["parity"]:
        cases = [case["case"] for case in json.loads(Path(item["report"]).read_text())["cases"]]
        assert any(name.startswith("random") for name in cases) and not all(name.startswith("random") for name in cases)


def test_demo_refuses_to_overwrite_an_earlier_run(demo_run):
    _, _, again = demo_run
    assert again.exit_code == 1
    assert "holds an earlier demo" in again.output and "--overwrite" in again.output


def test_overwrite_checks_the_inputs_first_and_deletes_only_earlier_runs(tmp_path):
    """--overwrite deleted teacher/, student/ and baseline/ whatever they held, and did so
    before a bad --teacher failed: a user's folder of that name was lost."""
    work = tmp_path / "out"
    (work / "student").mkdir(parents=True)
    (work / "student" / "notes.txt").write_text("mine")
    text = tmp_path / "teacher.pth"
    text.write_text("not weights")
    runner = CliRunner()
    bad_teacher = runner.invoke(main, ["demo", "--work-dir", str(work), "--overwrite", "--teacher", str(text), *QUICK])
    assert bad_teacher.exit_code == 1 and "teacher.pth is not a torch checkpoint" in bad_teacher.output
    foreign = runner.invoke(main, ["demo", "--work-dir", str(work), "--overwrite", *QUICK])
    assert foreign.exit_code == 1 and "is not a training run of an earlier demo" in foreign.output
    assert (work / "student" / "notes.txt").read_text() == "mine"
    missing = runner.invoke(main, ["demo", "--work-dir", str(work), "--images", str(tmp_path / "nope"), *QUICK])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_an_explicit_teacher_config_names_an_mmdet_teachers_architecture(tmp_path):
    """An mmdet checkpoint does not say its architecture; the demo refused it as
    --teacher even with --teacher-config given."""
    from ldexport.demo import DEFAULT_TEACHER, load_demo_configs
    from ldexport.engine.build import build_teacher
    from ldexport.interop.mmdet import save_mmdet_checkpoint
    from ldexport.model import build_detector

    teacher_config, student_config = load_demo_configs(DEFAULT_TEACHER, None, ())
    assert student_config.distill.teacher == teacher_config.model
    path = tmp_path / "mmdet_teacher.pth"
    source = build_detector(teacher_config.model)
    save_mmdet_checkpoint(source, path)
    teacher = build_teacher(student_config.distill, path)
    # the named architecture, holding the file's weights (not a fresh initialisation)
    assert teacher.state_dict().keys() == source.state_dict().keys()
    for key, value in source.state_dict().items():
        assert torch.equal(teacher.state_dict()[key], value), key
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    _, default_student = load_demo_configs(None, None, ())
    assert default_student.distill.teacher is None  # the default reads it from the trained teacher's checkpoint


# The demo, whose teacher's training gets SIGINT once its step 2 is done (a real run, a
# real signal; the monitor is the hook that says when).
_STOPPED_DEMO = """
import os, signal
import ldexport.engine.run as run
from ldexport.cli import main

class StopAt(run.Monitor):
    def step(self, iteration, *args):
        super().step(iteration, *args)
        if iteration == 2:
            os.kill(os.getpid(), signal.SIGINT)

run.Monitor = StopAt
main({args!r})
"""


def test_a_stopped_training_ends_the_demo(tmp_path):
    """The demo went on after a SIGINT/SIGTERM had stopped its teacher: it distilled from
    the part-trained teacher, exported, checked parity and exited 0."""
    import subprocess
    import sys

    work = tmp_path / "out"
    args = ["demo", "--work-dir", str(work), *QUICK]
    stopped = subprocess.run(
        [sys.executable, "-c", _STOPPED_DEMO.format(args=args)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "SIGINT: checkpoint written to" in stopped.stdout and "--resume" not in stopped.stdout + stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"ldexport: error: stopped while training the teacher (iteration 2); {work} is incomplete: "
        "run the demo again with --overwrite"
    )
    assert (work / "teacher" / "latest.pth").is_file()
    assert not (work / "student").exists() and not list(work.glob("*.onnx"))
