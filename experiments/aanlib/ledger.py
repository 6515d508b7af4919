"""The ledger of test-split scorings: one row per generator scored on the test split.

Settings are chosen on the validation fold; the test split is scored once per final recipe. The
ledger (committed beside this file) makes every scoring of the test split, and so every re-scoring,
visible. Validation-fold scorings are not recorded.
"""

from __future__ import annotations

import csv
import datetime
import fcntl
import hashlib
import io
import json
import os
from contextlib import contextmanager
from pathlib import Path

from synthct.errors import SynthctError
from synthct.io.atomic import atomic_write_text

LEDGER = Path(__file__).with_name("ledger.csv")
COLUMNS = ("date_utc", "run", "generator", "step", "weights_sha256", "config_sha256", "tta", "mask", "slices",
           "head_mae", "head_psnr", "head_ssim", "mae", "psnr", "ssim")
METRIC_DIGITS = {"head_mae": 2, "head_psnr": 2, "head_ssim": 3, "mae": 2, "psnr": 2, "ssim": 3}


def config_sha256(config: dict) -> str:
    """sha256 of a generator's training config (its sidecar's ``config``) without the data paths,
    which name where a work folder lay rather than the recipe."""
    recipe = json.loads(json.dumps(config))
    for key in ("root", "mr", "ct"):
        recipe.get("data", {}).pop(key, None)
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode("utf-8")).hexdigest()


def run_name(generator: Path) -> str:
    """The run folder a generator belongs to: the folder itself, the folder of its weights, or the
    run above ``snapshots/``."""
    generator = Path(generator)
    if generator.is_dir():
        return generator.resolve().name
    folder = generator.resolve().parent
    return folder.parent.name if folder.name == "snapshots" else folder.name


def last_scoring(ledger: Path, run: str, tta: str, mask: str, step: int | None = None) -> dict | None:
    """The ledger's last row for ``run`` scored with these inference options (at ``step`` when
    given); None when it has none."""
    if not Path(ledger).is_file():
        return None
    with open(ledger, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        _check_columns(reader.fieldnames, ledger)
        rows = [row for row in reader if (row["run"], row["tta"], row["mask"]) == (run, tta, mask)
                and (step is None or row["step"] == str(step))]
    return rows[-1] if rows else None


def _check_columns(header: list[str] | None, ledger: Path) -> None:
    if header is not None and tuple(header) != COLUMNS:
        raise SynthctError(f"not a ledger of test-split scorings (expected the columns {', '.join(COLUMNS)})", ledger)


@contextmanager
def _sole_writer(ledger: Path):
    """Hold an exclusive lock on the ledger's folder: scorings that finish at once (two lanes of the
    final stage) each read the ledger and rename a new one over it, so without it one row is lost.
    The folder, not the file, is locked because the rename replaces the file."""
    ledger.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(ledger.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def record(ledger: Path, generator: Path, meta: dict, result: dict) -> None:
    """Append a row for ``result`` (an evaluate result) of the generator with sidecar ``meta``."""
    ledger = Path(ledger)
    with _sole_writer(ledger):
        text = ledger.read_text(encoding="utf-8") if ledger.is_file() else ""
        header = next(csv.reader(io.StringIO(text)), None)
        _check_columns(header, ledger)
        row = {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "run": run_name(generator), "generator": Path(generator).name, "step": meta.get("step"),
               "weights_sha256": meta.get("sha256"), "config_sha256": config_sha256(meta.get("config") or {}),
               "tta": result["inference"]["tta"], "mask": result["inference"]["mask"], "slices": result["n_slices"]}
        row |= {key: f"{result['means'][key]:.{digits}f}" for key, digits in METRIC_DIGITS.items()}
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        if header is None:
            writer.writeheader()
        writer.writerow(row)
        atomic_write_text(ledger, text + ("" if not text or text.endswith("\n") else "\n") + out.getvalue())
