"""A tiny detector with the deploy graph's shape: conv, scores, distribution decode under ``decode/``."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from onnx import helper

import json

from ldexport.data.input_spec import InputSpec
from ldexport.export.keys import INPUT_SPEC_KEY, profile_metadata

# N images, A anchor points, R = reg_max + 1 bins.
REG_MAX = 7
PROFILE = {"images": ((1, 3, 32, 32), (1, 3, 64, 64), (2, 3, 96, 96))}


class _Decode(torch.nn.Module):
    """Distribution -> distances -> boxes, exported under the ``decode/`` name scope."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("project", torch.arange(REG_MAX + 1, dtype=torch.float32))

    def forward(self, distributions: torch.Tensor, stride: int) -> torch.Tensor:
        n, _, h, w = distributions.shape
        bins = distributions.flatten(2).transpose(1, 2).reshape(n, h * w, 4, REG_MAX + 1)
        distances = bins.softmax(-1) @ self.project * stride  # [N, A, 4]
        ys = torch.arange(h, dtype=torch.float32) * stride
        xs = torch.arange(w, dtype=torch.float32) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centers = torch.stack([cx, cy], -1).reshape(1, h * w, 2)  # [1, A, 2]
        return torch.cat([centers - distances[..., :2], centers + distances[..., 2:]], -1)


class TinyDetector(torch.nn.Module):
    """A conv backbone, a classification and a distribution branch, and the decoding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=8, padding=1)
        self.cls = torch.nn.Conv2d(8, 2, 1)
        self.reg = torch.nn.Conv2d(8, 4 * (REG_MAX + 1), 1)
        self.decode = _Decode()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.relu(self.stem(images))
        scores = self.cls(features).sigmoid().flatten(2).transpose(1, 2)  # [N, A, C]
        boxes = self.decode(self.reg(features), 8)  # [N, A, 4]
        return scores, boxes


def export_tiny(path: Path) -> Path:
    """Exports :class:`TinyDetector` with dynamic N/H/W and the profile/normalisation metadata."""
    torch.onnx.export(
        TinyDetector().eval(),
        (torch.rand(1, 3, 64, 64),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["images"],
        output_names=["scores", "boxes"],
        dynamic_axes={"images": {0: "N", 2: "H", 3: "W"}, "scores": {0: "N", 1: "A"}, "boxes": {0: "N", 1: "A"}},
    )
    model = onnx.load(str(path))
    props = profile_metadata(PROFILE)
    props[INPUT_SPEC_KEY] = json.dumps(InputSpec(scale=(96, 96)).to_json())
    helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path
