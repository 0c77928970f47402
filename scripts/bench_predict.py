"""``predict``'s post-processing (top-k, decoding, NMS) against the network's forward.

The R18 student of mmdet's ``ld_r18-gflv1-r101`` (256 channels, 4 stacked convolutions,
80 classes), random weights, at one input size. Per classification bias (``--cls-bias``):

- ``forward``: ``GFLDetector.forward``, the network alone;
- ``post``: :func:`~ldexport.model.detector.decode_detections` on that forward's outputs
  (per-level top-k, expectation over the bins, boxes, size filter, class-aware NMS);
- ``predict``: both, as ``GFLDetector.predict`` runs them.

Random weights score every pair near the prior (0.01, bias -4.595), so no candidate
passes ``score_thr`` and NMS has nothing to do; a bias near 0 lets every level's 1000
candidates through, the most NMS ever gets (5000 a image). The variants are timed
round-robin, one run each a round, medians reported; CUDA times are synchronised.

Target (issue 10, on a GPU at 800x1344): ``post`` at most 25% of ``forward``.

``--count-ops`` adds what ``post`` costs a GPU whatever its tensors' sizes: the top-level
aten operations one warm call dispatches (each a kernel launch or more on a GPU, and
Python time; counted as ``scripts/bench_step_ops.py`` counts them) and the host reads
among them (``item``, ``equal``, ``nonzero``...: each waits for the device; the final
``tolist`` of the detection counts is one more, outside aten). ``--parts post`` times
``post`` alone (the forward still runs once, for its outputs): on a CPU the forward at
batch 8 takes minutes. The numbers before a change come from the same script with an
older ``ldexport`` first on ``PYTHONPATH`` (``git archive <commit> ldexport | tar -x -C
/tmp/before``).

Usage::

    python scripts/bench_predict.py --size 800x1344 --cls-bias -4.595 -2 0 --repeat 5
    python scripts/bench_predict.py --device cuda --batch 1 8 --repeat 20
    python scripts/bench_predict.py --batch 1 8 --cls-bias -4.595 -2 --parts post --count-ops --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ldexport.model import ModelConfig, TestConfig, build_detector
from ldexport.model.detector import decode_detections
from ldexport.runtime.bench import time_calls

# Host reads besides bench_step_ops.py's list: the NMS's fixed-point check.
HOST_READS = ("aten::equal",)


def main() -> None:
    args = _parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    height, width = (int(side) for side in args.size.split("x"))
    torch.manual_seed(0)
    model = build_detector(ModelConfig(depth=18, num_classes=80)).eval().to(device)
    cfg = TestConfig()
    rows = []
    for batch in args.batch:
        images = torch.randn(batch, 3, height, width, device=device)
        for bias in args.cls_bias:
            torch.nn.init.constant_(model.head.gfl_cls.bias, bias)
            with torch.no_grad():
                cls_scores, bbox_preds = model(images)
            sizes = [(height, width)] * batch
            runs: dict[str, Callable[[], object]] = {
                "forward": lambda: model(images),
                "post": lambda: decode_detections(model.head, cls_scores, bbox_preds, sizes, cfg),
                "predict": lambda: model.predict(images, sizes, cfg),
            }
            times = _round_robin({name: runs[name] for name in args.parts}, args.repeat, device)
            found = decode_detections(model.head, cls_scores, bbox_preds, sizes, cfg)
            candidates = sum(int((s.sigmoid() > cfg.score_thr).sum()) for s in cls_scores)
            row = {
                "batch": batch, "cls_bias": bias, "pairs_above_score_thr": candidates,
                "detections": sum(len(item.scores) for item in found),
                **{f"{name}_ms": round(1000 * value, 2) for name, value in times.items()},
            }
            if "forward" in times and "post" in times:
                row["post_over_forward"] = round(times["post"] / times["forward"], 3)
            if args.count_ops:
                row.update(count_post_ops(runs["post"]))
            rows.append(row)
            print(json.dumps(row), flush=True)
    _print_table(rows, args)
    if args.out:
        meta = {"device": str(device), "size": args.size, "torch": torch.__version__, "python": platform.python_version(),
                "threads": torch.get_num_threads()}
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


@torch.no_grad()
def count_post_ops(post: Callable[[], object]) -> dict:
    """The top-level aten operations of one warm ``post`` call (the first builds the
    anchor points a size needs once), and the host reads among them."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_step_ops import SYNCHRONISING, _top_level_aten

    post()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        post()
    names = Counter(event.name for event in _top_level_aten(profile.events()))
    reads = {name: count for name, count in names.items() if name in SYNCHRONISING + HOST_READS}
    return {"post_ops": sum(names.values()), "post_host_reads": sum(reads.values()), "post_host_read_ops": reads,
            "post_most_common": [f"{name.split('::')[1]} {count}" for name, count in names.most_common(6)]}


@torch.no_grad()
def _round_robin(runs: dict[str, Callable[[], object]], repeat: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each run, timed round-robin after one warm-up round; each call ends
    with a device synchronisation, so it is timed whole."""
    synced = {name: (lambda run=run: (run(), _sync(device))) for name, run in runs.items()}
    times = time_calls(synced, warmup=1, runs=repeat)
    return {name: float(np.median(values)) / 1e3 for name, values in times.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _print_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\npredict at {args.size}, {args.device}, {torch.get_num_threads()} threads, median of {args.repeat}")
    columns = ["batch", "cls_bias", "pairs_above_score_thr", "detections", *(f"{part}_ms" for part in args.parts)]
    columns += ["post_over_forward"] if {"forward", "post"} <= set(args.parts) else []
    columns += ["post_ops", "post_host_reads"] if args.count_ops else []
    print("| " + " | ".join(columns) + " |")
    print("|" + " ---: |" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[column]) for column in columns) + " |")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="800x1344", help="HxW, multiples of 32")
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--cls-bias", type=float, nargs="+", default=[-4.595, -2.0, 0.0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    parser.add_argument("--parts", nargs="+", choices=["forward", "post", "predict"], default=["forward", "post", "predict"],
                        help="what to time")
    parser.add_argument("--count-ops", action="store_true", help="also count post's aten operations and host reads")
    parser.add_argument("--out", help="also write the rows as JSON")
    return parser.parse_args()


if __name__ == "__main__":
    main()
