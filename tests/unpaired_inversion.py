"""A tiny unpaired translation task with a known answer, shared by the model tests: domain B is
the intensity inversion of domain A (B = -A'), drawn from different images so nothing is paired."""

from __future__ import annotations

import torch


def sparse_blobs(n: int, size: int, seed: int) -> torch.Tensor:
    """A few bright round structures on a dark background, in [-0.8, 0.8]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    img = torch.zeros(n, 1, size, size)
    for i in range(n):
        for _ in range(2):
            cy, cx = torch.rand(2, generator=g) * size
            sigma = 2 + torch.rand((), generator=g) * size / 16
            img[i, 0] += 1.6 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
    return img.clamp(max=1.6) - 0.8


def adversarial_step(model, batch: dict, g_opt, d_opt) -> tuple[dict, dict, dict]:
    """One generator update then one discriminator update; returns (G terms, D terms, cache)."""
    total, terms, cache = model.generator_loss(batch)
    g_opt.zero_grad(set_to_none=True)
    total.backward()
    g_opt.step()
    d_total, d_terms = model.discriminator_loss(batch, cache)
    d_opt.zero_grad(set_to_none=True)
    d_total.backward()
    d_opt.step()
    return terms, d_terms, cache


def inversion_errors(model, steps: int = 150, lr: float = 2e-3) -> tuple[float, float]:
    """Mean |G(a) - (-a)| on held-out images before and after ``steps`` unpaired updates."""
    mr_images, ct_images = sparse_blobs(64, 32, 1), -sparse_blobs(64, 32, 2)
    test_mr = sparse_blobs(8, 32, 123)

    def g_error() -> float:
        with torch.no_grad():
            return (model.G(test_mr) + test_mr).abs().mean().item()

    untrained = g_error()
    g_opt = torch.optim.Adam(model.generator_parameters(), lr, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(model.discriminator_parameters(), lr, betas=(0.5, 0.999))
    for _ in range(steps):
        batch = {"mr": mr_images[torch.randint(0, 64, (1,))], "ct": ct_images[torch.randint(0, 64, (1,))]}
        adversarial_step(model, batch, g_opt, d_opt)
    return untrained, g_error()
