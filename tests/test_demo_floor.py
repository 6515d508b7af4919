"""experiments.demo_floor: the references that bound what the demo can score."""

import json

import numpy as np

from experiments import demo_floor


def test_lookup_takes_each_grey_levels_median_hu(tmp_path):
    from synthct.io.image import write_image
    from synthct.io.volume import Volume

    case = tmp_path / "case"
    mr = np.tile(np.linspace(0.0, 100.0, 16, dtype=np.float32), (2, 16, 1))
    ct = np.where(mr < 50, 1000.0, -100.0).astype(np.float32)  # dark is bone, bright is fat
    for name, array in (("mr", mr), ("ct", ct), ("mask", np.ones_like(mr))):
        write_image(Volume(array), case / f"{name}.nii.gz")
    table = demo_floor.fit_lookup([case])
    assert table[0] == 1000.0 and table[-1] == -100.0
    assert table[demo_floor._lookup_bin(np.array([0.2]))][0] == 1000.0  # between grey levels: a neighbour's


def test_the_floors_order_and_refuse_to_overwrite(tmp_path, capsys):
    out = tmp_path / "floor"
    assert demo_floor.main(["--steps", "--out", str(out)]) == 0
    rows = json.loads((out / "rows.json").read_text())
    anatomy, lookup = rows
    # The true anatomy leaves only the cases' random tissue values and noise; a context-free map
    # of MR grey levels cannot tell every tissue apart and does worse.
    assert anatomy["bone_dice"] > 0.95 and anatomy["mae"] < 40
    assert anatomy["mae"] < lookup["mae"] < 200
    # The lookup's error split by tissue: the parts add up to its MAE over all held-out body voxels.
    from synthct.io.image import read_image

    test = out / "test"
    errors = [np.abs(read_image(out / "sct_lookup" / c.name / "sct.nii.gz").array - read_image(c / "ct.nii.gz").array)[
        read_image(c / "mask.nii.gz").array > 0] for c in sorted(test.iterdir())]
    tissues = lookup["tissues"]
    assert abs(sum(t["share"] for t in tissues.values()) - 1) < 1e-9
    assert np.isclose(sum(t["part_of_mae"] for t in tissues.values()), np.concatenate(errors).mean(), rtol=1e-5)
    assert {"cortical_bone", "white_matter"} <= set(tissues)
    assert demo_floor.main(["--steps", "--out", str(out)]) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err


def test_set_options_reach_the_l1_trained_generator(tmp_path):
    from synthct.demo import DemoSettings
    from synthct.engine import load_run_config

    out = tmp_path / "floor"
    assert demo_floor.main(["--steps", "2", "--precision", "fp32", "--threads", "1", "--out", str(out),
                            "--set", "model.generator=unet", "--set", "model.unet_downs=5"]) == 0
    trained, on_training_cases = json.loads((out / "rows.json").read_text())[-2:]
    assert trained["steps"] == 2 and trained["options"] == ["model.generator=unet", "model.unet_downs=5"]
    # The same generator is also scored on the cases it trained on, each translated once.
    assert on_training_cases["reference"] == "the same, on its own training cases"
    assert on_training_cases["steps"] == 2 and on_training_cases["mae"] != trained["mae"]
    assert sorted(p.name for p in (out / "sct_l1_2_train").iterdir()) == [
        f"phantom_{i:03d}" for i in range(DemoSettings.train_cases)]
    assert load_run_config(out / "run_l1_2" / "config.yaml").model.generator == "unet"


def test_a_generator_probe_trains_the_changed_generator(tmp_path, capsys):
    from synthct.models.generators import ResnetGenerator

    shipped = ResnetGenerator.__init__
    out = tmp_path / "floor"
    assert demo_floor.main(["--steps", "2", "--precision", "fp32", "--threads", "1", "--out", str(out),
                            "--probe", "input_concat", "--by-tissue"]) == 0
    trained = json.loads((out / "rows.json").read_text())[-2]
    assert trained["options"] == ["probe input_concat"] and "cortical_bone" in trained["tissues"]
    assert "by tissue" in capsys.readouterr().out
    assert ResnetGenerator.__init__ is shipped
    assert demo_floor.main(["--steps", "2", "--out", str(tmp_path / "other"), "--probe", "dropout"]) == 2


def test_an_unknown_option_is_a_one_line_error(tmp_path, capsys):
    assert demo_floor.main(["--steps", "2", "--out", str(tmp_path / "floor"), "--set", "model.no_such=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("experiments.demo_floor: error:") and err.count("\n") == 1


def test_another_grid_holds_the_same_anatomy_in_mm(tmp_path):
    from synthct.demo import DemoSettings
    from synthct.io.image import read_image

    out = tmp_path / "floor"
    assert demo_floor.main(["--steps", "--grid", "48", "4.8", "--out", str(out)]) == 0
    mr = read_image(out / "phantoms" / "phantom_000" / "mr.nii.gz")
    assert mr.array.shape == (DemoSettings.depth, 48, 48)
    assert np.allclose(mr.spacing, (4.8, 4.8, DemoSettings.spacing[2]))
    anatomy = json.loads((out / "rows.json").read_text())[0]
    assert anatomy["bone_dice"] > 0.9  # the reference anatomy is drawn on the same grid as the phantoms
