"""Match predictions to references case by case, score them, write metrics.csv and summary.json.

Two layouts are understood in every folder (reference, prediction, mask, input):

* case folders, as SynthRAD2023 and ``synthct phantom`` write them: ``<case>/ct.nii.gz``
  (+ ``<case>/mask.*``, ``<case>/mr.*``); a prediction folder may hold ``<case>/sct.*`` or
  ``<case>/ct.*``;
* flat files named by case: ``<case>.nii.gz``, ``<case>.mha``, ``<case>.png``, ... (or a DICOM
  series folder named by case).

The mask of a case comes from ``--mask`` when given, else from ``<case>/mask.*`` beside the
reference, else it is computed from the reference itself: ``body_mask(ct, "ct")`` in HU mode,
``head_mask_8bit(reference)`` in 8-bit mode (8-bit pairs rarely ship the MR, so the head is
outlined on the reference picture).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthct.errors import SynthctError
from synthct.eval.metrics import (BONE_HU, BONE_METRICS, BONE_TOLERANCE_MM, EIGHT_BIT_METRICS, HU_METRICS,
                                  bone_agreement, eight_bit_metrics, head_mask_8bit, hu_metrics)
from synthct.io.atomic import atomic_write_text, refuse_existing
from synthct.io.dicom_series import is_dicom_series_dir
from synthct.io.formats import image_stem
from synthct.io.image import read_image
from synthct.io.volume import Volume

MODES = ("hu", "8bit", "auto")
REFERENCE_NAMES = ("ct",)
PREDICTION_NAMES = ("sct", "ct")
TRANSLATE_SUFFIX = "_sct"  # synthct translate's name for a synthetic CT of <case>: <case>_sct
MASK_NAMES = ("mask",)
INPUT_NAMES = ("mr",)
OUTPUT_FILES = ("metrics.csv", "summary.json")
HU_EVALUATION_METRICS = HU_METRICS + BONE_METRICS


@dataclass(frozen=True)
class BoneRule:
    """HU evaluations: what counts as bone, and how far bone of one image may lie from the other's
    before it counts as invented or missed."""

    threshold_hu: float = BONE_HU
    tolerance_mm: float = BONE_TOLERANCE_MM

    def __post_init__(self):
        if not math.isfinite(self.threshold_hu):
            raise SynthctError(f"the bone threshold must be a finite HU value, got {self.threshold_hu}")
        if not (math.isfinite(self.tolerance_mm) and self.tolerance_mm >= 0):
            raise SynthctError(f"the bone tolerance must be 0 mm or more, got {self.tolerance_mm}")


@dataclass
class CaseFiles:
    """The files of one case; ``prediction`` is None when the case has no prediction."""

    name: str
    reference: Path
    prediction: Path | None = None
    mask: Path | None = None
    input: Path | None = None


@dataclass
class EvaluationResult:
    mode: str
    metric_names: tuple[str, ...]
    rows: list[dict] = field(default_factory=list)
    cases: list[CaseFiles] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unmatched_predictions: list[str] = field(default_factory=list)
    bone: BoneRule = field(default_factory=BoneRule)

    @property
    def complete(self) -> bool:
        """True when every reference had a prediction."""
        return not self.missing

    def summary(self) -> dict:
        """Mean, sample standard deviation and count of every metric over the evaluated cases.

        Non-finite values are left out of the statistics and counted: under ``n_infinite`` (PSNR of
        a perfect prediction is +inf) and ``n_undefined`` (NaN: bone shares of a case with no bone).
        """
        metrics = {}
        for name in self.metric_names:
            values = np.array([row[name] for row in self.rows], dtype=np.float64)
            finite = values[np.isfinite(values)]
            stats = {
                "mean": float(finite.mean()) if finite.size else None,
                "std": float(finite.std(ddof=1)) if finite.size > 1 else (0.0 if finite.size else None),
                "n": int(finite.size),
            }
            if np.isinf(values).any():
                stats["n_infinite"] = int(np.isinf(values).sum())
            if np.isnan(values).any():
                stats["n_undefined"] = int(np.isnan(values).sum())
            metrics[name] = stats
        header = {"mode": self.mode,
                  "protocol": "SynthRAD2023 (HU)" if self.mode == "hu" else "8-bit pictures, head mask"}
        if self.mode == "hu":
            header["bone"] = dataclasses.asdict(self.bone)
        return {
            **header,
            "n_cases": len(self.rows),
            "metrics": metrics,
            "missing": list(self.missing),
            "unmatched_predictions": list(self.unmatched_predictions),
        }


def case_stem(path: Path) -> str:
    """The case name of a flat file: its name without the image suffix."""
    return image_stem(path.name)


def _named_image(folder: Path, names: tuple[str, ...]) -> Path | None:
    """``folder/<name>.<ext>`` (or a DICOM series folder ``folder/<name>``) for the first name present."""
    entries = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    for name in names:
        for p in entries:
            if p.is_file() and case_stem(p) == name and p.name != name:
                return p
            if p.is_dir() and p.name == name and is_dicom_series_dir(p):
                return p
    return None


def index_cases(root: str | Path, names: tuple[str, ...]) -> dict[str, Path]:
    """Map case name -> image path in a folder of case folders or of flat files named by case."""
    root = Path(root)
    if not root.is_dir():
        raise SynthctError("no such folder", root)
    found: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            image = _named_image(entry, names)
            if image is None and is_dicom_series_dir(entry):
                image = entry
            case = entry.name
        elif entry.is_file() and case_stem(entry) != entry.name:
            image, case = entry, case_stem(entry)
        else:
            continue
        if image is None:
            continue
        if case in found:
            raise SynthctError(f"two images for case '{case}' ({found[case].name} and {image.name})", root)
        found[case] = image
    return found


def _translate_names_to_cases(predictions: dict[str, Path], references: dict[str, Path]) -> dict[str, Path]:
    """Let ``synthct translate``'s flat outputs (``<case>_sct.<ext>``) match the reference ``<case>``.

    A prediction named exactly like a reference keeps precedence; so does any name that matches
    no reference once the suffix is dropped.
    """
    renamed = dict(predictions)
    for name, path in predictions.items():
        case = name.removesuffix(TRANSLATE_SUFFIX)
        if case != name and name not in references and case in references and case not in predictions:
            renamed[case] = renamed.pop(name)
    return renamed


def match_cases(
    pred_dir: str | Path,
    ref_dir: str | Path,
    mask_dir: str | Path | None = None,
    input_dir: str | Path | None = None,
) -> tuple[list[CaseFiles], list[str]]:
    """Pair references with predictions, masks and inputs; return the cases and the predictions
    that have no reference."""
    references = index_cases(ref_dir, REFERENCE_NAMES)
    if not references:
        raise SynthctError("no reference images found (expected <case>/ct.<ext> or <case>.<ext>)", ref_dir)
    predictions = _translate_names_to_cases(index_cases(pred_dir, PREDICTION_NAMES), references)
    masks = index_cases(mask_dir, MASK_NAMES) if mask_dir is not None else {}
    inputs = index_cases(input_dir, INPUT_NAMES) if input_dir is not None else {}
    cases = []
    for name, reference in references.items():
        beside = reference.parent if reference.parent != Path(ref_dir) else None
        mask = masks.get(name)
        if mask is None and mask_dir is None and beside is not None:
            mask = _named_image(beside, MASK_NAMES)
        source = inputs.get(name)
        if source is None and input_dir is None and beside is not None:
            source = _named_image(beside, INPUT_NAMES)
        cases.append(CaseFiles(name, reference, predictions.get(name), mask, source))
    unmatched = sorted(set(predictions) - set(references))
    return cases, unmatched


def looks_eight_bit(reference: np.ndarray) -> bool:
    """A CT in HU always has air below 0; an 8-bit picture lives in [0, 255]."""
    return float(reference.min()) >= 0.0 and float(reference.max()) <= 255.0


def case_mask(reference: Volume, mask_path: Path | None, mode: str) -> tuple[np.ndarray, str]:
    """The scoring mask of a case and where it came from ('file' or 'computed')."""
    if mask_path is not None:
        mask = read_image(mask_path)
        if mask.shape != reference.shape:
            raise SynthctError(f"mask shape {mask.shape} differs from reference {reference.shape}", mask_path)
        return mask.array > 0, "file"
    if mode == "8bit":
        return head_mask_8bit(reference.array), "computed"
    from synthct.data.mask import body_mask

    return np.asarray(body_mask(reference.array, "ct"), dtype=bool), "computed"


def score_case(case: CaseFiles, mode: str, bone: BoneRule = BoneRule()) -> tuple[dict, str]:
    """Metrics of one matched case and the mode they were computed in."""
    reference = read_image(case.reference)
    prediction = read_image(case.prediction)
    if prediction.shape != reference.shape:
        raise SynthctError(
            f"shape {prediction.shape} differs from the reference {reference.shape} ({case.reference})",
            case.prediction,
        )
    case_mode = mode if mode != "auto" else ("8bit" if looks_eight_bit(reference.array) else "hu")
    mask, mask_source = case_mask(reference, case.mask, case_mode)
    score = eight_bit_metrics if case_mode == "8bit" else hu_metrics
    try:
        values = score(prediction.array, reference.array, mask)
        if case_mode == "hu":
            # Volume.spacing is (x, y, z); the arrays are (z, y, x).
            values |= bone_agreement(prediction.array, reference.array, mask, bone.threshold_hu,
                                     bone.tolerance_mm, spacing=tuple(reversed(reference.spacing)))
    except SynthctError as exc:
        raise SynthctError(exc.problem, case.mask or case.reference) from None
    row = {"case": case.name, **values, "mask": mask_source,
           "prediction": str(case.prediction), "reference": str(case.reference)}
    return row, case_mode


def evaluate_cases(
    pred_dir: str | Path,
    ref_dir: str | Path,
    mask_dir: str | Path | None = None,
    mode: str = "auto",
    input_dir: str | Path | None = None,
    bone: BoneRule = BoneRule(),
) -> EvaluationResult:
    """Score every prediction against its reference.

    ``mode`` 'hu' uses the SynthRAD2023 metrics, '8bit' the 8-bit picture metrics, 'auto' picks
    8-bit when the references lie in [0, 255] (all cases must agree). References without a
    prediction are listed in ``missing``; predictions without a reference in
    ``unmatched_predictions``.
    """
    if mode not in MODES:
        raise SynthctError(f"unknown mode '{mode}' (choose from {', '.join(MODES)})")
    cases, unmatched = match_cases(pred_dir, ref_dir, mask_dir, input_dir)
    rows, modes, scored = [], set(), []
    for case in cases:
        if case.prediction is None:
            continue
        row, case_mode = score_case(case, mode, bone)
        modes.add(case_mode)
        if len(modes) > 1:
            raise SynthctError(
                "some references look like 8-bit pictures and others like CT in HU; pass --mode hu or --mode 8bit",
                case.reference,
            )
        rows.append(row)
        scored.append(case)
    final_mode = modes.pop() if modes else ("8bit" if mode == "8bit" else "hu")
    return EvaluationResult(
        mode=final_mode,
        metric_names=EIGHT_BIT_METRICS if final_mode == "8bit" else HU_EVALUATION_METRICS,
        rows=rows,
        cases=cases,
        missing=[c.name for c in cases if c.prediction is None],
        unmatched_predictions=unmatched,
        bone=bone,
    )


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def metrics_csv(result: EvaluationResult) -> str:
    columns = ["case", *result.metric_names, "mask", "prediction", "reference"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items() if k in columns})
    return buffer.getvalue()


def check_outputs_free(out_dir: str | Path, overwrite: bool = False) -> list[Path]:
    """The output paths, after making sure none exists (unless ``overwrite``)."""
    targets = [Path(out_dir) / name for name in OUTPUT_FILES]
    refuse_existing(targets, overwrite)
    return targets


def write_outputs(result: EvaluationResult, out_dir: str | Path, overwrite: bool = False) -> list[Path]:
    """Write ``metrics.csv`` and ``summary.json`` atomically; refuse to replace them unless ``overwrite``."""
    targets = check_outputs_free(out_dir, overwrite)
    atomic_write_text(targets[0], metrics_csv(result))
    summary = json.dumps(_json_safe(result.summary()), indent=2, allow_nan=False)
    atomic_write_text(targets[1], summary + "\n")
    return targets


def format_table(result: EvaluationResult) -> str:
    """The summary as aligned text: one line per metric with mean +- std (n)."""
    summary = result.summary()
    lines = [f"{summary['n_cases']} case(s), mode {result.mode}"]
    for name, stats in summary["metrics"].items():
        if stats["mean"] is None:
            lines.append(f"  {name:<13} n/a")
            continue
        digits = 4 if "ssim" in name or name in BONE_METRICS else 2
        extra = "".join(f", {stats[key]} {word}" for key, word in (("n_infinite", "infinite"), ("n_undefined", "undefined"))
                        if key in stats)
        lines.append(f"  {name:<13} {stats['mean']:>10.{digits}f} +- {stats['std']:<10.{digits}f} (n={stats['n']}{extra})")
    if result.missing:
        lines.append(f"missing predictions: {', '.join(result.missing)}")
    if result.unmatched_predictions:
        lines.append(f"predictions without reference: {', '.join(result.unmatched_predictions)}")
    return "\n".join(lines)
