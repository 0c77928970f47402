"""ResNet-18/34/50/101 and ResNeXt-50/101, optionally with deformable convolutions,
with torchvision's state-dict key names.

The names (``conv1``, ``bn1``, ``layer{1..4}.{i}.conv{j}``, ``downsample.{0,1}``) are
torchvision's, which are also mmdet's, so an ImageNet checkpoint saved by torchvision
loads from a local file with :func:`load_pretrained` and an mmdet ``backbone.*`` state
dict loads unchanged. ``frozen_stages`` and ``norm_eval`` behave as in mmdet.

ResNeXt is the same network with mmdet's ResNeXt bottleneck: the 3x3 convolution has
``groups`` groups and the bottleneck is ``floor(planes * base_width / base_channels) *
groups`` wide (``groups=32, base_width=4``: ResNeXt 32x4d). ``dcn_stages`` makes that 3x3
convolution a :class:`~ldexport.model.deform_conv.DeformConv2dPack` in the stages listed
(mmdet's ``dcn=dict(type='DCN', fallback_on_stride=False)`` with ``stage_with_dcn``), its
key names mmcv's (``conv2.weight``, ``conv2.conv_offset.*``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from ldexport.errors import LdexportError
from ldexport.model.deform_conv import DeformConv2dPack


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity or projected shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 bottleneck, stride on the 3x3 ("pytorch" style; ResNet/ResNeXt-50/101).

    Args:
        in_channels: input channels.
        channels: mmdet's ``planes``; the block outputs ``4 * channels``.
        stride: stride of the 3x3 convolution.
        downsample: the projection shortcut, if any.
        groups: groups of the 3x3 convolution (1: ResNet; 32: ResNeXt 32x4d).
        base_width: ResNeXt's width per group at ``base_channels`` planes.
        base_channels: the network's first-stage planes (mmdet's width formula reads it).
        dcn: make the 3x3 convolution deformable.
        deform_groups: its deformable groups.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        groups: int = 1,
        base_width: int = 4,
        base_channels: int = 64,
        dcn: bool = False,
        deform_groups: int = 1,
    ):
        super().__init__()
        width = channels if groups == 1 else math.floor(channels * base_width / base_channels) * groups
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2: nn.Conv2d | DeformConv2dPack
        if dcn:
            self.conv2 = DeformConv2dPack(
                width, width, 3, stride=stride, padding=1, groups=groups, deform_groups=deform_groups
            )
        else:
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, channels * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_ARCHITECTURES: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """ResNet / ResNeXt backbone returning the outputs of stages 1-4 (strides 4, 8, 16, 32).

    Args:
        depth: 18, 34, 50 or 101.
        frozen_stages: stages whose parameters are frozen and kept in eval mode; 0 is
            the stem, ``k >= 1`` the stem and ``layer1..layer{k}``; -1 freezes nothing.
        norm_eval: keep every BatchNorm in eval mode (running statistics frozen) while
            training, as mmdet's detection configs do.
        base_channels: channels of the stem and of the first stage (64 in every
            published model; smaller values make tiny test models).
        groups: groups of the bottlenecks' 3x3 convolutions; above 1 a ResNeXt
            (depth 50 or 101 only).
        base_width: ResNeXt's width per group (4 in ResNeXt 32x4d); unused with groups 1.
        dcn_stages: stages (1-4, ``layer{k}``) whose 3x3 convolutions are deformable;
            mmdet's ``stage_with_dcn=(False, True, True, True)`` ("c3-c5") is ``(2, 3, 4)``.
            Bottleneck depths only, as in mmdet.
        deform_groups: deformable groups of those convolutions (1 in mmdet's GFL models).
    """

    def __init__(
        self,
        *,
        depth: int = 50,
        frozen_stages: int = 1,
        norm_eval: bool = True,
        base_channels: int = 64,
        groups: int = 1,
        base_width: int = 4,
        dcn_stages: tuple[int, ...] = (),
        deform_groups: int = 1,
    ):
        super().__init__()
        if depth not in _ARCHITECTURES:
            raise LdexportError(f"ResNet depth must be one of {sorted(_ARCHITECTURES)}, got {depth}")
        block, layers = _ARCHITECTURES[depth]
        if block is BasicBlock and (groups != 1 or dcn_stages):
            raise LdexportError(f"ResNeXt groups and deformable stages need a bottleneck depth (50, 101), got {depth}")
        if groups < 1 or base_width < 1 or deform_groups < 1:
            raise LdexportError(f"groups, base_width and deform_groups must be positive, got {groups}, {base_width}, {deform_groups}")
        if any(stage not in (1, 2, 3, 4) for stage in dcn_stages):
            raise LdexportError(f"dcn_stages lists stages 1-4 (layer1..layer4), got {list(dcn_stages)}")
        self.depth = depth
        self.groups = groups
        self.dcn_stages = tuple(dcn_stages)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.conv1 = nn.Conv2d(3, base_channels, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = base_channels
        self.out_channels: list[int] = []
        for index, num_blocks in enumerate(layers):
            channels = base_channels * 2**index
            block_args = {}
            if block is Bottleneck:
                block_args = dict(
                    groups=groups,
                    base_width=base_width,
                    base_channels=base_channels,
                    dcn=index + 1 in self.dcn_stages,
                    deform_groups=deform_groups,
                )
            stage = self._make_stage(block, in_channels, channels, num_blocks, 1 if index == 0 else 2, block_args)
            self.add_module(f"layer{index + 1}", stage)
            in_channels = channels * block.expansion
            self.out_channels.append(in_channels)
        self._init_weights()
        self._freeze_stages()

    @property
    def name(self) -> str:
        """``ResNet-101``, ``ResNeXt-101 32x4d``, with ``+ DCN stages 2-4`` where it applies."""
        kind = f"ResNet-{self.depth}" if self.groups == 1 else f"ResNeXt-{self.depth} (groups {self.groups})"
        return kind + (f" + DCN in stages {list(self.dcn_stages)}" if self.dcn_stages else "")

    @staticmethod
    def _make_stage(
        block: type[BasicBlock] | type[Bottleneck],
        in_channels: int,
        channels: int,
        num_blocks: int,
        stride: int,
        block_args: dict,
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or in_channels != channels * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(channels * block.expansion),
            )
        blocks = [block(in_channels, channels, stride, downsample, **block_args)]
        blocks += [block(channels * block.expansion, channels, **block_args) for _ in range(1, num_blocks)]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, DeformConv2dPack):  # a convolution like the others; offsets start at 0
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for module in self.modules():
            if isinstance(module, DeformConv2dPack):
                module.reset_offsets()

    def _frozen_modules(self) -> list[nn.Module]:
        modules: list[nn.Module] = []
        if self.frozen_stages >= 0:
            modules += [self.conv1, self.bn1]
        modules += [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]
        return modules

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """Args: x ``[N, 3, H, W]``. Returns the four stage outputs, strides 4 to 32."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
            outs.append(x)
        return tuple(outs)


def load_pretrained(backbone: ResNet, path: str | Path) -> None:
    """Loads ImageNet weights saved by torchvision (or any state dict with its names).

    A ``backbone.`` prefix (mmdet) and a ``state_dict`` wrapper are accepted; the
    classifier (``fc.*``) is dropped. The file is read with ``weights_only=True``. A
    deformable convolution takes the ImageNet 3x3 weight; its offset convolution, which an
    ImageNet model does not have, keeps its zero initialisation (as in mmdet).
    """
    path = Path(path)
    if not path.is_file():
        raise LdexportError(f"pretrained backbone file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle with code, a truncated file, not a checkpoint
        raise LdexportError(f"cannot read pretrained backbone {path}: {error}") from None
    state = state.get("state_dict", state)
    state = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("fc.")}
    expected = backbone.state_dict()
    missing = [key for key in expected if key not in state and ".conv_offset." not in key]
    unexpected = [key for key in state if key not in expected or state[key].shape != expected[key].shape]
    if missing or unexpected:
        raise LdexportError(
            f"{path} does not fit a {backbone.name}: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected or misshapen (e.g. {unexpected[:3]})"
        )
    backbone.load_state_dict(state, strict=False)
