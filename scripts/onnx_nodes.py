"""Graph size with and without onnxslim, and that the simplified graph computes the same.

Exports one student (the R18 of mmdet's ``ld_r18-gflv1-r101``, 80 classes, random weights
unless ``--config``/``--checkpoint``) with each ``--nms`` kind, static and dynamic, once
as traced (``--no-simplify``) and once simplified (the default), counts the nodes, and
runs both graphs in ONNX Runtime on the same input: the largest absolute difference of
every output is printed.

Usage::

    python scripts/onnx_nodes.py --size 640x640 --out onnx_nodes.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from ldexport.export.deploy import build_deploy_model
from ldexport.export.exporter import export_onnx
from ldexport.export.options import ExportOptions, parse_size
from ldexport.model import ModelConfig, TestConfig, build_detector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="640x640", help="HxW of the export")
    parser.add_argument("--config", help="ldexport config of a student (default: R18, 80 classes)")
    parser.add_argument("--checkpoint", help="its weights")
    parser.add_argument("--cls-bias", type=float, default=-2.5, help="gfl_cls.bias, so that NMS has candidates")
    parser.add_argument("--out", default="onnx_nodes.json")
    args = parser.parse_args()
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    if args.config:
        from ldexport.config import load_config
        from ldexport.interop.checkpoint import load_detector

        config = load_config(args.config)
        model = load_detector(config.model, args.checkpoint).model if args.checkpoint else build_detector(config.model)
        test_cfg = config.test
    else:
        model, test_cfg = build_detector(ModelConfig(depth=18, num_classes=80)), TestConfig()
    with torch.no_grad():
        model.head.gfl_cls.bias.fill_(args.cls_bias)
    model.eval()
    height, width = parse_size(args.size)
    images = np.random.default_rng(0).standard_normal((1, 3, height, width), dtype=np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for nms in ("none", "onnx"):
            for dynamic in (False, True):
                counts, outputs = {}, {}
                for simplify in (False, True):
                    options = ExportOptions(height=height, width=width, nms=nms, dynamic=dynamic, simplify=simplify)
                    deploy = build_deploy_model(model, test_cfg=test_cfg, nms=nms, static_size=None if dynamic else (height, width))
                    path = export_onnx(deploy, Path(folder) / f"{nms}_{dynamic}_{simplify}.onnx", options=options, metadata={})
                    counts[simplify] = len(onnx.load(str(path)).graph.node)
                    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                    outputs[simplify] = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images})))
                difference = {
                    name: float(np.abs(outputs[True][name].astype(np.float64) - outputs[False][name]).max(initial=0.0))
                    for name in outputs[False]
                }
                row = {"nms": nms, "dynamic": dynamic, "nodes_traced": counts[False], "nodes_simplified": counts[True],
                       "max_abs_difference": difference}  # fmt: skip
                print(json.dumps(row), flush=True)
                rows.append(row)
    Path(args.out).write_text(json.dumps({"size": [height, width], "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
