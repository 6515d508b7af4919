"""Discriminator warm-up: D_ct and D_mr learn to tell each domain from the generators'
translations before the adversarial game starts, while the generators wait."""

import pytest
import torch

from test_engine import phantoms, tiny_config, tiny_trainer  # noqa: F401 (phantoms is a fixture)

from synthct.engine import load_run_config
from synthct.engine.trainer import check_optimisation, train
from synthct.errors import SynthctError
from synthct.models import build_model


def changed_networks(model, step):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = step()
    changed = {k.split(".")[0] for k, v in model.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, before[k])}
    return set(out.losses), changed


def test_phases_run_contrast_warmup_then_discriminator_warmup_then_the_game():
    cfg = load_run_config("tiny")
    cfg.train.contrast_warmup = cfg.train.discriminator_warmup = 1 / 3
    model, trainer = tiny_trainer(cfg, total_steps=6)
    batch = {"mr": torch.rand(1, 1, 32, 32) * 2 - 1, "ct": torch.rand(1, 1, 32, 32) * 2 - 1}
    phases = [changed_networks(model, lambda: trainer.step(batch)) for _ in range(6)]
    assert phases[:2] == [({"warm_ct", "warm_mr"}, {"G", "F"})] * 2
    assert phases[2:4] == [({"D_ct", "D_mr"}, {"D_ct", "D_mr"})] * 2
    for losses, changed in phases[4:]:
        assert {"G_gan", "cycle_ct", "D_ct"} <= losses and {"G", "F", "D_ct", "D_mr"} <= changed


def test_the_warmup_teaches_each_discriminator_to_tell_its_domain_from_the_translations():
    cfg = load_run_config("tiny")
    cfg.train.discriminator_warmup = 1.0
    model, trainer = tiny_trainer(cfg, total_steps=40)
    torch.manual_seed(1)
    # Two domains a 3-layer PatchGAN can tell apart: smooth MR-like blobs and CT-like bright rims.
    y, x = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    r = (x ** 2 + y ** 2).sqrt()[None, None]
    mr = torch.where(r < 0.8, 0.3 - 0.5 * r, -1.0)
    ct = torch.where(r < 0.8, torch.where(r > 0.65, 0.9, -0.1), -1.0)
    batch = {"mr": mr, "ct": ct}

    def margins():  # mean D(real) - mean D(translation) per discriminator
        with torch.no_grad():
            fake = model.translations(batch)
            return (model.D_ct(ct).mean() - model.D_ct(fake["fake_ct"]).mean()).item(), \
                   (model.D_mr(mr).mean() - model.D_mr(fake["fake_mr"]).mean()).item()

    generators = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("G.", "F."))}
    before = margins()
    losses = [trainer.step(batch).losses for _ in range(40)]
    after = margins()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in generators.items())
    assert after[0] > 0.5 and after[1] > 0.5 and after[0] > before[0] + 0.4 and after[1] > before[1] + 0.4
    assert losses[-1]["D_ct"] < 0.5 * losses[0]["D_ct"] and losses[-1]["D_mr"] < 0.5 * losses[0]["D_mr"]


@pytest.mark.parametrize("name, contrast, discriminator, message", [
    ("cyclegan", 0.0, 1.5, "discriminator_warmup must be a fraction"),
    ("cyclegan", 0.6, 0.5, "contrast_warmup \\+ train.discriminator_warmup must not exceed 1"),
    ("pix2pix", 0.0, 0.1, "discriminator_warmup is a CycleGAN warm-up; model.name is pix2pix"),
])
def test_bad_discriminator_warmup_settings_are_clear_errors(phantoms, tmp_path, name, contrast, discriminator,
                                                            message):
    cfg = tiny_config(phantoms, steps=2, contrast_warmup=contrast, discriminator_warmup=discriminator)
    cfg.model.name = name
    with pytest.raises(SynthctError, match=message):
        train(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_d_norm_none_builds_discriminators_without_instancenorm():
    cfg = load_run_config("tiny")
    for d_norm in ("instance", "none"):
        cfg.model.d_norm = d_norm
        model = build_model(cfg.model, 1, 1)
        for D in (model.D_ct, model.D_mr):
            norms = [m for m in D.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
            assert len(norms) == (cfg.model.d_layers if d_norm == "instance" else 0)
        assert model.D_ct(torch.zeros(1, 1, 32, 32)).shape[1] == 1


def test_the_discriminators_learn_at_lr_d_and_the_generators_at_lr():
    cfg = load_run_config("tiny")
    cfg.train.lr, cfg.train.lr_d = 2e-4, 8e-4
    _, trainer = tiny_trainer(cfg, total_steps=4)
    assert trainer.opt_g.param_groups[0]["lr"] == 2e-4 and trainer.opt_d.param_groups[0]["lr"] == 8e-4
    cfg.train.lr_d = 0.0
    with pytest.raises(SynthctError, match="train.lr_d must be a positive learning rate, got 0.0"):
        check_optimisation(cfg)
