"""The device and the compute precision, for training and inference alike. Precision follows the
hardware: bf16 autocast where the chip does bf16 fast,
fp32 elsewhere; fp16 (CUDA only) always comes with a GradScaler.

``SYNTHCT_PRECISION=fp32|bf16|auto`` in the environment replaces the automatic choice (what
``--precision auto``, the default, means) for training and translation alike, so a script or a
test suite can run the same way on every CPU; an explicit ``--precision`` still wins."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from synthct.errors import SynthctError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRECISION_ENV = "SYNTHCT_PRECISION"
ENV_PRECISIONS = ("auto", "fp32", "bf16")


def cpu_bf16_support() -> str | None:
    """Name of the CPU feature that makes bf16 fast (AMX-BF16 or AVX512-BF16), or None.

    torch 2.13 reports CPU features through ``torch._C._cpu._get_cpu_capability()``; without
    one of these instructions bf16 is emulated and slower than fp32.
    """
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        caps = torch._C._cpu._get_cpu_capability()
    except AttributeError:
        return None
    if caps.get("amx_bf16"):
        return "AMX-BF16"
    if caps.get("avx512_bf16"):
        return "AVX512-BF16"
    return None


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16 | fp16
    device_type: str  # cpu | cuda
    reason: str  # said at start-up

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    @property
    def needs_scaler(self) -> bool:
        return self.name == "fp16"

    @property
    def train_memory_format(self) -> torch.memory_format:
        """Layout for training: channels_last where its kernels are the fast ones (bf16 on CPU,
        CUDA); plain NCHW for fp32 on CPU, where the channels_last convolution backward is the
        slow one (benchmarks/bench_layout.py, AVX2 EPYC: a 256/ngf32 step 1.19x slower in
        channels_last). Inference has no backward and stays channels_last (0.82x there)."""
        if self.device_type == "cpu" and self.name == "fp32":
            return torch.contiguous_format
        return torch.channels_last


def resolve_precision(requested: str, device: torch.device) -> Precision:
    if requested not in PRECISIONS:
        raise SynthctError(f"unknown precision '{requested}' (use {', '.join(PRECISIONS)})")
    kind = device.type
    if requested == "fp16" and kind != "cuda":
        raise SynthctError("fp16 needs a CUDA GPU; use --precision bf16 or fp32 on CPU")
    if requested != "auto":
        return Precision(requested, kind, "requested")
    forced = os.environ.get(PRECISION_ENV, "").strip().lower()
    if forced and forced not in ENV_PRECISIONS:
        raise SynthctError(f"{PRECISION_ENV}={os.environ[PRECISION_ENV]!r} is not a precision "
                           f"(use {', '.join(ENV_PRECISIONS)})")
    if forced in ("fp32", "bf16"):
        # bf16 autocast runs on any x86 CPU; without AMX or AVX512-BF16 it is only slower.
        return Precision(forced, kind, f"{PRECISION_ENV}={forced}")
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", kind, "GPU supports bf16")
        return Precision("fp32", kind, "GPU has no fast bf16")
    feature = cpu_bf16_support()
    if feature:
        return Precision("bf16", kind, f"CPU has {feature}")
    return Precision("fp32", kind, "CPU has no fast bf16 (needs AMX or AVX512-BF16)")


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise SynthctError("--device cuda requested but no CUDA GPU is available to torch")
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    raise SynthctError(f"unknown device '{requested}' (use auto, cpu or cuda)")
