"""Stabilisers of GANs on little data, as CycleGAN options: DiffAugment of every discriminator
input (model.diffaugment), the R1 penalty (model.r1_gamma) and spectral normalisation of the
discriminators (model.spectral_norm). Each is off by default and then changes nothing."""

import copy
import json
import os
import signal

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from test_engine import _state_tensors, log_rows, phantoms, tiny_config  # noqa: F401 (phantoms is a fixture)
from test_models import random_batch, tiny

from synthct.engine.trainer import Trainer, train
from synthct.errors import SynthctError
from synthct.models import build_model, init_weights
from synthct.models.diffaugment import BACKGROUND, brightness, contrast, cutout, diff_augment, translation
from synthct.models.discriminator import PatchDiscriminator, spectrally_normalised
from synthct.models.layers import InstanceNorm
from synthct.models.losses import r1_penalty
from synthct.models.saved import load_generator, sha256_of
from synthct.models.shared import adversarial, discriminator_objective


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def model_with(**options):
    torch.manual_seed(0)
    return build_model(tiny(**options), 1, 1)


def ramp(n: int = 4, size: int = 16) -> torch.Tensor:
    """Distinct values everywhere (a shift shows), inside (-1, 1)."""
    values = torch.arange(n * size * size, dtype=torch.float32).reshape(n, 1, size, size)
    return values / values.numel() * 1.8 - 0.9


# --- DiffAugment -----------------------------------------------------------------------------

def test_brightness_and_contrast_are_the_papers_per_image_changes():
    x = ramp()
    torch.manual_seed(3)
    bright = brightness(x)
    offset = (bright - x).flatten(1)
    assert torch.allclose(offset, offset[:, :1].expand_as(offset), atol=1e-6)  # one offset per image
    assert (offset.abs() <= 0.5).all() and offset[:, 0].unique().numel() == len(x)
    torch.manual_seed(3)
    changed = contrast(x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    factor = ((changed - mean) / (x - mean)).flatten(1)
    assert torch.allclose(changed.mean(dim=(1, 2, 3), keepdim=True), mean, atol=1e-6)
    assert torch.allclose(factor, factor[:, :1].expand_as(factor), atol=1e-4)
    assert ((factor >= 0.5) & (factor <= 1.5)).all()


def test_translation_shifts_each_image_by_at_most_an_eighth_and_fills_with_background():
    x, body = ramp(8, 16), (ramp(8, 16) > 0).float()
    torch.manual_seed(5)
    moved, moved_body = translation(x, body)
    torch.manual_seed(5)
    dy, dx = torch.randint(-2, 3, (8, 1, 1)), torch.randint(-2, 3, (8, 1, 1))  # 16 / 8 = 2 pixels
    assert (dy != 0).any() and (dx != 0).any()
    for i in range(8):
        expected = torch.full((16, 16), BACKGROUND)
        expected_body = torch.zeros(16, 16)
        for r in range(16):
            for c in range(16):
                if 0 <= r + dy[i] < 16 and 0 <= c + dx[i] < 16:
                    expected[r, c] = x[i, 0, r + dy[i], c + dx[i]]
                    expected_body[r, c] = body[i, 0, r + dy[i], c + dx[i]]
        assert torch.equal(moved[i, 0], expected) and torch.equal(moved_body[i, 0], expected_body), i


def test_cutout_sets_a_half_side_square_to_background():
    x = ramp(6, 16)
    torch.manual_seed(2)
    out = cutout(x)
    for i in range(6):
        cut = out[i, 0] != x[i, 0]
        assert (out[i, 0][cut] == BACKGROUND).all()
        rows, cols = cut.any(dim=1).nonzero().flatten(), cut.any(dim=0).nonzero().flatten()
        # one axis-aligned rectangle: the 8 x 8 square, clipped where it crosses a border
        assert cut.sum() == len(rows) * len(cols) and 0 < len(rows) <= 8 and 0 < len(cols) <= 8
        assert len(rows) == 8 or rows.min() == 0 or rows.max() == 15
        assert len(cols) == 8 or cols.min() == 0 or cols.max() == 15


def test_diff_augment_is_seeded_by_torch_and_keeps_dtype_and_layout():
    x = (torch.rand(3, 3, 32, 32) * 2 - 1).to(memory_format=torch.channels_last)
    torch.manual_seed(11)
    first, _ = diff_augment(x)
    torch.manual_seed(11)
    again, _ = diff_augment(x)
    other, _ = diff_augment(x)
    assert torch.equal(first, again) and not torch.equal(first, other) and not torch.equal(first, x)
    assert first.is_contiguous(memory_format=torch.channels_last) and first.dtype == x.dtype
    low, _ = diff_augment(x.bfloat16())
    assert low.dtype == torch.bfloat16


def test_diffaugment_changes_what_the_discriminators_see_and_still_trains_the_generators():
    # Without cycle and identity terms, G's only gradient is L_GAN(G, D_ct) through T(G(mr)).
    model, batch = model_with(diffaugment=True, pool_size=0, lambda_cycle=0.0), random_batch()
    seen = {"D_ct": [], "D_mr": []}
    for name in seen:
        getattr(model, name).register_forward_pre_hook(
            lambda module, args, name=name: seen[name].append(args[0].detach().clone()))
    total, terms, cache = model.generator_loss(batch)
    assert set(terms) == {"G_gan", "F_gan", "cycle_mr", "cycle_ct", "idt_ct", "idt_mr"} and terms["cycle_mr"] == 0
    fake_ct = cache["fake_ct"]
    assert seen["D_ct"][0].shape == fake_ct.shape and not torch.equal(seen["D_ct"][0], fake_ct)
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.G.parameters())
    assert sum(p.grad.abs().sum() for p in model.G.parameters()) > 0
    model.discriminator_loss(batch, cache)
    real_seen, fake_seen = seen["D_ct"][1].split(len(batch["ct"]))
    assert not torch.equal(real_seen, batch["ct"]) and not torch.equal(fake_seen, fake_ct)
    assert not torch.equal(fake_seen, seen["D_ct"][0])  # a fresh augmentation in each step


def test_the_generator_gradient_flows_through_the_augmented_translation():
    model = model_with(diffaugment=True, pool_size=0)
    fake = (torch.rand(2, 1, 32, 32) * 2 - 1).requires_grad_(True)
    torch.manual_seed(0)
    judged, _ = model.augmented(fake, None)
    (grad,) = torch.autograd.grad(model.gan(model.D_ct(judged), True, False), fake)
    assert torch.isfinite(grad).all() and (grad != 0).float().mean() > 0.5
    (plain,) = torch.autograd.grad(model.gan(model.D_ct(fake), True, False), fake)
    assert not torch.allclose(grad, plain)


def test_levers_off_give_the_plain_objective_and_draw_no_random_numbers():
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
    augmented = model_with(pool_size=0, diffaugment=True)
    before = torch.get_rng_state()
    _, augmented_terms, _ = augmented.generator_loss(batch)
    assert not torch.equal(torch.get_rng_state(), before)
    assert not torch.equal(augmented_terms["G_gan"], terms["G_gan"])
    assert torch.equal(augmented_terms["cycle_mr"], terms["cycle_mr"])  # the same generators, cycle untouched


def test_body_masks_move_with_the_augmented_images_and_weigh_their_patches():
    model = model_with(diffaugment=True, body_masked=True, pool_size=0)
    body = torch.zeros(2, 1, 32, 32)
    body[..., 4:20, 6:30] = 1.0
    batch = random_batch() | {"mr_body": body, "ct_body": body.clone()}
    seen = []
    model.D_ct.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    torch.manual_seed(1)
    _, terms, cache = model.generator_loss(batch)
    torch.manual_seed(1)  # the generator step's first draws augment G(mr)
    image, moved = diff_augment(cache["fake_ct"], body)
    assert torch.equal(seen[0], image)
    assert not torch.equal(moved, body) and torch.equal(moved.sum(dim=(2, 3)), body.sum(dim=(2, 3)))  # inside
    with torch.no_grad():
        assert torch.allclose(terms["G_gan"], adversarial(model.gan, model.D_ct(image), True, False, moved))
        assert not torch.allclose(terms["G_gan"], adversarial(model.gan, model.D_ct(image), True, False, body))


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


# --- spectral normalisation ------------------------------------------------------------------

def largest_singular_values(net: nn.Module) -> list[float]:
    return [torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item()
            for m in net.modules() if isinstance(m, nn.Conv2d)]


def test_spectral_norm_bounds_every_discriminator_convolution_and_leaves_the_generators():
    model, batch = model_with(spectral_norm=True), random_batch()
    plain = model_with()
    assert max(largest_singular_values(plain.D_ct)) < 0.9  # initial weights N(0, 0.02)
    for _ in range(5):  # a few training forward passes, one power iteration each
        model.discriminator_loss(batch, model.generator_loss(batch)[2])
    for D in (model.D_ct, model.D_mr):
        values = largest_singular_values(D)
        assert len(values) == 5 and values == pytest.approx([1.0] * 5, abs=0.02)
    assert not any(hasattr(m, "parametrizations") for m in (*model.G.modules(), *model.F.modules()))
    assert not any(hasattr(m, "parametrizations") for m in plain.modules())
    assert model.G.state_dict().keys() == plain.G.state_dict().keys()


def test_spectrally_normalised_discriminators_round_trip_through_safetensors():
    model, batch = model_with(spectral_norm=True), random_batch()
    for _ in range(2):
        model.discriminator_loss(batch, model.generator_loss(batch)[2])
    state = model.state_dict()
    assert any(k.endswith("parametrizations.weight.original") for k in state)
    assert any(k.endswith("parametrizations.weight.0._u") for k in state)
    other = model_with(spectral_norm=True)
    other.load_state_dict(load_safetensors(save_safetensors({k: v.contiguous() for k, v in state.items()})))
    for D, copied in ((model.D_ct, other.D_ct), (model.D_mr, other.D_mr)):
        D.train(), copied.train()  # training mode: the next power iteration starts from the saved u
        assert torch.equal(D(batch["ct"]), copied(batch["ct"]))
    with pytest.raises(RuntimeError):
        model_with().load_state_dict(state)


def test_spectrally_normalised_helper_covers_every_convolution():
    net = spectrally_normalised(init_weights(PatchDiscriminator(1, 4, 2)))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(hasattr(m, "parametrizations") for m in convs)


# --- the options in training runs ------------------------------------------------------------

LEVERS = {"diffaugment": {"diffaugment": True}, "r1": {"r1_gamma": 10.0}, "spectral_norm": {"spectral_norm": True}}


@pytest.mark.parametrize("lever", LEVERS)
def test_a_run_with_each_lever_stops_and_resumes_bit_for_bit(phantoms, tmp_path, monkeypatch, lever):
    cfg = tiny_config(phantoms, steps=8, decay_start=0.5)
    for key, value in LEVERS[lever].items():
        setattr(cfg.model, key, value)
    train(cfg, tmp_path / "straight", quiet=True)

    step = Trainer.step

    def step_then_sigterm(self, batch):
        out = step(self, batch)
        if self.step_index == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "step", step_then_sigterm)
    assert train(cfg, tmp_path / "split", quiet=True).steps == 3
    monkeypatch.undo()
    assert train(cfg, tmp_path / "split", resume=True, quiet=True).steps == 8

    straight, split = _state_tensors(tmp_path / "straight"), _state_tensors(tmp_path / "split")
    assert straight.keys() == split.keys()
    for key, value in straight.items():
        assert torch.equal(value, split[key]) if isinstance(value, torch.Tensor) else value == split[key], key
    assert sha256_of(tmp_path / "straight" / "generator_mr2ct.safetensors") == \
        sha256_of(tmp_path / "split" / "generator_mr2ct.safetensors")
    rows = log_rows(tmp_path / "straight")
    assert len(rows) == 8 and all(rows[-1][k] for k in ("G_gan", "D_ct"))
    if lever == "r1":
        assert float(rows[-1]["R1_ct"]) > 0 and float(rows[-1]["R1_mr"]) > 0
    exported, meta = load_generator(tmp_path / "straight", "mr2ct")
    assert meta["config"]["model"][next(iter(LEVERS[lever]))] == next(iter(LEVERS[lever].values()))
    assert not any(hasattr(m, "parametrizations") for m in exported.modules())
    # DiffAugment's and R1's discriminators sit near chance by design: the health check does not judge them.
    checks = json.loads((tmp_path / "straight" / "health.json").read_text())["checks"]
    assert checks and all(("discriminators_at_chance" in c["evidence"]) == (lever == "spectral_norm") for c in checks)


@pytest.mark.parametrize("overrides, message", [
    ({"r1_gamma": -1.0}, "model.r1_gamma: must be 0 \\(off\\) or positive, got -1.0"),
    ({"r1_gamma": 10.0, "name": "pix2pix"}, "model.r1_gamma: only the cyclegan model has it, not pix2pix"),
    ({"diffaugment": True, "name": "cut"}, "model.diffaugment: only the cyclegan model has it, not cut"),
    ({"spectral_norm": True, "name": "reggan"}, "model.spectral_norm: only the cyclegan model has it, not reggan"),
])
def test_bad_lever_settings_are_clear_errors(overrides, message):
    with pytest.raises(SynthctError, match=message):
        build_model(tiny(**overrides), 1, 1)


def test_all_levers_together_train_under_bf16_autocast_channels_last():
    model = model_with(diffaugment=True, r1_gamma=10.0, spectral_norm=True, body_masked=True)
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
    vectors = [buffer for name, buffer in model.D_ct.named_buffers() if name.endswith(("_u", "_v"))]
    assert len(vectors) == 10 and all(v.dtype == torch.float32 for v in vectors)
