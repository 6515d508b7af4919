"""Export a trained generator to ONNX or TorchScript, checked against PyTorch before it is kept.

ONNX uses the TorchScript-based exporter (``dynamo=False``, opset 17): the torch.export-based
default of torch >= 2.9 needs the separate ``onnxscript`` package, while the classic exporter
works offline with torch alone. Batch, height and width are dynamic axes, so the exported model
takes any slice size the generator does (multiples of its stride; ``Translator`` pads to them).

The generator's JSON sidecar is copied to ``FILE.json`` with an ``export`` section, so
``synthct translate --backend onnxruntime --model FILE.onnx`` knows the intensity mappings,
slicing axis and 2.5D depth exactly as the PyTorch path does.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from synthct.errors import SynthctError
from synthct.io.atomic import atomic_write_text

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17
PARITY_TOLERANCE = 1e-3


def parity_batch(meta: dict, seed: int = 0) -> np.ndarray:
    """A (2, C, H, W) batch in [-1, 1]: a phantom-like disc with noise, and uniform noise.

    H and W differ from each other and from the tracing size, so dynamic axes are exercised.
    """
    channels = int((meta.get("architecture") or {}).get("in_channels", meta.get("slices", 1)))
    arch = meta.get("architecture") or {}
    multiple = 2 ** int(arch.get("num_downs", 8)) if arch.get("generator") == "unet" else 4
    h, w = 2 * max(multiple, 32), 3 * max(multiple, 32) // 2 + multiple
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    disc = ((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.4 * w)) ** 2 < 1
    phantom = np.where(disc, 0.2, -1.0) + 0.05 * rng.standard_normal((h, w))
    noise = rng.uniform(-1.0, 1.0, (h, w))
    batch = np.stack([np.repeat(phantom[None], channels, 0), np.repeat(noise[None], channels, 0)])
    return np.clip(batch, -1.0, 1.0).astype(np.float32)


def _trace_input(meta: dict):
    import torch

    arch = meta.get("architecture") or {}
    channels = int(arch.get("in_channels", meta.get("slices", 1)))
    side = 2 ** int(arch.get("num_downs", 8)) if arch.get("generator") == "unet" else 64
    return torch.zeros(1, channels, side, side).uniform_(-1, 1, generator=torch.Generator().manual_seed(0))


def _check_parity(reference: np.ndarray, exported: np.ndarray, out: Path) -> float:
    if reference.shape != exported.shape:
        raise SynthctError(f"exported model returns shape {exported.shape}, PyTorch {reference.shape}", out)
    diff = float(np.abs(reference - exported).max())
    if not diff < PARITY_TOLERANCE:
        raise SynthctError(f"exported model differs from PyTorch by {diff:.2e} (> {PARITY_TOLERANCE:g}); not written",
                           out)
    return diff


def _export_onnx(module, meta: dict, tmp: Path, batch: np.ndarray, reference: np.ndarray, out: Path) -> float:
    import torch

    try:
        with warnings.catch_warnings():
            # The classic exporter is deprecated in favour of the onnxscript-based one, and traces
            # shape arithmetic it warns about; both are expected and checked by the parity test.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (_trace_input(meta),), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"},
                              "output": {0: "batch", 2: "height", 3: "width"}},
            )
    except Exception as exc:  # noqa: BLE001 - exporter failures come in many types
        raise SynthctError(f"ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})", out) from None
    from synthct.translate.translator import OnnxRunner

    return _check_parity(reference, OnnxRunner(tmp)(batch), out)


def _export_torchscript(module, meta: dict, tmp: Path, batch: np.ndarray, reference: np.ndarray, out: Path) -> float:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated; TorchScript files still load everywhere
            traced = torch.jit.trace(module, _trace_input(meta), check_trace=False)
            torch.jit.save(traced, str(tmp))
            loaded = torch.jit.load(str(tmp), map_location="cpu")
            with torch.inference_mode():
                exported = loaded(torch.from_numpy(batch)).numpy()
    except Exception as exc:  # noqa: BLE001
        raise SynthctError(f"TorchScript export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                           out) from None
    return _check_parity(reference, exported, out)


def export_generator(model_ref: str | Path, direction: str, fmt: str, out: str | Path,
                     overwrite: bool = False) -> dict:
    """Export the ``direction`` generator of ``model_ref`` to ``out`` (+ ``out.json`` sidecar).

    The export is written to a temporary file, compared with PyTorch on :func:`parity_batch`
    (max abs difference < 1e-3 in model range) and only then renamed into place.
    Returns the sidecar's ``export`` section (format, opset, parity difference).
    """
    import torch

    from synthct.models.saved import load_generator, sha256_of

    if fmt not in FORMATS:
        raise SynthctError(f"unknown export format '{fmt}' ({' | '.join(FORMATS)})")
    out = Path(out)
    sidecar = Path(str(out) + ".json")
    for path in (out, sidecar):
        if path.exists() and not overwrite:
            raise SynthctError("already exists; pass --overwrite to replace it", path)
    module, meta = load_generator(model_ref, direction, device="cpu")
    module = module.float().eval()
    batch = parity_batch(meta)
    with torch.inference_mode():
        reference = module(torch.from_numpy(batch)).numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmpdir:
        tmp = Path(tmpdir) / out.name
        exporter = _export_onnx if fmt == "onnx" else _export_torchscript
        diff = exporter(module, meta, tmp, batch, reference, out)
        export_info = {"format": fmt, "parity_max_abs_diff": diff, "parity_tolerance": PARITY_TOLERANCE,
                       "torch": torch.__version__, "weights_sha256": meta.get("sha256")}
        if fmt == "onnx":
            export_info["opset"] = ONNX_OPSET
        exported_meta = {**meta, "sha256": sha256_of(tmp), "export": export_info}
        os.replace(tmp, out)
    atomic_write_text(sidecar, json.dumps(exported_meta, indent=2) + "\n")
    return export_info
