import math

import pytest
import torch

from synthct.models.losses import GANLoss, MINDLoss, NGFLoss, PatchNCELoss, mind_descriptor


def blobs(n: int, size: int, seed: int, count: int = 6) -> torch.Tensor:
    """Smooth random structures in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    img = torch.zeros(n, 1, size, size)
    for i in range(n):
        for _ in range(count):
            cy, cx = torch.rand(2, generator=g) * size
            sigma = 2 + torch.rand((), generator=g) * size / 8
            amplitude = torch.rand((), generator=g) * 2 - 1
            img[i, 0] += amplitude * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
    return torch.tanh(img)


PRED = torch.tensor([[0.5, -1.0], [2.0, 0.0]])


def test_lsgan_matches_hand_computation():
    gan = GANLoss("lsgan")
    real = ((0.5 - 1) ** 2 + (-1 - 1) ** 2 + (2 - 1) ** 2 + (0 - 1) ** 2) / 4
    fake = (0.5 ** 2 + 1 + 4 + 0) / 4
    assert gan(PRED, True, for_discriminator=True).item() == pytest.approx(real)
    assert gan(PRED, False, for_discriminator=True).item() == pytest.approx(fake)
    assert gan(PRED, True, for_discriminator=False).item() == pytest.approx(real)


def test_vanilla_matches_hand_computation():
    gan = GANLoss("vanilla")
    values = [0.5, -1.0, 2.0, 0.0]
    sigmoid = [1 / (1 + math.exp(-v)) for v in values]
    real = sum(-math.log(s) for s in sigmoid) / 4
    fake = sum(-math.log(1 - s) for s in sigmoid) / 4
    assert gan(PRED, True, for_discriminator=True).item() == pytest.approx(real, rel=1e-6)
    assert gan(PRED, False, for_discriminator=True).item() == pytest.approx(fake, rel=1e-6)
    assert gan(PRED, True, for_discriminator=False).item() == pytest.approx(real, rel=1e-6)


def test_hinge_matches_hand_computation():
    gan = GANLoss("hinge")
    real = (max(0, 1 - 0.5) + max(0, 1 + 1) + max(0, 1 - 2) + max(0, 1 - 0)) / 4
    fake = (max(0, 1 + 0.5) + max(0, 1 - 1) + max(0, 1 + 2) + max(0, 1 + 0)) / 4
    assert gan(PRED, True, for_discriminator=True).item() == pytest.approx(real)
    assert gan(PRED, False, for_discriminator=True).item() == pytest.approx(fake)
    assert gan(PRED, True, for_discriminator=False).item() == pytest.approx(-(0.5 - 1 + 2 + 0) / 4)
    with pytest.raises(ValueError):
        gan(PRED, False, for_discriminator=False)


def test_gan_loss_computes_in_float32_and_rejects_unknown_mode():
    assert GANLoss("lsgan")(PRED.bfloat16(), True, for_discriminator=True).dtype == torch.float32
    with pytest.raises(ValueError, match="wgan"):
        GANLoss("wgan")


def remapped(x: torch.Tensor) -> torch.Tensor:
    """A monotone nonlinear intensity change, as between two modalities."""
    return 0.5 * torch.tanh(3 * x) + 0.5 * x ** 3


def shifted(x: torch.Tensor, pixels: int = 2) -> torch.Tensor:
    return torch.roll(x, (pixels, pixels), dims=(-2, -1))


def test_mind_descriptor_shape_and_range():
    x = blobs(2, 32, 0).repeat(1, 3, 1, 1)
    descriptor = mind_descriptor(x)
    assert descriptor.shape == (2, 12, 32, 32)
    assert descriptor.min() >= 0 and descriptor.max() <= 1
    # each location has a neighbour at the maximum (normalised by max over the neighbourhood)
    per_neighbour = descriptor.view(2, 4, 3, 32, 32)
    assert torch.allclose(per_neighbour.amax(dim=1), torch.ones(2, 3, 32, 32))


def test_mind_is_contrast_invariant_but_sees_misalignment():
    x = blobs(2, 64, 0)
    mind = MINDLoss()
    assert mind(x, -x).item() == pytest.approx(0.0, abs=1e-6)  # inversion: identical descriptors
    remap_loss = mind(x, remapped(x)).item()
    shift_loss = mind(x, shifted(x)).item()
    unrelated_loss = mind(x, blobs(2, 64, 1)).item()
    assert remap_loss < 0.25 * shift_loss
    assert shift_loss < unrelated_loss


def test_ngf_is_contrast_invariant_but_sees_misalignment():
    x = blobs(2, 64, 0)
    ngf = NGFLoss(eps=0.01)
    baseline = ngf(x, x).item()  # flat regions contribute 1 even for identical images
    assert ngf(x, -x).item() == pytest.approx(baseline, abs=1e-6)  # either edge polarity is fine
    remap_excess = ngf(x, remapped(x)).item() - baseline
    shift_excess = ngf(x, shifted(x)).item() - baseline
    unrelated_excess = ngf(x, blobs(2, 64, 1)).item() - baseline
    assert shift_excess > 0.03
    assert remap_excess < 0.25 * shift_excess
    assert shift_excess < unrelated_excess


def test_structure_losses_give_gradients_to_the_translation():
    x = blobs(1, 32, 0)
    y = blobs(1, 32, 1).requires_grad_(True)
    (MINDLoss()(x, y) + NGFLoss()(x, y)).backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_patch_nce_matches_the_infonce_formula():
    g = torch.Generator().manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(2, 5, 4, generator=g), dim=-1)
    key = torch.nn.functional.normalize(torch.randn(2, 5, 4, generator=g), dim=-1)
    tau = 0.07
    expected = torch.zeros(2)
    for n in range(2):
        for i in range(5):
            positive = torch.exp(query[n, i] @ key[n, i] / tau)
            negatives = sum(torch.exp(query[n, i] @ key[n, j] / tau) for j in range(5) if j != i)
            expected[n] += -torch.log(positive / (positive + negatives)) / 5
    nce = PatchNCELoss(tau)
    # the masked diagonal adds exp(-10 / tau), which is negligible, as in the reference
    assert torch.allclose(nce(query, key, reduction="none"), expected, rtol=1e-4)
    assert nce(query, key).item() == pytest.approx(expected.mean().item(), rel=1e-4)


def test_patch_nce_is_low_for_matching_patches_and_keys_get_no_gradient():
    g = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(1, 64, 16, generator=g), dim=-1)
    nce = PatchNCELoss()
    matched = nce(features, features).item()
    shuffled = nce(features, features[:, torch.randperm(64, generator=g)]).item()
    assert matched < 0.5 * math.log(65) < shuffled
    query = features.clone().requires_grad_(True)
    key = features.clone().requires_grad_(True)
    nce(query, key).backward()
    assert query.grad is not None and key.grad is None
