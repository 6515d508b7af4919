import math

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from synthct.config import ModelConfig
from synthct.errors import SynthctError
from synthct.models import (CUT, CycleGAN, GANLoss, ImagePool, PatchDiscriminator, Pix2Pix, ResnetGenerator,
                            UnetGenerator, build_model, init_weights, receptive_field)
from synthct.models.shared import batched
from unpaired_inversion import adversarial_step, inversion_errors



pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> ModelConfig:
    return ModelConfig(**{"ngf": 8, "ndf": 8, "blocks": 2, **overrides})


def random_batch(n: int = 2, channels: int = 1, size: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"mr": torch.rand(n, channels, size, size, generator=g) * 2 - 1,
            "ct": torch.rand(n, channels, size, size, generator=g) * 2 - 1}


@pytest.mark.parametrize("blocks", [6, 9])
@pytest.mark.parametrize("channels", [(1, 1), (3, 5)])
def test_resnet_generator_shapes_and_tanh_range(blocks, channels):
    in_channels, out_channels = channels
    net = ResnetGenerator(in_channels, out_channels, ngf=8, n_blocks=blocks)
    assert len(net.blocks) == blocks
    y = net(torch.randn(2, in_channels, 32, 32) * 100)
    assert y.shape == (2, out_channels, 32, 32)
    assert y.abs().max() <= 1.0


def test_resnet_generator_follows_the_paper_layout():
    net = ResnetGenerator(1, 1, ngf=8, n_blocks=2)
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert [m.kernel_size[0] for m in convs] == [7, 3, 3] + [3] * 4 + [3, 3, 7]
    assert [m.out_channels for m in convs] == [8, 16, 32] + [32] * 4 + [16, 8, 1]
    assert all(m.bias is not None for m in convs)
    norms = [m for m in net.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and all(not m.affine and not m.track_running_stats for m in norms)
    assert sum(isinstance(m, nn.ReflectionPad2d) for m in net.modules()) == 2 + 2 * 2


@pytest.mark.parametrize("num_downs,size", [(5, 32), (6, 64)])
def test_unet_generator_shapes(num_downs, size):
    net = UnetGenerator(2, 3, num_downs=num_downs, ngf=8)
    y = net(torch.randn(1, 2, size, size) * 10)
    assert y.shape == (1, 3, size, size)
    assert y.abs().max() <= 1.0


def test_unet_rejects_sizes_that_are_not_multiples_and_has_reference_dropout():
    net = UnetGenerator(1, 1, num_downs=5, ngf=8)
    with pytest.raises(ValueError, match="multiples of 32, got 48x32"):
        net(torch.randn(1, 1, 48, 32))
    deep = UnetGenerator(1, 1, num_downs=8, ngf=4)
    assert sum(isinstance(m, nn.Dropout) for m in deep.modules()) == 3
    assert sum(isinstance(m, nn.Dropout) for m in net.modules()) == 0
    assert sum(isinstance(m, nn.Dropout) for m in UnetGenerator(1, 1, 8, 4, use_dropout=False).modules()) == 0


def test_cyclegan_unet_generators_train_without_dropout_and_pix2pix_with_it():
    cycle = CycleGAN(tiny(generator="unet", unet_downs=8), 1, 1)
    paired = Pix2Pix(tiny(name="pix2pix", generator="unet", unet_downs=8), 1, 1)
    assert not any(isinstance(m, nn.Dropout) for m in cycle.modules())
    assert sum(isinstance(m, nn.Dropout) for m in paired.G.modules()) == 3


def test_generators_work_channels_last_and_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).to(memory_format=torch.channels_last)
    for net in (ResnetGenerator(3, 3, ngf=8, n_blocks=2), UnetGenerator(3, 3, num_downs=5, ngf=8)):
        init_weights(net)
        net = net.to(memory_format=torch.channels_last).eval()
        with torch.no_grad():
            reference = net(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = net(x)
        assert torch.isfinite(low).all()
        relative = ((low.float() - reference).norm() / reference.norm()).item()
        assert relative < 0.05


def test_patchgan_receptive_field_is_70_and_output_shape():
    assert receptive_field(3) == 70
    d = PatchDiscriminator(2, ndf=4, n_layers=3)
    assert d(torch.randn(1, 2, 256, 256)).shape == (1, 1, 30, 30)
    assert d(torch.randn(3, 2, 32, 32)).shape == (3, 1, 2, 2)
    # measure it: without the (global) InstanceNorm, one output pixel depends on a 70x70 window
    for block in d.model:
        if isinstance(block, nn.Sequential):
            for i, layer in enumerate(block):
                if isinstance(layer, nn.InstanceNorm2d):
                    block[i] = nn.Identity()
    x = torch.randn(1, 2, 128, 128, requires_grad=True)
    out = d(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = x.grad.abs().sum(dim=(0, 1, 3)).nonzero()
    assert int(rows.max() - rows.min() + 1) == 70


def test_init_weights_statistics():
    torch.manual_seed(0)
    net = init_weights(nn.Sequential(ResnetGenerator(1, 1, ngf=16, n_blocks=2), nn.BatchNorm2d(4096)))
    weights = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    biases = torch.cat([m.bias.flatten() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    assert weights.mean().abs() < 1e-3
    assert weights.std().item() == pytest.approx(0.02, rel=0.02)
    assert (biases == 0).all()
    norm = net[1]
    assert norm.weight.mean().item() == pytest.approx(1.0, abs=2e-3)
    assert norm.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert (norm.bias == 0).all()


def test_image_pool_returns_first_images_then_mixes_history():
    pool = ImagePool(size=50, seed=1)
    images = [torch.full((1, 1, 2, 2), float(i)) for i in range(80)]
    for i in range(50):
        assert torch.equal(pool.query(images[i]), images[i])
    assert len(pool) == 50
    later = [int(pool.query(images[i]).flatten()[0]) for i in range(50, 80)]
    from_history = [value for value, i in zip(later, range(50, 80)) if value != i]
    assert 5 < len(from_history) < 25  # about half, p = 0.5
    assert all(0 <= value < 80 for value in from_history)
    assert len(pool) == 50


def test_image_pool_state_round_trip_reproduces_the_future_through_safetensors():
    g = torch.Generator().manual_seed(0)
    stream = [torch.randn(2, 1, 4, 4, generator=g) for _ in range(40)]
    pool = ImagePool(size=10, seed=3)
    for batch in stream[:20]:
        pool.query(batch)
    state = load_safetensors(save_safetensors(pool.state_dict()))
    expected = [pool.query(batch) for batch in stream[20:]]
    resumed = ImagePool(size=10, seed=99)
    resumed.load_state_dict(state)
    assert all(torch.equal(resumed.query(batch), out) for batch, out in zip(stream[20:], expected))
    fresh = ImagePool(size=10, seed=3)  # same seed but empty history: a different future
    assert not all(torch.equal(fresh.query(batch), out) for batch, out in zip(stream[20:], expected))


def test_image_pool_forgets_images_of_another_size():
    pool = ImagePool(size=4, seed=0)
    for value in range(6):
        pool.query(torch.full((1, 1, 8, 8), float(value)))
    assert len(pool) == 4
    larger = torch.full((1, 1, 16, 16), 9.0)
    assert torch.equal(pool.query(larger), larger)  # an empty history returns the new image
    assert len(pool) == 1 and pool.images[0].shape == (1, 16, 16)


def test_image_pool_of_size_zero_is_off():
    pool = ImagePool(size=0)
    x = torch.randn(3, 1, 4, 4)
    assert pool.query(x) is x
    assert len(pool) == 0


def count_calls(*nets: nn.Module) -> list[int]:
    counts = [0] * len(nets)
    for index, net in enumerate(nets):
        net.register_forward_hook(lambda *_, index=index: counts.__setitem__(index, counts[index] + 1))
    return counts


@pytest.mark.parametrize("lambda_identity", [0.5, 0.0])
def test_cyclegan_runs_each_generator_the_minimal_number_of_times(lambda_identity):
    torch.manual_seed(0)
    model = CycleGAN(tiny(lambda_identity=lambda_identity), 1, 1)
    calls = count_calls(model.G, model.F)
    total, terms, cache = model.generator_loss(random_batch())
    # G(mr, ct) and G(F(ct)); F(ct, mr, G(mr)) in one call
    assert calls == [2, 1]
    expected = {"G_gan", "F_gan", "cycle_mr", "cycle_ct"} | ({"idt_ct", "idt_mr"} if lambda_identity else set())
    assert set(terms) == expected
    assert torch.isfinite(total) and all(torch.isfinite(v) and not v.requires_grad for v in terms.values())
    assert total.item() == pytest.approx(sum(v.item() for v in terms.values()), rel=1e-5)


def test_batching_along_n_is_exact_for_instance_norm_generators():
    torch.manual_seed(0)
    net = init_weights(ResnetGenerator(1, 1, ngf=8, n_blocks=2))
    a, b = torch.randn(2, 1, 32, 32), torch.randn(1, 1, 32, 32)
    together = batched(net, a, b)
    assert torch.allclose(together[0], net(a), atol=1e-6) and torch.allclose(together[1], net(b), atol=1e-6)


def test_cyclegan_generator_step_leaves_discriminators_without_gradients():
    torch.manual_seed(0)
    model = CycleGAN(tiny(lambda_struct=1.0), 1, 1)
    batch = random_batch()
    total, terms, cache = model.generator_loss(batch)
    assert "struct" in terms
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.generator_parameters())
    assert all(p.grad is None for p in model.discriminator_parameters())
    model.zero_grad(set_to_none=True)
    d_total, d_terms = model.discriminator_loss(batch, cache)
    assert set(d_terms) == {"D_ct", "D_mr"}
    d_total.backward()
    assert all(p.grad is not None for p in model.discriminator_parameters())
    assert all(p.grad is None for p in model.generator_parameters())


def optimisation_step(model: nn.Module, batch: dict) -> dict:
    g_opt = torch.optim.Adam(model.generator_parameters(), 2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(model.discriminator_parameters(), 2e-4, betas=(0.5, 0.999))
    terms, d_terms, cache = adversarial_step(model, batch, g_opt, d_opt)
    samples = model.samples(cache, batch)
    assert all(s.shape == (len(batch["mr"]), 1, 32, 32) for s in samples.values())
    return {**terms, **d_terms}


@pytest.mark.parametrize("model", [
    lambda: build_model(tiny(struct_loss="ngf", lambda_struct=0.5), 3, 3),
    lambda: build_model(tiny(gan_mode="hinge", lambda_identity=0.0), 1, 1),
    lambda: Pix2Pix(tiny(name="pix2pix", generator="unet", unet_downs=5), 1, 1),
    lambda: build_model(tiny(name="pix2pix", gan_mode="vanilla"), 3, 1),
    lambda: build_model(tiny(name="cut"), 1, 1),
    lambda: build_model(tiny(name="cut", nce_idt=False, blocks=6), 1, 1),
], ids=["cyclegan-2.5d-ngf", "cyclegan-hinge", "pix2pix-unet", "pix2pix-resnet", "cut", "fastcut"])
def test_one_optimisation_step_of_each_model_gives_finite_losses(model):
    torch.manual_seed(0)
    model = model()
    channels = model.G.stem[1].in_channels if hasattr(model.G, "stem") else 1
    batch = random_batch(channels=channels)
    if isinstance(model, Pix2Pix):
        batch["ct"] = batch["ct"][:, :1]
    terms = optimisation_step(model, batch)
    assert terms and all(math.isfinite(v.item()) for v in terms.values())


@pytest.mark.parametrize("name", ["cyclegan", "pix2pix", "cut"])
def test_models_run_under_bf16_autocast_channels_last(name):
    torch.manual_seed(0)
    struct = {"lambda_struct": 0.5} if name == "cyclegan" else {}
    model = build_model(tiny(name=name, **struct), 1, 1).to(memory_format=torch.channels_last)
    batch = {k: v.to(memory_format=torch.channels_last) for k, v in random_batch().items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _, cache = model.generator_loss(batch)
        d_total, _ = model.discriminator_loss(batch, cache)
    total.backward()
    d_total.backward()
    assert total.dtype == d_total.dtype == torch.float32
    assert torch.isfinite(total) and torch.isfinite(d_total)


def test_cut_patch_heads_are_trained_with_the_generator():
    model = build_model(tiny(name="cut"), 1, 1)
    assert isinstance(model, CUT)
    generator_params = {id(p) for p in model.generator_parameters()}
    assert all(id(p) in generator_params for p in model.H.parameters())
    assert len(model.H.mlps) == 5 and all(mlp[-1].out_features == 256 for mlp in model.H.mlps)
    assert set(model.generators()) == {"mr2ct"}


def test_cyclegan_pool_state_round_trip():
    torch.manual_seed(0)
    model = build_model(tiny(pool_size=4), 1, 1)
    batch = random_batch()
    for _ in range(3):
        model.discriminator_loss(batch, model.generator_loss(batch)[2])
    state = model.pools_state_dict()
    assert state["ct.images"].shape == (4, 1, 32, 32)
    other = build_model(tiny(pool_size=4), 1, 1)
    other.load_pools_state_dict(load_safetensors(save_safetensors(state)))
    fakes = torch.randn(2, 1, 32, 32)
    assert torch.equal(model.pool_ct.query(fakes), other.pool_ct.query(fakes))


def test_build_model_rejects_bad_configuration():
    with pytest.raises(SynthctError, match="model.name"):
        build_model(tiny(name="unit"), 1, 1)
    with pytest.raises(SynthctError, match="resnet"):
        build_model(tiny(name="cut", generator="unet"), 1, 1)
    with pytest.raises(SynthctError, match="same number of channels"):
        build_model(tiny(), 1, 3)
    assert isinstance(build_model(tiny(lambda_identity=0.0), 1, 3), CycleGAN)


@pytest.mark.parametrize("key", ["name", "generator", "gan_mode", "struct_loss"])
def test_an_unknown_choice_is_a_clear_error_naming_the_setting(key):
    with pytest.raises(SynthctError, match=f"model.{key}: unknown value 'bogus' \\(choose "):
        build_model(tiny(**{key: "bogus"}), 1, 1)


def test_tiny_cyclegan_learns_intensity_inversion_from_unpaired_data():
    torch.manual_seed(0)
    untrained, trained = inversion_errors(build_model(tiny(lambda_identity=0.0, pool_size=10), 1, 1))
    assert trained < 0.5 * untrained  # about 0.72 -> 0.16


def test_gan_loss_weights_ignore_positions_outside_the_body():
    prediction = torch.randn(2, 1, 6, 6)
    weight = torch.zeros(2, 1, 6, 6)
    weight[:, :, 1:4, 2:5] = 1.0
    changed = prediction.clone()
    changed[weight == 0] += 5.0
    for mode in ("lsgan", "vanilla", "hinge"):
        gan = GANLoss(mode)
        for real, for_d in ((True, True), (False, True), (True, False)):
            assert torch.allclose(gan(prediction, real, for_d), gan(prediction, real, for_d, torch.ones_like(weight)))
            assert torch.allclose(gan(prediction, real, for_d, weight), gan(changed, real, for_d, weight))
            assert not torch.allclose(gan(prediction, real, for_d), gan(changed, real, for_d))


def test_body_masked_cyclegan_keeps_air_outside_and_judges_inside_the_body():
    torch.manual_seed(0)
    model = CycleGAN(tiny(body_masked=True, lambda_identity=0.5, pool_size=2), 1, 1)
    body = torch.zeros(2, 1, 32, 32)
    body[:, :, 6:26, 8:24] = 1.0
    batch = {"mr": torch.rand(2, 1, 32, 32) * 2 - 1, "ct": torch.rand(2, 1, 32, 32) * 2 - 1,
             "mr_body": body, "ct_body": torch.flip(body, dims=(-2,))}
    for _ in range(4):  # fill the pools so that queries also return stored fakes
        _, terms, cache = model.generator_loss(batch)
        model.discriminator_loss(batch, cache)
    outside_mr, outside_ct = batch["mr_body"] == 0, batch["ct_body"] == 0
    assert (cache["fake_ct"][outside_mr] == -1).all() and (cache["rec_mr"][outside_mr] == -1).all()
    assert (cache["fake_mr"][outside_ct] == -1).all() and (cache["rec_ct"][outside_ct] == -1).all()
    assert (cache["fake_ct"][~outside_mr] != -1).any()
    for pool, channels in ((model.pool_ct, 1), (model.pool_mr, 1)):
        for stored in pool.images:  # each pooled fake carries its own source's body as a channel
            fake, mask = stored[:channels], stored[channels:]
            assert (fake[mask == 0] == -1).all() and mask.sum() > 0
    with pytest.raises(ValueError, match="mr_body and ct_body"):
        model.generator_loss({"mr": batch["mr"], "ct": batch["ct"]})


def test_body_masking_is_cyclegan_only():
    with pytest.raises(SynthctError, match="body_masked: only the cyclegan"):
        build_model(tiny(name="pix2pix", body_masked=True), 1, 1)


@pytest.mark.parametrize("name, option, message", [
    ("cyclegan", {"lambda_l1": 50.0}, "model.lambda_l1: only the pix2pix model has it, not cyclegan"),
    ("pix2pix", {"lambda_cycle": 5.0}, "model.lambda_cycle: only the cyclegan model has it, not pix2pix"),
    ("cut", {"struct_loss": "ngf"}, "model.struct_loss: only the cyclegan model has it, not cut"),
    ("pix2pix", {"nce_idt": False, "lambda_nce": 2.0}, "model.lambda_nce: only the cut model has it, not pix2pix"),
])
def test_an_option_the_model_does_not_read_is_refused(name, option, message):
    with pytest.raises(SynthctError, match=message):
        build_model(tiny(name=name, **option), 1, 1)


def test_options_at_their_default_or_off_are_accepted_by_every_model():
    assert isinstance(build_model(tiny(name="pix2pix", pool_size=0, lambda_identity=0.0), 1, 1), Pix2Pix)
    assert isinstance(build_model(tiny(name="cut", lambda_struct=0.0, lambda_l1=100.0), 1, 1), CUT)


def test_every_model_implements_the_interface_and_declares_its_options():
    import dataclasses

    from synthct.config import ModelConfig
    from synthct.models import MODELS, TranslationModel

    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    for name, cls in MODELS.items():
        assert issubclass(cls, TranslationModel) and set(cls.options) <= fields - {"name"}, name
        model = build_model(tiny(name=name, **({"ndf": 64} if "ndf" not in cls.options else {})), 1, 1)
        assert set(model.generators()) <= {"mr2ct", "ct2mr"}, name
        assert bool(list(model.discriminator_parameters())) == (name != "regression"), name
    assert [name for name, cls in MODELS.items() if cls.needs_pairs] == ["pix2pix", "reggan", "regression"]
    assert [name for name, cls in MODELS.items() if cls.uses_pairs] == ["cyclegan"]
    with pytest.raises(TypeError, match="abstract"):
        TranslationModel()


def test_masked_discriminator_objective_ignores_patches_outside_the_body():
    """With body masks, real and fake patches outside the body do not enter D's loss (a local,
    norm-free D here, so each output sees only its own patch); without masks they do."""
    from synthct.models.shared import discriminator_objective

    torch.manual_seed(0)
    D, gan = nn.Conv2d(1, 1, 4, stride=4), GANLoss("lsgan")
    real, fake = torch.rand(1, 1, 64, 64) * 2 - 1, torch.rand(1, 1, 64, 64) * 2 - 1
    body = torch.zeros(1, 1, 64, 64)
    body[..., 16:48, 16:48] = 1.0
    real_out, fake_out = real.clone(), fake.clone()
    real_out[..., :8, :] = 1.0
    fake_out[..., :, 56:] = -1.0
    masked = [discriminator_objective(gan, D, r, f, body, body) for r, f in ((real, fake), (real_out, fake_out))]
    plain = [discriminator_objective(gan, D, r, f) for r, f in ((real, fake), (real_out, fake_out))]
    assert torch.allclose(masked[0], masked[1]) and not torch.allclose(plain[0], plain[1])


@pytest.mark.parametrize("options, judged", [
    ({}, True), ({"name": "cut"}, True), ({"name": "pix2pix", "pool_size": 0, "lambda_identity": 0.0}, False),
    ({"r1_gamma": 10.0}, False),
])
def test_a_model_says_whether_discriminators_at_chance_mean_a_failed_game(options, judged):
    assert build_model(tiny(**options), 1, 1).chance_means_failure is judged
