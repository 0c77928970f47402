"""scripts/ld_works.py at a tiny size: baseline and LD runs per seed, paired gains, re-read."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ld_works.py"
TINY = ["--set", "train.epochs=1", "--set", "data.max_images=16", "--set", "train.eval_interval=1",
        "--set", "train.log_interval=1"]


def load_script():
    spec = importlib.util.spec_from_file_location("ld_works", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("ld_works")
    work = root / "out"
    args = ["--work-dir", str(work), "--seeds", "0", "1", "--ld-weights", "0.0625", *TINY]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the shapes data set is generated under ./data
        script = load_script()
        assert script.main(args) == 0
        first = json.loads((work / "ld_works.json").read_text())
        stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*.pth")}
        assert script.main(args) == 0
    return work, first, stamps


def _log_keys(run: Path) -> set[str]:
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return {key for line in lines if line["kind"] == "train" for key in line}


def test_every_seed_has_a_baseline_and_an_ld_run_and_paired_gains(sweep):
    work, result, _ = sweep
    runs = result["runs"]
    assert set(runs) == {"baseline", "ld 0.0625"}
    for seed in ("0", "1"):
        baseline, ld = runs["baseline"]["ap"][seed], runs["ld 0.0625"]["ap"][seed]
        assert runs["ld 0.0625"]["gain_per_seed"][seed] == pytest.approx(ld - baseline)
        assert "loss_ld" in _log_keys(work / f"seed{seed}" / "ld_0.0625")
        assert "loss_ld" not in _log_keys(work / f"seed{seed}" / "baseline")
    assert 0 <= result["teacher_ap"] <= 1


def test_the_seed_changes_the_run(sweep):
    work, _, _ = sweep
    import torch

    from ldexport.interop.checkpoint import model_state_dict, read_checkpoint

    weights = [model_state_dict(read_checkpoint(work / f"seed{s}" / "baseline" / "latest.pth")) for s in (0, 1)]
    name = next(iter(weights[0]))
    assert not torch.equal(weights[0][name], weights[1][name])


def test_a_second_call_reads_finished_runs_back_without_training(sweep):
    work, first, stamps = sweep
    assert json.loads((work / "ld_works.json").read_text()) == first
    assert stamps and all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_a_work_dir_holding_other_settings_is_refused(sweep):
    work, _, _ = sweep
    script = load_script()
    args = ["--work-dir", str(work), "--seeds", "0", "--ld-weights", "0.0625", *TINY, "--set", "train.lr=0.01"]
    with pytest.raises(SystemExit, match="holds a run with another config"):
        script.main(args)
