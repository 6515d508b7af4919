"""Noise in the cycle (model.cycle_noise): each translation is translated back with Gaussian
noise added, so the cycle cannot be closed through a low-amplitude code; the discriminators
still see the translations as they are."""

import pytest
import torch
from torch.nn.functional import l1_loss

from test_engine import phantoms, tiny_config  # noqa: F401 (phantoms is a fixture)
from test_models import random_batch, tiny

from synthct.engine import load_run_config
from synthct.engine.trainer import train
from synthct.errors import SynthctError
from synthct.models import build_model


def model_with(cycle_noise: float, lambda_identity: float = 0.0):
    torch.manual_seed(0)
    return build_model(tiny(pool_size=0, lambda_identity=lambda_identity, cycle_noise=cycle_noise), 1, 1)


@pytest.mark.parametrize("lambda_identity", [0.0, 0.5])
def test_the_cycle_translates_back_the_translation_plus_noise_of_the_given_sigma(lambda_identity):
    sigma, batch = 0.3, random_batch()
    model = model_with(sigma, lambda_identity)
    plain = model_with(0.0, lambda_identity)
    torch.manual_seed(7)
    _, terms, cache = model.generator_loss(batch)
    _, plain_terms, plain_cache = plain.generator_loss(batch)

    torch.manual_seed(7)  # the noise is drawn for G(mr) first, then for F(ct)
    noise_ct, noise_mr = torch.randn_like(batch["ct"]), torch.randn_like(batch["mr"])
    with torch.no_grad():
        fake_ct, fake_mr = model.G(batch["mr"]), model.F(batch["ct"])
        rec_mr, rec_ct = model.F(fake_ct + sigma * noise_ct), model.G(fake_mr + sigma * noise_mr)
    assert torch.allclose(cache["rec_mr"], rec_mr, atol=1e-6) and torch.allclose(cache["rec_ct"], rec_ct, atol=1e-6)
    assert torch.allclose(terms["cycle_mr"], 10 * l1_loss(rec_mr, batch["mr"]), atol=1e-6)
    assert torch.allclose(terms["cycle_ct"], 10 * l1_loss(rec_ct, batch["ct"]), atol=1e-6)
    # What the discriminators judge, and the identity terms, carry no noise.
    assert torch.equal(cache["fake_ct"], plain_cache["fake_ct"]) and torch.equal(cache["fake_mr"], plain_cache["fake_mr"])
    for name in ("G_gan", "F_gan", "idt_ct", "idt_mr"):
        if name in plain_terms:
            assert torch.allclose(terms[name], plain_terms[name])
    assert not torch.allclose(terms["cycle_mr"], plain_terms["cycle_mr"])


def test_a_code_below_the_noise_no_longer_closes_the_cycle():
    """A G that hides the MR at 1/100 of its amplitude and an F that reads it back closes the cycle
    exactly without noise; with noise of sigma 0.1 the reconstruction error is that of the noise
    amplified a hundredfold."""
    model = model_with(0.1)
    model.G.forward = lambda x: -1 + 0.01 * (x + 1)  # near-black, the MR hidden in the last grey levels
    model.F.forward = lambda y: -1 + 100 * (y + 1)
    batch = random_batch()
    torch.manual_seed(0)
    _, terms, _ = model.generator_loss(batch)
    model.cycle_noise = 0.0
    _, clean_terms, _ = model.generator_loss(batch)
    assert clean_terms["cycle_mr"] < 1e-4
    assert terms["cycle_mr"] > 10 * 0.5 * 100 * 0.1  # 10 x mean |100 * 0.1 * N(0, 1)| is about 10 x 8


def test_a_training_run_with_cycle_noise_records_it(phantoms, tmp_path):
    cfg = tiny_config(phantoms, steps=3)
    cfg.model.cycle_noise = 0.1
    train(cfg, tmp_path / "run", quiet=True)
    assert load_run_config(tmp_path / "run" / "config.yaml").model.cycle_noise == 0.1


@pytest.mark.parametrize("overrides, message", [
    ({"cycle_noise": -0.1}, "model.cycle_noise: must be 0 \\(off\\) or positive, got -0.1"),
    ({"cycle_noise": 0.1, "name": "pix2pix"}, "model.cycle_noise: only the cyclegan model has it, not pix2pix"),
])
def test_bad_cycle_noise_settings_are_clear_errors(overrides, message):
    with pytest.raises(SynthctError, match=message):
        build_model(tiny(**overrides), 1, 1)
