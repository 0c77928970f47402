"""The parity runners: PyTorch (the reference) and ONNX Runtime (TensorRT's is
:class:`ldexport.trt.runner.TensorRTRunner`).

Each implements :class:`~ldexport.parity.base.Runner`: named numpy inputs in, outputs
named as the ONNX graph names them out. The PyTorch runner computes what the graph should:
the student's raw outputs decoded by the model's own functions (``Integral``, the anchor
generator, ``distance2bbox``), and ``predict``'s detections from the same raw outputs.

Legend: ``N`` images, ``A`` anchor points, ``C`` classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ldexport.data.input_spec import INPUT_NAME, InputSpec
from ldexport.data.transforms import normalize
from ldexport.errors import LdexportError
from ldexport.model.bbox import distance2bbox
from ldexport.model.detector import Detections, GFLDetector, TestConfig, decode_detections
from ldexport.model.gfl_head import GFLHead
from ldexport.parity.base import Runner
from ldexport.parity.detections import pad_detections

# onnxruntime providers that do not compute (Azure is a remote-call shim)
_SKIPPED_PROVIDERS = ("AzureExecutionProvider",)


@dataclass
class TorchResult:
    """One PyTorch run.

    Attributes:
        outputs: the graph's outputs as PyTorch computes them.
        detections: ``predict``'s detections, one per image.
        featmap_sizes: ``(H_l, W_l)`` of every level.
    """

    outputs: dict[str, np.ndarray]
    detections: list[Detections]
    featmap_sizes: list[tuple[int, int]]


class TorchRunner(Runner):
    """The student in PyTorch, decoded as the exported graph decodes.

    Args:
        model: the detector (eval mode).
        test_cfg: ``predict``'s settings.
        spec: the input contract of the feeds (uint8 BGR ones are normalised here, as the
            graph would, with the spec's mean and std).
        detections: return ``num_dets``/``det_*`` (a graph with NMS) instead of the dense
            ``boxes``/``scores``.
        device: where the model runs (it is moved there).
        autocast: run the network under autocast to this dtype (``torch.bfloat16``);
            ``None`` for fp32. The decoding runs in fp32 either way.
    """

    name = "pytorch"

    def __init__(
        self,
        model: GFLDetector,
        *,
        test_cfg: TestConfig,
        spec: InputSpec,
        detections: bool = False,
        device: torch.device | str = "cpu",
        autocast: torch.dtype | None = None,
    ):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.test_cfg = test_cfg
        self.spec = spec
        self.detections = detections
        self.autocast = autocast

    @property
    def placement(self) -> str:
        """The torch device, and the autocast dtype if any."""
        return str(self.device) + (f" {str(self.autocast).removeprefix('torch.')} autocast" if self.autocast is not None else "")

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the student; outputs named as the graph's (only those are computed)."""
        cls_scores, bbox_preds, image_size = self._forward(feeds)
        if self.detections:
            return pad_detections(self._detections(cls_scores, bbox_preds, image_size), self.test_cfg.max_per_img)
        boxes, scores = decode_dense(self.model.head, cls_scores, bbox_preds, image_size)
        return {"boxes": boxes.cpu().numpy(), "scores": scores.cpu().numpy()}

    def predict(self, feeds: dict[str, np.ndarray]) -> list[Detections]:
        """``predict``'s detections of every image of the input (in input pixels), alone."""
        return self._detections(*self._forward(feeds))

    def run(self, feeds: dict[str, np.ndarray]) -> TorchResult:
        """Runs the student once: the graph's outputs and ``predict``'s detections."""
        cls_scores, bbox_preds, image_size = self._forward(feeds)
        found = self._detections(cls_scores, bbox_preds, image_size)
        if self.detections:
            outputs = pad_detections(found, self.test_cfg.max_per_img)
        else:
            boxes, scores = decode_dense(self.model.head, cls_scores, bbox_preds, image_size)
            outputs = {"boxes": boxes.cpu().numpy(), "scores": scores.cpu().numpy()}
        sizes = [(int(score.shape[2]), int(score.shape[3])) for score in cls_scores]
        return TorchResult(outputs=outputs, detections=found, featmap_sizes=sizes)

    @torch.no_grad()
    def _forward(self, feeds: dict[str, np.ndarray]) -> tuple[list[Tensor], list[Tensor], tuple[int, int]]:
        """The network's per-level outputs (fp32, on the model's device) and the input's ``(H, W)``."""
        images = self.model_input(feeds[INPUT_NAME]).to(self.device)
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            cls_scores, bbox_preds = self.model(images)
        cls_scores = [score.float() for score in cls_scores]
        bbox_preds = [pred.float() for pred in bbox_preds]
        return cls_scores, bbox_preds, (int(images.shape[2]), int(images.shape[3]))

    def _detections(self, cls_scores: list[Tensor], bbox_preds: list[Tensor], image_size: tuple[int, int]) -> list[Detections]:
        """``predict``'s detections, decoded on the model's device, returned on the CPU."""
        found = decode_detections(self.model.head, cls_scores, bbox_preds, [image_size] * len(cls_scores[0]), self.test_cfg)
        return [Detections(item.boxes.cpu(), item.scores.cpu(), item.labels.cpu()) for item in found]

    def model_input(self, images: np.ndarray) -> Tensor:
        """A feed as the detector's input: ``[N, 3, H, W]`` normalised RGB."""
        tensor = torch.from_numpy(np.ascontiguousarray(images))
        if not self.spec.preprocess_in_graph:
            return tensor.float()
        # [N, H, W, 3] BGR bytes -> [N, 3, H, W] RGB, normalised as mmdet does
        return normalize(tensor.flip(-1).permute(0, 3, 1, 2), self.spec.mean, self.spec.std)


def decode_dense(
    head: GFLHead, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor], image_size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """The dense decoding in PyTorch, with the head's own functions (as ``predict`` decodes).

    Args:
        head: the GFL head (``integral``, ``anchor_grid``, ``strides``).
        cls_scores: per level ``[N, C, H_l, W_l]``.
        bbox_preds: per level ``[N, 4 * R, H_l, W_l]``.
        image_size: ``(H, W)`` to clip to.

    Returns:
        ``boxes [N, A, 4]`` and ``scores [N, A, C]``.
    """
    grid = head.anchor_grid([score.shape[-2:] for score in cls_scores], cls_scores[0].device)
    points = grid.points.split(grid.num_level_anchors)
    boxes, scores = [], []
    for cls_score, bbox_pred, level_points, stride in zip(cls_scores, bbox_preds, points, head.strides):
        batch = cls_score.shape[0]
        # [N, A_l, 4] in pixels
        distances = (head.integral(bbox_pred.permute(0, 2, 3, 1)) * stride).reshape(batch, -1, 4)
        boxes.append(distance2bbox(level_points, distances, max_shape=image_size))
        scores.append(cls_score.permute(0, 2, 3, 1).reshape(batch, -1, head.num_classes).sigmoid())
    return torch.cat(boxes, dim=1), torch.cat(scores, dim=1)


class OnnxRuntimeRunner(Runner):
    """An ONNX file in ONNX Runtime, on every installed provider (CPU last).

    Args:
        path: the ``.onnx`` file.
        providers: providers to use, in order; all installed ones when omitted.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None):
        import onnxruntime as ort

        available = [name for name in ort.get_available_providers() if name not in _SKIPPED_PROVIDERS]
        chosen = list(providers) if providers else available
        unknown = [name for name in chosen if name not in available]
        if unknown:
            raise LdexportError(f"onnxruntime provider {unknown[0]} is not installed (installed: {', '.join(available)})")
        # fp32 parity: no TF32 on CUDA
        options = [{"use_tf32": 0} if name == "CUDAExecutionProvider" else {} for name in chosen]
        try:
            self.session = ort.InferenceSession(str(path), providers=chosen, provider_options=options)
        except Exception as error:  # onnxruntime raises its own exception types
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise LdexportError(f"onnxruntime cannot load {path}: {first_line}") from None
        self.name = "onnxruntime"
        self.providers = self.session.get_providers()
        self.output_names = [output.name for output in self.session.get_outputs()]

    @property
    def placement(self) -> str:
        """The execution providers the session runs on, first first."""
        return ", ".join(self.providers)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the session; outputs by name."""
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
