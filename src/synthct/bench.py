"""Performance benchmark: one table of training, inference, volume, memory and data-path figures,
each in fp32 and in the automatic precision, next to the machine's measured matmul rates and each
figure's FLOP floor (FLOPs counted with torch.utils.flop_counter.FlopCounterMode divided by the
measured matmul rate of that precision), so the distance to the hardware limit is visible.

Every time is the median of ``repeats`` runs after ``warmup`` runs. Used by
``benchmarks/bench_perf.py`` and ``synthct bench``; runs unchanged on CUDA (timings synchronise,
memory is the CUDA allocator's peak).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from synthct.errors import SynthctError
from synthct.measure import count_flops, cpu_model, floor_seconds, load_average, matmul_rate, median_seconds

SECTIONS = ("train", "inference", "volume", "memory", "data", "quality")

# Speed targets for the 2-core CPU (reference: 9.4 s/it, 0.44 s/slice, 4.2 GB).
TARGETS = {
    "train_256": 1.9,
    "inference_256": 0.08,
    "volume_256x256x200": 20.0,
    "train_peak_memory_256": 3072.0,
    "data_wait_share": 5.0,
}


@dataclass
class Settings:
    device: str = "auto"
    threads: int | None = 2
    repeats: int = 3
    warmup: int = 1
    train_sizes: list[tuple[int, int]] = field(default_factory=lambda: [(256, 64), (128, 32)])
    blocks: int = 9
    inference_size: int = 256
    inference_batch: int = 8
    volume_shape: tuple[int, int, int] = (200, 256, 256)  # (z, y, x)
    volume_repeats: int = 1  # a 200-slice volume is itself 200 repeated slices
    data_volumes: int = 2
    quality_steps: int = 40
    quality_size: int = 64
    compile: bool = False
    only: tuple[str, ...] = SECTIONS


@dataclass
class Row:
    name: str
    unit: str
    fp32: float | None = None
    auto: float | None = None
    floor_fp32: float | None = None  # FLOP floor at the measured fp32 matmul rate
    floor_auto: float | None = None
    target: float | None = None
    note: str = ""

    def status(self) -> str:
        measured = [v for v in (self.fp32, self.auto) if v is not None]
        if self.target is None or not measured:
            return ""
        best = min(measured)
        return "met" if best <= self.target else f"missed x{best / self.target:.2f}"


@dataclass
class Report:
    machine: dict
    settings: dict
    rates_tflops: dict
    auto_precision: str
    auto_reason: str
    rows: list[Row]

    def to_dict(self) -> dict:
        return {"machine": self.machine, "settings": self.settings, "rates_tflops": self.rates_tflops,
                "auto_precision": self.auto_precision, "auto_reason": self.auto_reason,
                "rows": [asdict(r) | {"status": r.status()} for r in self.rows]}

    def markdown(self) -> str:
        auto = f"auto ({self.auto_precision})"
        head = ["figure", "unit", "fp32", auto, "floor fp32", "floor auto", "target", "status", "note"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r.name, r.unit, _fmt(r.fp32), _fmt(r.auto), _fmt(r.floor_fp32), _fmt(r.floor_auto),
                     _fmt(r.target), r.status(), r.note]
            lines.append("| " + " | ".join(cells) + " |")
        rates = ", ".join(f"{k} {v:.3f} TFLOP/s" for k, v in self.rates_tflops.items())
        return (f"Machine: {self.machine['cpu']} ({self.machine['threads']} threads), device "
                f"{self.machine['device']}, torch {self.machine['torch']}; load before/after "
                f"{self.machine.get('load_before')}/{self.machine.get('load_after')}\n"
                f"Measured matmul rates: {rates}. Automatic precision: {self.auto_precision} "
                f"({self.auto_reason})\n\n" + "\n".join(lines) + "\n")


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


# ---------------------------------------------------------------------- workloads


def run_config(size: int, ngf: int, blocks: int, precision: str, device: str, compile_: bool):
    from synthct.config import RunConfig

    cfg = RunConfig()
    cfg.data.size = size
    cfg.model.ngf, cfg.model.blocks = ngf, blocks
    cfg.train.precision, cfg.train.device, cfg.train.compile = precision, device, compile_
    return cfg


def make_trainer(size: int, ngf: int, blocks: int, precision: str, device: torch.device, compile_: bool = False,
                 seed: int = 0):
    """The reference configuration (CycleGAN, resnet, PatchGAN n_layers 3, LSGAN, identity on,
    batch 1, one channel) at ``size`` / ``ngf`` through the real Trainer."""
    from synthct.runtime import resolve_precision
    from synthct.engine.trainer import Trainer, seed_everything
    from synthct.models import build_model

    cfg = run_config(size, ngf, blocks, precision, device.type, compile_)
    seed_everything(seed)
    model = build_model(cfg.model, in_channels=1, out_channels=1)
    return Trainer(model, cfg, total_steps=10 ** 6, device=device,
                   precision=resolve_precision(precision, device)), cfg


def random_batch(size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(1, 1, size, size, generator=generator) * 2 - 1 for name in ("mr", "ct")}


def bench_train(size: int, ngf: int, settings: Settings, precision: str, device: torch.device) -> tuple[float, int]:
    trainer, _ = make_trainer(size, ngf, settings.blocks, precision, device, settings.compile)
    batch = random_batch(size)
    seconds = median_seconds(lambda: trainer.step(batch), device, settings.repeats, settings.warmup)
    flops = count_flops(lambda: trainer.step(batch))
    return seconds, flops


def save_benchmark_generator(folder: Path, ngf: int, blocks: int, size: int) -> Path:
    """An untrained mr2ct generator with a complete sidecar, as training exports it."""
    from synthct.data.intensity import CTWindow, MRPercentile
    from synthct.models.saved import generator_architecture, save_generator
    from synthct.models.common import init_weights
    from synthct.models.generators import ResnetGenerator

    torch.manual_seed(0)
    module = init_weights(ResnetGenerator(1, 1, ngf=ngf, n_blocks=blocks))
    meta = {"direction": "mr2ct", "source": "mr", "target": "ct", "model": "cyclegan",
            "architecture": generator_architecture(module, "resnet", 1, ngf, blocks),
            "slices": 1, "size": size, "axis": 0, "resize": "fit", "intensity_mode": "hu",
            "input_mapping": MRPercentile(0.5, 99.5, 0.0, 1000.0).to_dict(),
            "output_mapping": CTWindow(-1024.0, 3000.0).to_dict(), "step": 0, "epoch": 0, "config": {}}
    return save_generator(module, folder / "generator_mr2ct", meta)


def bench_inference(generator_path: Path, settings: Settings, precision: str,
                    device: torch.device) -> tuple[float, int]:
    """Seconds per slice through the translator's runner (batches of ``inference_batch``)."""
    from synthct.translate.translator import load_runner

    runner, _ = load_runner(generator_path, "mr2ct", "torch", str(device), precision)
    size = settings.inference_size
    batch = np.random.default_rng(0).uniform(-1, 1, (settings.inference_batch, 1, size, size)).astype(np.float32)
    seconds = median_seconds(lambda: runner(batch), device, settings.repeats, settings.warmup)
    flops = count_flops(lambda: runner(batch[:1]))
    return seconds / settings.inference_batch, flops


def write_test_volume(path: Path, shape: tuple[int, int, int]) -> None:
    from synthct.io.image import write_image
    from synthct.io.volume import Volume

    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij")
    head = (z ** 2 / 1.2 + y ** 2 + x ** 2 / 0.8) < 0.7
    array = np.where(head, 600 + 200 * np.sin(6 * x) * np.cos(5 * y), 0).astype(np.float32)
    write_image(Volume(array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                       direction=tuple(np.eye(3).ravel().tolist())), path)


def bench_volume(generator_path: Path, volume_path: Path, out_dir: Path, settings: Settings, precision: str,
                 device: torch.device) -> float:
    """Read, translate (the real Translator) and write a NIfTI volume, end to end."""
    from synthct.io.image import read_image, write_image
    from synthct.translate.translator import Translator

    # One forward pass per slice, no mask: the figures measure the generator path, comparable over
    # releases (translate's defaults add a mirrored pass and a body mask).
    translator = Translator(generator_path, "mr2ct", device=device.type, precision=precision, tta="none")

    def once():
        vol = read_image(volume_path)
        synthetic = translator.translate_volume(vol, mask="none")
        write_image(synthetic, out_dir / "sct.nii.gz", dtype="int16", overwrite=True)

    return median_seconds(once, device, settings.volume_repeats, warmup=0)


def train_peak_memory_mib(size: int, ngf: int, blocks: int, precision: str, device: str, steps: int = 2) -> float:
    """Peak memory of ``steps`` training steps in a fresh process: the peak resident set on CPU
    (VmHWM, which starts afresh at exec; ru_maxrss where /proc is missing, which Linux carries
    over from the parent), the CUDA allocator's peak on a GPU (MiB)."""
    code = ("import json, torch\n"
            "from synthct.bench import make_trainer, random_batch\n"
            "from synthct.measure import peak_rss_mib\n"
            f"torch.set_num_threads({torch.get_num_threads()})\n"
            f"device = torch.device('{device}')\n"
            f"trainer, _ = make_trainer({size}, {ngf}, {blocks}, '{precision}', device)\n"
            f"batch = random_batch({size})\n"
            f"for _ in range({steps}):\n    trainer.step(batch)\n"
            "peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == 'cuda'\n"
            "        else peak_rss_mib())\n"
            "print(json.dumps(peak))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe failed: {out.stderr.strip().splitlines()[-1:]}")
    return float(out.stdout.strip().splitlines()[-1])


def phantom_slices(root: Path, volumes: int, seed: int, size: int, depth: int):
    """The training SliceDataset (slices held in memory) of ``volumes`` phantom cases written to ``root``."""
    from synthct.config import DataConfig
    from synthct.data.layouts import collect_sources
    from synthct.data.phantom import write_phantoms
    from synthct.data.slices import SliceDataset

    write_phantoms(volumes, root, seed=seed, size=(size, size, depth))
    cfg = DataConfig(root=str(root), size=size)
    return SliceDataset(collect_sources(cfg, split="train"), cfg, seed=0)


def bench_data_seconds(folder: Path, size: int, settings: Settings) -> float:
    """Seconds to fetch one batch through the real SliceDataset and the trainer's collate
    (what ``train`` times as data_s) from phantom volumes of ``size`` x ``size`` pixels."""
    from synthct.engine.trainer import collate, epoch_order

    dataset = phantom_slices(folder / "phantoms", settings.data_volumes, seed=0, size=size, depth=16)
    order = epoch_order(len(dataset), 0, 0)
    position = iter(range(10 ** 9))

    def fetch():
        i = next(position) % len(order)
        return collate(dataset, order[i:i + 1])

    return median_seconds(fetch, torch.device("cpu"), max(5, settings.repeats * 5), settings.warmup)


def quality_run(precision: str, settings: Settings, device: torch.device) -> dict[str, float]:
    """A short CycleGAN training on phantom slices from a fixed seed; mean losses of the last
    half of the steps (bf16 and fp32 runs are compared on these)."""
    from synthct.engine.trainer import collate, epoch_order

    size = settings.quality_size
    with tempfile.TemporaryDirectory(prefix="synthct-quality-") as tmp:
        dataset = phantom_slices(Path(tmp), 2, seed=1, size=size, depth=12)
    trainer, _ = make_trainer(size, 16, 3, precision, device, seed=0)
    history: list[dict[str, float]] = []
    for step in range(settings.quality_steps):
        order = epoch_order(len(dataset), 0, step // len(dataset))
        i = step % len(dataset)
        history.append(trainer.step(collate(dataset, order[i:i + 1])).losses)
    tail = history[len(history) // 2:]
    return {name: float(np.mean([h[name] for h in tail])) for name in tail[0]}


# ---------------------------------------------------------------------- the table


def run_benchmarks(settings: Settings, log: Callable[[str], None] = lambda _: None) -> Report:
    from synthct.runtime import resolve_device, resolve_precision

    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = resolve_device(settings.device)
    auto = resolve_precision("auto", device)
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "python": platform.python_version(), "load_before": load_average()}
    log(f"matmul rates on {machine['device']} ...")
    rates = {"fp32": matmul_rate(torch.float32, device), "bf16": matmul_rate(torch.bfloat16, device)}
    table = _Table(settings, device, {"fp32": "fp32", "auto": auto.name}, rates, log)

    if "train" in settings.only or "data" in settings.only:
        table.add_train_rows()
    with tempfile.TemporaryDirectory(prefix="synthct-bench-") as tmp:
        folder = Path(tmp)
        big_ngf = max(ngf for _, ngf in settings.train_sizes)
        generator = save_benchmark_generator(folder, big_ngf, settings.blocks, settings.inference_size)
        if "inference" in settings.only:
            table.add_inference_row(generator, big_ngf)
        if "volume" in settings.only:
            table.add_volume_row(generator, folder)
        if "memory" in settings.only:
            table.add_memory_row()
        if "data" in settings.only:
            table.add_data_row(folder)
    if "quality" in settings.only:
        table.add_quality_rows()
    machine["load_after"] = load_average()
    settings_dict = asdict(settings) | {"only": list(settings.only)}
    return Report(machine, settings_dict, rates, auto.name, auto.reason, table.rows)


@dataclass
class _Table:
    """The rows measured so far, and what measuring each one needs: the settings, the device,
    the precision of each column and the matmul rates that FLOP floors divide by."""

    settings: Settings
    device: torch.device
    precisions: dict[str, str]  # column -> precision
    rates: dict[str, float]
    log: Callable[[str], None]
    rows: list[Row] = field(default_factory=list)

    def _measure(self, row: Row, label: str, measure: Callable[[str], float]) -> None:
        """Fill ``row``'s columns, each measured in its column's precision."""
        for column, precision in self.precisions.items():
            self.log(f"{label} {precision} ...")
            setattr(row, column, measure(precision))
        self.rows.append(row)

    def _measure_with_floors(self, row: Row, label: str, measure: Callable[[str], tuple[float, int]]) -> None:
        """As ``_measure`` for a measurement that also counts its FLOPs, and the row's FLOP floors."""
        counted: list[int] = []

        def seconds(precision: str) -> float:
            value, flops = measure(precision)
            counted.append(flops)
            return value

        self._measure(row, label, seconds)
        auto_rate = self.rates["bf16" if self.precisions["auto"] == "bf16" else "fp32"]
        row.floor_fp32 = floor_seconds(counted[-1], self.rates["fp32"])
        row.floor_auto = floor_seconds(counted[-1], auto_rate)

    def add_train_rows(self) -> None:
        for size, ngf in self.settings.train_sizes:
            row = Row(f"train_{size}", "s/it", note=f"ngf {ngf}, full CycleGAN step",
                      target=TARGETS.get(f"train_{size}") if ngf == 64 else None)
            self._measure_with_floors(row, f"train {size}/ngf{ngf}",
                                      lambda precision: bench_train(size, ngf, self.settings, precision, self.device))

    def add_inference_row(self, generator: Path, ngf: int) -> None:
        size = self.settings.inference_size
        row = Row(f"inference_{size}", "s/slice", target=TARGETS.get(f"inference_{size}"),
                  note=f"ngf {ngf}, batch {self.settings.inference_batch}, translator runner")
        self._measure_with_floors(row, "inference",
                                  lambda precision: bench_inference(generator, self.settings, precision, self.device))

    def add_volume_row(self, generator: Path, folder: Path) -> None:
        z, y, x = self.settings.volume_shape
        volume_path = folder / "volume.nii.gz"
        write_test_volume(volume_path, self.settings.volume_shape)
        row = Row(f"volume_{y}x{x}x{z}", "s", target=TARGETS.get(f"volume_{y}x{x}x{z}"),
                  note="read + translate + write NIfTI, Translator")
        self._measure(row, "volume", lambda precision: bench_volume(generator, volume_path, folder, self.settings,
                                                                    precision, self.device))
        per_slice = next((r for r in self.rows if r.name.startswith("inference")), None)
        if per_slice is not None and self.settings.inference_size == y == x:
            row.floor_fp32, row.floor_auto = per_slice.floor_fp32 * z, per_slice.floor_auto * z

    def add_memory_row(self) -> None:
        size, ngf = self.settings.train_sizes[0]
        row = Row(f"train_peak_memory_{size}", "MiB", target=TARGETS.get(f"train_peak_memory_{size}"),
                  note=f"ngf {ngf}, fresh process, {'CUDA peak' if self.device.type == 'cuda' else 'peak RSS'}")
        self._measure(row, "memory", lambda precision: train_peak_memory_mib(size, ngf, self.settings.blocks,
                                                                             precision, str(self.device)))

    def add_data_row(self, folder: Path) -> None:
        """The share of a training step spent waiting for data, against the first train row."""
        size, ngf = self.settings.train_sizes[0]
        self.log("data path ...")
        data_seconds = bench_data_seconds(folder, size, self.settings)
        train_row = next(r for r in self.rows if r.name == f"train_{size}")
        row = Row("data_wait_share", "%", target=TARGETS["data_wait_share"],
                  note=f"SliceDataset + collate {data_seconds * 1e3:.1f} ms vs the {size}/ngf{ngf} step")
        for column in self.precisions:
            step = getattr(train_row, column)
            setattr(row, column, 100 * data_seconds / (data_seconds + step))
        self.rows.append(row)

    def add_quality_rows(self) -> None:
        self.log("quality (short phantom training, fp32 vs auto) ...")
        results = {column: quality_run(precision, self.settings, self.device)
                   for column, precision in self.precisions.items()}
        for name in results["fp32"]:
            self.rows.append(Row(f"quality_{name}", "loss", fp32=results["fp32"][name], auto=results["auto"][name],
                                 note=f"mean of last {self.settings.quality_steps // 2} of "
                                      f"{self.settings.quality_steps} steps, {self.settings.quality_size}px "
                                      "phantoms, same seed"))


# ---------------------------------------------------------------------- command line


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings = Settings(device=args.device, threads=args.threads or None, compile=args.compile)
    if args.quick:
        settings.train_sizes = [(128, 32)]
        settings.inference_size = 128
        settings.volume_shape = (32, 128, 128)
        settings.repeats = 2
        settings.quality_steps = 20
    if args.repeats is not None:
        settings.repeats = max(1, args.repeats)
    if args.only:
        settings.only = tuple(args.only)
    return settings


def run(args: argparse.Namespace) -> int:
    from synthct.io.atomic import atomic_write_text, refuse_existing

    if args.threads < 0:
        raise SynthctError(f"--threads must be 0 (torch's default) or more, got {args.threads}")
    refuse_existing([target for target in (args.json, args.markdown) if target], args.overwrite)
    report = run_benchmarks(settings_from_args(args), log=lambda line: print(line, file=sys.stderr, flush=True))
    table = report.markdown()
    print(table)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(report.to_dict(), indent=2) + "\n")
    if args.markdown:
        atomic_write_text(Path(args.markdown), table)
    return 0


def main(argv: list[str] | None = None) -> int:
    """benchmarks/bench_perf.py: ``synthct bench`` with the CLI's one-line errors."""
    from synthct.cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])
