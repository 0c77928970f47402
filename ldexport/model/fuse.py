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

A :class:`FrozenTeacher` is a view of the teacher: it computes with the teacher's own
modules and never with stale weights. On CPU it refolds the BatchNorm at every call and
holds no tensor of its own (a second copy of an R101 backbone would be 170 MB, a tenth of
an LD step's peak memory); the refolding is one pass over the backbone's weights, a few
percent of the passes over feature maps it saves. On a GPU it keeps the folded weights
(see :class:`FoldedConv`).

Legend: ``N`` images, ``C`` classes, ``R = reg_max + 1`` bins, ``H_l x W_l`` level ``l``.
"""

from __future__ import annotations

from collections.abc import Iterable

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
    """``relu(norm(conv(x)) + residual)`` as one convolution, BatchNorm folded in.

    The folded weight always reflects the modules' current tensors. On CPU it is refolded
    at every call: one pass over the weight, far less than the pass over the feature map
    it saves, and no second copy of the weights in memory. Elsewhere (a GPU, where the
    fold's small kernels would cost more in launches than the fold itself) the folded
    tensors are kept and refolded when a source tensor changes (its version counter or
    storage does: ``load_state_dict``, ``to``, in-place updates).

    Args:
        conv: the convolution (grouped or not), shared, not copied.
        norm: the BatchNorm after it (eval mode), shared.
        relu: apply ReLU at the end.
    """

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d, *, relu: bool):
        super().__init__()
        if isinstance(conv.padding, str):
            raise ValueError("FoldedConv folds convolutions with numeric padding only")
        self.conv = conv
        self.stride, self.padding, self.dilation = list(conv.stride), list(conv.padding), list(conv.dilation)
        self.groups = conv.groups
        self.norm = norm
        self.relu = relu
        self._cache: tuple[tuple[object, ...], Tensor, Tensor] | None = None  # (sources' state, weight, bias)

    def folded(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The folded ``weight`` and ``bias`` (see the class docstring for when they are kept)."""
        if not _keeps_folded(device):
            self._cache = None
            return fold_batch_norm(self.conv, self.norm)
        sources = (self.conv.weight, self.conv.bias, self.norm.weight, self.norm.bias, self.norm.running_mean, self.norm.running_var)
        key = (self.norm.eps, *((t.data_ptr(), t._version) for t in sources if t is not None))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, *fold_batch_norm(self.conv, self.norm))
        return self._cache[1], self._cache[2]

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """Args: x ``[N, I, H, W]``; residual, added before the ReLU, shaped like the output."""
        weight, bias = self.folded(x.device)
        return self.convolve(x, weight, bias, residual, self.stride, self.padding, self.dilation)

    def convolve(
        self,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        residual: Tensor | None,
        stride: list[int],
        padding: list[int],
        dilation: list[int],
    ) -> Tensor:
        """``relu(conv2d(x, weight, bias) + residual)``, fused by oneDNN where it can be."""
        groups = self.groups
        if not _fusable(x, weight, residual):
            out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
            if residual is not None:
                out = out + residual
            return out.relu_() if self.relu else out
        assert _FUSED_CONVOLUTION is not None
        unary = "relu" if self.relu else "none"
        if residual is None:
            return _FUSED_CONVOLUTION(x, weight, bias, padding, stride, dilation, groups, unary, [], "")
        return _FUSED_CONVOLUTION.binary(
            x, residual, weight, bias, padding, stride, dilation, groups, "add", 1.0, unary if self.relu else None, [], ""
        )


class FoldedDeformConv(FoldedConv):
    """``relu(norm(dcn(x)))`` for a deformable convolution, BatchNorm folded into its weight.

    The offsets come from the module's own (unfolded) offset convolution; the sampled taps
    then go through the same fused convolution as :class:`FoldedConv` (stride ``(kh, kw)``).
    """

    def __init__(self, conv: DeformConv2dPack, norm: nn.BatchNorm2d, *, relu: bool):
        super().__init__(conv, norm, relu=relu)  # type: ignore[arg-type]  # has the conv attributes folding reads

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """Args: x ``[N, I, H, W]``; residual, added before the ReLU, shaped like the output."""
        weight, bias = self.folded(x.device)
        dcn = self.conv
        assert isinstance(dcn, DeformConv2dPack)
        taps = dcn.sample(x)
        return self.convolve(taps, weight, bias, residual, list(dcn.kernel_size), [0, 0], [1, 1])


def _keeps_folded(device: torch.device) -> bool:
    """Whether folded weights are kept on ``device`` (not on CPU: see :class:`FoldedConv`)."""
    return device.type != "cpu"


def _fusable(x: Tensor, weight: Tensor, residual: Tensor | None) -> bool:
    """Whether oneDNN's fused convolution applies: CPU, float32 throughout, no autocast."""
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

    A view of the teacher: it computes with the teacher's own modules and holds no tensor
    of its own, so it costs no memory and always computes with the teacher's current
    weights.

    Args:
        detector: the teacher. It is put in eval mode with ``requires_grad`` off and, with
            ``channels_last``, its weights are made channels-last in place (their values
            are unchanged).
        with_cls_scores: also compute the class logits (only the class-logit KD term reads
            them); otherwise :meth:`forward` returns ``None`` for them.
        channels_last: run on channels-last feature maps (oneDNN's fast layout for
            convolutions, and cuDNN's under bf16/fp16 autocast).
    """

    def __init__(self, detector: GFLDetector, *, with_cls_scores: bool = False, channels_last: bool = True):
        super().__init__()
        detector.eval().requires_grad_(False)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        detector.to(memory_format=self.memory_format)  # type: ignore[call-overload]  # missing in torch's stubs
        self.backbone = FoldedResNet(detector.backbone)
        self.neck = detector.neck
        self.head = detector.head
        self.with_cls_scores = with_cls_scores
        self.eval()

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Stays in eval mode whatever ``mode`` is: folding uses the BatchNorm statistics."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> tuple[list[Tensor] | None, list[Tensor]]:
        """Args: images ``[N, 3, H, W]`` normalised.

        Returns:
            ``cls_scores`` per level ``[N, C, H_l, W_l]`` (``None`` unless
            ``with_cls_scores``) and ``bbox_preds`` per level ``[N, 4 * R, H_l, W_l]``, as
            :class:`~ldexport.model.detector.GFLDetector` returns them.
        """
        head = self.head
        feats = self.neck(self.backbone(images.contiguous(memory_format=self.memory_format)))
        bbox_preds = [scale(_tower(feat, head.reg_convs, head.gfl_reg)).float() for feat, scale in zip(feats, head.scales)]
        if not self.with_cls_scores:
            return None, bbox_preds
        return [_tower(feat, head.cls_convs, head.gfl_cls) for feat in feats], bbox_preds


def _tower(feat: Tensor, convs: Iterable[nn.Module], predictor: nn.Module) -> Tensor:
    for conv in convs:
        feat = conv(feat)
    return predictor(feat)
