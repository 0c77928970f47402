"""Deformable convolution (DCN v1) in pure PyTorch, as mmcv's ``DeformConv2dPack``.

A deformable convolution samples its ``kh x kw`` taps not on the regular grid but at the
grid positions moved by learned offsets, then applies the convolution weight to the
samples. mmdet's ``dcn=dict(type='DCN', ...)`` is mmcv's ``DeformConv2dPack``: the
offsets come from an ordinary convolution (``conv_offset``, zero-initialised, with bias)
of the same input, kernel, stride, padding and dilation. The arithmetic is mmcv's:

* tap ``k = (i, j)`` of output pixel ``(y, x)`` reads the input at
  ``(y * stride - pad + i * dilation + dy_k, x * stride - pad + j * dilation + dx_k)``;
* offsets are laid out ``[dy_0, dx_0, dy_1, dx_1, ...]`` per deformable group, taps in
  row-major order; deformable group ``g`` moves the taps of the ``g``-th contiguous slice
  of input channels;
* the sample is bilinear, and each of the four neighbours outside the feature map counts
  as zero (a position a pixel or more outside reads 0).

Vectorised: one ``embedding_bag`` call samples all taps of all output pixels at once
(each sample a weighted sum of four rows of the channels-last input), written as a map in
which each output pixel's taps form a ``kh x kw`` patch; one ordinary convolution of
stride ``(kh, kw)`` (grouped for ResNeXt) then applies the weight. No compiled
extension; autograd gives the backward (input, offsets, weight), so a DCN model can be
trained too.

Legend: ``N`` images, ``I`` input channels, ``O`` output channels, ``G`` convolution
groups, ``G_d`` deformable groups, ``K = kh * kw`` taps, ``P = H_o * W_o`` output pixels.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldexport.errors import LdexportError


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def deform_conv2d(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    deform_groups: int = 1,
) -> Tensor:
    """mmcv's ``deform_conv2d`` (plus an optional bias), vectorised over taps and pixels.

    Args:
        x: ``[N, I, H, W]``.
        offset: ``[N, 2 * G_d * K, H_o, W_o]``, per deformable group ``(dy, dx)`` per tap.
        weight: ``[O, I / G, kh, kw]``.
        bias: optional ``[O]``, added to the output.
        stride, padding, dilation: as for ``conv2d``.
        groups: convolution groups ``G``.
        deform_groups: deformable groups ``G_d`` (each moves a slice of ``I / G_d`` channels).

    Returns:
        ``[N, O, H_o, W_o]``, channels-last in memory.
    """
    taps = deform_sample(x, offset, weight.shape[-2:], stride=stride, padding=padding, dilation=dilation, deform_groups=deform_groups)
    return F.conv2d(taps, weight, bias, stride=weight.shape[-2:], groups=groups)


def deform_sample(
    x: Tensor,
    offset: Tensor,
    kernel_size: tuple[int, int] | torch.Size,
    *,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    deform_groups: int,
) -> Tensor:
    """The deformable convolution's samples, laid out so that a plain convolution finishes it.

    Output pixel ``(y, x)``'s ``kh x kw`` taps are written to the ``kh x kw`` patch at
    ``(y * kh, x * kw)`` of the returned map, so ``conv2d(taps, weight, bias,
    stride=(kh, kw), groups=G)`` (no padding, no dilation) is the deformable convolution:
    oneDNN's or cuDNN's own (grouped) convolution applies the weight, and a caller may hand
    the map to a fused convolution instead (the frozen teacher's BatchNorm and ReLU).

    Every (output pixel, tap, deformable group) is one bag of ``torch.embedding_bag``: its
    four bilinear neighbours (rows of ``I / G_d`` channels of the channels-last input)
    summed with their bilinear weights, all in one call, the bags ordered so that the
    result is that map, channels-last, with no copy. The input is padded with zeros (1
    pixel before, 2 after, on both axes) and positions are clamped to ``[-1, size]``, so a
    neighbour outside the map reads a zero row without any mask: mmcv's sampling, which
    counts every outside neighbour as 0 and returns 0 at or beyond one pixel out.

    Args:
        x: ``[N, I, H, W]`` (channels-last memory avoids a copy).
        offset: ``[N, 2 * G_d * K, H_o, W_o]``.
        kernel_size: ``(kh, kw)``.
        stride, padding, dilation, deform_groups: the deformable convolution's.

    Returns:
        ``taps [N, I, H_o * kh, W_o * kw]``, channels-last.
    """
    n, channels, height, width = x.shape
    kh, kw = int(kernel_size[0]), int(kernel_size[1])
    h_out, w_out = offset.shape[-2:]
    taps = kh * kw
    device = x.device
    # Positions in at least float32: half precision would misplace taps by a pixel.
    dtype = offset.dtype if offset.dtype in (torch.float32, torch.float64) else torch.float32
    offset = offset.to(dtype)
    padded_h, padded_w = height + 3, width + 3
    # Sampling positions [N, H_o, W_o, G_d, K, 2 (y, x)]: the regular grid plus the offsets.
    grid, bounds = _tap_grid(h_out, w_out, kh, kw, stride, padding, dilation, height, width, device, dtype)
    offset = offset.reshape(n, deform_groups, taps, 2, h_out, w_out).permute(0, 4, 5, 1, 2, 3)
    position = torch.clamp(offset + grid, min=bounds[0], max=bounds[1])  # beyond [-1, size] every neighbour reads 0
    low = position.floor()
    frac = position - low  # [..., 2]
    # (1 - frac, frac) per axis in one op, then their outer product: the four weights.
    axis_weights = torch.addcmul(_LOW_HIGH[0].to(device, dtype), frac[..., None], _LOW_HIGH[1].to(device, dtype))
    bilinear = (axis_weights[..., 0, :, None] * axis_weights[..., 1, None, :]).flatten(-2).to(x.dtype)  # [N, H_o, W_o, G_d, K, 4]
    index = _neighbour_rows(low, padded_h, padded_w, deform_groups)  # [N, H_o, W_o, G_d, K, 4]
    # Bags in the order of the output map: [N, H_o, kh, W_o, kw, G_d].
    order = (0, 1, 4, 2, 5, 3, 6)
    index = index.view(n, h_out, w_out, deform_groups, kh, kw, 4).permute(order).reshape(-1, 4)
    bilinear = bilinear.view(n, h_out, w_out, deform_groups, kh, kw, 4).permute(order).reshape(-1, 4)
    table = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 2, 1, 2))  # [N, H + 3, W + 3, I], zero border
    table = table.reshape(-1, channels // deform_groups)  # rows of [I / G_d]
    samples = F.embedding_bag(index, table, mode="sum", per_sample_weights=bilinear)  # [N * P * K * G_d, I / G_d]
    return samples.view(n, h_out * kh, w_out * kw, channels).permute(0, 3, 1, 2)


def _neighbour_rows(low: Tensor, padded_h: int, padded_w: int, deform_groups: int) -> Tensor:
    """Rows of the padded channels-last table that the four neighbours of each tap read.

    Args:
        low: ``[N, H_o, W_o, G_d, K, 2]`` top-left neighbour (y, x), in unpadded pixels
            (``-1`` to ``size``).
        padded_h, padded_w: the table's padded map (1 pixel before, 2 after).
        deform_groups: ``G_d``: a pixel has one row per deformable group.

    Returns:
        ``index [N, H_o, W_o, G_d, K, 4]`` int64 (top-left, top-right, bottom-left,
        bottom-right), computed exactly in floating point (float64 past float32's 2^24
        rows) and converted once.
    """
    n, device = low.shape[0], low.device
    per_image = padded_h * padded_w * deform_groups
    dtype = low.dtype if n * per_image < 2**24 and low.dtype == torch.float32 else torch.float64
    row_major = torch.tensor([padded_w * deform_groups, deform_groups], device=device, dtype=dtype)
    first = torch.arange(n, device=device, dtype=dtype) * per_image + (padded_w + 1) * deform_groups  # +1: padding
    group = torch.arange(deform_groups, device=device, dtype=dtype)
    corners = torch.tensor([0.0, 1.0, padded_w, padded_w + 1.0], device=device, dtype=dtype) * deform_groups
    base = first.view(n, 1, 1, 1, 1, 1) + group.view(deform_groups, 1, 1) + corners  # [N, 1, 1, G_d, 1, 4]
    top_left = (low.to(dtype).reshape(-1, 2) @ row_major).view(low.shape[:-1])  # [N, H_o, W_o, G_d, K]
    return (top_left[..., None] + base).long()


# Rows (constant, coefficient) of ``(1 - frac, frac)`` for ``torch.addcmul``.
_LOW_HIGH = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])


@functools.lru_cache(maxsize=64)
def _tap_grid(
    h_out: int,
    w_out: int,
    kh: int,
    kw: int,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    height: int,
    width: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Undeformed tap positions ``[H_o, W_o, 1, K, 2]`` (y, x) in input pixels, and the
    clamping bounds ``[2 (min, max), 2 (y, x)]``; cached (a few per feature map size)."""
    rows = torch.arange(h_out, device=device, dtype=dtype) * stride[0] - padding[0]  # [H_o]
    cols = torch.arange(w_out, device=device, dtype=dtype) * stride[1] - padding[1]  # [W_o]
    tap_rows = torch.arange(kh, device=device, dtype=dtype).repeat_interleave(kw) * dilation[0]  # [K]
    tap_cols = torch.arange(kw, device=device, dtype=dtype).repeat(kh) * dilation[1]  # [K]
    y = (rows[:, None, None] + tap_rows).expand(h_out, w_out, kh * kw)
    x = (cols[:, None] + tap_cols).expand(h_out, w_out, kh * kw)
    bounds = torch.tensor([[-1.0, -1.0], [height, width]], device=device, dtype=dtype)
    return torch.stack((y, x), dim=-1)[:, :, None], bounds


class DeformConv2dPack(nn.Module):
    """mmcv's ``DeformConv2dPack`` (mmdet's ``DCN``): the offset convolution inside.

    State-dict keys are mmcv's: ``weight [O, I / G, kh, kw]``, ``conv_offset.weight``,
    ``conv_offset.bias``. No bias of its own (mmcv's has none; a norm follows it).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups: as
            ``nn.Conv2d``.
        deform_groups: deformable groups; the input channels must divide into them.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        deform_groups: int = 1,
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise LdexportError(f"DCN channels {in_channels} -> {out_channels} do not divide into {groups} groups")
        if in_channels % deform_groups:
            raise LdexportError(f"DCN input channels {in_channels} do not divide into {deform_groups} deformable groups")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups, self.deform_groups = groups, deform_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias: Tensor | None = None  # so that BatchNorm folding treats it like a bias-free conv
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = nn.Conv2d(
            in_channels,
            deform_groups * 2 * taps,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=True,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmcv's initialisation: uniform weight by fan-in, zero offsets (a plain conv at first)."""
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        self.reset_offsets()

    def reset_offsets(self) -> None:
        """Zero offsets: the module starts as a plain convolution (mmcv's ``init_offset``)."""
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)  # type: ignore[arg-type]  # built with bias=True

    def sample(self, x: Tensor) -> Tensor:
        """The taps at the offsets this module predicts from ``x``: ``[N, I, H_o * kh, W_o * kw]``
        (see :func:`deform_sample`); a stride-``(kh, kw)`` convolution with ``weight`` finishes it."""
        return deform_sample(
            x,
            self.conv_offset(x),
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            deform_groups=self.deform_groups,
        )

    def forward(self, x: Tensor) -> Tensor:
        """Args: x ``[N, I, H, W]``. Returns ``[N, O, H_o, W_o]``."""
        return F.conv2d(self.sample(x), self.weight, stride=self.kernel_size, groups=self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, deform_groups={self.deform_groups}"
        )


def has_deform_conv(model: nn.Module) -> bool:
    """Whether ``model`` holds a deformable convolution."""
    return any(isinstance(module, DeformConv2dPack) for module in model.modules())


def refuse_deform_conv_export(model: nn.Module) -> None:
    """Refuses to export a model with deformable convolutions.

    The students LD trains are plain ResNets; a DCN model would export to ONNX
    ``GridSample`` + ``MatMul`` (or opset 19's ``DeformConv``), neither of which is
    verified end to end with TensorRT here.

    Raises:
        LdexportError: ``model`` holds a deformable convolution.
    """
    if has_deform_conv(model):
        raise LdexportError(
            "cannot export a model with deformable convolutions (model.dcn_stages): "
            "export a plain ResNet/ResNeXt student; DCN models are for teachers"
        )
