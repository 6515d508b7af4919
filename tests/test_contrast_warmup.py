"""Contrast warm-up: random grey-level maps, the warm-up objective, and the training phase that
trains only the generators before the adversarial game."""

import pytest
import torch

from test_engine import log_rows, phantoms, tiny_config, tiny_trainer  # noqa: F401 (phantoms is a fixture)

from synthct.engine import load_run_config
from synthct.engine.checkpoint import load_generator
from synthct.engine.trainer import seed_everything, train
from synthct.errors import SynthctError
from synthct.models import build_model
from synthct.models.contrast import inverted_foreground, random_grey_map


def three_tissue_slice():
    """Background -1, a large 'brain' at 0.0 and a small 'fluid' at 0.1 inside it."""
    x = torch.full((1, 1, 32, 32), -1.0)
    x[..., 4:28, 4:28] = 0.0
    x[..., 12:16, 12:16] = 0.1
    return x


def test_grey_map_is_a_function_of_grey_level_and_keeps_the_background_dark():
    torch.manual_seed(0)
    x = three_tissue_slice()
    y = random_grey_map(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= -1 and y.max() <= 1
    for grey in (-1.0, 0.0, 0.1):  # equal greys in, equal greys out
        assert y[x == grey].unique().numel() == 1
    assert y[x == -1.0][0] <= -0.7


def test_grey_maps_reorder_tissues_a_few_grey_levels_apart():
    # The knots follow the foreground's quantiles, so a brain/fluid difference of 0.1 (13 grey
    # levels of 255) is swapped by some maps and kept by others.
    torch.manual_seed(0)
    x = three_tissue_slice()
    swapped = kept = 0
    for _ in range(40):
        y = random_grey_map(x)
        fluid, brain = y[x == 0.1][0], y[x == 0.0][0]
        swapped += int(fluid < brain)
        kept += int(fluid > brain)
    assert swapped >= 5 and kept >= 5


def test_each_image_of_a_batch_gets_its_own_map_and_a_seed_repeats_it():
    x = three_tissue_slice().repeat(2, 3, 1, 1)
    torch.manual_seed(1)
    y = random_grey_map(x)
    assert not torch.equal(y[0], y[1])
    assert torch.equal(y[0, 0], y[0, 2])  # one map for all slices of a 2.5D stack
    torch.manual_seed(1)
    assert torch.equal(random_grey_map(x), y)


def test_an_empty_slice_maps_to_a_dark_constant():
    y = random_grey_map(torch.full((1, 1, 8, 8), -1.0))
    assert y.unique().numel() == 1 and y.max() <= -0.7


def test_inverting_the_foreground_reverses_the_tissue_order_and_keeps_air_dark():
    x = torch.cat([three_tissue_slice(), three_tissue_slice() * 0.5 - 0.2])  # two images, two backgrounds
    y = inverted_foreground(x)
    for n, background in enumerate((-1.0, -0.7)):
        air, brain, fluid = (y[n][x[n] == grey] for grey in (background, x[n, 0, 8, 8], x[n, 0, 13, 13]))
        assert torch.all(air == background)  # air stays air
        assert torch.allclose(brain, -x[n, 0, 8, 8]) and torch.allclose(fluid, -x[n, 0, 13, 13])
        assert fluid.max() < brain.min()  # fluid brighter than brain before, darker after


def test_the_inverted_warmup_teaches_each_generator_its_inputs_inverted_foreground():
    cfg = load_run_config("tiny")
    cfg.model.warmup_target = "inverted"
    cfg.train.contrast_warmup = 1.0
    model, trainer = tiny_trainer(cfg, total_steps=60)
    torch.manual_seed(0)
    mr = three_tissue_slice() * 0.8 + 0.1 * torch.rand(1, 1, 32, 32)
    ct = three_tissue_slice().flip(-1)
    batch = {"mr": mr, "ct": ct}

    def errors():
        with torch.no_grad():
            return ((model.G(mr) - inverted_foreground(mr)).abs().mean().item(),
                    (model.F(ct) - inverted_foreground(ct)).abs().mean().item())

    before = errors()
    losses = [trainer.step(batch).losses for _ in range(60)]
    after = errors()
    assert set(losses[0]) == {"warm_ct", "warm_mr"}
    assert after[0] < 0.5 * before[0] and after[1] < 0.5 * before[1]


def test_warmup_steps_train_only_the_generators_then_the_game_starts():
    cfg = load_run_config("tiny")
    cfg.train.contrast_warmup = 0.5
    model, trainer = tiny_trainer(cfg, total_steps=4)
    batch = {"mr": torch.rand(1, 1, 32, 32) * 2 - 1, "ct": torch.rand(1, 1, 32, 32) * 2 - 1}
    phases = []
    for _ in range(4):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        out = trainer.step(batch)
        changed = {k.split(".")[0] for k, v in model.state_dict().items()
                   if v.is_floating_point() and not torch.equal(v, before[k])}
        phases.append((set(out.losses), changed))
    warm = ({"warm_ct", "warm_mr"}, {"G", "F"})
    assert phases[:2] == [warm, warm]
    for losses, changed in phases[2:]:
        assert {"G_gan", "cycle_ct", "D_ct"} <= losses and "warm_ct" not in losses
        assert {"G", "F", "D_ct", "D_mr"} <= changed


def test_warmup_alone_teaches_g_to_turn_unseen_mr_into_ct(phantoms, tmp_path):
    # G never sees an MR, nor any pair: it only restores CTs from random grey-level maps of them.
    # The phantom MR is one more contrast of the same anatomy, so G(mr) should approach the CT.
    from synthct.data.layouts import collect_sources
    from synthct.data.slices import SliceDataset

    cfg = tiny_config(phantoms, steps=150, contrast_warmup=1.0)
    seed_everything(0)
    initial_g = build_model(cfg.model, 1, 1).G.eval()
    train(cfg, tmp_path / "run", quiet=True)
    pairs = SliceDataset(collect_sources(cfg.data), cfg.data, paired=True, seed=0)
    mr = torch.stack([torch.as_tensor(pairs[i]["mr"]) for i in range(len(pairs))])
    ct = torch.stack([torch.as_tensor(pairs[i]["ct"]) for i in range(len(pairs))])
    warmed_g, _ = load_generator(tmp_path / "run", "mr2ct")
    with torch.no_grad():
        before, after = (initial_g(mr) - ct).abs().mean(), (warmed_g(mr) - ct).abs().mean()
    mr_as_ct = (mr - ct).abs().mean()
    assert after < 0.6 * before and after < mr_as_ct


def test_the_log_gains_the_game_columns_after_the_warmup(phantoms, tmp_path):
    train(tiny_config(phantoms, steps=12, contrast_warmup=0.5, log_every=3), tmp_path, quiet=True)
    rows = log_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert {"warm_ct", "warm_mr", "G_gan", "cycle_ct", "D_ct"} <= set(rows[0])
    assert rows[0]["warm_ct"] and not rows[0]["G_gan"]
    assert rows[-1]["G_gan"] and not rows[-1]["warm_ct"]


@pytest.mark.parametrize("name, warmup, message", [
    ("cyclegan", 1.5, "contrast_warmup must be a fraction"),
    ("pix2pix", 0.1, "CycleGAN warm-up; model.name is pix2pix"),
])
def test_bad_warmup_settings_are_clear_errors(phantoms, tmp_path, name, warmup, message):
    cfg = tiny_config(phantoms, steps=2, contrast_warmup=warmup)
    cfg.model.name = name
    with pytest.raises(SynthctError, match=message):
        train(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
