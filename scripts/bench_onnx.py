"""Latency of the exported R18 student in ONNX Runtime on CPU, against PyTorch eager.

For each input size (batch 1), in one run:

- ``ort raw``: the network alone (per-level logits out, no decoding);
- ``ort decode``: the deploy graph with the decoding folded in (``boxes``, ``scores``);
- ``ort nms``: the deploy graph with decoding and ONNX NonMaxSuppression (detections);
- ``ort decode only`` / ``ort decode+nms only``: the same decoding (and NMS) stage alone,
  exported on its own and fed the network's outputs, which isolates its cost from the
  network's run-to-run noise;
- ``torch raw``: ``GFLDetector.forward`` in PyTorch eager;
- ``torch predict``: ``GFLDetector.predict`` (forward + Python decoding + NMS).

The variants are timed round-robin (one run of each per round) so that a machine shared
with other work slows them alike; medians are reported.

Targets: the folded decoding adds at most 3% to ``ort raw`` (``decode only / ort raw``,
and ``ort decode / ort raw - 1``); the exported model with its decoding is at least 1.5x
faster end to end than ``torch predict``. The student is the
R18 of mmdet's ``ld_r18-gflv1-r101`` (256 channels, 4 stacked convs, 80 classes), random
weights unless ``--config``/``--checkpoint`` are given. Random weights score every pair
near the prior (0.01), so no pair passes ``score_thr`` and NMS gets nothing to do;
``--cls-bias`` sets the classification bias to load the NMS with candidates instead.

The timing is :func:`ldexport.runtime.bench.time_calls`, the code ``ldexport bench`` times
with; this script adds the variants only a benchmark needs (the raw network, the decoding
stage alone). To time one exported model, use ``ldexport bench`` instead.

Usage::

    python scripts/bench_onnx.py --sizes 640x640,800x1344 --repeat 5 --out bench_onnx.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from ldexport import __version__
from ldexport.export.deploy import build_deploy_model
from ldexport.export.exporter import export_onnx
from ldexport.export.options import ExportOptions, check_image_size, parse_size
from ldexport.model import GFLDetector, ModelConfig, TestConfig, build_detector
from ldexport.runtime.bench import time_calls


def main() -> None:
    args = _parse_args()
    torch.set_num_threads(args.threads)
    model, test_cfg = _student(args)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for size in [parse_size(text) for text in args.sizes.split(",")]:
            check_image_size(*size)
            results.append(_bench_size(model, test_cfg, size, Path(folder), args))
    _print_table(results)
    report = {
        "ldexport_version": __version__,
        "torch": torch.__version__,
        "onnxruntime": _ort_version(),
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "cls_bias": args.cls_bias,
        "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="640x640,800x1344", help="HxW sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--cls-bias", type=float, default=None, help="set gfl_cls.bias (e.g. -2.5 loads the NMS)")
    parser.add_argument("--config", help="ldexport config of a trained student (default: R18, 80 classes)")
    parser.add_argument("--checkpoint", help="its weights (ldexport or mmdet)")
    parser.add_argument("--out", default="bench_onnx.json", help="JSON report")
    return parser.parse_args()


def _student(args: argparse.Namespace) -> tuple[GFLDetector, TestConfig]:
    if args.config:
        from ldexport.config import load_config
        from ldexport.interop.checkpoint import load_detector

        config = load_config(args.config)
        model = load_detector(config.model, args.checkpoint).model if args.checkpoint else build_detector(config.model)
        test_cfg = config.test
    else:
        torch.manual_seed(0)
        model, test_cfg = build_detector(ModelConfig(depth=18, num_classes=80)), TestConfig()
    if args.cls_bias is not None:
        with torch.no_grad():
            model.head.gfl_cls.bias.fill_(args.cls_bias)
    return model.eval(), test_cfg


def _bench_size(model: GFLDetector, test_cfg: TestConfig, size: tuple[int, int], folder: Path, args) -> dict:  # noqa: ANN001
    import onnxruntime as ort

    height, width = size
    images = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cls_scores, bbox_preds = model(images)
    head_outputs = {f"head_{index}": tensor.numpy() for index, tensor in enumerate([*cls_scores, *bbox_preds])}
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    runs: dict[str, Callable[[], object]] = {}
    counts: dict[str, int] = {}
    for name, path in _export_variants(model, test_cfg, size, folder, cls_scores, bbox_preds).items():
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = head_outputs if "only" in name else {"images": images.numpy()}
        outputs = session.run(None, feeds)
        if name == "ort nms":
            counts["detections"] = int(outputs[0][0, 0])
        runs[name] = lambda session=session, feeds=feeds: session.run(None, feeds)
    with torch.no_grad():
        counts["torch_detections"] = len(model.predict(images, cfg=test_cfg)[0].scores)
    runs["torch raw"] = lambda: _no_grad(model, images)
    runs["torch predict"] = lambda: model.predict(images, cfg=test_cfg)
    timings = _round_robin_median_ms(runs, args)
    for name, value in timings.items():
        print(f"{height}x{width} {name}: {value:.1f} ms", flush=True)
    return {
        "size": [height, width],
        "median_ms": timings,
        "decode_overhead": timings["ort decode"] / timings["ort raw"] - 1,
        "decode_only_share": timings["ort decode only"] / timings["ort raw"],
        "nms_overhead": timings["ort nms"] / timings["ort raw"] - 1,
        "decode_nms_only_share": timings["ort decode+nms only"] / timings["ort raw"],
        "speedup_decode_vs_torch_predict": timings["torch predict"] / timings["ort decode"],
        "speedup_nms_vs_torch_predict": timings["torch predict"] / timings["ort nms"],
        **counts,
    }


def _no_grad(model: GFLDetector, images: torch.Tensor) -> object:
    with torch.no_grad():
        return model(images)


def _export_variants(
    model: GFLDetector,
    test_cfg: TestConfig,
    size: tuple[int, int],
    folder: Path,
    cls_scores: list[torch.Tensor],
    bbox_preds: list[torch.Tensor],
) -> dict[str, Path]:
    height, width = size
    paths = {"ort raw": folder / f"raw_{height}x{width}.onnx"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(1, 3, height, width),), str(paths["ort raw"]), dynamo=False, opset_version=17,
            input_names=["images"],
        )
    for name, nms in (("ort decode", "none"), ("ort nms", "onnx")):
        deploy = build_deploy_model(model, test_cfg=test_cfg, nms=nms, static_size=size)
        paths[name] = export_onnx(
            deploy, folder / f"{nms}_{height}x{width}.onnx", options=ExportOptions(height=height, width=width, nms=nms), metadata={}
        )
        stage = _DecodeStage(deploy.decode, size)
        paths[f"{name} only".replace("nms", "decode+nms")] = folder / f"{nms}_stage_{height}x{width}.onnx"
        names = [f"head_{index}" for index in range(2 * len(cls_scores))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                stage, tuple([*cls_scores, *bbox_preds]), str(paths[f"{name} only".replace("nms", "decode+nms")]),
                dynamo=False, opset_version=17, input_names=names,
            )
    return paths


class _DecodeStage(torch.nn.Module):
    """The deploy wrapper's decoding (and NMS) stage alone, fed the head's outputs."""

    def __init__(self, decode: torch.nn.Module, size: tuple[int, int]):
        super().__init__()
        self.decode = decode
        self.size = size

    def forward(self, *head_outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        levels = len(head_outputs) // 2
        return self.decode(list(head_outputs[:levels]), list(head_outputs[levels:]), *self.size)


def _round_robin_median_ms(runs: dict[str, Callable[[], object]], args: argparse.Namespace) -> dict[str, float]:
    times = time_calls(runs, warmup=args.warmup, runs=args.repeat)  # the timing code of `ldexport bench`
    return {name: statistics.median(values.tolist()) for name, values in times.items()}


def _print_table(results: list[dict]) -> None:
    names = ["ort raw", "ort decode", "ort nms", "ort decode only", "ort decode+nms only", "torch raw", "torch predict"]
    print("median ms   " + "".join(f"{name:>21}" for name in names))
    for result in results:
        size = "x".join(map(str, result["size"]))
        print(f"{size:<12}" + "".join(f"{result['median_ms'][name]:>21.1f}" for name in names))
    for result in results:
        size = "x".join(map(str, result["size"]))
        print(
            f"{size}: decode adds {100 * result['decode_overhead']:+.2f}% end to end "
            f"(decode alone {100 * result['decode_only_share']:.2f}% of ort raw); decode+NMS adds "
            f"{100 * result['nms_overhead']:+.2f}% (alone {100 * result['decode_nms_only_share']:.2f}%); "
            f"torch predict / ort decode = {result['speedup_decode_vs_torch_predict']:.2f}x, "
            f"/ ort nms = {result['speedup_nms_vs_torch_predict']:.2f}x; "
            f"detections ort {result.get('detections', 0)}, torch {result['torch_detections']}"
        )


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    main()
