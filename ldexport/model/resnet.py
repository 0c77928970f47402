"""ResNet-18/34/50/101 with torchvision's state-dict key names.

The names (``conv1``, ``bn1``, ``layer{1..4}.{i}.conv{j}``, ``downsample.{0,1}``) are
torchvision's, which are also mmdet's, so an ImageNet checkpoint saved by torchvision
loads from a local file with :func:`load_pretrained` and an mmdet ``backbone.*`` state
dict loads unchanged. ``frozen_stages`` and ``norm_eval`` behave as in mmdet.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ldexport.errors import LdexportError


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
    """1x1-3x3-1x1 bottleneck, stride on the 3x3 ("pytorch" style; ResNet-50/101)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels * self.expansion, 1, bias=False)
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
    """ResNet backbone returning the outputs of stages 1-4 (strides 4, 8, 16, 32).

    Args:
        depth: 18, 34, 50 or 101.
        frozen_stages: stages whose parameters are frozen and kept in eval mode; 0 is
            the stem, ``k >= 1`` the stem and ``layer1..layer{k}``; -1 freezes nothing.
        norm_eval: keep every BatchNorm in eval mode (running statistics frozen) while
            training, as mmdet's detection configs do.
        base_channels: channels of the stem and of the first stage (64 in every
            published model; smaller values make tiny test models).
    """

    def __init__(self, *, depth: int = 50, frozen_stages: int = 1, norm_eval: bool = True, base_channels: int = 64):
        super().__init__()
        if depth not in _ARCHITECTURES:
            raise LdexportError(f"ResNet depth must be one of {sorted(_ARCHITECTURES)}, got {depth}")
        block, layers = _ARCHITECTURES[depth]
        self.depth = depth
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
            stage = self._make_stage(block, in_channels, channels, num_blocks, stride=1 if index == 0 else 2)
            self.add_module(f"layer{index + 1}", stage)
            in_channels = channels * block.expansion
            self.out_channels.append(in_channels)
        self._init_weights()
        self._freeze_stages()

    @staticmethod
    def _make_stage(
        block: type[BasicBlock] | type[Bottleneck], in_channels: int, channels: int, num_blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or in_channels != channels * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(channels * block.expansion),
            )
        blocks = [block(in_channels, channels, stride, downsample)]
        blocks += [block(channels * block.expansion, channels) for _ in range(1, num_blocks)]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

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
    classifier (``fc.*``) is dropped. The file is read with ``weights_only=True``.
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
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected or state[key].shape != expected[key].shape]
    if missing or unexpected:
        raise LdexportError(
            f"{path} does not fit a ResNet-{backbone.depth}: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected or misshapen (e.g. {unexpected[:3]})"
        )
    backbone.load_state_dict(state)
