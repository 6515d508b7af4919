"""Data-parallel training under torchrun, without DistributedDataParallel.

A CycleGAN step sends several batches through the same networks (G for the translation and for
the identity term, F inside the cycle, D on real, fake and pooled images) and the two optimisers
update different parameter sets from different losses. DDP hooks into each forward/backward
pair of one wrapped module and would either need the whole objective behind one ``forward`` or
``find_unused_parameters`` and static-graph tricks. Averaging the gradients explicitly after each
backward is simpler and obviously correct: every rank starts from rank 0's weights, sees the same
averaged gradients and runs the same optimiser, so the replicas stay identical. Gradients are
flattened into one buffer per dtype so each average is a single all-reduce.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from synthct.errors import SynthctError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_env() -> DistEnv:
    """Read the variables torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise SynthctError("RANK / LOCAL_RANK / WORLD_SIZE must be integers (set by torchrun)") from None
    return DistEnv(rank=rank, local_rank=local, world_size=world)


def init(env: DistEnv, device: torch.device) -> None:
    if not env.enabled or dist.is_initialized():
        return
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise SynthctError(f"WORLD_SIZE={env.world_size} but {var} is not set; start with torchrun")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size,
                            device_id=device if device.type == "cuda" else None)


def shutdown(env: DistEnv, synchronise: bool = False) -> None:
    """Leave the process group; ``synchronise`` first waits for every rank to get here.

    Without the wait, a rank that tore the group down while another was still finishing its last
    collective occasionally made gloo abort that other process at exit ("terminate called without
    an active exception", exit -6) after a run that had finished correctly.
    """
    if env.enabled and dist.is_initialized():
        if synchronise:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_module(module: torch.nn.Module, env: DistEnv) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not env.enabled:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(params, env: DistEnv) -> None:
    """All-reduce and average the gradients of ``params`` (those that have one)."""
    if not env.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for bucket in by_dtype.values():
        flat = _flatten_dense_tensors(bucket)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= env.world_size
        for g, synced in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
            g.copy_(synced)


def all_true(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every rank only if ``flag`` is true on every rank (so all ranks take the same branch)."""
    if not env.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def max_over_ranks(value: int, env: DistEnv, device: torch.device) -> int:
    """The largest of every rank's ``value``, on every rank."""
    if not env.enabled:
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather_to_main(obj, env: DistEnv) -> list | None:
    """Every rank's ``obj`` (CPU tensors and plain data) on rank 0, None on the others; ``[obj]``
    in a single process. Every rank must call it. The objects travel pickled between this run's
    own processes, never from a file."""
    if not env.enabled:
        return [obj]
    gathered = [None] * env.world_size if env.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def shard(indices: list[int], env: DistEnv) -> list[int]:
    """This rank's share of an epoch's index list: every world_size-th index, equal lengths."""
    if not env.enabled:
        return indices
    per_rank = len(indices) // env.world_size
    return indices[env.rank::env.world_size][:per_rank]
