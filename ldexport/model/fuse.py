"""The LD teacher made fast for inference: :class:`FrozenTeacher`.

LD's teacher is frozen: eval mode, no gradient, its weights never change. Its forward is
therefore plain inference, and three things make it cheaper without changing what it
computes (beyond float rounding):

* **BatchNorm folded into the convolutions.** In eval mode a BatchNorm is the affine map
  ``y = x * s + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)``; scaling the
  convolution's output channels by ``s`` and giving it that bias is the same function, one
  pass over the feature map instead of two.
* **ReLU and the residual addition fused into the convolution** (CPU, float32): oneDNN
  applies them to the convolution's output while it is still in cache, instead of two
  more passes over memory. Elsewhere (CUDA, autocast, a torch without the fused op) the
  same arithmetic runs as separate ops.
* **Only the outputs the losses read.** LD reads the teacher's box distributions only; the
  classification tower, a fifth of the teacher's work, runs only when asked for (the
  class-logit KD term).

The feature maps are channels-last by default, the layout oneDNN's convolutions read
without reordering (and cuDNN's fast one under bf16/fp16 autocast).

The BatchNorm is folded **once**, when the :class:`FrozenTeacher` is built: it holds the
folded convolutions (a copy of the backbone's weights, which replaces the teacher's
backbone in memory once the caller lets the original go) and shares the neck and the
head, whose own forward it runs. A teacher whose weights change afterwards needs a new
:class:`FrozenTeacher`.

Legend: ``N`` images, ``C`` classes, ``R = reg_max + 1`` bins, ``H_l x W_l`` level ``l``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldexport.model.deform_conv import DeformConv2dPack
from ldexport.model.detector import GFLDetector
from ldexport.model.resnet import BasicBlock, Bottleneck, ResNet


def _fused_convolution_op():
    """oneDNN's convolution with fused post-ops (``mkldnn::_convolution_pointwise``), if present."""
    try:
        return torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):
        return None


_FUSED_CONVOLUTION = _fused_convolution_op()
# Switch for tests and measurements: False runs the separate ops on CPU too.
FUSE_ON_CPU = True


def fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """The weight and bias of one convolution that computes ``norm(conv(x))`` in eval mode.

    Args:
        conv: ``[O, I, kh, kw]`` weight, optional ``[O]`` bias.
        norm: BatchNorm over the ``O`` output channels (its running statistics are used).

    Returns:
        ``weight [O, I, kh, kw]`` (in the memory format of ``conv.weight``) and ``bias [O]``,
        new tensors without gradient.
    """
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError("fold_batch_norm needs a BatchNorm with running statistics")
    with torch.no_grad():
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # [O]
        weight = conv.weight * scale[:, None, None, None]
        bias = norm.bias - norm.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
    return weight, bias


class FoldedConv(nn.Module):
    """``relu(norm(conv(x)) + residual)`` as one convolution, BatchNorm folded in once.

    Holds the folded ``weight`` and ``bias`` as buffers (new tensors, in the memory format
    of the convolution's weight); the convolution and the BatchNorm are not kept.

    Args:
        conv: the convolution (any ``groups``; numeric padding).
        norm: the BatchNorm after it (its running statistics are used).
        relu: apply ReLU at the end.
    """

    weight: Tensor
    bias: Tensor

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d, *, relu: bool):
        super().__init__()
        if isinstance(conv.padding, str):
            raise ValueError("FoldedConv folds convolutions with numeric padding only")
        self.stride, self.padding, self.dilation = list(conv.stride), list(conv.padding), list(conv.dilation)
        self.groups = conv.groups
        self.relu = relu
        weight, bias = fold_batch_norm(conv, norm)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """Args: x ``[N, I, H, W]``; residual, added before the ReLU, shaped like the output."""
        return self.convolve(x, residual, self.stride, self.padding, self.dilation)

    def convolve(
        self, x: Tensor, residual: Tensor | None, stride: list[int], padding: list[int], dilation: list[int]
    ) -> Tensor:
        """``relu(conv2d(x, weight, bias) + residual)`` with the folded weight, fused by oneDNN
        where it can be."""
        weight, bias = self.weight, self.bias
        if not _fusable(x, weight, residual):
            out = F.conv2d(x, weight, bias, stride, padding, dilation, self.groups)
            if residual is not None:
                out = out + residual
            return out.relu_() if self.relu else out
        assert _FUSED_CONVOLUTION is not None
        unary = "relu" if self.relu else "none"
        if residual is None:
            return _FUSED_CONVOLUTION(x, weight, bias, padding, stride, dilation, self.groups, unary, [], "")
        return _FUSED_CONVOLUTION.binary(
            x, residual, weight, bias, padding, stride, dilation, self.groups, "add", 1.0, unary if self.relu else None, [], ""
        )


class FoldedDeformConv(FoldedConv):
    """``relu(norm(dcn(x)) + residual)`` for a deformable convolution, BatchNorm folded into
    its weight once.

    The offsets come from the module's own (unfolded) offset convolution, shared; the sampled
    taps then go through the same fused convolution as :class:`FoldedConv`, at stride
    ``(kh, kw)`` over the tap map.
    """

    def __init__(self, conv: DeformConv2dPack, norm: nn.BatchNorm2d, *, relu: bool):
        super().__init__(conv, norm, relu=relu)  # type: ignore[arg-type]  # has the conv attributes folding reads
        self.dcn = conv

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """Args: x ``[N, I, H, W]``; residual, added before the ReLU, shaped like the output."""
        taps = self.dcn.sample(x)
        return self.convolve(taps, residual, list(self.dcn.kernel_size), [0, 0], [1, 1])


def _fusable(x: Tensor, weight: Tensor, residual: Tensor | None) -> bool:
    """Whether oneDNN's fused convolution applies: CPU, float32 throughout, no autocast, and
    not under ``torch.compile`` (which fuses the separate ops itself and cannot trace this one)."""
    if torch.compiler.is_compiling():
        return False
    return (
        _FUSED_CONVOLUTION is not None
        and FUSE_ON_CPU
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and (residual is None or residual.dtype == torch.float32)
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
        and bool(torch.backends.mkldnn.enabled)
    )


class FoldedBlock(nn.Module):
    """A residual block (basic or bottleneck) with folded convolutions; the last one adds the
    shortcut and applies the ReLU."""

    def __init__(self, block: BasicBlock | Bottleneck):
        super().__init__()
        pairs = [(block.conv1, block.bn1), (block.conv2, block.bn2)]
        if isinstance(block, Bottleneck):
            pairs.append((block.conv3, block.bn3))
        self.convs = nn.ModuleList(
            FoldedDeformConv(conv, norm, relu=True) if isinstance(conv, DeformConv2dPack) else FoldedConv(conv, norm, relu=True)
            for conv, norm in pairs
        )
        self.downsample = None
        if block.downsample is not None:
            conv, norm = list(block.downsample.children())  # ResNet's projection: conv, BatchNorm
            assert isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)
            self.downsample = FoldedConv(conv, norm, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = x
        for conv in self.convs[:-1]:
            out = conv(out)
        return self.convs[-1](out, identity)


class FoldedResNet(nn.Module):
    """:class:`~ldexport.model.resnet.ResNet` in eval mode with BatchNorm folded: the same
    outputs, computed from the same (shared) modules."""

    def __init__(self, backbone: ResNet):
        super().__init__()
        self.stem = FoldedConv(backbone.conv1, backbone.bn1, relu=True)
        self.maxpool = backbone.maxpool
        self.stages = nn.ModuleList(
            nn.Sequential(*(FoldedBlock(block) for block in getattr(backbone, f"layer{index}"))) for index in range(1, 5)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """Args: x ``[N, 3, H, W]``. Returns the four stage outputs, strides 4 to 32."""
        x = self.maxpool(self.stem(x))
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return tuple(outs)


class FrozenTeacher(nn.Module):
    """A frozen GFL detector for LD: the teacher's outputs, computed for inference only.

    Args:
        detector: the teacher. It is put in eval mode with ``requires_grad`` off and, with
            ``channels_last``, its neck and head weights are made channels-last in place
            (their values are unchanged); its backbone is folded into a copy.
        with_cls_scores: also compute the class logits (only the class-logit KD term reads
            them); otherwise :meth:`forward` returns ``None`` for them.
        channels_last: run on channels-last feature maps (oneDNN's fast layout for
            convolutions, and cuDNN's under bf16/fp16 autocast).
    """

    def __init__(self, detector: GFLDetector, *, with_cls_scores: bool = False, channels_last: bool = True):
        super().__init__()
        detector.eval().requires_grad_(False)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.backbone = FoldedResNet(detector.backbone)
        self.neck = detector.neck
        self.head = detector.head
        self.to(memory_format=self.memory_format)  # type: ignore[call-overload]  # missing in torch's stubs
        self.with_cls_scores = with_cls_scores
        self.eval()

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Stays in eval mode whatever ``mode`` is."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> tuple[list[Tensor] | None, list[Tensor]]:
        """Args: images ``[N, 3, H, W]`` normalised.

        Returns:
            ``cls_scores`` per level ``[N, C, H_l, W_l]`` (``None`` unless
            ``with_cls_scores``) and ``bbox_preds`` per level ``[N, 4 * R, H_l, W_l]``
            (float32), as :class:`~ldexport.model.detector.GFLDetector` returns them.
        """
        feats = self.neck(self.backbone(images.contiguous(memory_format=self.memory_format)))
        bbox_preds = self.head.bbox_preds(feats)
        return (self.head.cls_scores(feats) if self.with_cls_scores else None), bbox_preds
