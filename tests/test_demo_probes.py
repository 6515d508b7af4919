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
