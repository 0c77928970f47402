"""CPU time of ldexport's LD step in two checkouts, alternated: is the step slower than before?

Each checkout's own ``scripts/bench_train.py`` builds its own step (``LdexportStep``: R18
student, R101 teacher, mmdet's random weights, batch 2, as that version of ``ldexport train``
runs it), each in a fresh process that imports that checkout's ``ldexport``. The processes
alternate (which one goes first alternates too); each times ``--iters`` steps after two
warm-up steps by ``time.process_time`` (CPU seconds of the process, all threads), which
another job on the machine inflates less than wall time. With ``--threads 1`` the CPU time
is the step's arithmetic and Python. A checkout before this script existed works as well:
only its ``bench_train.py`` is used (``git archive COMMIT | tar -x -C /tmp/before``).

Usage::

    python scripts/bench_step_ab.py /tmp/before . --rounds 3 --iters 5 --size 512 --threads 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def measure(tree: Path, size: int, threads: int, iters: int) -> list[float]:
    """CPU seconds of ``iters`` steps of ``tree``'s ldexport (run in this process)."""
    sys.path[:0] = [str(tree), str(tree / "scripts")]
    spec = importlib.util.spec_from_file_location("bench_train", tree / "scripts" / "bench_train.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_train"] = bench
    spec.loader.exec_module(bench)
    import ldexport

    if not Path(ldexport.__file__).resolve().is_relative_to(tree):
        raise SystemExit(f"bench_step_ab.py: imported {ldexport.__file__}, not {tree}'s ldexport")
    settings, _ = bench.parse_arguments(["--threads", str(threads), "--size", str(size)])
    bench.torch.set_num_threads(threads)
    images, targets = bench.make_batch(settings.batch, settings.size, settings.seed)
    detector = bench.build_mmdet_ld()
    bench.randomise(detector, settings.seed)
    student_state = {k: v.clone() for k, v in detector.state_dict().items()}
    teacher_state = {k: v.clone() for k, v in detector.teacher_model.state_dict().items()}
    del detector
    step = bench.LdexportStep(*bench.ldexport_models(student_state, teacher_state), images, targets, settings)
    for _ in range(2):
        step()
    seconds = []
    for _ in range(iters):
        start = time.process_time()
        step()
        seconds.append(time.process_time() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, nargs="?", help="a checkout (its ldexport/ and scripts/bench_train.py)")
    parser.add_argument("after", type=Path, nargs="?", help="another checkout, e.g. .")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker.resolve(), args.size, args.threads, args.iters)))
        return
    if args.before is None or args.after is None:
        parser.error("give two checkouts: BEFORE AFTER")
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    seconds: dict[str, list[float]] = {name: [] for name in trees}
    for round_ in range(args.rounds):
        order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for name in order:
            command = [sys.executable, __file__, "--worker", str(trees[name]),
                       "--size", str(args.size), "--threads", str(args.threads), "--iters", str(args.iters)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"bench_step_ab.py: {name} ({trees[name]}) failed:\n{done.stderr[-2000:]}")
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            seconds[name] += measured
            print(f"round {round_ + 1} {name:6s} CPU s a step: {', '.join(f'{s:.3f}' for s in measured)}", flush=True)
    summary = {name: {"median": statistics.median(v), "min": min(v), "max": max(v)} for name, v in seconds.items()}
    ratio = summary["before"]["median"] / summary["after"]["median"]
    for name, values in summary.items():
        print(f"{name:6s} median {values['median']:.3f} s, min {values['min']:.3f}, max {values['max']:.3f} ({trees[name]})")
    print(f"before / after, medians: {ratio:.3f} (above 1: the after step costs less CPU time)")
    if args.out:
        result = {"trees": {k: str(v) for k, v in trees.items()}, "size": args.size, "threads": args.threads,
                  "seconds": seconds, "summary": summary, "ratio_before_over_after": ratio}  # fmt: skip
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
