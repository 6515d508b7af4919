"""Translate the scored MR slices with a synthct generator and score them; scorings of the test
split are recorded in the ledger."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from synthct.errors import SynthctError

from experiments.aanlib import ledger
from experiments.aanlib.common import ScoredSlice, load_scored_set, protocol, read_manifest, score


def translate_scored(generator: Path, scored: list[ScoredSlice], device: str = "auto", tta: str = "none",
                     mask: str = "none") -> dict[str, np.ndarray]:
    """MR -> CT with a generator (run folder or ``.safetensors``) slice by slice, as
    ``synthct translate --tta TTA --mask MASK`` would. The defaults score the generator's
    translation as it is ("plain"); translate's own defaults are ``--tta flip --mask auto``."""
    from synthct.io.image import read_image
    from synthct.translate.translator import Translator

    translator = Translator(generator, "mr2ct", device=device, tta=tta)
    return {item.id: translator.translate_volume(read_image(item.mr_path), mask=mask).array[0] for item in scored}


def inference_suffix(tta: str, mask: str | None) -> str:
    """``_tta-flip`` / ``_mask-auto`` for result names scored with translate's options."""
    return (f"_tta-{tta}" if tta != "none" else "") + (f"_mask-{mask}" if mask != "none" else "")


def _sidecar(generator: Path) -> Path:
    generator = Path(generator)
    return generator / "generator_mr2ct.json" if generator.is_dir() else generator.with_suffix(".json")


def evaluate(work: Path, generator: Path, name: str, device: str = "auto", scored: list[ScoredSlice] | None = None,
             tta: str = "none", mask: str = "none", ledger_path: Path = ledger.LEDGER) -> dict:
    """Scores of ``generator`` on the prepared fold; on the test split also a row in ``ledger_path``."""
    scored = scored if scored is not None else load_scored_set(work)
    sidecar = _sidecar(generator)
    if not sidecar.is_file():
        raise SynthctError("no MR->CT generator sidecar (.json) here", sidecar)
    # The sidecar is read before the weights are loaded and checked after: the step and checksum
    # recorded are those of the weights scored even while a running training exports new ones.
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    options = f", --tta {tta} --mask {mask}"
    result = score(translate_scored(generator, scored, device, tta, mask), scored, name,
                   f"synthct generator {generator}{options}")
    if json.loads(sidecar.read_text(encoding="utf-8")).get("sha256") != meta.get("sha256"):
        raise SynthctError("the generator was replaced while it was being scored (is its training still running?)",
                           sidecar)
    result["protocol"] = protocol(work, scored)
    result["generator"] = {"path": str(generator), "step": meta.get("step"), "epoch": meta.get("epoch"),
                           "sha256": meta.get("sha256"), "model": meta.get("model")}
    result["inference"] = {"tta": tta, "mask": mask}
    if read_manifest(work)["fold"] == "test":
        ledger.record(ledger_path, generator, meta, result)
    return result
