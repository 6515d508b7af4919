"""Checkpoints: generator export with sidecar, refusal of pickles and corrupted files, and
crash-safe training state."""

import json
import pickle

import numpy as np
import pytest
import torch

from synthct.engine.checkpoint import load_state, save_state
from synthct.errors import SynthctError
from synthct.models import saved
from synthct.models.generators import build_generator
from synthct.models.saved import generator_architecture, load_generator, save_generator, sha256_of


def _export(folder, direction="mr2ct", kind="resnet"):
    torch.manual_seed(0)
    g = build_generator(kind, 3, 3, ngf=4, n_blocks=2, unet_downs=5)
    meta = {"direction": direction, "source": direction[:2], "target": direction[3:],
            "architecture": generator_architecture(g, kind, 3, 4, 2), "slices": 3, "size": 32}
    save_generator(g, folder / f"generator_{direction}", meta)
    return g


@pytest.mark.parametrize("kind", ["resnet", "unet"])
def test_generator_roundtrip_from_folder_file_and_sidecar(tmp_path, kind):
    g = _export(tmp_path, kind=kind)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = g.eval()(x)
    for ref in (tmp_path, tmp_path / "generator_mr2ct.safetensors", tmp_path / "generator_mr2ct.json"):
        loaded, meta = load_generator(ref, "mr2ct")
        with torch.no_grad():
            assert torch.equal(loaded(x), expected)
        assert meta["format"] == "synthct-generator" and meta["version"] == 1
        assert meta["sha256"] == sha256_of(tmp_path / "generator_mr2ct.safetensors")
        assert meta["architecture"]["generator"] == kind
        assert not loaded.training


def test_older_sidecars_load_unless_they_need_a_removed_option(tmp_path):
    """Sidecars written while model.upsample and the probes existed name the paper's upsampling
    and list the probes at their defaults: they load. One that used a removed option is refused."""
    torch.manual_seed(0)
    g = build_generator("resnet", 1, 1, ngf=4, n_blocks=2)
    arch = generator_architecture(g, "resnet", 1, 4, 2) | {"upsample": "transpose"}
    config = {"model": {"name": "cyclegan", "upsample": "transpose", "d_scales": 1, "d_norm": "instance"},
              "train": {"contrast_warmup": 0.0, "coarse_size": None, "coarse_until": 0.5}}
    save_generator(g, tmp_path / "generator_mr2ct", {"direction": "mr2ct", "architecture": arch, "config": config})
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    loaded, _ = load_generator(tmp_path, "mr2ct")
    with torch.no_grad():
        assert torch.equal(loaded(x), g.eval()(x))

    sidecar = tmp_path / "generator_mr2ct.json"
    meta = json.loads(sidecar.read_text())
    meta["config"]["model"]["d_scales"] = 3
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(SynthctError, match="model.d_scales was removed") as refused:
        load_generator(tmp_path, "mr2ct")
    assert str(sidecar) in str(refused.value) and "\n" not in str(refused.value)
    meta["config"]["model"]["d_scales"] = 1
    meta["architecture"]["upsample"] = "resize"
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(SynthctError, match="upsamples by 'resize'.*removed"):
        load_generator(tmp_path, "mr2ct")


def test_missing_direction_is_named(tmp_path):
    _export(tmp_path)
    with pytest.raises(SynthctError, match="translates mr2ct only"):
        load_generator(tmp_path, "ct2mr")
    with pytest.raises(SynthctError, match="translates mr2ct only"):
        load_generator(tmp_path / "generator_mr2ct.json", "ct2mr")


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_weights_are_refused(tmp_path, damage):
    _export(tmp_path)
    weights = tmp_path / "generator_mr2ct.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(SynthctError, match="corrupted or truncated") as info:
        load_generator(tmp_path)
    assert info.value.path == str(weights)


def test_pickles_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for name in ("model.pt", "model.pth", "weights.bin"):
        (tmp_path / name).write_bytes(pickle.dumps(Evil()))
        with pytest.raises(SynthctError, match="refusing to load pickled file"):
            load_generator(tmp_path / name)
    with pytest.raises(SynthctError, match="refusing to load pickled file"):
        load_generator(tmp_path)
    assert not marker.exists()


def test_not_a_generator_and_missing(tmp_path):
    with pytest.raises(SynthctError, match="not found"):
        load_generator(tmp_path / "nope.safetensors")
    _export(tmp_path)
    sidecar = tmp_path / "generator_mr2ct.json"
    meta = json.loads(sidecar.read_text())
    meta["format"] = "something-else"
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(SynthctError, match="not a synthct generator"):
        load_generator(tmp_path)
    sidecar.write_text("{ truncated")
    with pytest.raises(SynthctError, match="not valid JSON"):
        load_generator(tmp_path)


def _state(value: float) -> dict:
    return {"step": int(value), "weights": {"w": torch.full((3, 3), value), "b": torch.arange(4)},
            "opt": {"state": {0: {"step": torch.tensor(value), "exp_avg": torch.ones(2) * value}},
                    "param_groups": [{"lr": 1e-4 / 3, "betas": (0.5, 0.999), "params": [0]}]},
            "numpy": ("MT19937", np.arange(624, dtype=np.uint32), 3, 0, 0.0),
            "python": [3, tuple(range(625)), None]}


def test_state_roundtrip_is_exact(tmp_path):
    original = _state(7.0)
    save_state(tmp_path, original)
    loaded, which = load_state(tmp_path)
    assert which == "state"
    assert loaded["opt"]["state"][0]["exp_avg"].equal(original["opt"]["state"][0]["exp_avg"])
    assert loaded["opt"]["param_groups"][0]["betas"] == (0.5, 0.999)
    assert loaded["opt"]["param_groups"][0]["lr"] == 1e-4 / 3
    assert loaded["numpy"][1].dtype == np.uint32 and np.array_equal(loaded["numpy"][1], original["numpy"][1])
    assert loaded["python"][1] == tuple(range(625))
    assert torch.equal(loaded["weights"]["w"], original["weights"]["w"])


def test_failing_write_keeps_previous_state(tmp_path, monkeypatch):
    save_state(tmp_path, _state(1.0))
    save_state(tmp_path, _state(2.0))
    assert (tmp_path / "state.prev.json").is_file()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(saved, "save_file", disk_full)  # the safetensors writer of every checkpoint file
    with pytest.raises(SynthctError, match="No space left on device.*previous checkpoint is kept"):
        save_state(tmp_path, _state(3.0))
    monkeypatch.undo()
    loaded, which = load_state(tmp_path)
    assert which == "state" and loaded["step"] == 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_corrupted_state_falls_back_to_previous(tmp_path):
    save_state(tmp_path, _state(1.0))
    save_state(tmp_path, _state(2.0))
    (tmp_path / "state.safetensors").write_bytes(b"garbage")
    loaded, which = load_state(tmp_path)
    assert which == "state.prev" and loaded["step"] == 1
    (tmp_path / "state.prev.safetensors").write_bytes(b"garbage")
    with pytest.raises(SynthctError, match="corrupted or truncated"):
        load_state(tmp_path)
