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
    assert demo_floor.main(["--steps", "--out", str(out)]) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err
