"""experiments.demo_probes: single changes of the demo's generator, trained on true pairs."""

import math

from experiments import demo_probes


def test_a_probe_trains_scores_and_leaves_the_shipped_layers_unchanged(tmp_path, one_thread):
    from synthct.data.phantom import write_phantoms
    from synthct.models.generators import ResnetGenerator
    from synthct.models.layers import InstanceNorm

    write_phantoms(2, tmp_path / "pairs", size=(32, 32, 8), spacing=(7.2, 7.2, 4.0))
    shipped = ResnetGenerator.forward, InstanceNorm.forward
    for probe in ("full_res_skip", "no_norm", "window=-1024,1500"):
        row = demo_probes.run_probe(str(tmp_path / "pairs"), probe, steps=2)
        assert row["probe"] == probe and row["steps"] == 2
        assert math.isfinite(row["mae"]) and row["mae"] > 0 and math.isfinite(row["bone_error"])
        assert (ResnetGenerator.forward, InstanceNorm.forward) == shipped


def test_an_unknown_probe_stops_before_any_training(tmp_path, capsys):
    assert demo_probes.main([str(tmp_path), "--probe", "base", "--probe", "dropout"]) == 2
    assert "probes must be among" in capsys.readouterr().err


def test_each_generator_probe_changes_the_generator_and_is_undone():
    import pytest
    import torch

    from synthct.models.generators import ResnetGenerator
    from synthct.models.layers import InstanceNorm

    shipped = ResnetGenerator.__init__, ResnetGenerator.forward
    x = torch.randn(1, 3, 32, 32)
    base = ResnetGenerator(3, 1, ngf=8, n_blocks=1)
    n_base = sum(p.numel() for p in base.parameters())
    for probe in demo_probes.GENERATOR_PROBES:
        with demo_probes._probe_patches(probe):
            G = ResnetGenerator(3, 1, ngf=8, n_blocks=1)
            y = G(x)
        assert y.shape == (1, 1, 32, 32) and bool(torch.isfinite(y).all()) and float(y.detach().abs().max()) <= 1
        n = sum(p.numel() for p in G.parameters())
        if probe in ("full_res_skip", "stem_no_norm"):
            assert n == n_base  # the same weights, wired otherwise or without the stem's (weightless) norm
        else:
            assert n > n_base  # a wider head or a branch
        stem_norms = [m for m in G.stem.modules() if isinstance(m, InstanceNorm)]
        assert len(stem_norms) == (0 if probe == "stem_no_norm" else 1)
        assert (ResnetGenerator.__init__, ResnetGenerator.forward) == shipped
    with pytest.raises(KeyError):  # the changed __init__ is only reached by the named probes
        with demo_probes._probe_patches("stem_concat"):
            raise KeyError("undone on errors too")
    assert (ResnetGenerator.__init__, ResnetGenerator.forward) == shipped
