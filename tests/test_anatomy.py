"""Anatomy-preserving translation: CUT learns a mapping, 2.5D models translate volumes
end to end through the CLI with the training stacks, the structure-loss flags reach the config,
and the slice-to-slice consistency metric."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from synthct.cli import main
from synthct.config import ModelConfig
from synthct.data.phantom import write_phantoms
from synthct.errors import SynthctError
from synthct.eval.metrics import adjacent_slice_difference
from synthct.io.image import Volume, read_image, write_image
from synthct.models import CUT, build_model
from unpaired_inversion import inversion_errors


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("nce_idt", [True, False], ids=["cut", "fastcut"])
def test_tiny_cut_learns_intensity_inversion_from_unpaired_data(nce_idt):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="cut", ngf=8, ndf=8, blocks=2, nce_idt=nce_idt), 1, 1)
    assert isinstance(model, CUT)
    # 300 steps: at 150 FastCUT's result depended on the CPU's rounding (seed 0: 0.37 of the
    # untrained error on an AVX512 CPU, 0.88 on an AVX2 one); at 300 seeds 0-3 end at 0.28-0.47
    # (CUT) and 0.37-0.61 (FastCUT) on the AVX2 CPU.
    untrained, trained = inversion_errors(model, steps=300)
    assert trained < 0.7 * untrained


# ---------------------------------------------------------------- CLI, 2.5D end to end

OBLIQUE = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
TINY = ["--ngf", "4", "--ndf", "4", "--blocks", "1", "--size", "32", "--steps", "2", "--device", "cpu",
        "--precision", "fp32", "--set", "train.threads=1"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    write_phantoms(2, root, size=(32, 32, 8))
    return root


@pytest.fixture(scope="module")
def run_25d(phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "k3"
    assert main(["train", "--data", str(phantoms), "--out", str(out), "--slices", "3", *TINY]) == 0
    return out


def test_25d_run_takes_three_slice_stacks(run_25d):
    sidecar = json.loads((run_25d / "generator_mr2ct.json").read_text())
    assert sidecar["slices"] == 3
    assert sidecar["architecture"]["in_channels"] == 3
    # The weights agree: the 7x7 stem reads three channels (the slice and its two neighbours)
    # and the 7x7 head writes three, of which translation keeps the centre.
    stems = [w for w in load_file(run_25d / "generator_mr2ct.safetensors").values()
             if w.ndim == 4 and w.shape[-1] == 7]
    assert sorted(tuple(w.shape) for w in stems) == [(3, 4, 7, 7), (4, 3, 7, 7)]  # head: 3 out, stem: 3 in


def test_25d_model_translates_a_volume_through_the_cli_keeping_its_geometry(run_25d, phantoms, tmp_path):
    mr = read_image(phantoms / "phantom_001" / "mr.nii.gz")
    oblique = Volume(mr.array[:5], spacing=(1.1, 0.9, 3.3), origin=(4.0, -7.5, 12.25), direction=OBLIQUE,
                     format="nifti")
    write_image(oblique, tmp_path / "case.nii.gz")
    assert main(["translate", str(tmp_path / "case.nii.gz"), "--model", str(run_25d), "--direction", "mr2ct",
                 "--out", str(tmp_path / "out"), "--precision", "fp32", "--device", "cpu"]) == 0
    sct = read_image(tmp_path / "out" / "case_sct.nii.gz")
    assert sct.shape == oblique.shape
    assert sct.spacing == pytest.approx(oblique.spacing)
    assert sct.origin == pytest.approx(oblique.origin)
    assert sct.direction == pytest.approx(OBLIQUE)
    assert np.isfinite(sct.array).all()


def test_25d_translation_replicates_edge_slices_as_training_does(run_25d, phantoms, tmp_path):
    """Training stacks edge slice 0 as (0, 0, 1). The CT window is a fixed mapping, so a volume
    with slice 0 duplicated in front gives slice 1 the stack (0, 0, 1) too: the same output.
    Slice 0 of that volume sees (0, 0, 0) instead, so it must differ."""
    ct = read_image(phantoms / "phantom_000" / "ct.nii.gz").array[2:6]
    geometry = {"spacing": (1.5, 1.5, 2.5), "format": "nifti"}
    write_image(Volume(ct, **geometry), tmp_path / "plain.nii.gz")
    write_image(Volume(np.concatenate([ct[:1], ct]), **geometry), tmp_path / "padded.nii.gz")
    write_image(Volume(np.concatenate([ct, ct[-1:]]), **geometry), tmp_path / "padded_end.nii.gz")
    for name in ("plain", "padded", "padded_end"):
        assert main(["translate", str(tmp_path / f"{name}.nii.gz"), "--model", str(run_25d), "--direction",
                     "ct2mr", "--out", str(tmp_path / "out"), "--dtype", "float32", "--precision", "fp32",
                     "--device", "cpu"]) == 0
    plain, padded, padded_end = (read_image(tmp_path / "out" / f"{name}_smr.nii.gz").array
                                 for name in ("plain", "padded", "padded_end"))
    np.testing.assert_allclose(padded[1:], plain, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(padded_end[:-1], plain, rtol=1e-4, atol=1e-3)
    assert np.abs(padded[0] - plain[0]).max() > 1e-2


def test_structure_loss_flags_reach_the_run_config_and_the_loss(phantoms, tmp_path):
    out = tmp_path / "ngf"
    assert main(["train", "--data", str(phantoms), "--out", str(out), *TINY,
                 "--lambda-struct", "2.5", "--struct-loss", "ngf"]) == 0
    model = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert (model["lambda_struct"], model["struct_loss"]) == (2.5, "ngf")
    assert "struct" in (out / "log.csv").read_text().splitlines()[0].split(",")


def test_cut_runs_through_train_translate_and_evaluate(phantoms, tmp_path, capsys):
    run = tmp_path / "cut"
    assert main(["train", "--data", str(phantoms), "--out", str(run), "--model", "cut", *TINY]) == 0
    assert not (run / "generator_ct2mr.safetensors").exists()  # one-sided
    assert main(["translate", str(phantoms / "phantom_001" / "mr.nii.gz"), "--model", str(run),
                 "--direction", "mr2ct", "--out", str(tmp_path / "sct"), "--device", "cpu"]) == 0
    case = tmp_path / "pred" / "phantom_001"
    case.mkdir(parents=True)
    (tmp_path / "sct" / "mr_sct.nii.gz").rename(case / "sct.nii.gz")
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(phantoms), "--mode", "hu",
                 "--out", str(tmp_path / "eval")]) == 1  # phantom_000 has no prediction
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert "phantom_000" in capsys.readouterr().err
    assert json.dumps(summary).count("mae") >= 1
    row = (tmp_path / "eval" / "metrics.csv").read_text().splitlines()[1]
    assert row.startswith("phantom_001,")


# ---------------------------------------------------------------- slice consistency


def test_adjacent_slice_difference_inside_the_mask():
    volume = np.zeros((3, 4, 4))
    volume[1] = 10.0
    volume[2] = 4.0
    volume[:, 0, 0] = 1000.0  # outside the mask below, so it never counts
    mask = np.ones((3, 4, 4), dtype=bool)
    mask[:, 0, 0] = False
    assert adjacent_slice_difference(volume, mask) == pytest.approx((10 + 6) / 2)
    assert adjacent_slice_difference(np.ones((5, 3, 3)) * 7) == 0.0
    only_first = mask.copy()
    only_first[2] = False  # the pair (1, 2) has no voxel inside the mask on both slices
    assert adjacent_slice_difference(volume, only_first) == pytest.approx(10.0)


def test_adjacent_slice_difference_rejects_single_slices_and_empty_masks():
    with pytest.raises(SynthctError, match="at least 2 slices"):
        adjacent_slice_difference(np.zeros((1, 4, 4)))
    with pytest.raises(SynthctError, match="no voxel"):
        adjacent_slice_difference(np.zeros((3, 4, 4)), np.zeros((3, 4, 4)))


def test_the_phantom_experiment_trains_each_variant_through_a_valid_synthct_train_command(tmp_path):
    """experiments/phantom_anatomy.py: unpaired variants learn MR and CT of different cases, and
    every variant's command line parses into the config it names."""
    import argparse
    import sys
    from pathlib import Path

    from synthct.cli import build_parser
    from synthct.commands.train import build_config

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/ runs from the repository root
    from experiments import phantom_anatomy as experiment

    args = argparse.Namespace(train_cases=2, test_cases=1, size=32, depth=8, spacing=(2.0, 2.0, 4.0), seed=0,
                              minutes=0.5, threads=1)
    folders = experiment.prepare(tmp_path, args)
    mr = {p.name for p in folders["mr"].iterdir()}
    ct = {p.name for p in folders["ct"].iterdir()}
    assert len(mr) == len(ct) == 2 and not mr & ct
    assert len([p for p in folders["test"].iterdir()]) == 1
    expected = {"cyclegan": ("cyclegan", 0.0), "cyclegan_mind": ("cyclegan", 5.0), "cut": ("cut", 0.0),
                "pix2pix": ("pix2pix", 0.0)}
    for variant, (model, lambda_struct) in expected.items():
        command = experiment.train_command(variant, folders, tmp_path / "runs" / variant, args)
        assert command[1:4] == ["-m", "synthct", "train"]
        cfg = build_config(build_parser().parse_args(command[3:]))
        assert (cfg.model.name, cfg.model.lambda_struct, cfg.train.clock) == (model, lambda_struct, "cpu")
    cfg = build_config(build_parser().parse_args(experiment.train_command("cyclegan_25d", folders, tmp_path, args)[3:]))
    assert cfg.data.slices == 3
