"""Data parallelism: two gloo processes (as torchrun would start them) train from the same
rank-0 weights with averaged gradients, end with identical weights, and stop and resume together."""

import os
import socket
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

from synthct.engine.distributed import DistEnv, detect_env, shard

# What every worker below starts with: the tiny preset on the phantoms in argv[1], batch 2 per rank.
TINY_RUN = textwrap.dedent("""
    import os, signal, sys
    from synthct.engine import load_run_config
    from synthct.engine.trainer import Trainer, train

    cfg = load_run_config("tiny")
    cfg.data.root = sys.argv[1]
    cfg.train.batch_size = 2
    cfg.train.threads = 1
    cfg.train.device = "cpu"
    cfg.train.sample_every = 0
""")

WORKER = TINY_RUN + textwrap.dedent("""
    from safetensors.torch import save_file

    run_dir, out_dir = sys.argv[2:4]
    cfg.train.steps = 4
    result = train(cfg, run_dir, quiet=True)
    assert result.steps == 4, result
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()},
              f"{out_dir}/rank{os.environ['RANK']}.safetensors")
""")

RESUME_WORKER = TINY_RUN + textwrap.dedent("""
    run_dir, mode = sys.argv[2:4]
    cfg.train.steps = 6
    cfg.train.decay_start = 0.5
    cfg.train.checkpoint_every = 0
    cfg.model.pool_size = 2  # full after the first step, so later steps draw from each rank's own fakes
    if mode == "stop" and os.environ["RANK"] == "0":
        step = Trainer.step

        def step_then_sigterm(self, batch):
            out = step(self, batch)
            if self.step_index == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        Trainer.step = step_then_sigterm
    result = train(cfg, run_dir, resume=mode == "resume", quiet=True)
    assert result.steps == (3 if mode == "stop" else 6), result
    # Only rank 0 was signalled; both stop at the same step, as signalled, with 128 + SIGTERM.
    assert (result.stopped, result.exit_code) == (("signal", 143) if mode == "stop" else ("done", 0)), result
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(worker: str, *args: str) -> None:
    """Run ``worker`` as ranks 0 and 1 of a gloo process group, as torchrun would."""
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-c", worker, *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=600)  # a hang guard
        assert proc.returncode == 0, err


def test_two_gloo_ranks_end_with_identical_weights(tmp_path):
    from synthct.data.phantom import write_phantoms

    write_phantoms(2, tmp_path / "data", size=(32, 32, 10))
    _two_ranks(WORKER, str(tmp_path / "data"), str(tmp_path / "run"), str(tmp_path))
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    # Training moved the weights, so equality is not just the shared initialisation...
    from synthct.engine import load_run_config
    from synthct.engine.trainer import seed_everything
    from synthct.models import build_model

    seed_everything(0)
    initial = build_model(load_run_config("tiny").model, 1, 1).state_dict()
    assert not torch.equal(initial["G.stem.1.weight"], rank0["G.stem.1.weight"])
    # ...and only rank 0 wrote the run folder (header + one row per step).
    assert len((tmp_path / "run" / "log.csv").read_text().splitlines()) == 5
    assert (tmp_path / "run" / "checkpoints" / "state.json").is_file()


def test_two_gloo_ranks_stop_and_resume_bitwise(tmp_path):
    """Each process resumes its own RNG streams and image pool, so a stopped and resumed
    data-parallel run ends exactly where the uninterrupted one does."""
    from synthct.data.phantom import write_phantoms
    from synthct.engine.checkpoint import load_state
    from test_engine import _state_tensors

    data = tmp_path / "data"
    write_phantoms(2, data, size=(32, 32, 10))
    _two_ranks(RESUME_WORKER, str(data), str(tmp_path / "straight"), "straight")
    _two_ranks(RESUME_WORKER, str(data), str(tmp_path / "split"), "stop")
    stopped, _ = load_state(tmp_path / "split" / "checkpoints")
    assert stopped["step"] == 3 and len(stopped["replicas"]) == 2
    # The ranks' pools hold different fakes: restoring rank 0's pool on both would be visible.
    pools = [replica["pools"]["ct.images"] for replica in stopped["replicas"]]
    assert pools[0].shape == pools[1].shape and not torch.equal(pools[0], pools[1])
    _two_ranks(RESUME_WORKER, str(data), str(tmp_path / "split"), "resume")

    straight, split = _state_tensors(tmp_path / "straight"), _state_tensors(tmp_path / "split")
    assert straight.keys() == split.keys() and any(key.startswith(".replicas.1.pools") for key in straight)
    for key, value in straight.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, split[key]), key
        else:
            assert value == split[key], key


def test_env_detection_and_sharding(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    env = detect_env()
    assert (env.rank, env.local_rank, env.world_size, env.enabled, env.is_main) == (2, 0, 3, True, False)
    indices = list(range(10))
    shards = [shard(indices, DistEnv(rank=r, world_size=3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    assert shard(indices, DistEnv()) == indices
