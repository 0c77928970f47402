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

Usage::

    python scripts/bench_predict.py --size 800x1344 --cls-bias -4.595 -2 0 --repeat 5
    python scripts/bench_predict.py --device cuda --batch 1 8 --repeat 20
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ldexport.model import ModelConfig, TestConfig, build_detector
from ldexport.model.detector import decode_detections
from ldexport.runtime.bench import time_calls


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
            times = _round_robin(runs, args.repeat, device)
            found = decode_detections(model.head, cls_scores, bbox_preds, sizes, cfg)
            candidates = sum(int((s.sigmoid() > cfg.score_thr).sum()) for s in cls_scores)
            row = {
                "batch": batch, "cls_bias": bias, "pairs_above_score_thr": candidates,
                "detections": sum(len(item.scores) for item in found),
                **{f"{name}_ms": round(1000 * value, 2) for name, value in times.items()},
            }
            row["post_over_forward"] = round(times["post"] / times["forward"], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    _print_table(rows, args)
    if args.out:
        meta = {"device": str(device), "size": args.size, "torch": torch.__version__, "python": platform.python_version(),
                "threads": torch.get_num_threads()}
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


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
    print("| batch | cls bias | pairs > score_thr | detections | forward ms | post ms | predict ms | post / forward |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['batch']} | {r['cls_bias']} | {r['pairs_above_score_thr']} | {r['detections']} | {r['forward_ms']} "
              f"| {r['post_ms']} | {r['predict_ms']} | {r['post_over_forward']} |")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="800x1344", help="HxW, multiples of 32")
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--cls-bias", type=float, nargs="+", default=[-4.595, -2.0, 0.0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    parser.add_argument("--out", help="also write the rows as JSON")
    return parser.parse_args()


if __name__ == "__main__":
    main()
