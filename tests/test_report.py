import re
import shutil
import subprocess

import numpy as np
import pytest

from synthct.cli import main
from synthct.errors import SynthctError
from synthct.eval.report import ReportCase, write_report
from synthct.io.image import write_image
from synthct.io.volume import Volume

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def ct_volume(seed, shape=(10, 32, 32)):
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    head = ((y - 16) ** 2 + (x - 16) ** 2) <= 12**2
    return np.where(head, rng.normal(40, 30, shape), -1000.0).astype(np.float32)


def make_cases(names):
    cases = []
    for i, name in enumerate(names):
        ct = ct_volume(i)
        cases.append(ReportCase(name, ct + 20, ct, input=np.clip(ct + 1000, 0, None) / 3))
    return cases


SUMMARY = {"mode": "hu", "metrics": {"mae": {"mean": 20.0, "std": 0.0, "n": 2}}, "missing": ["lost"]}


def write_run(run_dir):
    run_dir.mkdir()
    lines = ["step,epoch,elapsed_s,G_GAN,D_A"] + [f"{s},{s // 10},{s * 0.1},{1 / (s + 1)},{0.5}" for s in range(40)]
    (run_dir / "log.csv").write_text("\n".join(lines) + "\n")
    write_image(Volume(np.full((1, 8, 8), 128, np.float32), is_2d=True), run_dir / "samples" / "step_000040.png")


def test_report_is_self_contained_with_every_case(tmp_path):
    cases = make_cases(["phantom_000", "phantom_001"])
    rows = [{"case": c.name, "mae": 20.0} for c in cases]
    run_dir = tmp_path / "run"
    write_run(run_dir)
    out = write_report(tmp_path / "report" / "index.html", cases, SUMMARY, rows, run_dir=run_dir, max_slices=4)
    page = out.read_text()
    for case in cases:
        assert f'data-case="{case.name}"' in page
        assert (tmp_path / "report" / "figures" / f"{case.name}.png").stat().st_size > 0
    assert (tmp_path / "report" / "figures" / "loss.png").exists()
    assert "Synthetic phantom data" in page and "lost" in page
    assert 'id="summary-table"' in page and 'id="case-table"' in page
    # Offline: no external URL is ever fetched.
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert page.count("data:image/png;base64,") == 2  # loss curves + latest sample
    with pytest.raises(SynthctError, match="already exists"):
        write_report(out, cases, SUMMARY, rows)


def test_report_cli_from_folders(tmp_path, capsys):
    for i, case in enumerate(["c1", "c2"]):
        ct = ct_volume(i)
        write_image(Volume(ct), tmp_path / "ref" / case / "ct.nii.gz")
        write_image(Volume(ct / 2 + 400), tmp_path / "ref" / case / "mr.nii.gz")
        write_image(Volume((ct > -500).astype(np.float32)), tmp_path / "ref" / case / "mask.nii.gz")
        write_image(Volume(ct + 15), tmp_path / "pred" / case / "sct.nii.gz")
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
                 "--out", str(tmp_path / "eval")]) == 0
    out = tmp_path / "r.html"
    assert main(["report", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
                 "--eval", str(tmp_path / "eval"), "--out", str(out)]) == 0
    page = out.read_text()
    assert 'data-case="c1"' in page and 'data-case="c2"' in page
    assert "15.00" in page  # the MAE read back from metrics.csv
    assert '"input":null' not in page  # the MR beside each reference was found


@pytest.mark.parametrize("summary, csv_bytes, problem", [
    ("[]", b"case,mae\nc1,1\n", "summary.json: not an evaluation summary"),
    ('{"metrics": {"mae": {}}}', b"name,mae\nc1,1\n", "metrics.csv: no 'case' column"),
    ('{"metrics": {"mae": {}}}', b"case,mae\nc1,\xff\xfe\n", "metrics.csv: not a readable CSV"),
    ('{"metrics": {"mae": {}}}', b"case,mae\nc1,high\n", "column 'mae' missing or not a number for case c1"),
])
def test_report_from_a_damaged_evaluation_folder_is_a_one_line_error(tmp_path, capsys, summary, csv_bytes,
                                                                      problem):
    ct = ct_volume(0)
    write_image(Volume(ct), tmp_path / "ref" / "c1" / "ct.nii.gz")
    write_image(Volume(ct), tmp_path / "pred" / "c1" / "sct.nii.gz")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "summary.json").write_text(summary)
    (tmp_path / "eval" / "metrics.csv").write_bytes(csv_bytes)
    assert main(["report", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
                 "--eval", str(tmp_path / "eval"), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and problem in err[0]
    assert not (tmp_path / "r.html").exists()


@pytest.mark.browser
def test_report_renders_in_chromium(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium not installed")
    cases = make_cases(["phantom_a", "case_b", "case_c"])
    cases[2].input = None
    rows = [{"case": c.name, "mae": 20.0} for c in cases]
    out = write_report(tmp_path / "report.html", cases, SUMMARY, rows, max_slices=5)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", out.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=600).stdout  # a hang guard
    assert 'data-status="ready"' in dom, dom[:2000]
    assert "ready: 12 images drawn" in dom
    for case in cases:
        assert f'data-case="{case.name}"' in dom
    assert 'id="summary-table"' in dom
