"""`synthct translate` over 100 volumes: memory stays flat, corrupt inputs are skipped with one
error line each, every other volume is written, and the exit is non-zero with a summary."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from synthct.cli import main
from synthct.commands import translate as translate_command
from synthct.data.intensity import CTWindow, MRPercentile
from synthct.models.saved import generator_architecture, save_generator
from synthct.io.image import read_image, write_image
from synthct.io.volume import Volume
from synthct.models.generators import build_generator

VOLUMES = 100
SHAPE = (8, 32, 32)
# Corrupt inputs among the good ones, each damaged differently.
CORRUPT = {
    "case_017.nii.gz": lambda data: b"\x1f\x8b not really gzip",
    "case_042.nii": lambda data: data[:200],  # truncated inside the header
    "case_077.nii": lambda data: b"\x00" * 348,  # a NIfTI header of zeros
}


def resident_mb() -> float:
    """This process's resident memory (Linux /proc/self/statm: pages)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_run(folder: Path) -> Path:
    torch.manual_seed(0)
    g = build_generator("resnet", 1, 1, ngf=4, n_blocks=1)
    meta = {"direction": "mr2ct", "source": "mr", "target": "ct", "model": "cyclegan",
            "architecture": generator_architecture(g, "resnet", 1, 4, 1), "slices": 1, "size": 32, "axis": 0,
            "resize": "fit", "intensity_mode": "hu", "input_mapping": MRPercentile(lo=0.0, hi=1000.0).to_dict(),
            "output_mapping": CTWindow().to_dict(), "step": 1, "epoch": 0}
    save_generator(g, folder / "generator_mr2ct", meta)
    return folder


def write_inputs(folder: Path, count: int, corrupt: dict) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        name = f"case_{i:03d}.nii.gz"
        suffix_name = next((c for c in corrupt if c.startswith(f"case_{i:03d}.")), name)
        vol = Volume(array=rng.uniform(0, 1000, SHAPE).astype(np.float32), spacing=(1.0, 1.0, 3.0),
                     origin=(0.0, 0.0, float(i)), direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), format="nifti")
        path = write_image(vol, folder / suffix_name, dtype="int16")
        if suffix_name in corrupt:
            path.write_bytes(corrupt[suffix_name](path.read_bytes()))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    write_inputs(root / "in", VOLUMES, CORRUPT)
    return root, make_run(root / "run")


def test_hundred_volumes_memory_flat_corrupt_skipped_others_written(batch, tmp_path, capsys, monkeypatch):
    root, run = batch
    rss_after: list[float] = []
    real_write = translate_command._write

    def write_and_measure(*args, **kwargs):
        real_write(*args, **kwargs)
        rss_after.append(resident_mb())

    monkeypatch.setattr(translate_command, "_write", write_and_measure)
    out = tmp_path / "out"
    rc = main(["translate", "--model", str(run), "--direction", "mr2ct", str(root / "in"), "--out", str(out),
               "--device", "cpu", "--batch-size", "8"])
    captured = capsys.readouterr()
    assert rc == 2

    good = VOLUMES - len(CORRUPT)
    assert len(rss_after) == good
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == good and not [n for n in written if n.startswith(".")]  # no temporaries left
    for name in CORRUPT:
        stem = name.split(".")[0]
        assert f"{stem}_sct.nii.gz" not in written
    sample = read_image(out / "case_000_sct.nii.gz")
    assert sample.shape == SHAPE and sample.source_dtype == "int16"

    errors = [line for line in captured.err.splitlines() if line.startswith("synthct: error:")]
    per_file, summary = errors[:-1], errors[-1]
    assert len(per_file) == len(CORRUPT)
    for name in CORRUPT:
        assert sum(name in line for line in per_file) == 1, per_file
        assert name in summary
    assert f"{len(CORRUPT)} inputs failed" in summary
    assert f"translated {good} of {VOLUMES} inputs" in captured.out
    assert "Traceback" not in captured.err

    # Memory: warm-up (allocator pools, first-call caches) in the first 20 volumes, flat after.
    growth = max(rss_after[20:]) - rss_after[19]
    assert growth < 30, f"RSS grew {growth:.1f} MB over volumes 20..{good}: {rss_after[::10]}"


def test_many_failures_give_a_summary_line_of_bounded_length(tmp_path, capsys, batch):
    """Every bad input has its own error line; the final summary names the first few, not all."""
    _, run = batch
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(60):
        (bad / f"broken_{i:03d}.nii.gz").write_bytes(b"\x1f\x8b broken")
    rc = main(["translate", "--model", str(run), "--direction", "mr2ct", str(bad), "--out", str(tmp_path / "o"),
               "--device", "cpu"])
    assert rc == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("synthct: error:")]
    assert len(errors) == 61
    summary = errors[-1]
    assert "60 inputs failed" in summary and "broken_000.nii.gz" in summary
    assert "and 50 more" in summary and "broken_010" not in summary
    assert len(summary) < sum(len(line) for line in errors[:10]) + 200


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_voxel_data_is_refused_not_zero_filled(tmp_path, suffix):
    from synthct.errors import SynthctError

    [path] = write_inputs(tmp_path, 1, {})
    data = read_image(path)
    raw = tmp_path / f"cut{suffix}"
    write_image(data, raw, dtype="int16")
    raw.write_bytes(raw.read_bytes()[: len(raw.read_bytes()) * 2 // 3])
    with pytest.raises(SynthctError, match="truncated"):
        read_image(raw)
