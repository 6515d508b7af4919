"""Source images as fakes (model.lambda_source_fake): each CycleGAN discriminator also learns to
call the other domain's real images fake, so a translation that keeps its source's contrast
cannot pass for the target domain."""

import pytest
import torch

from test_engine import log_rows, phantoms, tiny_config, tiny_trainer  # noqa: F401 (phantoms is a fixture)
from test_models import random_batch, tiny

from synthct.engine import load_run_config
from synthct.engine.trainer import train
from synthct.errors import SynthctError
from synthct.models import build_model


def discriminator_losses(lambda_source_fake: float, batch: dict, d_scales: int = 1):
    torch.manual_seed(0)
    model = build_model(tiny(pool_size=0, lambda_identity=0.0, d_scales=d_scales, d_layers=2,
                             lambda_source_fake=lambda_source_fake), 1, 1)
    _, _, cache = model.generator_loss(batch)
    return model, model.discriminator_loss(batch, cache)


@pytest.mark.parametrize("d_scales", [1, 2])
def test_the_source_term_adds_half_the_lsgan_fake_loss_of_the_other_domains_real_images(d_scales):
    batch = random_batch()
    _, (plain_total, plain_terms) = discriminator_losses(0.0, batch, d_scales)
    model, (total, terms) = discriminator_losses(0.7, batch, d_scales)
    assert set(plain_terms) & {"D_ct_source", "D_mr_source"} == set()
    # The real-vs-translation terms are those of the paper's objective, unchanged.
    for name, value in plain_terms.items():
        assert torch.allclose(terms[name], value)

    def by_hand(D, source):  # LSGAN against "fake" (0), halved, averaged over D's scales
        maps = D(source)
        maps = maps if isinstance(maps, list) else [maps]
        return 0.7 * sum(0.5 * (m.float() ** 2).mean() for m in maps) / len(maps)

    with torch.no_grad():
        expected_ct, expected_mr = by_hand(model.D_ct, batch["mr"]), by_hand(model.D_mr, batch["ct"])
    assert torch.allclose(terms["D_ct_source"], expected_ct) and torch.allclose(terms["D_mr_source"], expected_mr)
    assert torch.allclose(total, plain_total + expected_ct + expected_mr)


def test_the_source_term_teaches_d_ct_that_an_mr_is_not_a_ct():
    cfg = load_run_config("tiny")
    cfg.train.discriminator_warmup = 1.0  # discriminator updates only: the generators stay as they are
    y, x = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    r = (x ** 2 + y ** 2).sqrt()[None, None]
    batch = {"mr": torch.where(r < 0.8, 0.6 - r, -1.0),  # bright centre, dark rim
             "ct": torch.where(r < 0.8, torch.where(r > 0.65, 0.9, -0.1), -1.0)}  # grey centre, bright rim

    def margin_after_training(lambda_source_fake):  # mean D_ct(ct) - mean D_ct(mr)
        cfg.model.lambda_source_fake = lambda_source_fake
        model, trainer = tiny_trainer(cfg, total_steps=30)
        for _ in range(30):
            trainer.step(batch)
        with torch.no_grad():
            return (model.D_ct(batch["ct"]).mean() - model.D_ct(batch["mr"]).mean()).item()

    without, with_source = margin_after_training(0.0), margin_after_training(1.0)
    assert with_source > 0.5 and with_source > without + 0.2


def test_a_training_run_logs_the_source_terms_beside_the_discriminator_losses(phantoms, tmp_path):
    cfg = tiny_config(phantoms, steps=4)
    cfg.train.log_every = 1
    cfg.model.lambda_source_fake = 1.0
    train(cfg, tmp_path / "run", quiet=True)
    rows = log_rows(tmp_path / "run")
    assert len(rows) == 4
    for row in rows:
        assert float(row["D_ct_source"]) > 0 and float(row["D_mr_source"]) > 0 and float(row["D_ct"]) > 0
    assert load_run_config(tmp_path / "run" / "config.yaml").model.lambda_source_fake == 1.0


@pytest.mark.parametrize("overrides, channels, message", [
    ({"lambda_source_fake": -1.0}, (1, 1), "model.lambda_source_fake: must be 0 \\(off\\) or positive, got -1.0"),
    ({"lambda_source_fake": 1.0, "name": "pix2pix"}, (1, 1),
     "model.lambda_source_fake: only the cyclegan model has it, not pix2pix"),
    ({"lambda_source_fake": 1.0, "lambda_identity": 0.0}, (1, 3),
     "lambda_source_fake needs MR and CT with the same number of channels, got 1 and 3"),
])
def test_bad_source_fake_settings_are_clear_errors(overrides, channels, message):
    with pytest.raises(SynthctError, match=message):
        build_model(tiny(**overrides), *channels)
