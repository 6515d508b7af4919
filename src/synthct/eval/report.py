"""A self-contained HTML report: metrics tables, per-case viewer, loss curves, training samples.

The page opens offline: no external resource, inline CSS and JavaScript only. Each case embeds
a subset of evenly spaced slices, reduced in size, as raw little-endian Int16 (synthetic and
reference, in HU or 8-bit values) and Uint8 (input, already windowed to its 1st-99th
percentile), base64-encoded. The browser draws them on canvases, so window/level presets and
the slice slider act instantly and the error map |sCT - CT| is computed from the exact values.
Static PNG figures (middle slice of every case, loss curves) are written beside the HTML.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthct.errors import SynthctError
from synthct.io.atomic import atomic_write_bytes, atomic_write_text, refuse_existing

# (label, width, level) in HU; the first is the default view.
HU_PRESETS = (("soft tissue", 400, 40), ("brain", 80, 40), ("bone", 2000, 500), ("full", 4024, 988))
EIGHT_BIT_PRESETS = (("full", 256, 127.5),)
ERROR_SCALE = {"hu": 500.0, "8bit": 64.0}
PHANTOM_NOTE = "Synthetic phantom data: these numbers show the pipeline works, not clinical accuracy."


@dataclass
class ReportCase:
    """One case for the report: (z, y, x) arrays of equal shape; ``input`` (the MR) may be None."""

    name: str
    synthetic: np.ndarray
    reference: np.ndarray
    input: np.ndarray | None = None


# log.csv columns that are not losses (the trainer's timing and schedule bookkeeping).
LOG_BOOKKEEPING = ("step", "epoch", "elapsed_s", "lr", "data_s", "step_s", "skipped")


def slice_subset(depth: int, max_slices: int) -> np.ndarray:
    """Up to ``max_slices`` evenly spaced slice indices, ends included."""
    return np.unique(np.linspace(0, depth - 1, min(depth, max_slices)).round().astype(int))


def _stride(shape: tuple[int, ...], max_size: int) -> int:
    return max(1, math.ceil(max(shape[-2:]) / max_size))


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def percentile_window(array: np.ndarray) -> np.ndarray:
    """An MR mapped to 0..255 by its 1st and 99th percentiles (MR has no absolute scale)."""
    low, high = np.percentile(array, [1, 99])
    scaled = (array - low) / max(float(high - low), 1e-6)
    return np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)


def _case_payload(case: ReportCase, max_slices: int, max_size: int) -> dict:
    if case.synthetic.shape != case.reference.shape:
        raise SynthctError(f"synthetic {case.synthetic.shape} and reference {case.reference.shape} differ", case.name)
    indices = slice_subset(case.reference.shape[0], max_slices)
    step = _stride(case.reference.shape, max_size)

    def pick(array: np.ndarray) -> np.ndarray:
        return np.asarray(array)[indices][:, ::step, ::step]

    synthetic = np.clip(np.rint(pick(case.synthetic)), -32768, 32767).astype("<i2")
    reference = np.clip(np.rint(pick(case.reference)), -32768, 32767).astype("<i2")
    payload = {
        "name": case.name,
        "slices": [int(i) for i in indices],
        "height": int(reference.shape[1]),
        "width": int(reference.shape[2]),
        "synthetic": _b64(synthetic),
        "reference": _b64(reference),
        "input": None,
    }
    if case.input is not None:
        if np.shape(case.input) != case.reference.shape:
            raise SynthctError(f"input {np.shape(case.input)} and reference {case.reference.shape} differ", case.name)
        payload["input"] = _b64(percentile_window(pick(case.input)))
    return payload


def _png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def case_figure(case: ReportCase, mode: str) -> bytes:
    """PNG of the middle slice: input | synthetic | reference | error map with colour bar."""
    from matplotlib.figure import Figure

    z = case.reference.shape[0] // 2
    preset = HU_PRESETS[0] if mode == "hu" else EIGHT_BIT_PRESETS[0]
    _, width, level = preset
    vmin, vmax = level - width / 2, level + width / 2
    figure = Figure(figsize=(12, 3.4))
    axes = figure.subplots(1, 4)
    if case.input is not None:
        axes[0].imshow(percentile_window(case.input[z]), cmap="gray", vmin=0, vmax=255)
    else:
        axes[0].text(0.5, 0.5, "no input", ha="center", va="center", transform=axes[0].transAxes)
    axes[1].imshow(case.synthetic[z], cmap="gray", vmin=vmin, vmax=vmax)
    axes[2].imshow(case.reference[z], cmap="gray", vmin=vmin, vmax=vmax)
    error = axes[3].imshow(np.abs(case.synthetic[z] - case.reference[z]), cmap="inferno", vmin=0,
                           vmax=ERROR_SCALE[mode])
    figure.colorbar(error, ax=axes[3], fraction=0.046, pad=0.04,
                    label="|sCT - CT| (HU)" if mode == "hu" else "|error| (8-bit)")
    titles = ("input MR", "synthetic", "reference", "error")
    for ax, title in zip(axes, titles):
        ax.set_title(f"{title}" + (f" (W{width:g} L{level:g})" if title in ("synthetic", "reference") else ""),
                     fontsize=9)
        ax.axis("off")
    figure.suptitle(f"{case.name}, slice {z}", fontsize=10)
    return _png_bytes(figure)


def read_training_log(log_csv: Path) -> dict[str, np.ndarray]:
    """Numeric columns of a trainer log.csv (step, epoch, elapsed_s, one column per loss)."""
    with open(log_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    columns = {}
    for name in rows[0]:
        try:
            columns[name] = np.array([float(row[name]) if row[name] not in ("", None) else np.nan for row in rows])
        except ValueError:
            continue
    return columns


def loss_figure(log_csv: Path) -> bytes | None:
    """Small multiples, one panel per loss column against step (raw faint, running mean bold)."""
    from matplotlib.figure import Figure

    columns = read_training_log(log_csv)
    if "step" not in columns:
        return None
    losses = [name for name in columns if name not in LOG_BOOKKEEPING]
    if not losses:
        return None
    ncols = min(3, len(losses))
    nrows = math.ceil(len(losses) / ncols)
    figure = Figure(figsize=(4 * ncols, 2.6 * nrows))
    axes = np.atleast_1d(figure.subplots(nrows, ncols, squeeze=False)).ravel()
    step = columns["step"]
    for ax, name in zip(axes, losses):
        values = columns[name]
        ax.plot(step, values, color="tab:blue", alpha=0.3, linewidth=0.8)
        window = max(1, len(values) // 20)
        if window > 1:
            smooth = np.convolve(np.nan_to_num(values), np.ones(window) / window, mode="valid")
            ax.plot(step[window - 1:], smooth, color="tab:blue", linewidth=1.6)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(losses):]:
        ax.axis("off")
    figure.tight_layout()
    return _png_bytes(figure)


def latest_samples(run_dir: Path, count: int = 2) -> list[Path]:
    """The newest sample grid PNGs of a run (by modification time, then name)."""
    folder = run_dir / "samples"
    if not folder.is_dir():
        return []
    pngs = sorted(folder.glob("*.png"), key=lambda p: (p.stat().st_mtime, p.name))
    return pngs[-count:][::-1]


def _format(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "inf" if isinstance(value, float) and value == math.inf else "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return html.escape(str(value))


def _summary_table(summary: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{_format(s.get('mean'))} &plusmn; {_format(s.get('std'))}</td>"
        f"<td>{s.get('n', '')}</td></tr>"
        for name, s in summary.get("metrics", {}).items()
    )
    return f'<table id="summary-table"><tr><th>metric</th><th>mean &plusmn; std</th><th>n</th></tr>{rows}</table>'


def _case_table(metric_names: list[str], rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(m)}</th>" for m in ["case", *metric_names])
    body = "".join(
        "<tr>" + "".join(f"<td>{_format(row.get(m))}</td>" for m in ["case", *metric_names]) + "</tr>" for row in rows
    )
    return f'<table id="case-table"><tr>{head}</tr>{body}</table>'


def _img(png: bytes, alt: str, css_class: str = "figure") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{css_class}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _error_lut() -> list[str]:
    from matplotlib import colormaps

    colours = (colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(int)
    return ["%02x%02x%02x" % tuple(c) for c in colours]


def write_report(
    out_html: str | Path,
    cases: list[ReportCase],
    summary: dict,
    rows: list[dict],
    run_dir: str | Path | None = None,
    note: str | None = None,
    mode: str | None = None,
    max_slices: int = 24,
    max_size: int = 128,
    overwrite: bool = False,
) -> Path:
    """Write the HTML report and its PNG figures (``<out_html folder>/figures/``).

    ``summary`` and ``rows`` are :meth:`EvaluationResult.summary` and ``EvaluationResult.rows``
    (or the same read back from summary.json / metrics.csv). ``mode`` defaults to the summary's.
    """
    out_html = Path(out_html)
    mode = mode or summary.get("mode", "hu")
    if mode not in ERROR_SCALE:
        raise SynthctError(f"unknown mode '{mode}' (choose hu or 8bit)")
    figures_dir = out_html.parent / "figures"
    figure_paths = {case.name: figures_dir / f"{case.name}.png" for case in cases}
    loss_path = figures_dir / "loss.png"
    run_dir = Path(run_dir) if run_dir is not None else None
    refuse_existing([out_html, *figure_paths.values(), *([loss_path] if run_dir else [])], overwrite)

    notes = [note] if note else []
    if any(case.name.lower().startswith("phantom") for case in cases):
        notes.append(PHANTOM_NOTE)

    payload = [_case_payload(case, max_slices, max_size) for case in cases]
    for case in cases:
        atomic_write_bytes(figure_paths[case.name], case_figure(case, mode))
    training_html = _training_section(run_dir, loss_path) if run_dir is not None else ""

    presets = HU_PRESETS if mode == "hu" else EIGHT_BIT_PRESETS
    page = _PAGE.format(
        title=html.escape(out_html.stem),
        notes="".join(f'<p class="note">{html.escape(n)}</p>' for n in notes),
        mode=html.escape(mode),
        summary_table=_summary_table(summary),
        missing=_missing_html(summary),
        case_table=_case_table(list(summary.get("metrics", {}).keys()), rows),
        presets="".join(
            f'<label><input type="radio" name="preset" value="{i}"{" checked" if i == 0 else ""}> '
            f"{html.escape(p[0])} (W{p[1]:g} L{p[2]:g})</label> "
            for i, p in enumerate(presets)
        ),
        cases="".join(_case_section(c["name"], mode) for c in payload),
        training=training_html,
        data=_viewer_data_json(mode, presets, payload),
        style=_STYLE,
        script=_SCRIPT,
    )
    atomic_write_text(out_html, page)
    return out_html


def _training_section(run_dir: Path, loss_path: Path) -> str:
    """The run's loss curves (also written to ``loss_path``) and its latest sample grids."""
    parts = []
    log_csv = run_dir / "log.csv"
    loss_png = loss_figure(log_csv) if log_csv.is_file() else None
    if loss_png is not None:
        atomic_write_bytes(loss_path, loss_png)
        parts.append("<h3>Loss curves</h3>" + _img(loss_png, "loss curves"))
    else:
        parts.append(f"<p>No loss log found at {html.escape(str(log_csv))}.</p>")
    for sample in latest_samples(run_dir):
        parts.append(f"<h3>Samples: {html.escape(sample.name)}</h3>" + _img(sample.read_bytes(), sample.name))
    return (f'<section id="training"><h2>Training run</h2><p>{html.escape(str(run_dir))}</p>{_health_html(run_dir)}'
            f'{_restarts_html(run_dir)}{"".join(parts)}</section>')


def _health_html(run_dir: Path) -> str:
    """The training health check's last verdict with its evidence, and the verdicts before it."""
    from synthct.eval.health import Verdict, read_health

    record = read_health(run_dir)
    if not record or not record["checks"]:
        return "<p>No training health check (health.json) in this run.</p>"
    try:
        # Records written before verdicts said whether they were the run's last count as last.
        verdicts = [Verdict(c["step"], c["failures"], c["evidence"], c.get("final", True)) for c in record["checks"]]
        lines = [v.line() for v in verdicts]
    except (KeyError, TypeError, ValueError):
        raise SynthctError("not a health record written by synthct train", run_dir / "health.json") from None
    latest = verdicts[-1]
    css = "note" if latest.healthy else "warning"
    history = "".join(f"<li>{html.escape(line)}</li>" for line in lines[:-1])
    return (f'<div id="health"><h3>Health check</h3><p class="{css}">{html.escape(lines[-1])}</p>'
            + (f"<details><summary>earlier checks</summary><ul>{history}</ul></details>" if history else "")
            + "</div>")


def _restarts_html(run_dir: Path) -> str:
    """What the restarts did (RUN_DIR/restarts.json): each start's seed and verdict."""
    from synthct.engine.restarts import VERDICTS

    path = run_dir / VERDICTS
    if not path.is_file():
        return ""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        rows = "".join(f"<tr><td>{int(s['seed'])}</td><td>{html.escape(s['verdict'])}</td></tr>"
                       for s in record["starts"])
        check_steps = int(record["check_steps"])
    except (KeyError, TypeError, ValueError):
        raise SynthctError("not a restarts record written by synthct train", path) from None
    set_aside = sum(s["verdict"].startswith("set aside") for s in record["starts"])
    return (f'<div id="restarts"><h3>Restarts</h3><p>{set_aside} start(s) set aside by the health check at step '
            f'{check_steps}.</p><table><tr><th>seed</th><th>verdict</th></tr>{rows}</table></div>')


def _viewer_data_json(mode: str, presets, payload: list[dict]) -> str:
    """What the page's script draws from, as JSON safe inside a <script> block."""
    data = {
        "mode": mode,
        "presets": [{"label": p[0], "width": p[1], "level": p[2]} for p in presets],
        "errorScale": ERROR_SCALE[mode],
        "errorUnit": "HU" if mode == "hu" else "8-bit",
        "lut": _error_lut(),
        "cases": payload,
    }
    # "</" inside a <script> block would end it; JSON allows the escaped form.
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")


def _case_section(name: str, mode: str) -> str:
    """One case's canvases (filled by the page's script) and its slice slider."""
    panels = "".join(
        f'<figure><canvas data-panel="{p}"></canvas><figcaption>{label}</figcaption></figure>'
        for p, label in (("input", "input MR"), ("synthetic", "synthetic CT"), ("reference", "reference CT"),
                         ("error", "|sCT - CT|"))
    )
    return (
        f'<section class="case" data-case="{html.escape(name)}"><h3>{html.escape(name)}</h3>'
        '<div class="panels">'
        + panels
        + '<figure class="bar"><canvas data-panel="colourbar" width="16" height="128"></canvas>'
        f'<div class="bar-labels"><span>{ERROR_SCALE[mode]:g}</span><span>0</span></div></figure>'
        '</div><label>slice <input type="range" class="slice" min="0" value="0"> <span class="slice-label"></span></label>'
        "</section>"
    )


def _missing_html(summary: dict) -> str:
    parts = []
    if summary.get("missing"):
        parts.append("references without prediction: " + ", ".join(html.escape(m) for m in summary["missing"]))
    if summary.get("unmatched_predictions"):
        parts.append("predictions without reference: "
                     + ", ".join(html.escape(m) for m in summary["unmatched_predictions"]))
    return "".join(f'<p class="warning">{p}</p>' for p in parts)


def load_report_cases(cases) -> list[ReportCase]:
    """Read the images of matched cases (``evaluate.CaseFiles`` with a prediction) for the report."""
    from synthct.io.image import read_image

    loaded = []
    for case in cases:
        if case.prediction is None:
            continue
        reference = read_image(case.reference).array
        synthetic = read_image(case.prediction).array
        if synthetic.shape != reference.shape:
            raise SynthctError(f"shape {synthetic.shape} differs from the reference {reference.shape}", case.prediction)
        source = None
        if case.input is not None:
            source = read_image(case.input).array
            if source.shape != reference.shape:
                raise SynthctError(f"input shape {source.shape} differs from the reference {reference.shape}",
                                   case.input)
        loaded.append(ReportCase(case.name, synthetic, reference, source))
    return loaded


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}h3{font-size:1em;margin:.8em 0 .3em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#eee}
td:first-child,th:first-child{text-align:left}
.note{background:#fff3cd;border:1px solid #e0c36a;padding:.5em .8em;display:inline-block}
.warning{background:#f8d7da;border:1px solid #d98a92;padding:.4em .8em}
.panels{display:flex;gap:6px;align-items:flex-start;flex-wrap:wrap}
.panels figure{margin:0;text-align:center;font-size:.8em}
.panels canvas{width:220px;image-rendering:pixelated;background:#000;display:block}
.panels figure.bar canvas{width:16px;height:220px}
.bar{display:flex;gap:4px}.bar-labels{display:flex;flex-direction:column;justify-content:space-between;height:220px;font-size:.75em}
.case{background:#fff;border:1px solid #ddd;padding:.4em .8em .8em;margin:.8em 0}
#status{font-size:.8em;color:#666}
img.figure{max-width:100%;border:1px solid #ddd;background:#fff}
"""

_SCRIPT = r"""
(function(){
  var statusEl = document.getElementById('status');
  window.onerror = function(message, source, line){
    statusEl.textContent = 'error: ' + message + ' (line ' + line + ')';
    document.body.setAttribute('data-status', 'error');
  };
  var data = JSON.parse(document.getElementById('report-data').textContent);
  function decode(b64, Type){
    var text = atob(b64), bytes = new Uint8Array(text.length);
    for (var i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return new Type(bytes.buffer);
  }
  var lut = data.lut.map(function(h){ return [parseInt(h.slice(0,2),16), parseInt(h.slice(2,4),16), parseInt(h.slice(4,6),16)]; });
  var preset = data.presets[0];
  var drawn = 0;
  function paint(canvas, w, h, pixel){
    canvas.width = w; canvas.height = h;
    var ctx = canvas.getContext('2d'), image = ctx.createImageData(w, h), px = image.data;
    for (var i = 0; i < w * h; i++){
      var c = pixel(i); px[4*i] = c[0]; px[4*i+1] = c[1]; px[4*i+2] = c[2]; px[4*i+3] = 255;
    }
    ctx.putImageData(image, 0, 0);
  }
  function gray(v){ return [v, v, v]; }
  var views = data.cases.map(function(c){
    var section = document.querySelector('section.case[data-case="' + CSS.escape(c.name) + '"]');
    var view = {c: c, section: section, n: c.height * c.width,
      synthetic: decode(c.synthetic, Int16Array), reference: decode(c.reference, Int16Array),
      input: c.input ? decode(c.input, Uint8Array) : null, index: Math.floor(c.slices.length / 2)};
    var slider = section.querySelector('input.slice');
    slider.max = c.slices.length - 1; slider.value = view.index;
    slider.addEventListener('input', function(){ view.index = +slider.value; draw(view); });
    var bar = section.querySelector('canvas[data-panel="colourbar"]');
    paint(bar, 1, 128, function(i){ return lut[Math.round((127 - i) / 127 * 255)]; });
    return view;
  });
  function draw(view){
    var c = view.c, w = c.width, h = c.height, offset = view.index * view.n;
    var low = preset.level - preset.width / 2, scale = 255 / preset.width;
    function windowed(values){ return function(i){
      var v = (values[offset + i] - low) * scale; return gray(v < 0 ? 0 : v > 255 ? 255 : Math.round(v)); }; }
    var panels = view.section.querySelectorAll('canvas[data-panel]');
    panels.forEach(function(canvas){
      var kind = canvas.getAttribute('data-panel');
      if (kind === 'synthetic') paint(canvas, w, h, windowed(view.synthetic));
      else if (kind === 'reference') paint(canvas, w, h, windowed(view.reference));
      else if (kind === 'input'){
        if (view.input) paint(canvas, w, h, function(i){ return gray(view.input[offset + i]); });
        else paint(canvas, w, h, function(){ return [40, 40, 40]; });
      } else if (kind === 'error') paint(canvas, w, h, function(i){
        var e = Math.abs(view.synthetic[offset + i] - view.reference[offset + i]) / data.errorScale;
        return lut[Math.round((e > 1 ? 1 : e) * 255)]; });
    });
    drawn += 4;
    view.section.querySelector('.slice-label').textContent =
      'z = ' + c.slices[view.index] + ' (' + (view.index + 1) + '/' + c.slices.length + ')';
  }
  document.querySelectorAll('input[name="preset"]').forEach(function(radio){
    radio.addEventListener('change', function(){ preset = data.presets[+radio.value]; views.forEach(draw); });
  });
  views.forEach(draw);
  document.body.setAttribute('data-drawn', String(drawn));
  if (document.body.getAttribute('data-status') !== 'error'){
    document.body.setAttribute('data-status', 'ready');
    statusEl.textContent = 'ready: ' + drawn + ' images drawn';
  }
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>synthct report: {title}</title><style>{style}</style></head>
<body data-status="loading">
<h1>synthct evaluation report</h1>
{notes}
<p id="status">loading</p>
<h2>Summary ({mode})</h2>
{summary_table}
{missing}
<h2>Cases</h2>
{case_table}
<h2>Viewer</h2>
<p>window: {presets}</p>
<div id="cases">{cases}</div>
{training}
<script type="application/json" id="report-data">{data}</script>
<script>{script}</script>
</body></html>
"""
