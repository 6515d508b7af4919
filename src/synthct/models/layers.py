"""Building blocks of the generators and the discriminator.

Each block is a small named module so that the networks read like the papers' notation
(c7s1-k, dk, Rk, uk; Ck for the PatchGAN) and so that the blocks can be tuned for
channels_last + bfloat16 on CPU without touching the network definitions.

Normalisation is InstanceNorm without affine parameters or running statistics, and convolutions
keep their bias, exactly as the reference CycleGAN/pix2pix code does with ``--norm instance``.
"""

from __future__ import annotations

from torch import Tensor, nn


def instance_norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def activation(name: str | None) -> nn.Module:
    if name is None:
        return nn.Identity()
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "lrelu":
        return nn.LeakyReLU(0.2, inplace=True)
    raise ValueError(f"unknown activation '{name}' (relu | lrelu | None)")


class ConvNormAct(nn.Sequential):
    """[reflection pad] -> conv -> [InstanceNorm] -> [activation].

    ``reflect=True`` pads by ``padding`` with reflection before an unpadded convolution (the
    c7s1-k and residual convolutions); otherwise the convolution zero-pads itself.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, *, reflect: bool = False, norm: bool = True,
                 act: str | None = "relu"):
        layers: list[nn.Module] = []
        if reflect and padding:
            layers.append(nn.ReflectionPad2d(padding))
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                padding=0 if reflect else padding, bias=True))
        if norm:
            layers.append(instance_norm(out_channels))
        layers.append(activation(act))
        super().__init__(*layers)


class UpConvNormAct(nn.Sequential):
    """u_k: 3x3 fractionally-strided convolution (stride 1/2) -> InstanceNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1,
                               output_padding=1, bias=True),
            instance_norm(out_channels),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """R_k: x + (reflect-pad, conv3x3, IN, ReLU, reflect-pad, conv3x3, IN); no ReLU after the add."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            ConvNormAct(channels, channels, 3, padding=1, reflect=True, act="relu"),
            ConvNormAct(channels, channels, 3, padding=1, reflect=True, act=None),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class UnetDown(nn.Sequential):
    """U-Net encoder step: [LeakyReLU 0.2] -> conv4x4 stride 2 -> [InstanceNorm].

    The activation sits before the convolution (it acts on the previous step's output, which is
    also what the skip connection carries), as in the reference UnetSkipConnectionBlock.
    """

    def __init__(self, in_channels: int, out_channels: int, *, act: bool = True, norm: bool = True):
        layers: list[nn.Module] = [nn.LeakyReLU(0.2)] if act else []
        layers.append(nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1, bias=True))
        if norm:
            layers.append(instance_norm(out_channels))
        super().__init__(*layers)


class UnetUp(nn.Sequential):
    """U-Net decoder step: ReLU -> transposed conv4x4 stride 2 -> InstanceNorm [-> Dropout 0.5]."""

    def __init__(self, in_channels: int, out_channels: int, *, dropout: bool = False):
        layers: list[nn.Module] = [
            nn.ReLU(),
            nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=True),
            instance_norm(out_channels),
        ]
        if dropout:
            layers.append(nn.Dropout(0.5))
        super().__init__(*layers)
