"""benchmarks/bench_pair.py on a tiny volume: it lays out one subject's MR and other subjects' CTs,
pairs them with the real command and reports each run and the fused CT's quality (not its speed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pair.py"
_spec = importlib.util.spec_from_file_location("bench_pair", SCRIPT)
bench_pair = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_pair)


def test_pairs_one_mr_with_other_subjects_cts_and_reports_each_run(tmp_path, capsys):
    work = tmp_path / "work"
    assert bench_pair.main(["--size", "40", "40", "12", "--spacing", "4.8", "4.8", "12", "--candidates", "2",
                            "--workers", "1", "--repeats", "2", "--work", str(work)]) == 0
    out = capsys.readouterr().out
    assert "run 1:" in out and "run 2:" in out and "median:" in out
    assert sorted(p.name for p in (work / "ct").iterdir()) == ["subject1.nii.gz", "subject2.nii.gz"]
    fused = out.splitlines()[-1]
    assert "subject0" not in fused and "subject1" in fused and "subject2" in fused
    assert float(fused.split("body Dice ")[1].split(",")[0]) > 0.8  # the fused head lies on the MR's


def test_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "left.txt").write_text("a user's file")
    with pytest.raises(SystemExit, match="not empty"):
        bench_pair.main(["--work", str(tmp_path)])
    assert (tmp_path / "left.txt").read_text() == "a user's file"
