"""The deformable registration network of RegGAN (Kong et al. 2021): a small 2D U-Net R that
takes a translation and the real CT and predicts a dense displacement field phi in pixels, the
warp T(ct, phi) that resamples the CT at p + phi(p), and the smoothness loss |grad phi|^2.

R is trained with the generator and used only in training; nothing of it is exported.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.functional import grid_sample, interpolate


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.LeakyReLU(0.2, inplace=True))


class RegistrationNet(nn.Module):
    """R(moving_to, fixed) -> phi, (N, 2, H, W) displacements in pixels (x then y) that warp the
    real CT onto the translation. Each encoder level halves the size with a strided convolution;
    the decoder upsamples to the skip connection's size, so any H x W works. The last layer
    starts at zero: an untrained R is the identity warp."""

    def __init__(self, channels: int, width: int = 16, depth: int = 3):
        super().__init__()
        widths = [width * 2 ** min(i, 2) for i in range(depth + 1)]
        self.stem = _conv(2 * channels, widths[0])
        self.down = nn.ModuleList(_conv(widths[i], widths[i + 1], stride=2) for i in range(depth))
        self.up = nn.ModuleList(_conv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth)))
        self.flow = nn.Conv2d(widths[0], 2, 3, 1, 1)
        nn.init.zeros_(self.flow.weight)
        nn.init.zeros_(self.flow.bias)

    def forward(self, translation: Tensor, ct: Tensor) -> Tensor:
        skips = [self.stem(torch.cat([translation, ct], 1))]
        for down in self.down:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.up:
            skip = skips.pop()
            x = up(torch.cat([interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], 1))
        return self.flow(x)


def warp(image: Tensor, phi: Tensor) -> Tensor:
    """T(image, phi): ``image`` resampled (bilinearly) at p + phi(p), phi in pixels (x, y);
    outside the image the edge value continues."""
    n, _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=phi.dtype, device=phi.device),
                            torch.arange(w, dtype=phi.dtype, device=phi.device), indexing="ij")
    x = (xs + phi[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
    y = (ys + phi[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([x, y], dim=-1)
    return grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def smoothness(phi: Tensor) -> Tensor:
    """|grad phi|^2: the mean squared forward difference of the field along y plus along x."""
    phi = phi.float()
    dy = phi[:, :, 1:, :] - phi[:, :, :-1, :]
    dx = phi[:, :, :, 1:] - phi[:, :, :, :-1]
    return dy.pow(2).mean() + dx.pow(2).mean()


class Registration(nn.Module):
    """The registered L1 term of RegGAN in one place:
    lambda_corr * |T(ct, R(fake, ct)) - fake|_1 + lambda_smooth * |grad R(fake, ct)|^2."""

    def __init__(self, channels: int, lambda_corr: float, lambda_smooth: float):
        super().__init__()
        self.R = RegistrationNet(channels)
        self.lambda_corr = lambda_corr
        self.lambda_smooth = lambda_smooth

    def forward(self, fake_ct: Tensor, real_ct: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """(named terms, the field phi, the warped CT)."""
        phi = self.R(fake_ct, real_ct)
        warped = warp(real_ct, phi)
        terms = {"corr": self.lambda_corr * (warped.float() - fake_ct.float()).abs().mean(),
                 "smooth": self.lambda_smooth * smoothness(phi)}
        return terms, phi, warped
