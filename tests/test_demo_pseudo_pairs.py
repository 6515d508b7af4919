"""experiments.demo_pseudo_pairs: the demo's phantoms through synthct pair and a paired model,
scored like the demo, with the multi-atlas CT beside it; no MR is paired with its own case's CT."""

import csv
import dataclasses
import math

from experiments import demo_pseudo_pairs
from synthct.demo import DemoSettings


def test_pairs_other_cases_trains_and_scores_like_the_demo(tmp_path, one_thread):
    s = dataclasses.replace(DemoSettings(), size=32, depth=8, spacing=(7.2, 7.2, 4.0), train_cases=2,
                            test_cases=1, ngf=8, ndf=8, blocks=1, steps=2, precision="fp32")
    atlas, trained = demo_pseudo_pairs.run_seed(tmp_path, s, "regression", workers=1)
    with open(tmp_path / "pairs" / "pairs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # MRs of cases 0-1, CTs of cases 2-3: every pseudo-pair joins an MR with other cases' CTs.
    assert sorted(r["name"] for r in rows) == ["phantom_000.nii.gz", "phantom_001.nii.gz"]
    for r in rows:
        assert set(r["cts"].split(";")) <= {"phantom_002.nii.gz", "phantom_003.nii.gz"}
    assert trained["steps"] == 2 and atlas["steps"] == 0
    for row in (atlas, trained):
        assert math.isfinite(row["mae"]) and row["mae"] > 0 and 0 <= row["bone_dice"] <= 1
    assert (tmp_path / "sct" / "phantom_004" / "sct.nii.gz").exists()
    assert (tmp_path / "sct_atlas" / "phantom_004" / "sct.nii.gz").exists()
