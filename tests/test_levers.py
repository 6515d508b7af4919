"""The R1 penalty (model.r1_gamma), the stabiliser of GANs on little data that the screening on the
real scans promoted (docs/RESULTS.md). Off by default, it then changes nothing."""

import copy
import json

import pytest
import torch
from torch import nn

from test_engine import log_rows, phantoms, tiny_config  # noqa: F401 (phantoms is a fixture)
from test_models import random_batch, tiny

from synthct.engine.trainer import train
from synthct.errors import SynthctError
from synthct.models import build_model, init_weights
from synthct.models.discriminator import PatchDiscriminator
from synthct.models.layers import InstanceNorm
from synthct.models.losses import r1_penalty
from synthct.models.saved import load_generator
from synthct.models.shared import discriminator_objective

pytestmark = pytest.mark.usefixtures("one_thread")


def model_with(**options):
    torch.manual_seed(0)
    return build_model(tiny(**options), 1, 1)


def test_r1_off_gives_the_plain_objective_and_draws_no_random_numbers():
    model, batch = model_with(pool_size=0), random_batch()
    before = torch.get_rng_state()
    _, terms, cache = model.generator_loss(batch)
    _, d_terms = model.discriminator_loss(batch, cache)
    assert torch.equal(torch.get_rng_state(), before)
    assert set(d_terms) == {"D_ct", "D_mr"}
    with torch.no_grad():
        assert torch.equal(terms["G_gan"], model.gan(model.D_ct(cache["fake_ct"]), True, False))
        for domain, D in (("ct", model.D_ct), ("mr", model.D_mr)):
            plain = discriminator_objective(model.gan, D, batch[domain], cache[f"fake_{domain}"])
            assert torch.equal(d_terms[f"D_{domain}"], plain)


# --- R1 --------------------------------------------------------------------------------------

def linear_D(size: int = 32, seed: int = 0) -> nn.Conv2d:
    """D(x) = <W, x> + b: one score per image, whose input gradient is W."""
    torch.manual_seed(seed)
    return nn.Conv2d(1, 1, size)


def test_r1_penalty_of_a_linear_discriminator_is_the_squared_weight_norm():
    D, x = linear_D(), (torch.rand(3, 1, 32, 32) * 2 - 1).requires_grad_(True)
    penalty = r1_penalty(D(x), x)
    assert penalty.item() == pytest.approx(D.weight.square().sum().item(), rel=1e-5)
    # differentiable in D: d|W|^2 / dW = 2W
    (grad,) = torch.autograd.grad(penalty, D.weight)
    assert torch.allclose(grad, 2 * D.weight, atol=1e-6)


def test_r1_penalty_is_the_mean_per_patch_penalty_of_a_patchgan():
    """Non-overlapping patches: exact on every draw, with and without weights (D_p = (W . x_p)^2,
    so |grad D_p|^2 = 4 (W . x_p)^2 |W|^2); overlapping patches: exact on average over draws."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 1, 4, stride=4, bias=False)
    x = (torch.rand(2, 1, 16, 16) * 2 - 1).requires_grad_(True)
    weight = torch.rand(2, 1, 4, 4)
    with torch.no_grad():
        per_patch = 4 * conv(x).square() * conv.weight.square().sum()
    for seed in range(3):
        torch.manual_seed(seed)
        assert r1_penalty(conv(x).square(), x).item() == pytest.approx(per_patch.mean().item(), rel=1e-5)
        torch.manual_seed(seed)
        expected = (per_patch * weight).sum() / weight.sum()
        assert r1_penalty(conv(x).square(), x, weight).item() == pytest.approx(expected.item(), rel=1e-5)
    overlapping = nn.Conv2d(1, 1, 3, bias=False)  # 4 x 4 map of 3 x 3 patches, each gradient = W
    y = torch.rand(1, 1, 6, 6).requires_grad_(True)
    estimates = torch.stack([r1_penalty(overlapping(y), y).detach() for _ in range(4000)])
    exact = overlapping.weight.square().sum()
    assert estimates.mean().item() == pytest.approx(exact.item(), rel=0.05)
    assert estimates.std() > 0.1 * exact  # a single draw is not exact here: the mean is the test


def test_r1_through_the_fused_instance_norm_matches_stock_modules():
    """R1's gradient in D's weights needs the backward of D's input gradient (double backward),
    here through layers.InstanceNorm's hand-written backward."""
    torch.manual_seed(0)
    D = init_weights(PatchDiscriminator(1, 4, 3))
    stock = copy.deepcopy(D)
    for block in stock.model:
        for i, layer in enumerate(block if isinstance(block, nn.Sequential) else []):
            if isinstance(layer, InstanceNorm):
                block[i] = nn.Sequential(nn.InstanceNorm2d(layer.num_features), nn.LeakyReLU(layer.negative_slope))
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    results = []
    for net in (D, stock):
        inputs = x.clone().requires_grad_(True)
        torch.manual_seed(1)
        penalty = r1_penalty(net(inputs), inputs)
        grads = torch.autograd.grad(penalty, [p for name, p in net.named_parameters() if name.endswith("weight")])
        results.append((penalty, grads))
    assert results[0][0] > 0 and torch.allclose(results[0][0], results[1][0])
    for ours, theirs in zip(results[0][1], results[1][1]):
        assert ours.abs().sum() > 0 and torch.allclose(ours, theirs, rtol=1e-4, atol=1e-7)


def test_cyclegan_adds_half_gamma_over_two_r1_to_each_discriminator_and_nothing_at_gamma_zero():
    gamma, batch = 10.0, random_batch()
    model = model_with(r1_gamma=gamma, pool_size=0)
    model.D_ct, model.D_mr = linear_D(seed=1), linear_D(seed=2)
    _, _, cache = model.generator_loss(batch)
    loss, terms = model.discriminator_loss(batch, cache)
    assert set(terms) == {"D_ct", "R1_ct", "D_mr", "R1_mr"}
    for domain, D in (("ct", model.D_ct), ("mr", model.D_mr)):
        assert terms[f"R1_{domain}"].item() == pytest.approx(0.5 * gamma / 2 * D.weight.square().sum().item(), rel=1e-5)
    assert loss.item() == pytest.approx(sum(v.item() for v in terms.values()), rel=1e-6)
    loss.backward()
    assert model.D_ct.weight.grad.abs().sum() > 0
    plain = model_with(pool_size=0)
    plain.D_ct, plain.D_mr = linear_D(seed=1), linear_D(seed=2)
    plain_loss, plain_terms = plain.discriminator_loss(batch, cache)
    assert set(plain_terms) == {"D_ct", "D_mr"} and torch.equal(plain_terms["D_ct"], terms["D_ct"])
    assert plain_loss.item() == pytest.approx(loss.item() - terms["R1_ct"].item() - terms["R1_mr"].item(), rel=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_r1_trains_the_discriminators_in_fp32_and_under_bf16_autocast(precision):
    model, batch = model_with(r1_gamma=10.0, pool_size=0), random_batch()
    reference = copy.deepcopy(model)
    if precision == "bf16":
        model = model.to(memory_format=torch.channels_last)
        batch = {k: v.to(memory_format=torch.channels_last) for k, v in batch.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        _, _, cache = model.generator_loss(batch)
        torch.manual_seed(4)
        loss, terms = model.discriminator_loss(batch, cache)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and terms["R1_ct"] > 0 and terms["R1_mr"] > 0
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.discriminator_parameters())
    torch.manual_seed(4)  # the same signs, in fp32
    _, fp32_terms = reference.discriminator_loss(batch, {k: v.float() if torch.is_tensor(v) else v
                                                         for k, v in cache.items()})
    for name in ("R1_ct", "R1_mr"):
        assert terms[name].item() == pytest.approx(fp32_terms[name].item(), rel=0.1 if precision == "bf16" else 1e-5)


# --- R1 in training runs --------------------------------------------------------------------

def test_a_run_with_r1_logs_its_penalty_records_it_and_is_not_judged_on_its_discriminators(phantoms, tmp_path):
    # Stopping and resuming bit for bit: test_engine's stop-and-resume test, R1 case.
    cfg = tiny_config(phantoms, steps=8, decay_start=0.5)
    cfg.model.r1_gamma = 10.0
    train(cfg, tmp_path / "run", quiet=True)
    rows = log_rows(tmp_path / "run")
    assert len(rows) == 8 and all(rows[-1][k] for k in ("G_gan", "D_ct"))
    assert float(rows[-1]["R1_ct"]) > 0 and float(rows[-1]["R1_mr"]) > 0
    _, meta = load_generator(tmp_path / "run", "mr2ct")
    assert meta["config"]["model"]["r1_gamma"] == 10.0
    # R1's discriminators sit near chance by design: the health check does not judge them.
    checks = json.loads((tmp_path / "run" / "health.json").read_text())["checks"]
    assert checks and all("discriminators_at_chance" not in c["evidence"] and "mr_order" in c["evidence"]
                          for c in checks)


@pytest.mark.parametrize("overrides, message", [
    ({"r1_gamma": -1.0}, "model.r1_gamma: must be 0 \\(off\\) or positive, got -1.0"),
    ({"r1_gamma": 10.0, "name": "pix2pix"}, "model.r1_gamma: only the cyclegan model has it, not pix2pix"),
])
def test_bad_r1_settings_are_clear_errors(overrides, message):
    with pytest.raises(SynthctError, match=message):
        build_model(tiny(**overrides), 1, 1)


@pytest.mark.parametrize("option, off, on", [("diffaugment", False, True), ("spectral_norm", False, True),
                                              ("cycle_noise", 0.0, 0.1)])
def test_the_screened_levers_that_were_not_promoted_are_refused_when_on_and_dropped_when_off(option, off, on):
    from synthct.config import config_from_dict, config_to_dict

    assert option not in config_to_dict(config_from_dict({"model": {option: off}}))["model"]
    with pytest.raises(SynthctError, match=f"model.{option} was removed"):
        config_from_dict({"model": {option: on}})


def test_r1_trains_body_masked_under_bf16_autocast_channels_last():
    model = model_with(r1_gamma=10.0, body_masked=True)
    model = model.to(memory_format=torch.channels_last)
    body = torch.zeros(2, 1, 32, 32)
    body[..., 4:28, 6:26] = 1.0
    batch = {k: v.to(memory_format=torch.channels_last)
             for k, v in (random_batch() | {"mr_body": body, "ct_body": body.clone()}).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, terms, cache = model.generator_loss(batch)
    total.backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d_total, d_terms = model.discriminator_loss(batch, cache)
    d_total.backward()
    assert set(d_terms) == {"D_ct", "R1_ct", "D_mr", "R1_mr"}
    assert all(torch.isfinite(v) for v in (*terms.values(), *d_terms.values()))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.discriminator_parameters())
