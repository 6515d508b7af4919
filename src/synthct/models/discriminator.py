"""PatchGAN discriminator (Isola et al. 2017): classifies overlapping N x N patches as real or
fake. With n_layers=3 it is the 70x70 PatchGAN: C64 (no norm) - C128 - C256 - C512 (stride 1) -
1-channel conv, 4x4 kernels, LeakyReLU 0.2, InstanceNorm."""

from __future__ import annotations

from torch import Tensor, nn

from synthct.models.layers import ConvNormAct


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"PatchDiscriminator needs n_layers >= 1, got {n_layers}")
        layers: list[nn.Module] = [ConvNormAct(in_channels, ndf, 4, stride=2, padding=1,
                                               norm=False, act="lrelu")]
        width = ndf
        for n in range(1, n_layers):
            next_width = ndf * min(2 ** n, 8)
            layers.append(ConvNormAct(width, next_width, 4, stride=2, padding=1, act="lrelu"))
            width = next_width
        next_width = ndf * min(2 ** n_layers, 8)
        layers.append(ConvNormAct(width, next_width, 4, stride=1, padding=1, act="lrelu"))
        layers.append(nn.Conv2d(next_width, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def receptive_field(n_layers: int) -> int:
    """Side of the input patch seen by one output pixel: n_layers stride-2 convs then two
    stride-1 convs, all 4x4; walking back from the output, r <- (r - 1) * stride + kernel."""
    strides = [2] * n_layers + [1, 1]
    field = 1
    for stride in reversed(strides):
        field = (field - 1) * stride + 4
    return field
