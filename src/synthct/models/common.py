"""Helpers shared by the models: weight initialisation and gradient switches."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn


def init_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """Reference 'normal' init: conv/linear weights N(0, gain), biases 0; affine norm weights
    N(1, gain), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.InstanceNorm2d, nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module


def set_requires_grad(nets: nn.Module | Iterable[nn.Module], flag: bool) -> None:
    """Freeze (or unfreeze) networks so the generator step leaves no gradients in them."""
    for net in [nets] if isinstance(nets, nn.Module) else nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def centre_channel(x: Tensor) -> Tensor:
    """The centre slice of a 2.5D stack (N, k, H, W) -> (N, 1, H, W)."""
    k = x.shape[1]
    return x[:, k // 2: k // 2 + 1]
