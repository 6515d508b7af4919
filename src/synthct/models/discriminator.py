"""PatchGAN discriminator (Isola et al. 2017): classifies overlapping N x N patches as real or
fake. With n_layers=3 it is the 70x70 PatchGAN: C64 (no norm) - C128 - C256 - C512 (stride 1) -
1-channel conv, 4x4 kernels, LeakyReLU 0.2, InstanceNorm (or, with norm=False, no normalisation).

MultiScaleDiscriminator (pix2pixHD, Wang et al. 2018): one PatchGAN per halving of the image, so
the same patch size covers 2x, 4x, ... the area; a coarse scale sees a whole region's tissue order
(fluid bright in the middle of a brain, say), which a small patch at full size cannot."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from synthct.models.layers import ConvNormAct


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3, norm: bool = True):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"PatchDiscriminator needs n_layers >= 1, got {n_layers}")
        layers: list[nn.Module] = [ConvNormAct(in_channels, ndf, 4, stride=2, padding=1,
                                               norm=False, act="lrelu")]
        width = ndf
        for n in range(1, n_layers):
            next_width = ndf * min(2 ** n, 8)
            layers.append(ConvNormAct(width, next_width, 4, stride=2, padding=1, norm=norm, act="lrelu"))
            width = next_width
        next_width = ndf * min(2 ** n_layers, 8)
        layers.append(ConvNormAct(width, next_width, 4, stride=1, padding=1, norm=norm, act="lrelu"))
        layers.append(nn.Conv2d(next_width, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class MultiScaleDiscriminator(nn.Module):
    """PatchGANs on the image and its 1/2, 1/4, ... downsamplings; returns one prediction map per
    scale, finest first."""

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3, norm: bool = True, scales: int = 2):
        super().__init__()
        if scales < 2:
            raise ValueError(f"MultiScaleDiscriminator needs scales >= 2, got {scales}")
        self.scales = nn.ModuleList(PatchDiscriminator(in_channels, ndf, n_layers, norm) for _ in range(scales))

    def forward(self, x: Tensor) -> list[Tensor]:
        predictions = []
        for index, discriminator in enumerate(self.scales):
            if index:  # pix2pixHD's downsampling: a 3 x 3 mean that ignores the padding
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            predictions.append(discriminator(x))
        return predictions


def build_discriminator(in_channels: int, ndf: int, n_layers: int, norm: bool, scales: int = 1) -> nn.Module:
    """A PatchGAN, or with scales > 1 a multi-scale one (a single scale keeps the plain module, so
    its weights load into runs saved before multi-scale discriminators existed)."""
    if scales == 1:
        return PatchDiscriminator(in_channels, ndf, n_layers, norm)
    return MultiScaleDiscriminator(in_channels, ndf, n_layers, norm, scales)


def receptive_field(n_layers: int) -> int:
    """Side of the input patch seen by one output pixel: n_layers stride-2 convs then two
    stride-1 convs, all 4x4; walking back from the output, r <- (r - 1) * stride + kernel."""
    strides = [2] * n_layers + [1, 1]
    field = 1
    for stride in reversed(strides):
        field = (field - 1) * stride + 4
    return field
