"""Export: ONNX and TorchScript files that match PyTorch, sidecars translate can use, clear errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from synthct.cli import main
from synthct.data.intensity import CTWindow, MRPercentile
from synthct.models.saved import generator_architecture, load_generator, save_generator
from synthct.io.image import Volume, read_image, write_image
from synthct.models.generators import build_generator

MAPPINGS = {"ct": CTWindow().to_dict(), "mr": MRPercentile(lo=0.0, hi=1000.0).to_dict()}


def make_run(folder: Path, slices: int = 3) -> Path:
    torch.manual_seed(0)
    for direction in ("mr2ct", "ct2mr"):
        source, target = direction.split("2")
        g = build_generator("resnet", slices, slices, ngf=4, n_blocks=1)
        meta = {"direction": direction, "source": source, "target": target, "model": "cyclegan",
                "architecture": generator_architecture(g, "resnet", slices, 4, 1), "slices": slices,
                "size": 32, "axis": 0, "resize": "fit", "intensity_mode": "hu",
                "input_mapping": MAPPINGS[source], "output_mapping": MAPPINGS[target], "step": 5, "epoch": 1}
        save_generator(g, folder / f"generator_{direction}", meta)
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"))


def test_onnx_matches_pytorch_and_translates_like_torch(tmp_path, run_dir):
    onnx_path = tmp_path / "g.onnx"
    assert main(["export", "--model", str(run_dir), "--direction", "mr2ct", "--format", "onnx",
                 "--out", str(onnx_path)]) == 0
    sidecar = json.loads(Path(str(onnx_path) + ".json").read_text())
    assert sidecar["direction"] == "mr2ct" and sidecar["export"]["parity_max_abs_diff"] < 1e-3
    module, _ = load_generator(run_dir, "mr2ct")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 36, 52)).astype(np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = module(torch.from_numpy(x)).numpy()
    assert np.abs(session.run(None, {"input": x})[0] - expected).max() < 1e-3

    rng = np.random.default_rng(1)
    mr = write_image(Volume(rng.uniform(0, 1000, (4, 30, 34)).astype(np.float32), spacing=(1.1, 1.1, 2.0)),
                     tmp_path / "mr.nii.gz")
    for backend, model in (("torch", run_dir), ("onnxruntime", onnx_path)):
        assert main(["translate", "--model", str(model), "--direction", "mr2ct", str(mr), "--backend", backend,
                     "--out", str(tmp_path / backend), "--dtype", "float32", "--device", "cpu",
                     "--precision", "fp32"]) == 0
    torch_hu = read_image(tmp_path / "torch" / "mr_sct.nii.gz").array
    onnx_hu = read_image(tmp_path / "onnxruntime" / "mr_sct.nii.gz").array
    assert np.abs(torch_hu - onnx_hu).max() < 1e-3 * (3000 + 1024) / 2


def test_onnx_with_run_folder_gives_cycle_qa(tmp_path, run_dir):
    onnx_path = tmp_path / "g.onnx"
    assert main(["export", "--model", str(run_dir), "--direction", "ct2mr", "--out", str(onnx_path)]) == 0
    ct = write_image(Volume(np.full((3, 16, 16), 40.0, np.float32)), tmp_path / "ct.nii.gz", dtype="int16")
    assert main(["translate", "--onnx", str(onnx_path), "--model", str(run_dir), "--direction", "ct2mr", str(ct),
                 "--out", str(tmp_path / "o"), "--qa"]) == 0
    assert (tmp_path / "o" / "ct_cycle_error.nii.gz").is_file()


def test_torchscript_matches_pytorch(tmp_path, run_dir):
    out = tmp_path / "g.pt"
    assert main(["export", "--model", str(run_dir), "--direction", "ct2mr", "--format", "torchscript",
                 "--out", str(out)]) == 0
    module, _ = load_generator(run_dir, "ct2mr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still loads
        scripted = torch.jit.load(str(out))
    x = torch.rand(1, 3, 44, 28) * 2 - 1
    with torch.inference_mode():
        assert (scripted(x) - module(x)).abs().max() < 1e-3
    assert json.loads(Path(str(out) + ".json").read_text())["export"]["format"] == "torchscript"


def test_export_refuses_existing_output_and_wrong_direction(tmp_path, run_dir, capsys):
    out = tmp_path / "g.onnx"
    out.write_bytes(b"keep me")
    assert main(["export", "--model", str(run_dir), "--direction", "mr2ct", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    only = tmp_path / "only"
    only.mkdir()
    for suffix in (".safetensors", ".json"):
        (only / f"generator_ct2mr{suffix}").write_bytes((run_dir / f"generator_ct2mr{suffix}").read_bytes())
    assert main(["export", "--model", str(only), "--direction", "mr2ct", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "ct2mr" in capsys.readouterr().err


def test_onnx_model_for_other_direction_is_refused(tmp_path, run_dir, capsys):
    onnx_path = tmp_path / "g.onnx"
    assert main(["export", "--model", str(run_dir), "--direction", "ct2mr", "--out", str(onnx_path)]) == 0
    ct = write_image(Volume(np.zeros((2, 8, 8), np.float32)), tmp_path / "a.nii.gz")
    assert main(["translate", "--model", str(onnx_path), "--direction", "mr2ct", str(ct),
                 "--out", str(tmp_path / "o")]) == 2
    assert "translates ct2mr only" in capsys.readouterr().err
