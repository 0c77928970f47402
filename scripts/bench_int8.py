"""INT8 (Q/DQ) against fp32 in ONNX Runtime on the CPU: AP and latency.

For each ``--model NAME CONFIG CHECKPOINT CALIB_DIR``, in one run:

- the fp32 graph (``ldexport onnx --dynamic``, dense outputs) and the PyTorch student on the
  config's validation split, through the graph's input contract (``evaluate_model``; the
  difference between them is export's, not quantization's);
- ``ldexport quantize`` of that graph with each calibration ``--methods`` and each number
  of calibration images ``--num-images`` (the decoding kept float), and with the decoding
  quantized too (``--decode-method``, ``--decode-images``): AP, AP50 and the drop against
  the fp32 graph;
- a sanity count of the graph: nodes quantized, Q/DQ nodes.

Then ``--latency-shape`` (batch 1): ONNX Runtime CPU latency of the R18 student of mmdet's
``ld_r18-gflv1-r101`` (random weights, every parameter perturbed so that no two folded
biases are equal) in fp32, in ldexport's int8 (symmetric, as TensorRT takes it), and in
ONNX Runtime's CPU recipe (uint8 asymmetric activations, which TensorRT refuses): timed
round-robin, one run of each per round, medians reported.

Usage::

    python scripts/bench_int8.py \\
        --model shapes configs/shapes_ld_tiny.yaml work_dirs/demo/student/best.pth data/shapes/train \\
        --model coco128 configs/coco128_gfl_teacher_tiny.yaml work_dirs/coco128/latest.pth \\
            ../shared/data/coco128/images/train2017 \\
        --work-dir work_dirs/bench_int8 --out work_dirs/bench_int8/results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ldexport import __version__
from ldexport.config import load_config
from ldexport.engine.data import load_split, prepare_shapes
from ldexport.export.options import ExportOptions, parse_size
from ldexport.export.student import export_student
from ldexport.io import list_images
from ldexport.quantize.qdq import QuantizeSettings, quantize_onnx
from ldexport.runtime.evaluate import evaluate_model
from ldexport.runtime.bench import time_calls
from ldexport.runtime.model import open_checkpoint, open_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs=4, action="append", default=[], metavar=("NAME", "CONFIG", "CHECKPOINT", "CALIB_DIR"))
    parser.add_argument("--methods", nargs="+", default=["minmax", "entropy", "percentile"])
    parser.add_argument("--num-images", nargs="+", type=int, default=[32, 128, 512])
    parser.add_argument("--default-images", type=int, default=128, help="Images of the method comparison.")
    parser.add_argument("--decode-method", default="percentile", help="Method of the decode-quantized counterfactual.")
    parser.add_argument("--work-dir", type=Path, default=Path("work_dirs/bench_int8"))
    parser.add_argument("--latency-shape", default="640x640", help="HxW of the latency runs; empty to skip them.")
    parser.add_argument("--latency-rounds", type=int, default=10)
    parser.add_argument("--latency-calib", type=Path, help="Calibration images of the latency models [the first --model's].")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads in the latency runs.")
    parser.add_argument("--out", type=Path, help="Write the results as JSON.")
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    results: dict = {
        "ldexport": __version__,
        "machine": platform.processor() or platform.machine(),
        "onnxruntime": _ort_version(),
        "models": {},
    }
    for name, config, checkpoint, calib in args.model:
        results["models"][name] = accuracy(name, Path(config), Path(checkpoint), Path(calib), args)
        _save(results, args.out)
    if args.latency_shape:
        results["latency"] = latency(parse_size(args.latency_shape), args)
        _save(results, args.out)
    print(json.dumps(results, indent=2))


def accuracy(name: str, config_path: Path, checkpoint: Path, calib_dir: Path, args: argparse.Namespace) -> dict:
    """AP of the fp32 graph, of PyTorch, and of every int8 variant (see the module doc)."""
    config = load_config(config_path)
    prepare_shapes(config.data)
    records = load_split(config.data, "val")
    folder = args.work_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    long_side, short_side = config.data.scale
    options = ExportOptions(height=short_side, width=long_side, dynamic=True)
    fp32_path = export_student(config, checkpoint, folder / "fp32.onnx", options).path
    fp32 = open_onnx(fp32_path)
    rows = [
        _row("pytorch", evaluate_model(open_checkpoint(config, checkpoint, spec=fp32.spec), records)),
        _row("fp32 onnx", evaluate_model(fp32, records)),
    ]
    print(f"[{name}] {rows[0]}\n[{name}] {rows[1]}", flush=True)
    images = list_images(calib_dir, recursive=True)
    variants = [(method, args.default_images, False) for method in args.methods]
    variants += [(args.decode_method, count, False) for count in args.num_images if count != args.default_images]
    variants += [(args.decode_method, args.default_images, True)]
    for method, count, decode in variants:
        settings = QuantizeSettings(method=method, num_images=count, quantize_decode=decode)  # type: ignore[arg-type]
        output = folder / f"int8_{method}_{count}{'_decode' if decode else ''}.onnx"
        started = time.perf_counter()
        result = quantize_onnx(fp32_path, output, images, settings, progress=False)
        seconds = time.perf_counter() - started
        metrics = evaluate_model(open_onnx(output), records)
        row = _row(
            "int8 decode quantized" if decode else "int8",
            metrics,
            method=method,
            calibration_images=len(result.images),
            quantized_nodes=result.quantized_nodes,
            qdq_nodes=result.qdq_nodes,
            quantize_s=round(seconds, 1),
            ap_drop=round(rows[1]["AP"] - metrics["AP"], 4),
        )
        rows.append(row)
        print(f"[{name}] {row}", flush=True)
    return {
        "config": str(config_path),
        "checkpoint": str(checkpoint),
        "calibration_folder": str(calib_dir),
        "calibration_available": len(images),
        "val_images": len(records),
        "rows": rows,
    }


def latency(size: tuple[int, int], args: argparse.Namespace) -> dict:
    """fp32 against int8 (symmetric, and ONNX Runtime's uint8 CPU recipe), batch 1."""
    import onnxruntime as ort

    from ldexport.config import Config
    from ldexport.model import ModelConfig, build_detector

    folder = args.work_dir / "latency"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_detector(ModelConfig(depth=18, num_classes=80))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    checkpoint = folder / "r18_random.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    config = Config()
    config.model = ModelConfig(depth=18, num_classes=80)
    options = ExportOptions(height=size[0], width=size[1])
    paths = {"fp32": export_student(config, checkpoint, folder / "r18_fp32.onnx", options).path}
    calib = list_images(args.latency_calib or args.model[0][3], recursive=True)
    settings = QuantizeSettings(method="minmax", num_images=8)
    paths["int8 symmetric (TensorRT)"] = quantize_onnx(paths["fp32"], folder / "r18_int8.onnx", calib, settings, progress=False).path
    paths["int8 uint8-asymmetric (ORT CPU recipe)"] = _cpu_recipe(paths["fp32"], folder / "r18_u8.onnx", calib[:8])
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = args.threads
    sessions = {name: ort.InferenceSession(str(path), session_options, providers=["CPUExecutionProvider"]) for name, path in paths.items()}
    feed = {"images": np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)}
    calls = {name: (lambda session=session: session.run(None, feed)) for name, session in sessions.items()}
    times = time_calls(calls, warmup=1, runs=args.latency_rounds)
    median = {name: float(np.median(values)) for name, values in times.items()}
    return {
        "shape": [1, 3, *size],
        "threads": args.threads,
        "rounds": args.latency_rounds,
        "median_ms": {name: round(value, 1) for name, value in median.items()},
        "speedup_vs_fp32": {name: round(median["fp32"] / value, 2) for name, value in median.items()},
    }


def _cpu_recipe(source: Path, output: Path, images: list[Path]) -> Path:
    """ONNX Runtime's recommendation for x86 CPUs: uint8 asymmetric activations, int8
    weights, on the same nodes ldexport quantizes (decoding float). Not for TensorRT."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from ldexport.export.metadata import read_onnx_info
    from ldexport.quantize.calibration import CalibrationReader
    from ldexport.quantize.graph import FLOAT_PATTERNS, QUANTIZED_OP_TYPES, inline_constant_identities, matching_nodes, nodes_to_quantize

    model = onnx.load(str(source))
    inline_constant_identities(model)
    prepared = output.with_suffix(".float.onnx")
    onnx.save(model, str(prepared))
    floating = matching_nodes(model, FLOAT_PATTERNS)
    reader = CalibrationReader(images, read_onnx_info(source), progress=False)
    quantize_static(
        str(prepared), str(output), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OP_TYPES),
        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        nodes_to_quantize=nodes_to_quantize(model, floating), nodes_to_exclude=sorted(floating),
        calibrate_method=CalibrationMethod.MinMax, extra_options={"WeightSymmetric": True},
    )  # fmt: skip
    prepared.unlink()
    return output


def _row(variant: str, metrics: dict[str, float], **extra) -> dict:
    return {"variant": variant, **extra, "AP": round(metrics["AP"], 4), "AP50": round(metrics["AP50"], 4)}


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _save(results: dict, path: Path | None) -> None:
    if path is not None:
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
