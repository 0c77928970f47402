"""Images per second of the training data pipeline alone, per DataLoader worker count.

Runs the training loader of a config (mmdet's LD train pipeline: decode, keep-ratio
resize to 1333x800, random flip, uint8 collate with padding) with no model, for a few
epochs per worker count, and hands every batch to the device as the training step gets
it (``Batch.inputs``: pinned, ``non_blocking`` copy, normalisation and padding there).
The first epoch (workers starting, caches cold) is reported apart from the steady ones.
Compare the steady rate with ``ldexport train``'s images/s: when the loader is not
clearly faster, the data, not the model, bounds the run.

Usage::

    python scripts/bench_loader.py --workers 0 1 2 4 --epochs 3
    python scripts/bench_loader.py --device cuda --workers 0 2 4 8 16 --batch-size 16
    python scripts/bench_loader.py --device none --workers 2 --batch-size 16   # the workers alone
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's ldexport, not an installed one

from ldexport.config import load_config  # noqa: E402
from ldexport.engine.data import build_train_loader, load_split  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    args = _parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config, [f"data.root={args.data}", f"data.scale=[{args.scale[0]},{args.scale[1]}]"])
    device = None if args.device == "none" else torch.device(args.device)
    records = load_split(config.data, "train")
    rows = []
    for workers in args.workers:
        data = dataclasses.replace(config.data, workers=workers, batch_size=args.batch_size)
        loader, batches = build_train_loader(
            records, data, rank=0, world_size=1, seed=0, pin_memory=device is not None and device.type == "cuda"
        )
        epochs = []
        for epoch in range(args.epochs):
            batches.set_epoch(epoch)
            images, start = 0, time.perf_counter()
            for batch in loader:
                if device is not None:
                    batch.inputs(device)
                images += len(batch)
            if device is not None and device.type == "cuda":
                torch.cuda.synchronize(device)
            epochs.append(images / (time.perf_counter() - start))
        del loader  # ends the persistent workers before the next count starts its own
        steady = epochs[1:] or epochs
        rows.append({
            "workers": workers,
            "first_epoch_images_per_s": round(epochs[0], 1),
            "steady_images_per_s": round(sorted(steady)[len(steady) // 2], 1),
            "images_per_epoch": images,
        })
        print(json.dumps(rows[-1]), flush=True)
    _print_table(rows, args, len(records), batch.images.shape)
    if args.out:
        meta = {"device": args.device, "batch_size": args.batch_size, "scale": args.scale, "cpus": os.cpu_count(),
                "torch": torch.__version__, "python": platform.python_version()}
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


def _print_table(rows: list[dict], args: argparse.Namespace, count: int, shape: torch.Size) -> None:
    print(f"\nloader alone: {count} images, batch {args.batch_size}, scale {args.scale[0]}x{args.scale[1]}, "
          f"device {args.device}, last batch {tuple(shape)}, {os.cpu_count()} CPUs")
    print(f"| workers | first epoch images/s | steady images/s (median of epochs 2..{args.epochs}) |")
    print("| ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['workers']} | {row['first_epoch_images_per_s']} | {row['steady_images_per_s']} |")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs/coco128_ld_r18-gflv1-r101.yaml"))
    parser.add_argument("--data", default=os.environ.get("LDEXPORT_COCO128", str(REPO.parent / "shared/data/coco128")))
    parser.add_argument("--scale", type=int, nargs=2, default=(1333, 800), metavar=("LONG", "SHORT"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per worker count (the first reported apart)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "none"],
                        help="where batches are normalised: cpu or cuda; none: not at all (the workers' own rate, "
                        "without the main process's normalisation, which bounds a CPU run)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    parser.add_argument("--out", help="also write the rows as JSON")
    return parser.parse_args()


if __name__ == "__main__":
    main()
