"""Multi-scale discriminators (model.d_scales, pix2pixHD): a PatchGAN per halving of the image,
the coarse ones seeing far more of a slice than the fine one; CycleGAN averages L_GAN over them."""

import pytest
import torch
import torch.nn.functional as F

from test_engine import log_rows, phantoms, tiny_config, tiny_trainer  # noqa: F401 (phantoms is a fixture)

from synthct.engine import load_run_config
from synthct.engine.trainer import train
from synthct.errors import SynthctError
from synthct.models import MultiScaleDiscriminator, PatchDiscriminator, build_model, init_weights
from synthct.models.cyclegan import batched, patch_weights
from synthct.models.losses import GANLoss


def multiscale(scales=3, n_layers=2, norm=True):
    torch.manual_seed(0)
    return init_weights(MultiScaleDiscriminator(1, ndf=8, n_layers=n_layers, norm=norm, scales=scales)).eval()


def test_each_scale_judges_the_image_halved_once_more():
    D = multiscale()
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    maps = D(x)
    assert [m.shape[-1] for m in maps] == [14, 6, 2]  # 64, 32, 16 pixels through a 2-layer PatchGAN
    half = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
    assert torch.allclose(maps[1], D.scales[1](half), atol=1e-6)
    assert half.mean().item() == pytest.approx(x.mean().item(), abs=0.02)  # a mean, not a subsampling


def test_a_coarse_scale_sees_changes_the_fine_patches_cannot():
    """A change in one corner is outside the 34-pixel patches of the opposite corner, inside the
    coarsest scale's view (norm-free, so each output sees only its own patch)."""
    D = multiscale(norm=False)
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    y = x.clone()
    y[..., 2:6, 2:6] = 1.0  # top-left corner
    before, after = D(x), D(y)
    bottom_right = (..., slice(-2, None), slice(-2, None))
    assert torch.equal(before[0][bottom_right], after[0][bottom_right])
    assert not torch.allclose(before[2][bottom_right], after[2][bottom_right])


def test_batched_splits_every_scale_exactly():
    D = multiscale()
    a, b = torch.randn(2, 1, 64, 64), torch.randn(1, 1, 64, 64)
    on_a, on_b = batched(D, a, b)
    for together, alone in ((on_a, D(a)), (on_b, D(b))):
        assert len(together) == 3 and all(torch.allclose(t, s, atol=1e-5) for t, s in zip(together, alone))


def test_cyclegan_averages_the_adversarial_losses_over_the_scales():
    cfg = load_run_config("tiny")
    cfg.model.d_layers, cfg.model.d_scales = 2, 2
    torch.manual_seed(0)
    model = build_model(cfg.model, 1, 1)
    assert isinstance(model.D_ct, MultiScaleDiscriminator) and len(model.D_ct.scales) == 2
    g = torch.Generator().manual_seed(0)
    batch = {"mr": torch.rand(1, 1, 32, 32, generator=g) * 2 - 1, "ct": torch.rand(1, 1, 32, 32, generator=g) * 2 - 1}
    total, terms, cache = model.generator_loss(batch)
    gan = GANLoss("lsgan")
    with torch.no_grad():
        expected = sum(gan(p, True, False) for p in model.D_ct(cache["fake_ct"])) / 2
    assert terms["G_gan"].item() == pytest.approx(expected.item(), rel=1e-5)
    _, d_terms = model.discriminator_loss(batch, cache)
    for name in ("D_ct", "D_mr"):
        scales = [d_terms[f"{name}_scale{i}"].item() for i in range(2)]
        assert d_terms[name].item() == pytest.approx(sum(scales) / 2, rel=1e-6)
        assert scales[0] != scales[1]


def test_body_masked_scales_weigh_each_map_by_its_own_share_of_body():
    cfg = load_run_config("tiny")
    cfg.model.d_layers, cfg.model.d_scales, cfg.model.body_masked = 2, 2, True
    torch.manual_seed(0)
    model = build_model(cfg.model, 1, 1)
    body = torch.zeros(1, 1, 32, 32)
    body[..., 8:24, 8:24] = 1.0
    g = torch.Generator().manual_seed(0)
    batch = {"mr": torch.rand(1, 1, 32, 32, generator=g) * 2 - 1, "ct": torch.rand(1, 1, 32, 32, generator=g) * 2 - 1,
             "mr_body": body, "ct_body": body}
    _, terms, cache = model.generator_loss(batch)
    with torch.no_grad():
        maps = model.D_ct(cache["fake_ct"])
        weights = [patch_weights(body, m) for m in maps]
        expected = sum(((m - 1) ** 2 * w).sum() / w.sum() for m, w in zip(maps, weights)) / 2
    assert [w.shape[-1] for w in weights] == [6, 2] and all(0 < w.mean() < 1 for w in weights)
    assert terms["G_gan"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_one_scale_keeps_the_plain_patchgan_so_older_weights_still_load():
    cfg = load_run_config("tiny")
    model = build_model(cfg.model, 1, 1)
    saved_before = PatchDiscriminator(1, cfg.model.ndf, cfg.model.d_layers).state_dict()
    assert type(model.D_ct) is PatchDiscriminator
    model.D_ct.load_state_dict(saved_before)  # strict: the same names and shapes


def test_a_multiscale_run_trains_logs_each_scale_and_resumes(phantoms, tmp_path):
    cfg = tiny_config(phantoms, steps=4, d_layers=2, checkpoint_every=2)
    cfg.model.d_scales = 2
    cfg.train.log_every, cfg.train.stop_at_step = 1, 2
    run = tmp_path / "run"
    train(cfg, run, quiet=True)
    cfg.train.stop_at_step = None
    train(cfg, run, quiet=True, resume=True)
    rows = log_rows(run)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(float(r["D_ct_scale1"]) > 0 and float(r["D_mr_scale0"]) > 0 for r in rows)


@pytest.mark.parametrize("name, d_layers, d_scales, message", [
    ("cyclegan", 2, 0, "model.d_scales: must be at least 1"),
    ("pix2pix", 2, 2, "model.d_scales: only the cyclegan model has it, not pix2pix"),
    ("cyclegan", 3, 2, "data.size must be at least 64 for a PatchGAN with model.d_layers=3 and model.d_scales=2"),
])
def test_bad_scale_settings_are_clear_errors(phantoms, tmp_path, name, d_layers, d_scales, message):
    cfg = tiny_config(phantoms, steps=2, d_layers=d_layers)
    cfg.model.name, cfg.model.d_scales = name, d_scales
    with pytest.raises(SynthctError, match=message):
        train(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
