"""Forward time of the deformable-convolution GFL teachers against the plain R101 teacher.

The teachers of mmdet's GFL zoo that LD distils from, full size (80 classes, 256-channel
FPN and head), random weights, at 1333x800 (padded to 800x1344) and batch 2 by default:

- ``r101``: ``gfl_r101_fpn_ms-2x_coco`` (ResNet-101), the reference;
- ``r101-dcn``: ``gfl_r101-dconv-c3-c5_fpn_ms-2x_coco`` (deformable 3x3 in stages 2-4);
- ``x101-dcn``: ``gfl_x101-32x4d-dconv-c4-c5_fpn_ms-2x_coco`` (ResNeXt-101 32x4d,
  deformable in stages 3-4);
- ``x101``: ``gfl_x101-32x4d_fpn_ms-2x_coco`` (ResNeXt-101 32x4d, no DCN), with ``--all``.

Each is timed two ways: ``frozen``, the :class:`~ldexport.model.fuse.FrozenTeacher` LD
runs (BatchNorm folded, box branch only), and ``eval``, the detector's own forward under
``torch.no_grad()`` in eval mode (both branches). The offset convolutions get random
weights so that the deformable convolutions really sample off the grid (offsets of a
few pixels, as trained DCNs have), not the zero offsets of a fresh model.

The variants run round-robin (one forward of each per round), so a machine shared with
other work slows them alike; medians are reported, with each DCN teacher's ratio to the
R101 teacher of the same mode. Target (issue 13): a DCN teacher at most 2x the R101
teacher on CPU.

Usage::

    python scripts/bench_dcn_teacher.py --repeat 3 --out bench_dcn_teacher.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from ldexport import __version__
from ldexport.model import GFLDetector, ModelConfig, build_detector
from ldexport.model.deform_conv import DeformConv2dPack
from ldexport.model.fuse import FrozenTeacher
from ldexport.runtime.bench import time_calls

TEACHERS = {
    "r101": ModelConfig(depth=101),
    "r101-dcn": ModelConfig(depth=101, dcn_stages=(2, 3, 4)),
    "x101-dcn": ModelConfig(depth=101, backbone="resnext", groups=32, base_width=4, dcn_stages=(3, 4)),
    "x101": ModelConfig(depth=101, backbone="resnext", groups=32, base_width=4),
}


def main() -> None:
    args = _parse_args()
    torch.set_num_threads(args.threads)
    names = ["r101", "r101-dcn", "x101-dcn"] + (["x101"] if args.all else [])
    height, width = (int(v) for v in args.size.split("x"))
    images = torch.randn(args.batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    runners: dict[str, Callable[[], object]] = {}
    for name in names:
        model = _teacher(TEACHERS[name], seed=1)
        if "frozen" in args.modes:
            frozen = FrozenTeacher(model, with_cls_scores=False)
            runners[f"{name} frozen"] = lambda frozen=frozen: frozen(images)
        if "eval" in args.modes:
            runners[f"{name} eval"] = lambda model=model: _eval_forward(model, images)
    milliseconds = time_calls(runners, warmup=args.warmup, runs=args.repeat)
    times = {key: [float(ms) / 1e3 for ms in values] for key, values in milliseconds.items()}
    medians = {key: statistics.median(values) for key, values in times.items()}
    rows = []
    for key, median in medians.items():
        name, mode = key.split(" ")
        rows.append({"teacher": name, "mode": mode, "median_s": median, "runs_s": times[key], "vs_r101": median / medians[f"r101 {mode}"]})
    print(f"\n{'teacher':10} {'mode':7} {'median s':>9} {'vs r101':>8}")
    for row in rows:
        print(f"{row['teacher']:10} {row['mode']:7} {row['median_s']:9.2f} {row['vs_r101']:7.2f}x")
    report = {
        "ldexport_version": __version__,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "size": [height, width],
        "batch": args.batch,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "results": rows,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="800x1344", help="HxW of the padded batch (1333x800 pads to 800x1344)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--modes", default="frozen,eval", help="frozen (LD's FrozenTeacher) and/or eval (model forward)")
    parser.add_argument("--all", action="store_true", help="also the ResNeXt-101 teacher without DCN")
    parser.add_argument("--out", default="bench_dcn_teacher.json")
    return parser.parse_args()


def _teacher(cfg: ModelConfig, seed: int) -> GFLDetector:
    """A full-size teacher in eval mode, offsets of a few pixels in its deformable convolutions."""
    torch.manual_seed(seed)
    model = build_detector(cfg)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DeformConv2dPack):
                module.conv_offset.weight.normal_(0, 1e-3, generator=generator)
                module.conv_offset.bias.normal_(0, 2.0, generator=generator)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def _eval_forward(model: GFLDetector, images: torch.Tensor) -> object:
    return model(images)


if __name__ == "__main__":
    main()
