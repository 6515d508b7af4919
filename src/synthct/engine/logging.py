"""What a run tells its user: a progress bar, ``log.csv`` (one row per step), optional
TensorBoard scalars, PNG sample grids and the loss curves at the end. Nothing here touches
pyplot, so training never changes the user's matplotlib backend."""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from synthct.io.atomic import atomic_path, atomic_write_text

BASE_COLUMNS = ("step", "epoch", "elapsed_s", "lr", "data_s", "step_s", "skipped")
SAMPLE_ROWS = (("real_mr", "fake_ct", "rec_mr"), ("real_ct", "fake_mr", "rec_ct"))


class RunLogger:
    """Buffers one row per step and appends them to ``log.csv`` with a single write per flush,
    so a crash leaves whole rows only."""

    def __init__(self, run_dir: Path, enabled: bool = True, writes_files: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.rows: list[dict] = []
        self.columns: list[str] | None = None
        self.total_data_s = 0.0
        self.total_step_s = 0.0
        self.bar = None
        self.writer = None
        self.path = self.run_dir / "log.csv"
        self.active = writes_files  # rank 0 writes files; other ranks only keep timing totals
        if self.active and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def say(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"synthct: {message}"
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    @contextmanager
    def progress(self, total: int, initial: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr,
                        disable=not self.enabled, mininterval=0.5 if sys.stderr.isatty() else 10.0)
        try:
            yield self.bar
        finally:
            self.bar.close()
            self.bar = None

    def record(self, *, step: int, epoch: int, elapsed_s: float, lr: float, data_s: float, step_s: float,
               skipped: int, losses: dict[str, float]) -> None:
        self.total_data_s += data_s
        self.total_step_s += step_s
        if not self.active:
            return
        self.rows.append({"step": step, "epoch": epoch, "elapsed_s": round(elapsed_s, 3), "lr": lr,
                          "data_s": round(data_s, 5), "step_s": round(step_s, 5), "skipped": skipped, **losses})
        if self.bar is not None and losses:
            shown = {k: f"{v:.3g}" for k, v in list(losses.items())[:6]}
            self.bar.set_postfix(shown, refresh=False)

    def data_wait_fraction(self) -> float:
        total = self.total_data_s + self.total_step_s
        return self.total_data_s / total if total else 0.0

    def _existing_columns(self) -> list[str] | None:
        if not self.path.is_file():
            return None
        with open(self.path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), None)
        return header or None

    def flush(self) -> None:
        if not self.active or not self.rows:
            return
        if self.columns is None:
            self.columns = self._existing_columns()
        new_file = self.columns is None
        keys = list(dict.fromkeys(k for row in self.rows for k in row if k not in BASE_COLUMNS))
        if new_file:
            self.columns = list(BASE_COLUMNS) + keys
        elif any(k not in self.columns for k in keys):
            # New loss terms (a run resumed with a setting that adds one): widen the header of the rows so far.
            self.columns += [k for k in keys if k not in self.columns]
            self._rewrite(read_log(self.path))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        if new_file:
            writer.writeheader()
        writer.writerows(self.rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, buffer.getvalue().encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if self.writer is not None:
            for row in self.rows:
                for key, value in row.items():
                    if key not in ("step", "epoch", "skipped"):
                        self.writer.add_scalar(key, value, row["step"])
            self.writer.flush()
        self.rows.clear()

    def truncate_after(self, step: int) -> None:
        """On resume: drop rows logged after the checkpoint the run continues from."""
        if not self.active or not self.path.is_file():
            return
        self.columns = self._existing_columns()
        if self.columns is None:
            return
        self._rewrite([row for row in read_log(self.path) if int(row["step"]) <= step])

    def _rewrite(self, rows: list[dict]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: row.get(k, "") for k in self.columns} for row in rows)
        atomic_write_text(self.path, buffer.getvalue())

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_log(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _tile(image) -> np.ndarray:
    array = image.detach().float().cpu().numpy()
    while array.ndim > 2:
        array = array[0]
    return array


def save_sample_grid(images: dict, path: Path) -> None:
    """Rows real MR | sCT | rec MR and real CT | sMR | rec CT (centre slice of the first item)."""
    from matplotlib.image import imsave

    tiles = {name: _tile(image) for name, image in images.items() if image is not None and image.numel()}
    if not tiles:
        return
    h, w = next(iter(tiles.values())).shape
    rows = [[n for n in row if n in tiles] for row in SAMPLE_ROWS]
    rows.append([n for n in tiles if not any(n in row for row in SAMPLE_ROWS)])
    rows = [row for row in rows if row]
    cols = max(len(row) for row in rows)
    gap = 2
    grid = np.full((len(rows) * (h + gap) - gap, cols * (w + gap) - gap), -1.0, np.float32)
    for r, row in enumerate(rows):
        for c, name in enumerate(row):
            grid[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tiles[name]
    with atomic_path(path) as tmp:
        imsave(tmp, np.clip(grid, -1, 1), cmap="gray", vmin=-1, vmax=1, format="png")


def plot_loss_curves(rows: list[dict], path: Path) -> None:
    """Generator terms and discriminator terms against step, raw and smoothed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        return
    names = [k for k in rows[0] if k not in BASE_COLUMNS]
    if not names:
        return
    steps = np.array([float(r["step"]) for r in rows])
    groups = [("generators", [n for n in names if not n.startswith("D")]),
              ("discriminators", [n for n in names if n.startswith("D")])]
    groups = [(title, group) for title, group in groups if group]
    figure = Figure(figsize=(6 * len(groups), 4), tight_layout=True)
    FigureCanvasAgg(figure)
    for i, (title, group) in enumerate(groups):
        axes = figure.add_subplot(1, len(groups), i + 1)
        for name in group:
            values = np.array([float(r[name]) if r.get(name) not in ("", None) else np.nan for r in rows])
            window = max(1, len(values) // 50)
            smooth = np.convolve(np.nan_to_num(values), np.ones(window) / window, mode="valid")
            line, = axes.plot(steps[window - 1:], smooth, label=name)
            if window > 1:
                axes.plot(steps, values, color=line.get_color(), alpha=0.2, linewidth=0.5)
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.set_ylabel("loss")
        axes.legend(fontsize="small")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
