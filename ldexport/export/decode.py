"""GFL's box decoding as graph operations, for the exported model.

Legend: ``N`` images, ``A_l = H_l * W_l`` anchor points of level ``l`` (row-major, x
fastest), ``A`` all levels' points, ``C`` classes, ``R = reg_max + 1`` bins, ``s`` the
level's stride.

Per level, exactly the arithmetic of :meth:`GFLDetector.predict`:

- scores: ``sigmoid`` of the class logits, ``[N, A_l, C]``;
- distances: softmax over the ``R`` bins, expectation with the bin positions
  ``project = 0..reg_max``, times ``s``, ``[N, A_l, 4]``;
- anchor points: the centres of mmdet's anchors, ``((x*s - h) + (x*s + h)) / 2`` with
  ``h`` half the anchor side (mmdet's ``center_offset=0``), computed in the graph from the
  feature map's shape, so that one graph serves every input size (:class:`GridPoints`),
  or stored as constants for a static input size (:class:`FixedPoints`);
- boxes: ``distance2bbox``, clipped to the input's ``(W, H)``.

The expectation is a ``MatMul`` of ``project`` ``[1, R]`` with the probabilities laid out
bins-before-points, ``[N, 4, R, A_l]``, which is how the head's ``[N, 4R, H_l, W_l]``
output already lies (a free reshape). Measured in onnxruntime 1.32 on one CPU thread over
all five levels, median of 200 runs: 1.4 ms at 640x640 and 3.4 ms at 800x1344, against
9.7 / 26.3 ms for the same expectation as a fixed 1x1 convolution (``[N*4, R, H, W]``),
16.2 / 33.5 ms as a grouped 1x1 convolution on ``[N, 4R, H, W]`` and 12.8 / 20.5 ms for a
``MatMul`` on the points-before-bins layout ``[N, A_l, 4, R]``, which needs a transpose
of every logit. The chosen layout transposes only the four distances. In the full R18
student (256 channels, 80 classes, ``scripts/bench_onnx.py``) the whole decoding stage alone takes
0.9% of the network's onnxruntime time at 640x640 and 0.8% at 800x1344.

Every node this module creates is named under the ``decode/`` scope (the module is the
deploy wrapper's ``decode`` attribute), which TensorRT builds keep in fp32
(:data:`ldexport.export.scopes.DECODE_PATTERN`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Decode(nn.Module):
    """Decodes the head's raw per-level outputs into boxes and scores, in the graph.

    Args:
        strides: stride of every pyramid level.
        reg_max: largest distance bin (``R = reg_max + 1``).
        octave_base_scale: anchor side in strides (anchor points are anchor centres).
        featmap_sizes: ``(H_l, W_l)`` of every level for a static input size: the anchor
            points become constants of the graph; ``None`` computes them from the
            feature maps' shapes (dynamic input sizes).
        nms: an optional stage turning the per-level boxes and scores into detections
            (:mod:`ldexport.export.nms`); without it the dense ``boxes`` and ``scores``
            are returned.
    """

    def __init__(
        self,
        *,
        strides: Sequence[int],
        reg_max: int,
        octave_base_scale: float,
        featmap_sizes: Sequence[tuple[int, int]] | None = None,
        nms: nn.Module | None = None,
    ):
        super().__init__()
        self.strides = tuple(int(stride) for stride in strides)
        self.reg_max = reg_max
        self.register_buffer("project", torch.arange(reg_max + 1, dtype=torch.float32).reshape(1, reg_max + 1))
        if featmap_sizes is None:
            self.points: nn.Module = GridPoints(self.strides, octave_base_scale)
        else:
            self.points = FixedPoints(self.strides, octave_base_scale, featmap_sizes)
        self.nms = nms

    project: Tensor

    def forward(
        self,
        cls_scores: Sequence[Tensor],
        bbox_preds: Sequence[Tensor],
        image_height: int,
        image_width: int,
    ) -> tuple[Tensor, ...]:
        """Decodes a batch.

        Args:
            cls_scores: per level ``[N, C, H_l, W_l]`` logits.
            bbox_preds: per level ``[N, 4 * R, H_l, W_l]`` bin logits.
            image_height, image_width: the input's size, the clipping bounds (while
                exporting, 0-d tensors the tracer follows back to the input's shape).

        Returns:
            ``boxes [N, A, 4]`` xyxy input pixels and ``scores [N, A, C]``; or, with an NMS
            stage, that stage's outputs.
        """
        # [4]: (W, H, W, H), the upper bound of x1, y1, x2, y2
        height, width = torch.scalar_tensor(image_height), torch.scalar_tensor(image_width)
        bounds = torch.stack((width, height, width, height))
        boxes, scores = [], []
        for level, (cls_score, bbox_pred) in enumerate(zip(cls_scores, bbox_preds)):
            boxes.append(self.level_boxes(bbox_pred, level, bounds))
            # [N, C, A_l] -> [N, A_l, C]
            scores.append(cls_score.sigmoid().flatten(2).transpose(1, 2))
        if self.nms is not None:
            return self.nms(boxes, scores)
        return torch.cat(boxes, dim=1), torch.cat(scores, dim=1)

    def level_boxes(self, bbox_pred: Tensor, level: int, bounds: Tensor) -> Tensor:
        """Boxes of one level.

        Args:
            bbox_pred: ``[N, 4 * R, H_l, W_l]`` bin logits.
            level: the level's index.
            bounds: ``[4]`` ``(W, H, W, H)``.

        Returns:
            ``[N, A_l, 4]`` xyxy boxes clipped to the input.
        """
        batch, _, height, width = bbox_pred.shape
        stride = self.strides[level]
        bins = self.reg_max + 1
        # [N, 4, R, A_l]: bins before points, as the head lays them out
        probabilities = bbox_pred.reshape(batch, 4, bins, -1).softmax(dim=2)
        # [N, 4, 1, A_l] -> [N, A_l, 4], in pixels
        distances = torch.matmul(self.project, probabilities).flatten(1, 2).transpose(1, 2) * stride
        # [A_l, 2]
        points = self.points(level, height, width)
        top_left = points - distances[..., :2]
        bottom_right = points + distances[..., 2:]
        boxes = torch.cat((top_left, bottom_right), dim=-1)
        return torch.minimum(boxes.clamp(min=0), bounds)


class GridPoints(nn.Module):
    """Anchor points computed in the graph from each feature map's shape (dynamic sizes).

    Args:
        strides: stride of every level.
        octave_base_scale: anchor side in strides.
    """

    def __init__(self, strides: Sequence[int], octave_base_scale: float):
        super().__init__()
        self.strides = tuple(strides)
        self.octave_base_scale = float(octave_base_scale)

    def forward(self, level: int, height: int, width: int) -> Tensor:
        """Anchor centres of one level, as :mod:`ldexport.model.priors` makes them.

        Args:
            level: the level's index.
            height, width: the level's feature map size (while exporting, 0-d tensors
                traced from the feature map's shape).

        Returns:
            ``[A_l, 2]`` ``(x, y)``, row-major over the feature map.
        """
        stride = self.strides[level]
        half = self.octave_base_scale * stride * 0.5
        # the anchors' x1/x2 (y1/y2) and their midpoint, in the order the model computes them
        shift_x = torch.arange(width, dtype=torch.float32) * stride
        shift_y = torch.arange(height, dtype=torch.float32) * stride
        center_x = ((shift_x - half) + (shift_x + half)) / 2
        center_y = ((shift_y - half) + (shift_y + half)) / 2
        # [H_l, W_l] each
        grid_y, grid_x = torch.meshgrid(center_y, center_x, indexing="ij")
        return torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1)


class FixedPoints(nn.Module):
    """Anchor points of one static input size, stored as constants (buffers ``level_{l}``).

    Args:
        strides: stride of every level.
        octave_base_scale: anchor side in strides.
        featmap_sizes: ``(H_l, W_l)`` of every level.
    """

    def __init__(self, strides: Sequence[int], octave_base_scale: float, featmap_sizes: Sequence[tuple[int, int]]):
        super().__init__()
        grid = GridPoints(strides, octave_base_scale)
        for level, (height, width) in enumerate(featmap_sizes):
            self.register_buffer(f"level_{level}", grid(level, height, width))

    def forward(self, level: int, height: int, width: int) -> Tensor:
        """The stored ``[A_l, 2]`` points of ``level`` (the size arguments are not used)."""
        return self.get_buffer(f"level_{level}")
