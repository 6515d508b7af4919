"""RegGAN against pix2pix on phantom pairs with a known misalignment.

Each training CT is moved by its own random smooth deformation plus shift (fixed seed); the MR
stays where it was. Trained for the same 1,000 steps in fp32 on one thread, from the same seed:

(a) RegGAN's translation of a held-out phantom is closer to its (unmoved) CT than pix2pix's:
    MAE below 0.97 x pix2pix's. pix2pix learns the average of the misaligned targets, a blur;
    RegGAN's L1 sees the CT registered onto its translation.
(b) RegGAN's registration field undoes the injected deformation: inside the head, its end-point
    error against the inverse deformation is below that of a zero field (below 0.99 x).

Measured with 1, 2 and 3 torch threads (which change the order of floating-point sums, as
another CPU's kernels do): MAE ratio 0.814 / 0.810 / 0.771, end-point error ratio 0.947 / 0.961 /
0.956 (1.60-1.63 px against 1.69 px for the zero field); with seeds 1 and 2 instead of 0 (other
initialisations and slice orders): MAE ratio 0.929 / 0.933, end-point error ratio 0.938 / 0.965.
The margins (0.97, 0.99) sit above all of these. With 1.5 instead of 2.5 px of blur, or 1,500
steps, the ratios came out near 1 on some thread counts: the margins hold for this setting only.

The images are blurred (sigma 2.5 px) so that their gradients reach as far as the injected
displacement (up to ~3 px): the registration's L1 gradient only sees misalignment where an edge
is within reach. lambda_corr is pix2pix's L1 weight (100), so only the registration differs,
with the paper's 2:1 ratio to lambda_smooth (50); lr 1e-3 with the decay over the second half
makes 1,000 steps enough.
"""

import numpy as np
import pytest
import torch
from scipy import ndimage

from synthct.data.phantom import make_phantom
from synthct.engine import load_run_config
from synthct.engine.trainer import Trainer, seed_everything
from synthct.models import build_model
from synthct.models.registration import warp
from synthct.runtime import Precision

SIZE, STEPS, BLUR, DECAY_START = 32, 1000, 2.5, 0.5
MAE_RATIO, EPE_RATIO = 0.97, 0.99


def phantom_slices(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(MR, CT) axial slices of phantom ``seed`` with at least a quarter of body, in [-1, 1]."""
    mr, ct, mask = make_phantom(seed, size=(SIZE, SIZE, 12))
    keep = mask.mean(axis=(1, 2)) > 0.25
    mr = np.clip(mr[keep] / np.percentile(mr[keep][mask[keep] > 0], 99.5), 0, 1) * 2 - 1
    ct = (np.clip(ct[keep], -1024, 3000) + 1024) / 4024 * 2 - 1
    blur = (0, BLUR, BLUR)
    return tuple(torch.tensor(ndimage.gaussian_filter(a, blur)[:, None], dtype=torch.float32) for a in (mr, ct))


def deformations(n: int, rng: np.random.Generator) -> torch.Tensor:
    """(n, 2, H, W) fields in pixels: smooth noise of at most 1 px plus a shift of up to 2 px per axis."""
    fields = []
    for _ in range(n):
        smooth = np.stack([ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), SIZE / 6, mode="wrap")
                           for _ in range(2)])
        fields.append(smooth / np.abs(smooth).max() + rng.uniform(-2, 2, size=(2, 1, 1)))
    return torch.tensor(np.array(fields), dtype=torch.float32)


def inverse(field: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """The field psi with warp(warp(x, field), psi) = x: psi(p) = -field(p + psi(p)), by fixed point."""
    psi = -field
    for _ in range(iterations):
        psi = -warp(field, psi)
    return psi


def trained(name: str, mr: torch.Tensor, ct: torch.Tensor):
    cfg = load_run_config("tiny")
    cfg.model.name, cfg.model.ngf, cfg.model.ndf, cfg.model.pool_size = name, 8, 8, 50
    if name == "reggan":
        cfg.model.lambda_corr, cfg.model.lambda_smooth = 100.0, 50.0
    cfg.train.precision, cfg.train.threads, cfg.train.lr, cfg.train.decay_start = "fp32", 1, 1e-3, DECAY_START
    seed_everything(0)
    model = build_model(cfg.model, 1, 1)
    trainer = Trainer(model, cfg, total_steps=STEPS, device=torch.device("cpu"),
                      precision=Precision("fp32", "cpu", "test"))
    for i in np.random.default_rng(1).integers(0, len(mr), STEPS):
        trainer.step({"mr": mr[i:i + 1], "ct": ct[i:i + 1]})
    return model.eval()


@pytest.mark.slow
def test_reggan_undoes_a_known_misalignment_that_blurs_pix2pix(one_thread):
    train_mr, train_ct = (torch.cat(parts) for parts in zip(phantom_slices(0), phantom_slices(1)))
    test_mr, test_ct = phantom_slices(2)
    injected = deformations(len(train_ct), np.random.default_rng(0))
    moved_ct = warp(train_ct, injected)
    undo = inverse(injected)
    assert (warp(moved_ct, undo) - train_ct).abs().mean() < 0.1 * (moved_ct - train_ct).abs().mean()

    pix2pix, reggan = (trained(name, train_mr, moved_ct) for name in ("pix2pix", "reggan"))
    with torch.no_grad():
        mae = {name: (model.G(test_mr) - test_ct).abs().mean().item()
               for name, model in (("pix2pix", pix2pix), ("reggan", reggan))}
        field = reggan.registration.R(reggan.G(train_mr), moved_ct)
    head = (train_ct[:, 0] > -0.9).float()
    epe = ((field - undo).norm(dim=1) * head).sum() / head.sum()
    epe_zero = (undo.norm(dim=1) * head).sum() / head.sum()
    assert mae["reggan"] < MAE_RATIO * mae["pix2pix"], mae
    assert epe < EPE_RATIO * epe_zero, (epe, epe_zero)
