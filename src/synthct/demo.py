"""The whole job on built-in data: phantoms -> unpaired CycleGAN -> synthetic CT -> HU metrics -> report.

The MR and the CT the model learns from come from *different* phantom cases, so nothing about
their pairing can leak into training; two further cases are held out and their true CT is the
reference for the metrics. The untrained generator (same initialisation) is scored too, so the
headline shows what training bought.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from synthct.errors import SynthctError


@dataclass
class DemoSettings:
    # Training budget in optimisation steps, so the result does not depend on the machine's speed:
    # about 3.5 minutes of fp32 training on 2 AVX2 cores, the whole demo under 5.
    steps: int = 400
    size: int = 96  # phantom in-plane size = training slice size
    depth: int = 40
    spacing: tuple[float, float, float] = (2.4, 2.4, 4.0)  # coarse enough that small grids keep every tissue
    train_cases: int = 6  # MR from cases 0..5, CT from cases 6..11: unpaired by construction
    test_cases: int = 2
    ngf: int = 24
    ndf: int = 32
    blocks: int = 6
    slices: int = 3  # 2.5D: on these phantoms k=3 beat 2D clearly at equal budget (docs/RESULTS.md)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    overrides: tuple[str, ...] = ()  # KEY=VALUE on the training config, as `synthct train --set`


@dataclass
class DemoResult:
    report: Path
    mae_trained: float
    mae_untrained: float
    steps: int
    summary: dict


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        shutil.copy2(src, dst)


def _prepare_data(out: Path, s: DemoSettings) -> tuple[Path, Path, Path]:
    from synthct.data.phantom import write_phantoms

    n = 2 * s.train_cases + s.test_cases
    cases = write_phantoms(n, out / "phantoms", seed=s.seed, size=(s.size, s.size, s.depth), spacing=s.spacing)
    train_mr, train_ct, test = out / "train" / "mr", out / "train" / "ct", out / "test"
    for i, case in enumerate(cases[: 2 * s.train_cases]):
        modality = "mr" if i < s.train_cases else "ct"
        _link_or_copy(case / f"{modality}.nii.gz", out / "train" / modality / f"{case.name}.nii.gz")
    for case in cases[2 * s.train_cases:]:
        for name in ("mr.nii.gz", "ct.nii.gz", "mask.nii.gz"):
            _link_or_copy(case / name, test / case.name / name)
    return train_mr, train_ct, test


def _config(train_mr: Path, train_ct: Path, s: DemoSettings):
    from synthct.config import RunConfig, apply_overrides

    cfg = RunConfig()
    cfg.data.mr, cfg.data.ct = str(train_mr), str(train_ct)
    cfg.data.size = s.size
    cfg.data.slices = s.slices
    cfg.model.ngf, cfg.model.ndf, cfg.model.blocks = s.ngf, s.ndf, s.blocks
    cfg.train.steps = s.steps
    cfg.train.seed = s.seed
    cfg.train.device, cfg.train.precision = s.device, s.precision
    cfg.train.sample_every = 100
    cfg.train.checkpoint_every = 10_000
    return apply_overrides(cfg, list(s.overrides))


def _untrained_generator(cfg, run_dir: Path, trained_sidecar: Path) -> Path:
    """The generator as initialised before step 1 (same seed), saved like a trained one."""
    from synthct.models.saved import save_generator
    from synthct.engine.trainer import seed_everything
    from synthct.models import build_model

    seed_everything(cfg.train.seed)
    model = build_model(cfg.model, cfg.data.slices, cfg.data.slices)
    meta = json.loads(trained_sidecar.read_text())
    meta.update(step=0, epoch=0)
    meta.pop("sha256", None)
    stem = run_dir / "untrained" / "generator_mr2ct"
    save_generator(model.generators()["mr2ct"], stem, meta)
    return stem.with_suffix(".safetensors")


def _translate_cases(model: Path, test: Path, out: Path, precision: str, log) -> None:
    from synthct.io.image import read_image, write_image
    from synthct.translate.translator import Translator

    translator = Translator(model, "mr2ct", precision=precision)
    for case in sorted(p for p in test.iterdir() if p.is_dir()):
        mr = read_image(case / "mr.nii.gz")
        sct = translator.translate_volume(mr, mask="auto")
        write_image(sct, out / case.name / "sct.nii.gz", dtype="int16", overwrite=True)
        log(f"  {case.name}: synthetic CT written")


def run_demo(out: str | Path, settings: DemoSettings | None = None, overwrite: bool = False,
             log=print) -> DemoResult:
    from synthct.engine.trainer import train
    from synthct.eval.evaluate import evaluate_cases, format_table, write_outputs
    from synthct.eval.report import load_report_cases, write_report

    s = settings or DemoSettings()
    _config(Path("mr"), Path("ct"), s)  # a bad --set fails now, before anything is written
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SynthctError("exists and is not a folder", out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SynthctError("demo folder is not empty; pass --overwrite to replace it", out)
        if not (out / "DEMO.txt").exists():
            raise SynthctError("refusing to clear a folder the demo did not create", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "DEMO.txt").write_text("Made by `synthct demo`: synthetic phantoms, not patient data.\n")
    started = time.perf_counter()

    log(f"[1/5] phantoms: {2 * s.train_cases} for unpaired training (MR and CT from different cases), "
        f"{s.test_cases} held out")
    train_mr, train_ct, test = _prepare_data(out, s)

    log(f"[2/5] training CycleGAN for {s.steps} steps")
    cfg = _config(train_mr, train_ct, s)
    run_dir = out / "run"
    result = train(cfg, run_dir)
    if result.stopped == "signal":  # Ctrl-C or SIGTERM: the run kept a checkpoint, not generators
        raise KeyboardInterrupt
    trained = result.generators["mr2ct"]
    untrained = _untrained_generator(cfg, run_dir, trained.with_suffix(".json"))
    log(f"      {result.steps} steps on {result.device} ({result.precision})")

    log("[3/5] translating held-out MR to synthetic CT")
    _translate_cases(trained, test, out / "sct", s.precision, log)
    _translate_cases(untrained, test, out / "sct_untrained", s.precision, lambda *_: None)

    log("[4/5] evaluating against the true CT (SynthRAD2023 metrics, HU)")
    scores = evaluate_cases(out / "sct", test, mode="hu")
    baseline = evaluate_cases(out / "sct_untrained", test, mode="hu")
    write_outputs(scores, out / "eval", overwrite=True)
    write_outputs(baseline, out / "eval_untrained", overwrite=True)
    log(format_table(scores))

    log("[5/5] writing the report")
    report = write_report(
        out / "report" / "index.html",
        load_report_cases(scores.cases),
        scores.summary(),
        scores.rows,
        run_dir=run_dir,
        mode="hu",
        overwrite=True,
    )
    mae = scores.summary()["metrics"]["mae"]["mean"]
    mae0 = baseline.summary()["metrics"]["mae"]["mean"]
    log(f"report: {report}")
    log(f"MAE inside the body: {mae:.1f} HU after training vs {mae0:.1f} HU untrained "
        f"({time.perf_counter() - started:.0f} s in all)")
    return DemoResult(report, mae, mae0, result.steps, scores.summary())
