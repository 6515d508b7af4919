"""Training engine: a tiny CycleGAN learns, resumes bit for bit, stops cleanly on budget,
signal and NaN, and exports generators with a complete sidecar."""

import csv
import json
import os
import signal

import numpy as np
import pytest
import torch

from synthct.engine import load_run_config
from synthct.engine import trainer as trainer_module
from synthct.engine.checkpoint import load_state
from synthct.runtime import Precision, resolve_precision
from synthct.engine.setup import check_optimisation
from synthct.engine.trainer import NonFiniteLoss, Trainer, lr_factor, seed_everything, train
from synthct.errors import SynthctError
from synthct.models.saved import load_generator, sha256_of


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from synthct.data.phantom import write_phantoms

    root = tmp_path_factory.mktemp("phantoms")
    write_phantoms(2, root, size=(32, 32, 10))
    return root


def tiny_config(root, steps=20, d_layers=3, **train):
    cfg = load_run_config("tiny")
    cfg.model.d_layers = d_layers
    cfg.data.root = str(root)
    cfg.train.steps = steps
    cfg.train.threads = 1
    cfg.train.device = "cpu"
    cfg.train.sample_every = 0
    cfg.train.checkpoint_every = 0
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def tiny_trainer(cfg, total_steps):
    """A Trainer of a fresh tiny model (seed 0) on the CPU in fp32, for stepping by hand."""
    from synthct.models import build_model

    torch.manual_seed(0)
    model = build_model(cfg.model, 1, 1)
    return model, Trainer(model, cfg, total_steps=total_steps, device=torch.device("cpu"),
                          precision=Precision("fp32", "cpu", "test"))


def log_rows(run_dir):
    with open(run_dir / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_lr_schedule_is_constant_then_linear_to_zero():
    assert [lr_factor(s, 10, 0.5) for s in (0, 4, 5, 6, 9, 10)] == pytest.approx([1.0, 1.0, 1.0, 0.8, 0.2, 0.0])
    assert lr_factor(3, 10, 1.0) == 1.0


def test_tiny_cyclegan_learns_the_mapping(phantoms, tmp_path):
    from synthct.data.layouts import collect_sources
    from synthct.data.slices import SliceDataset
    from synthct.models import build_model

    cfg = tiny_config(phantoms, steps=80, sample_every=40)
    seed_everything(cfg.train.seed)
    initial_g = build_model(cfg.model, 1, 1).G.eval()
    result = train(cfg, tmp_path / "run", quiet=True)
    assert result.stopped == "done" and result.steps == 80

    rows = log_rows(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == list(range(1, 81))
    cycle = np.array([float(r["cycle_mr"]) + float(r["cycle_ct"]) for r in rows])
    assert cycle[-20:].mean() < 0.75 * cycle[:20].mean()

    # Against the known answer: the phantoms are paired, so G(mr) can be compared with ct.
    pairs = SliceDataset(collect_sources(cfg.data), cfg.data, paired=True, seed=0)
    trained_g, _ = load_generator(tmp_path / "run", "mr2ct")
    items = [pairs[i] for i in range(len(pairs))]
    mr = torch.stack([torch.as_tensor(it["mr"]) for it in items])
    ct = torch.stack([torch.as_tensor(it["ct"]) for it in items])
    with torch.no_grad():
        before = (initial_g(mr) - ct).abs().mean()
        after = (trained_g(mr) - ct).abs().mean()
    assert after < 0.7 * before

    assert (tmp_path / "run" / "samples" / "step_000040.png").is_file()
    assert (tmp_path / "run" / "loss_curves.png").stat().st_size > 1000


def test_sidecar_describes_the_generator(phantoms, tmp_path):
    cfg = tiny_config(phantoms, steps=3)
    train(cfg, tmp_path, quiet=True)
    for direction, source, target in (("mr2ct", "mr", "ct"), ("ct2mr", "ct", "mr")):
        meta = json.loads((tmp_path / f"generator_{direction}.json").read_text())
        assert meta["format"] == "synthct-generator" and meta["version"] == 1
        assert (meta["direction"], meta["source"], meta["target"]) == (direction, source, target)
        assert meta["architecture"] == {"generator": "resnet", "in_channels": 1, "out_channels": 1,
                                        "ngf": 4, "blocks": 2}
        assert meta["slices"] == 1 and meta["size"] == 32 and meta["axis"] == 0
        assert meta["intensity_mode"] == "hu" and meta["model"] == "cyclegan"
        assert meta["input_mapping"] and meta["output_mapping"] and meta["input_mapping"] != meta["output_mapping"]
        assert meta["step"] == 3 and meta["config"]["model"]["ngf"] == 4
        assert meta["sha256"] == sha256_of(tmp_path / f"generator_{direction}.safetensors")
    saved = (tmp_path / "config.yaml").read_text()
    assert "ngf: 4" in saved and str(phantoms) in saved


def _state_tensors(run_dir):
    state, _ = load_state(run_dir / "checkpoints")
    flat = {}

    def walk(obj, prefix):
        if isinstance(obj, torch.Tensor):
            flat[prefix] = obj
        elif isinstance(obj, np.ndarray):
            flat[prefix] = torch.from_numpy(obj.astype(np.int64))
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{prefix}.{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{prefix}.{i}")
        else:
            flat[prefix] = obj
    walk({k: v for k, v in state.items() if k != "elapsed_s"}, "")
    return flat


@pytest.mark.parametrize("extra, model", [({}, {}), ({"ema": 0.9}, {}), ({}, {"r1_gamma": 10.0})],
                         ids=["plain", "ema", "r1"])
def test_stop_and_resume_is_bitwise_identical(phantoms, tmp_path, monkeypatch, extra, model):
    # 12 steps = 2.4 epochs, lr decaying over the second half, pools of 10 filling up. R1's
    # double backward draws no random numbers of its own, and must resume as exactly.
    cfg = tiny_config(phantoms, steps=12, decay_start=0.5, **extra)
    for key, value in model.items():
        setattr(cfg.model, key, value)
    train(cfg, tmp_path / "straight", quiet=True)

    step = Trainer.step

    def step_then_sigterm(self, batch):
        out = step(self, batch)
        if self.step_index == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "step", step_then_sigterm)
    stopped = train(cfg, tmp_path / "split", quiet=True)
    assert (stopped.stopped, stopped.steps, stopped.exit_code) == ("signal", 5, 143)
    monkeypatch.undo()
    resumed = train(cfg, tmp_path / "split", resume=True, quiet=True)
    assert resumed.steps == 12 and resumed.stopped == "done"

    straight, split = _state_tensors(tmp_path / "straight"), _state_tensors(tmp_path / "split")
    assert straight.keys() == split.keys()
    for key, value in straight.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, split[key]), key
        else:
            assert value == split[key], key
    assert sha256_of(tmp_path / "straight" / "generator_mr2ct.safetensors") == \
        sha256_of(tmp_path / "split" / "generator_mr2ct.safetensors")
    assert [r["step"] for r in log_rows(tmp_path / "split")] == [str(s) for s in range(1, 13)]


def test_ema_generators_are_the_moving_average_and_are_exported(phantoms, tmp_path):
    from synthct.models import build_model

    cfg = load_run_config("tiny")
    cfg.train.ema = 0.75
    torch.manual_seed(0)
    model = build_model(cfg.model, 1, 1)
    trainer = Trainer(model, cfg, total_steps=3, device=torch.device("cpu"), precision=Precision("fp32", "cpu", "t"))
    expected = None
    for _ in range(3):
        trainer.step({"mr": torch.rand(1, 1, 32, 32) * 2 - 1, "ct": torch.rand(1, 1, 32, 32) * 2 - 1})
        raw = {k: v.detach().clone() for k, v in model.G.state_dict().items()}
        expected = raw if expected is None else {k: 0.75 * expected[k] + 0.25 * raw[k] for k in raw}
    averaged = trainer.export_generators()["mr2ct"].state_dict()
    assert averaged.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(averaged[key], expected[key])
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw)  # an average, not the last weights

    run = tmp_path / "run"
    train(tiny_config(phantoms, steps=6, ema=0.75), run, quiet=True)
    exported, _ = load_generator(run / "generator_mr2ct.safetensors")
    last, _ = load_generator(run / "raw" / "generator_mr2ct.safetensors")
    state, _ = load_state(run / "checkpoints")
    ema_state = {k.removeprefix("module."): v for k, v in state["ema"]["mr2ct"].items() if k.startswith("module.")}
    model_state = {k.removeprefix("G."): v for k, v in state["model"].items() if k.startswith("G.")}
    for key, value in exported.state_dict().items():
        torch.testing.assert_close(value, ema_state[key])
        torch.testing.assert_close(last.state_dict()[key], model_state[key])
    assert any(not torch.equal(v, last.state_dict()[k]) for k, v in exported.state_dict().items())
    with pytest.raises(SynthctError, match="train.ema must be a decay between 0 and 1"):
        train(tiny_config(phantoms, steps=2, ema=1.5), tmp_path / "bad", quiet=True)


def test_time_budget_stops_with_a_resumable_checkpoint(phantoms, tmp_path):
    cfg = tiny_config(phantoms, steps=50, max_minutes=1e-9)
    result = train(cfg, tmp_path, quiet=True)
    assert (result.stopped, result.steps, result.exit_code) == ("budget", 1, 0)
    state, _ = load_state(tmp_path / "checkpoints")
    assert state["step"] == 1
    cfg.train.max_minutes = None
    cfg.train.steps = 3
    assert train(cfg, tmp_path, resume=True, quiet=True).steps == 3


def _nan_at_step(monkeypatch, bad_step):
    from synthct.models.cyclegan import CycleGAN

    original = CycleGAN.generator_loss
    calls = {"n": 0}

    def generator_loss(self, batch):
        calls["n"] += 1
        loss, terms, cache = original(self, batch)
        return (loss * float("nan"), terms, cache) if calls["n"] == bad_step else (loss, terms, cache)

    monkeypatch.setattr(CycleGAN, "generator_loss", generator_loss)


def test_nan_stop_names_the_step_and_keeps_the_last_checkpoint(phantoms, tmp_path, monkeypatch):
    _nan_at_step(monkeypatch, 5)
    cfg = tiny_config(phantoms, steps=10, checkpoint_every=2, nan_policy="stop")
    with pytest.raises(NonFiniteLoss, match="step 5"):
        train(cfg, tmp_path, quiet=True)
    state, which = load_state(tmp_path / "checkpoints")
    assert which == "state" and state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_nan_skip_counts_and_continues(phantoms, tmp_path, monkeypatch):
    _nan_at_step(monkeypatch, 3)
    cfg = tiny_config(phantoms, steps=6, nan_policy="skip")
    result = train(cfg, tmp_path, quiet=True)
    assert result.steps == 6 and result.skipped_steps == 1
    skipped = [r["skipped"] for r in log_rows(tmp_path)]
    assert skipped == ["0", "0", "1", "0", "0", "0"]
    state, _ = load_state(tmp_path / "checkpoints")
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_bf16_and_fp32_reach_comparable_losses(phantoms, tmp_path):
    finals = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_config(phantoms, steps=30, precision=precision)
        result = train(cfg, tmp_path / precision, quiet=True)
        assert result.precision == precision
        rows = log_rows(tmp_path / precision)
        finals[precision] = np.mean([float(r["cycle_mr"]) + float(r["cycle_ct"]) for r in rows[-10:]])
        first = np.mean([float(r["cycle_mr"]) + float(r["cycle_ct"]) for r in rows[:10]])
        assert finals[precision] < first
    assert abs(finals["bf16"] - finals["fp32"]) < 0.3 * finals["fp32"]


def test_trainer_step_on_a_raw_batch_updates_both_players():
    from synthct.models import build_model

    cfg = load_run_config("tiny")
    torch.manual_seed(0)
    model = build_model(cfg.model, 3, 3)
    trainer = Trainer(model, cfg, total_steps=4, device=torch.device("cpu"),
                      precision=Precision("fp32", "cpu", "test"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = {"mr": torch.rand(2, 3, 32, 32) * 2 - 1, "ct": torch.rand(2, 3, 32, 32) * 2 - 1}
    out = trainer.step(batch)
    assert not out.skipped and {"G_gan", "cycle_mr", "D_ct", "D_mr"} <= set(out.losses)
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert {"G", "F", "D_ct", "D_mr"} <= changed
    assert trainer.step_index == 1


def test_the_discriminators_learn_at_lr_d_and_the_generators_at_lr():
    cfg = load_run_config("tiny")
    cfg.train.lr, cfg.train.lr_d = 2e-4, 8e-4
    _, trainer = tiny_trainer(cfg, total_steps=4)
    assert trainer.opt_g.param_groups[0]["lr"] == 2e-4 and trainer.opt_d.param_groups[0]["lr"] == 8e-4
    cfg.train.lr_d = 0.0
    with pytest.raises(SynthctError, match="train.lr_d must be a positive learning rate, got 0.0"):
        check_optimisation(cfg)


def test_precision_choice_follows_the_hardware(monkeypatch):
    monkeypatch.delenv("SYNTHCT_PRECISION", raising=False)
    cpu = torch.device("cpu")
    monkeypatch.setattr(trainer_module, "resolve_precision", resolve_precision)
    from synthct import runtime as precision_module

    monkeypatch.setattr(precision_module, "cpu_bf16_support", lambda: "AVX512-BF16")
    assert resolve_precision("auto", cpu).name == "bf16"
    monkeypatch.setattr(precision_module, "cpu_bf16_support", lambda: None)
    assert resolve_precision("auto", cpu).name == "fp32"
    assert resolve_precision("bf16", cpu).dtype == torch.bfloat16
    with pytest.raises(SynthctError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cpu)


@pytest.mark.parametrize("name, layout", [("fp32", torch.contiguous_format), ("bf16", torch.channels_last)])
def test_cpu_training_layout_follows_the_precision(name, layout):
    from synthct.models import build_model

    precision = Precision(name, "cpu", "test")
    assert precision.train_memory_format == layout
    assert Precision(name, "cuda", "test").train_memory_format == torch.channels_last
    cfg = load_run_config("tiny")
    model = build_model(cfg.model, 1, 1)
    trainer = Trainer(model, cfg, total_steps=2, device=torch.device("cpu"), precision=precision)
    weight = next(p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert weight.is_contiguous(memory_format=layout)
    # Three channels: a one-channel tensor is contiguous in both layouts and would prove nothing.
    batch = trainer._to_device({"mr": np.zeros((2, 3, 8, 8), np.float32), "ct": np.zeros((2, 3, 8, 8), np.float32)})
    assert all(x.is_contiguous(memory_format=layout) for x in batch.values())
    trainer.step({"mr": torch.rand(1, 1, 32, 32) * 2 - 1, "ct": torch.rand(1, 1, 32, 32) * 2 - 1})
    assert weight.is_contiguous(memory_format=layout)  # fused Adam keeps the layout


@pytest.mark.parametrize("kind", ["wall", "cpu"])
def test_clock_budget_drives_the_lr_schedule_and_snapshots(phantoms, tmp_path, monkeypatch, kind):
    """The budget's clock is injected: every training step costs exactly 0.25 s of it, so the
    run, its schedule and its snapshots are the same on any machine."""
    from types import SimpleNamespace

    from synthct.engine import callbacks
    from synthct.engine.trainer import lr_factor_at

    assert [lr_factor_at(p, 0.5) for p in (0.0, 0.49, 0.5, 0.75, 1.0)] == pytest.approx([1, 1, 1, 0.5, 0])
    seconds = [0.0]
    monkeypatch.setattr(callbacks, "time", SimpleNamespace(monotonic=lambda: seconds[0],
                                                           process_time=lambda: seconds[0]))
    real_step = Trainer.step

    def step(self, batch):
        out = real_step(self, batch)
        seconds[0] += 0.25
        return out

    monkeypatch.setattr(Trainer, "step", step)
    # 3 s of budget, a snapshot every 0.6 s.
    cfg = tiny_config(phantoms, steps=None, max_minutes=0.05, snapshot_minutes=0.01, clock=kind)
    result = train(cfg, tmp_path / "run", quiet=True)
    assert (result.stopped, result.steps) == ("budget", 12)
    lrs = [float(r["lr"]) for r in log_rows(tmp_path / "run")]
    # The schedule follows the share of the budget spent (as read when the previous step began):
    # constant for the first half, then linear decay towards 0 at the end of the budget.
    expected = [cfg.train.lr * lr_factor_at(0.25 * max(i - 1, 0) / 3.0, cfg.train.decay_start) for i in range(12)]
    assert lrs == pytest.approx(expected)
    snapshots = sorted((tmp_path / "run" / "snapshots").glob("generator_mr2ct_step*.safetensors"))
    steps = [int(p.stem.split("step")[1]) for p in snapshots]
    assert steps == [0, 3, 5, 8, 10, 12]
    module, meta = load_generator(snapshots[-1])
    assert meta["direction"] == "mr2ct" and meta["step"] == 12
    # A resume within the same, spent budget takes no step; one with a doubled budget continues
    # where the first 3 s ended (the budget spans resumes).
    resumed = train(cfg, tmp_path / "run", resume=True, quiet=True)
    assert (resumed.stopped, resumed.steps) == ("budget", 12) and len(log_rows(tmp_path / "run")) == 12
    cfg.train.max_minutes = 0.1
    resumed = train(cfg, tmp_path / "run", resume=True, quiet=True)
    assert (resumed.stopped, resumed.steps) == ("budget", 24)


def test_unknown_clock_is_a_clear_error(phantoms, tmp_path):
    with pytest.raises(SynthctError, match="train.clock"):
        train(tiny_config(phantoms, steps=2, clock="sundial"), tmp_path / "run", quiet=True)


def test_stop_at_step_then_resume_matches_a_straight_run(phantoms, tmp_path):
    cfg = tiny_config(phantoms, steps=8, decay_start=0.5)
    train(cfg, tmp_path / "straight", quiet=True)
    cfg.train.stop_at_step = 5
    stopped = train(cfg, tmp_path / "split", quiet=True)
    assert (stopped.stopped, stopped.steps) == ("step", 5)
    # The stop point is behind the resumed run, so it goes on to the end of the schedule.
    resumed = train(cfg, tmp_path / "split", resume=True, quiet=True)
    assert (resumed.stopped, resumed.steps) == ("done", 8)
    straight, _ = load_generator(tmp_path / "straight", "mr2ct")
    split, _ = load_generator(tmp_path / "split", "mr2ct")
    for (name, a), b in zip(straight.state_dict().items(), split.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_stop_before_the_first_step_is_a_clear_error(phantoms, tmp_path):
    cfg = tiny_config(phantoms, steps=4, stop_at_step=0)
    with pytest.raises(SynthctError, match="train.stop_at_step must be a step number of at least 1, got 0"):
        train(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value, message", [
    ("lr", -1.0, "train.lr must be a positive learning rate, got -1.0"),
    ("beta1", 1.0, r"train.beta1 must lie in \[0, 1\) \(Adam\), got 1.0"),
    ("beta2", -0.5, r"train.beta2 must lie in \[0, 1\)"),
    ("log_every", 0, "train.log_every must be a step count of at least 1, got 0"),
    ("sample_every", -1, "train.sample_every must be a step count"),
    ("decay_start", 1.5, "train.decay_start must be a fraction"),
    ("threads", -1, "train.threads must be a thread count"),
])
def test_bad_optimisation_settings_are_clear_errors_before_anything_is_written(phantoms, tmp_path, key, value,
                                                                                 message):
    cfg = tiny_config(phantoms, steps=2)
    setattr(cfg.train, key, value)
    with pytest.raises(SynthctError, match=message):
        train(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
