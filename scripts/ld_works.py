"""Does LD work? The same student trained with and without LD, over several seeds.

Trains one GFL teacher (or takes ``--teacher CKPT``), then, for every seed, the student
of ``--student-config`` twice with the same schedule and data order: once without a
teacher (plain GFL, the baseline) and once distilled from the teacher with LD at each
``--ld-weights`` value. All runs evaluate on the held-out val split of the data set the
project generates (shapes). Prints every run's final AP, the mean and sample standard
deviation per setting, and the paired per-seed difference LD minus baseline; writes the
same as JSON.

The seed (``train.seed``) sets the student's initialisation and the data order, so the
spread over seeds is the run-to-run noise the LD gain must beat. The teacher is one run
for all seeds (its own noise is not part of the comparison).

Nothing is lost if it dies: finished runs are read back from their ``result.json``, a
run cut short resumes from its ``latest.pth``; a run folder holding another config (other
``--set`` values) is refused rather than reused.

Usage:
    python scripts/ld_works.py                                   # CPU, 224 px, 3 seeds
    python scripts/ld_works.py --student-config configs/shapes_ld-vlr-kd_tiny.yaml   # full recipe
    python scripts/ld_works.py --seeds 0 1 2 3 4 --ld-weights 0.0625 0.25
    python scripts/ld_works.py --set data.scale=[320,320] --set train.epochs=24 --set train.device=cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ldexport.config import Config, load_config  # noqa: E402
from ldexport.engine.run import train  # noqa: E402

_RESULT = "result.json"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=REPO / "work_dirs" / "ld_works")
    parser.add_argument("--teacher-config", type=Path, default=REPO / "configs" / "shapes_gfl_teacher_tiny.yaml")
    parser.add_argument("--student-config", type=Path, default=REPO / "configs" / "shapes_ld_tiny.yaml")
    parser.add_argument("--teacher", type=Path, help="a trained teacher checkpoint (else one is trained)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--ld-weights", type=float, nargs="+", help="LD loss weights to try (default: the student config's)"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="config override applied to teacher and students (repeatable)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="JSON results (default: WORK_DIR/ld_works.json)")
    return parser.parse_args(argv)


def run_once(config: Config, work_dir: Path, teacher: Path | None = None) -> dict[str, float]:
    """Trains (or resumes, or reads back) one run; its last evaluation's metrics."""
    result_file = work_dir / _RESULT
    saved = work_dir / "config.yaml"
    if saved.is_file() and load_config(saved) != config:
        raise SystemExit(f"{work_dir} holds a run with another config: use another --work-dir")
    if result_file.is_file():
        return json.loads(result_file.read_text())
    result = train(
        config, work_dir=work_dir, teacher_checkpoint=teacher, resume=(work_dir / "latest.pth").is_file()
    )
    if result.interrupted:
        raise SystemExit(f"interrupted: run again to resume {work_dir}")
    result_file.write_text(json.dumps(result.metrics, indent=2))
    return result.metrics


def with_seed(config: Config, seed: int) -> Config:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))


def summarise(values: Sequence[float]) -> str:
    if len(values) < 2:
        return f"{statistics.fmean(values):.3f}"
    return f"{statistics.fmean(values):.3f} +- {statistics.stdev(values):.3f}"


def report(runs: dict[str, dict[int, float]], seeds: Sequence[int], teacher: float | Path) -> str:
    """The table: AP per seed, mean and spread, and the paired gain over the baseline."""
    width = 8 * len(seeds)
    lines = [f"teacher AP {teacher:.3f}" if isinstance(teacher, float) else f"teacher {teacher}"]
    lines.append(f"{'setting':<12} {'AP per seed':<{width}} {'mean +- std':<16} LD - baseline (paired)")
    for name, by_seed in runs.items():
        aps = [by_seed[s] for s in seeds]
        per_seed = " ".join(f"{ap:7.3f}" for ap in aps)
        gain = summarise([by_seed[s] - runs["baseline"][s] for s in seeds]) if name != "baseline" else ""
        lines.append(f"{name:<12} {per_seed:<{width}} {summarise(aps):<16} {gain}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    teacher_config = load_config(args.teacher_config, args.overrides)
    student_config = load_config(args.student_config, args.overrides)
    plain_config = student_config.without_teacher()
    weights = args.ld_weights or [student_config.distill.ld_weight]

    teacher_ap = None
    teacher = args.teacher
    if teacher is None:
        teacher_dir = args.work_dir / "teacher"
        teacher_ap = run_once(teacher_config, teacher_dir).get("AP")
        teacher = teacher_dir / "best.pth"

    runs: dict[str, dict[int, float]] = {"baseline": {}}
    for seed in args.seeds:
        seed_dir = args.work_dir / f"seed{seed}"
        runs["baseline"][seed] = run_once(with_seed(plain_config, seed), seed_dir / "baseline")["AP"]
        for weight in weights:
            ld_config = dataclasses.replace(
                student_config, distill=dataclasses.replace(student_config.distill, ld_weight=weight)
            )
            metrics = run_once(with_seed(ld_config, seed), seed_dir / f"ld_{weight:g}", teacher)
            runs.setdefault(f"ld {weight:g}", {})[seed] = metrics["AP"]

    print(report(runs, args.seeds, teacher_ap if teacher_ap is not None else teacher))

    table = {
        name: {
            "ap": by_seed,
            "mean": statistics.fmean(by_seed[s] for s in args.seeds),
            "gain_per_seed": {s: by_seed[s] - runs["baseline"][s] for s in args.seeds},
        }
        for name, by_seed in runs.items()
    }
    out = args.out or args.work_dir / "ld_works.json"
    summary = {"teacher_ap": teacher_ap, "seeds": args.seeds, "overrides": args.overrides, "runs": table}
    out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
