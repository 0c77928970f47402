"""The deploy wrapper: the one module whose trace is the exported ONNX graph.

``DeployDetector`` composes, explicitly and once, what deployment runs::

    [preprocess/]  uint8 BGR [N, H, W, 3] -> normalised [N, 3, H, W]   (optional)
    detector/      ResNet + FPN + GFL head -> per-level logits
    decode/        sigmoid, softmax + expectation (MatMul), * stride, anchor points,
                   distance2bbox, clip -> boxes [N, A, 4], scores [N, A, C]
    decode/nms/    per-level top-k, min size, class-aware NMS -> detections (optional)

The trained detector is wrapped, never changed: it is put in eval mode, as for any
inference, and nothing else is switched on it; no branch asks whether an export is running. With preprocessing, the wrapper holds a copy
whose first convolution takes BGR (:func:`~ldexport.export.preprocess.with_bgr_input`).
The wrapper also runs eagerly, which the tests use to check the graph against it.

Legend: ``N`` images, ``A`` anchor points of all levels, ``C`` classes, ``K`` detections.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ldexport.errors import LdexportError
from ldexport.export.decode import Decode
from ldexport.export.nms import DETECTION_OUTPUTS, MAX_TOPK, EfficientNMS, OnnxNMS
from ldexport.export.options import NmsKind
from ldexport.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ldexport.export.preprocess import Preprocess, with_bgr_input
from ldexport.model.detector import GFLDetector, TestConfig

DENSE_OUTPUTS = ("boxes", "scores")


class DeployDetector(nn.Module):
    """A GFL detector with its decoding (and optionally preprocessing and NMS) built in.

    Args:
        detector: the trained detector, in eval mode (BGR-input copy when preprocessing).
        decode: the decoding stage, with its optional NMS stage.
        preprocess: the optional in-graph preprocessing.
    """

    def __init__(self, *, detector: GFLDetector, decode: Decode, preprocess: Preprocess | None = None):
        super().__init__()
        self.preprocess = preprocess
        self.detector = detector
        self.decode = decode

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the graph outputs, in order."""
        return DENSE_OUTPUTS if self.decode.nms is None else DETECTION_OUTPUTS

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """Args: images ``[N, 3, H, W]`` normalised RGB, or ``[N, H, W, 3]`` uint8 BGR with
        preprocessing.

        Returns:
            ``boxes [N, A, 4]`` xyxy input pixels and ``scores [N, A, C]``; with NMS,
            ``num_dets [N, 1]``, ``det_boxes [N, K, 4]``, ``det_scores [N, K]``,
            ``det_labels [N, K]``.
        """
        inputs = images if self.preprocess is None else self.preprocess(images)
        cls_scores, bbox_preds = self.detector(inputs)
        return self.decode(cls_scores, bbox_preds, inputs.shape[2], inputs.shape[3])


def build_deploy_model(
    detector: GFLDetector,
    *,
    test_cfg: TestConfig,
    nms: NmsKind = "none",
    preprocess: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    static_size: tuple[int, int] | None = None,
) -> DeployDetector:
    """Wraps a trained detector for export.

    Args:
        detector: the trained detector (put in eval mode, otherwise not modified).
        test_cfg: ``predict``'s decoding settings, reproduced by the NMS stage.
        nms: ``"none"``, ``"onnx"`` or ``"efficient"`` (see :mod:`ldexport.export.nms`).
        preprocess: take uint8 BGR ``[N, H, W, 3]`` and normalise with ``mean``/``std``.
        mean, std: RGB normalisation, pixel scale 0-255.
        static_size: ``(H, W)`` of a static export: anchor points become constants;
            ``None`` computes them in the graph for any size.

    Raises:
        LdexportError: NMS settings TensorRT or NonMaxSuppression cannot take.
    """
    detector.eval()
    head = detector.head
    nms_stage = None if nms == "none" else _nms_stage(nms, head.num_classes, test_cfg)
    decode = Decode(
        strides=head.strides,
        reg_max=head.reg_max,
        octave_base_scale=head.octave_base_scale,
        featmap_sizes=None if static_size is None else featmap_sizes(detector, static_size),
        nms=nms_stage,
    )
    network = with_bgr_input(detector) if preprocess else detector
    deploy = DeployDetector(detector=network, decode=decode, preprocess=Preprocess(mean, std) if preprocess else None)
    return deploy.eval()


@torch.no_grad()
def featmap_sizes(detector: GFLDetector, size: tuple[int, int]) -> list[tuple[int, int]]:
    """``(H_l, W_l)`` of every level for a ``size`` input, from one forward pass."""
    cls_scores, _ = detector(torch.zeros(1, 3, *size))
    return [(int(score.shape[2]), int(score.shape[3])) for score in cls_scores]


def _nms_stage(kind: NmsKind, num_classes: int, cfg: TestConfig) -> nn.Module:
    _check_nms_settings(cfg)
    if kind == "onnx":
        return OnnxNMS(
            nms_pre=cfg.nms_pre,
            score_thr=cfg.score_thr,
            iou_threshold=cfg.iou_threshold,
            max_det=cfg.max_per_img,
            min_bbox_size=cfg.min_bbox_size,
        )
    if kind == "efficient":
        return EfficientNMS(
            num_classes=num_classes,
            nms_pre=cfg.nms_pre,
            score_thr=cfg.score_thr,
            iou_threshold=cfg.iou_threshold,
            max_det=cfg.max_per_img,
            min_bbox_size=cfg.min_bbox_size,
        )
    raise LdexportError(f"unknown NMS kind {kind!r} (none, onnx, efficient)")


def _check_nms_settings(cfg: TestConfig) -> None:
    for name, value in (("test.nms_pre", cfg.nms_pre), ("test.max_per_img", cfg.max_per_img)):
        if not 1 <= value <= MAX_TOPK:
            raise LdexportError(f"{name}={value}: in-graph NMS takes 1 to {MAX_TOPK} (TensorRT's TopK limit)")
    if not 0 <= cfg.score_thr < 1:
        raise LdexportError(f"test.score_thr={cfg.score_thr}: in-graph NMS takes a score threshold in [0, 1)")
    if not 0 <= cfg.iou_threshold <= 1:
        raise LdexportError(f"test.iou_threshold={cfg.iou_threshold}: NonMaxSuppression takes [0, 1]")
