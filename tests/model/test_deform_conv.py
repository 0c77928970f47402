"""The pure-PyTorch deformable convolution against a literal transcription of mmcv's
CPU kernel (one sample at a time), plus its gradients by finite differences."""

import math

import pytest
import torch
import torch.nn.functional as F

from ldexport.errors import LdexportError
from ldexport.model.deform_conv import DeformConv2dPack, deform_conv2d, refuse_deform_conv_export


def bilinear_mmcv(image: torch.Tensor, h: float, w: float) -> float:
    """mmcv's ``deformable_im2col_bilinear``: one channel ``[H, W]``, one position."""
    height, width = image.shape
    if h <= -1 or height <= h or w <= -1 or width <= w:
        return 0.0
    h_low, w_low = math.floor(h), math.floor(w)
    lh, lw = h - h_low, w - w_low
    value = 0.0
    for dy, wy in ((0, 1 - lh), (1, lh)):
        for dx, wx in ((0, 1 - lw), (1, lw)):
            r, c = h_low + dy, w_low + dx
            if 0 <= r < height and 0 <= c < width:
                value += wy * wx * image[r, c].item()
    return value


def deform_conv_loop(x, offset, weight, stride, padding, dilation, groups, deform_groups):
    """The definition, one output element at a time (slow; tiny inputs only)."""
    n, channels, _, _ = x.shape
    out_channels, in_per_group, kh, kw = weight.shape
    h_out, w_out = offset.shape[-2:]
    out = torch.zeros(n, out_channels, h_out, w_out, dtype=torch.float64)
    for b in range(n):
        for oy in range(h_out):
            for ox in range(w_out):
                for c in range(channels):
                    g = c // (channels // deform_groups)
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            dy = offset[b, g * 2 * kh * kw + 2 * k, oy, ox].item()
                            dx = offset[b, g * 2 * kh * kw + 2 * k + 1, oy, ox].item()
                            y = oy * stride[0] - padding[0] + i * dilation[0] + dy
                            xx = ox * stride[1] - padding[1] + j * dilation[1] + dx
                            sample = bilinear_mmcv(x[b, c], y, xx)
                            group = c // in_per_group
                            per_out = out_channels // groups
                            for o in range(group * per_out, (group + 1) * per_out):
                                out[b, o, oy, ox] += weight[o, c % in_per_group, i, j].item() * sample
    return out


@pytest.mark.parametrize(
    "stride, padding, dilation, groups, deform_groups",
    [
        ((1, 1), (1, 1), (1, 1), 1, 1),
        ((2, 2), (1, 1), (1, 1), 2, 2),
        ((1, 2), (2, 0), (2, 1), 1, 2),
        ((1, 1), (1, 1), (1, 1), 4, 1),  # ResNeXt's: groups, one deformable group
        ((2, 1), (1, 1), (1, 1), 4, 2),  # slices of 1 channel, 2 per deformable group
    ],
)
def test_deform_conv2d_equals_mmcv_definition(stride, padding, dilation, groups, deform_groups):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, 7, generator=generator)
    weight = torch.randn(4, 4 // groups, 3, 3, generator=generator)
    h_out = (6 + 2 * padding[0] - dilation[0] * 2 - 1) // stride[0] + 1
    w_out = (7 + 2 * padding[1] - dilation[1] * 2 - 1) // stride[1] + 1
    # offsets up to 4 px: many taps land partly or wholly outside the map
    offset = torch.randn(2, deform_groups * 18, h_out, w_out, generator=generator) * 2
    actual = deform_conv2d(
        x, offset, weight, stride=stride, padding=padding, dilation=dilation, groups=groups, deform_groups=deform_groups
    )
    expected = deform_conv_loop(x, offset, weight, stride, padding, dilation, groups, deform_groups)
    assert actual.shape == expected.shape
    assert torch.allclose(actual.double(), expected, atol=1e-5, rtol=1e-5)


def test_zero_offsets_are_a_plain_convolution():
    generator = torch.Generator().manual_seed(1)
    dcn = DeformConv2dPack(8, 6, 3, stride=2, padding=1, groups=2)
    x = torch.randn(1, 8, 11, 9, generator=generator)
    with torch.no_grad():
        expected = F.conv2d(x, dcn.weight, None, 2, 1, 1, 2)
        assert torch.allclose(dcn(x), expected, atol=1e-5)
    assert sorted(dcn.state_dict()) == ["conv_offset.bias", "conv_offset.weight", "weight"]
    assert dcn.conv_offset.out_channels == 18


def test_gradients_match_finite_differences():
    """Input, offsets (through ``conv_offset``) and weight, in float64, off the integer
    positions where bilinear sampling has kinks."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1, 4, 5, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    offset = (torch.rand(1, 2 * 18, 3, 3, generator=generator, dtype=torch.float64) * 3 - 1.5 + 0.137).requires_grad_()
    weight = torch.randn(4, 2, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=generator, dtype=torch.float64, requires_grad=True)

    def function(x, offset, weight, bias):
        return deform_conv2d(x, offset, weight, bias, stride=(2, 2), padding=(1, 1), groups=2, deform_groups=2)

    assert torch.autograd.gradcheck(function, (x, offset, weight, bias), eps=1e-6, atol=1e-5)


def test_module_backward_reaches_the_offset_convolution():
    generator = torch.Generator().manual_seed(3)
    dcn = DeformConv2dPack(4, 4, 3, padding=1)
    with torch.no_grad():
        dcn.conv_offset.weight.normal_(0, 0.1, generator=generator)
    dcn(torch.randn(2, 4, 8, 8, generator=generator)).square().sum().backward()
    assert dcn.weight.grad is not None and dcn.weight.grad.abs().sum() > 0
    assert dcn.conv_offset.weight.grad is not None and dcn.conv_offset.weight.grad.abs().sum() > 0


def test_bad_channel_split_and_export_are_refused():
    with pytest.raises(LdexportError, match="deformable groups"):
        DeformConv2dPack(6, 6, 3, deform_groups=4)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), DeformConv2dPack(4, 4, 3))
    with pytest.raises(LdexportError, match="deformable convolutions"):
        refuse_deform_conv_export(model)
    refuse_deform_conv_export(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)))  # a plain model passes
