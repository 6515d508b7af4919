"""Generators: the ResNet of Johnson et al. 2016 as used by CycleGAN (Zhu et al. 2017) and the
U-Net 256 of pix2pix (Isola et al. 2017). Both map [-1, 1] images to [-1, 1] images (tanh)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from synthct.models.layers import ConvNormAct, OutputHead, ResidualBlock, UnetDown, UnetUp, UpConvNormAct


class ResnetGenerator(nn.Module):
    """c7s1-ngf, d(2ngf), d(4ngf), n_blocks x R(4ngf), u(2ngf), u(ngf), c7s1-out + tanh; u_k is
    the paper's fractionally-strided convolution."""

    def __init__(self, in_channels: int, out_channels: int, ngf: int = 64, n_blocks: int = 9):
        super().__init__()
        if n_blocks < 1:
            raise ValueError(f"ResnetGenerator needs at least one residual block, got {n_blocks}")
        self.stem = ConvNormAct(in_channels, ngf, 7, padding=3, reflect=True)
        self.down = nn.Sequential(
            ConvNormAct(ngf, 2 * ngf, 3, stride=2, padding=1),
            ConvNormAct(2 * ngf, 4 * ngf, 3, stride=2, padding=1),
        )
        self.blocks = nn.Sequential(*(ResidualBlock(4 * ngf) for _ in range(n_blocks)))
        self.up = nn.Sequential(UpConvNormAct(4 * ngf, 2 * ngf), UpConvNormAct(2 * ngf, ngf))
        self.head = OutputHead(ngf, out_channels)  # in fp32 even under autocast
        self.ngf = ngf

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.up(self.blocks(self.down(self.stem(x)))))

    def features(self, x: Tensor, block_ids: Sequence[int]) -> list[Tensor]:
        """Encoder features for PatchNCE: after c7s1, after each downsampling step, and after the
        residual blocks numbered in ``block_ids`` (0-based). Stops after the last one needed."""
        feats = [self.stem(x)]
        for step in self.down:
            feats.append(step(feats[-1]))
        h = feats[-1]
        last = max(block_ids, default=-1)
        for index, block in enumerate(self.blocks[: last + 1]):
            h = block(h)
            if index in block_ids:
                feats.append(h)
        return feats

    def feature_channels(self, block_ids: Sequence[int]) -> list[int]:
        return [self.ngf, 2 * self.ngf, 4 * self.ngf] + [4 * self.ngf] * len(set(block_ids))


class UnetGenerator(nn.Module):
    """pix2pix U-Net: encoder C64-C128-C256-C512-C512-C512-C512-C512 (for num_downs=8), decoder
    mirrored with skip connections concatenating encoder layer i with decoder layer n-i.

    As in the reference, the outermost encoder step has no norm and no activation in front, the
    innermost has no norm, and dropout 0.5 sits in the num_downs - 5 decoder steps that follow the
    innermost one. Height and width must be multiples of 2**num_downs (256 for the default).
    """

    def __init__(self, in_channels: int, out_channels: int, num_downs: int = 8, ngf: int = 64,
                 use_dropout: bool = True):
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"UnetGenerator needs num_downs >= 5, got {num_downs}")
        self.num_downs = num_downs
        widths = [ngf, 2 * ngf, 4 * ngf] + [8 * ngf] * (num_downs - 3)  # encoder output channels
        self.downs = nn.ModuleList()
        for i, width in enumerate(widths):
            outermost, innermost = i == 0, i == num_downs - 1
            self.downs.append(UnetDown(in_channels if outermost else widths[i - 1], width,
                                       act=not outermost, norm=not (outermost or innermost)))
        # Decoder, innermost first: step j maps to the resolution of encoder layer num_downs-2-j
        # and its output is concatenated with that layer's features.
        self.ups = nn.ModuleList()
        for j in range(num_downs - 1):
            level = num_downs - 2 - j  # encoder layer whose resolution this step restores
            in_width = widths[-1] if j == 0 else 2 * widths[level + 1]
            self.ups.append(UnetUp(in_width, widths[level], dropout=use_dropout and 1 <= j <= num_downs - 5))
        self.head = nn.Sequential(nn.ReLU(),
                                  nn.ConvTranspose2d(2 * ngf, out_channels, 4, stride=2, padding=1),
                                  nn.Tanh())

    def forward(self, x: Tensor) -> Tensor:
        multiple = 2 ** self.num_downs
        height, width = x.shape[-2:]
        if height % multiple or width % multiple:
            raise ValueError(f"UnetGenerator with num_downs={self.num_downs} needs height and width "
                             f"that are multiples of {multiple}, got {height}x{width}")
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        x = skips.pop()
        for up in self.ups:
            x = torch.cat([skips.pop(), up(x)], dim=1)
        return self.head(x)


def build_generator(kind: str, in_channels: int, out_channels: int, ngf: int, n_blocks: int,
                    unet_downs: int = 8, unet_dropout: bool = True) -> nn.Module:
    if kind == "resnet":
        return ResnetGenerator(in_channels, out_channels, ngf=ngf, n_blocks=n_blocks)
    if kind == "unet":
        return UnetGenerator(in_channels, out_channels, num_downs=unet_downs, ngf=ngf, use_dropout=unet_dropout)
    raise ValueError(f"unknown generator '{kind}' (resnet | unet)")
