"""Volume -> slices -> generator -> inverse intensity mapping -> volume, with the input's geometry.

The pipeline repeats exactly what training did to a slice (see the generator's JSON sidecar):

1. intensity mapping to [-1, 1]: CT through the fixed HU window, MR through percentiles fitted
   on *this* volume inside its body mask (MR has no absolute units, so training fitted every
   volume on its own too), 8-bit pictures through 0..255;
2. slicing along ``meta["axis"]``; with 2.5D models (``meta["slices"] = k > 1``) each slice goes
   in with its k - 1 neighbours as channels (edge slices replicate their neighbours) and the
   centre output channel is kept;
3. in-plane size handling, ``resample``:

   * ``native``: the slice goes through at its own pixel grid. Generators are fully
     convolutional, so H and W are only padded to a multiple of the network's stride
     (reflection padding) and the output cropped back: exact geometry, no interpolation.
     Slices above ``TILE_AUTO_PIXELS`` (or with ``tile`` set) go through in overlapping tiles
     blended with a raised-cosine window, so there are no seams.
   * ``fit``: the training transform itself (``data.slices.fit_layout``): resize so the
     longest physical side is ``meta["size"]`` pixels with square pixels, pad to a square
     with air (-1), run, then crop and resize back to the input grid.
   * ``auto`` (default): ``fit`` when the model was trained on "fit"-resized slices and
     ``fit`` would rescale the input's rows or columns by more than 25 %, ``native``
     otherwise. A generator learns texture and anatomy at the pixel scale it was trained on;
     a 512 x 512 CT slice run natively through a 256-trained model shows it structures twice
     as large as it has ever seen, which costs far more accuracy than the interpolation of
     ``fit`` (the output cannot hold more detail than the 256 model produces anyway). Inputs
     already near the training size (and 2D pictures of the training size) need no
     resampling and keep an exactly interpolation-free path.

4. the generator's output is mapped back with the sidecar's output mapping: a synthetic CT
   comes out in HU; a synthetic MR in the *training MRs' scale* (the median lo/hi of the
   training volumes' percentile fits), since MR has no absolute units to return to.

Test-time augmentation (``tta="flip"``) averages the translation of each slice with the
mirrored translation of its mirror image (along the slice's columns, the axis training flips
randomly with ``data.flip``): two forward passes for a prediction with less of the generator's
slice-to-slice noise, as nnU-Net does by default for segmentation. Only a model trained with
flips has seen mirrored slices, so only such a model accepts it; ``tta="auto"``, the default,
uses it for such models. The default mask ("auto") makes everything outside the input's body air:
both lowered head MAE at every scored snapshot of the brain-slice runs (docs/RESULTS.md).

Cycle-consistency QA (``qa=True``) runs the opposite generator of the same run on the
translation and reports how far it is from the input (see ``translate.qa``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from synthct.data.intensity import CTWindow, EightBit, Mapping, MRPercentile, mapping_from_dict
from synthct.errors import SynthctError
from synthct.io.image import Volume
from synthct.translate.qa import QAResult, QASummary, qa_summary
from synthct.translate.tiling import MIN_TILE, run_tiled

DIRECTIONS = {"mr2ct": ("mr", "ct"), "ct2mr": ("ct", "mr")}
OPPOSITE = {"mr2ct": "ct2mr", "ct2mr": "mr2ct"}
CT_AIR_HU = -1000.0
# Slices with more pixels than this (1024 x 1024) are translated in tiles.
TILE_AUTO_PIXELS = 1024 * 1024
DEFAULT_TILE = 512
# "auto" resampling switches to the training transform beyond this scale mismatch.
FIT_SCALE_TOLERANCE = 1.25
RESAMPLE_MODES = ("auto", "native", "fit")
TTA_MODES = ("auto", "none", "flip")

Runner = Callable[[np.ndarray], np.ndarray]


def resolve_runtime(device: str, precision: str) -> tuple[str, str]:
    """(device, precision) names for inference, chosen by the engine's pickers.

    bf16 rounds the generator's tanh output to steps of about 2**-9 of the model range,
    i.e. about 4 HU in soft tissue with the default window; pass fp32 for bit-stable output.
    """
    from synthct.runtime import resolve_device, resolve_precision

    torch_device = resolve_device(device or "auto")
    return str(torch_device), resolve_precision(precision or "auto", torch_device).name


class TorchRunner:
    """Runs a torch generator on numpy batches: inference mode, channels_last, autocast."""

    def __init__(self, module, device: str = "cpu", precision: str = "fp32"):
        import torch

        self.device = torch.device(device)
        self.precision = precision
        self.module = module.to(self.device, memory_format=torch.channels_last).eval()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            y = self.module(x)
        return y.float().cpu().numpy()


class OnnxRunner:
    """Runs an exported ONNX generator with onnxruntime on the CPU."""

    def __init__(self, path: Path):
        try:
            import onnxruntime as ort
        except ImportError:
            raise SynthctError("the onnxruntime backend needs the onnxruntime package (pip install onnxruntime)") from None
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise SynthctError(f"cannot load ONNX model ({str(exc).splitlines()[0][:200]})", path) from None
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


class FlipAveraged:
    """A runner averaging ``runner(x)`` with the mirrored ``runner(mirrored x)`` (last axis)."""

    def __init__(self, runner: Runner):
        self.runner = runner

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        mirrored = self.runner(np.ascontiguousarray(batch[..., ::-1]))[..., ::-1]
        return 0.5 * (self.runner(batch) + mirrored)


def trained_with_flips(meta: dict) -> bool | None:
    """Whether the sidecar's training configuration flipped slices (None: not recorded)."""
    flip = ((meta.get("config") or {}).get("data") or {}).get("flip")
    return flip if isinstance(flip, bool) else None


def onnx_sidecar(path: Path) -> Path:
    return Path(str(path) + ".json")


def read_sidecar(path: Path) -> dict:
    try:
        meta = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SynthctError("model sidecar (JSON) not found; export writes it next to the model", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise SynthctError("model sidecar is not valid JSON", path) from None
    if not isinstance(meta, dict) or meta.get("format") != "synthct-generator":
        raise SynthctError("not a synthct generator sidecar", path)
    return meta


def load_runner(model_ref: str | Path, direction: str, backend: str = "torch", device: str = "cpu",
                precision: str = "fp32") -> tuple[Runner, dict]:
    """A batch runner and the sidecar of the ``direction`` generator named by ``model_ref``."""
    model_ref = Path(model_ref)
    if backend == "onnxruntime":
        if not model_ref.is_file():
            raise SynthctError("ONNX model not found", model_ref)
        meta = read_sidecar(onnx_sidecar(model_ref))
        if meta.get("direction") != direction:
            raise SynthctError(f"this model translates {meta.get('direction')} only, not {direction}", model_ref)
        return OnnxRunner(model_ref), meta
    if backend != "torch":
        raise SynthctError(f"unknown backend '{backend}' (torch | onnxruntime)")
    if model_ref.suffix.lower() == ".onnx":
        raise SynthctError("an ONNX model needs --backend onnxruntime", model_ref)
    from synthct.models.saved import load_generator

    module, meta = load_generator(model_ref, direction, device="cpu")
    return TorchRunner(module, device, precision), meta


def _opposite_model_ref(model_ref: Path, direction: str) -> Path | None:
    """Where the opposite generator of the same run lives, if anywhere."""
    other = OPPOSITE[direction]
    if model_ref.is_dir():
        return model_ref
    candidates = [model_ref.parent / f"generator_{other}.safetensors"]
    if direction in model_ref.name:
        candidates.insert(0, model_ref.with_name(model_ref.name.replace(direction, other)))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def _stride_multiple(meta: dict) -> int:
    arch = meta.get("architecture") or {}
    if arch.get("generator") == "unet":
        return 2 ** int(arch.get("num_downs", 8))
    return 4  # two stride-2 convolutions in the ResNet generator


class Translator:
    """Translate whole volumes (or 2D pictures) with a trained generator.

    ``model_ref``: a run folder, a ``.safetensors`` generator or its ``.json`` sidecar
    (backend "torch"), or an exported ``.onnx`` file with its ``.onnx.json`` sidecar (backend
    "onnxruntime"). ``qa_model``: where the opposite generator for cycle QA lives (defaults
    to ``model_ref``'s run). ``tile``: None = automatic (large slices only), 0 = never,
    N = tiles of N x N pixels. ``tta``: "none", "flip" (see the module docstring) or "auto" (flip
    for models trained with mirrored slices, none otherwise).
    """

    def __init__(self, model_ref: str | Path, direction: str, device: str = "auto", precision: str = "auto",
                 batch_size: int = 16, backend: str = "torch", resample: str = "auto", tile: int | None = None,
                 qa_model: str | Path | None = None, tta: str = "auto"):
        if direction not in DIRECTIONS:
            raise SynthctError(f"unknown direction '{direction}' (mr2ct | ct2mr)")
        self.device, self.precision = resolve_runtime(device, precision) if backend == "torch" else ("cpu", "fp32")
        runner, meta = load_runner(model_ref, direction, backend, self.device, self.precision)
        self._configure(runner, meta, direction, batch_size, resample, tile, tta)
        self.model_ref = Path(model_ref)
        self.backend = backend
        self.qa_model = Path(qa_model) if qa_model is not None else None

    @classmethod
    def from_runner(cls, runner: Runner, meta: dict, *, backward: Runner | None = None, batch_size: int = 16,
                    resample: str = "auto", tile: int | None = None, tta: str = "auto") -> "Translator":
        """A translator around an already loaded generator (and optionally its opposite)."""
        self = cls.__new__(cls)
        self.device, self.precision, self.backend = "cpu", "fp32", "torch"
        self.model_ref, self.qa_model = Path(""), None
        self._configure(runner, meta, meta.get("direction", ""), batch_size, resample, tile, tta)
        self._backward = self._augmented(backward) if backward is not None else None
        return self

    def _configure(self, runner: Runner, meta: dict, direction: str, batch_size: int, resample: str,
                   tile: int | None, tta: str) -> None:
        if meta.get("direction") != direction:
            raise SynthctError(f"this model translates {meta.get('direction')} only, not {direction}")
        if resample not in RESAMPLE_MODES:
            raise SynthctError(f"unknown resample mode '{resample}' ({' | '.join(RESAMPLE_MODES)})")
        if batch_size < 1:
            raise SynthctError(f"batch size must be at least 1, got {batch_size}")
        if tile is not None and tile != 0 and tile < MIN_TILE:
            raise SynthctError(f"tile size must be 0 (never tile) or at least {MIN_TILE} pixels, got {tile}")
        if tta not in TTA_MODES:
            raise SynthctError(f"unknown test-time augmentation '{tta}' ({' | '.join(TTA_MODES)})")
        flips = trained_with_flips(meta)
        if tta == "auto":
            tta = "flip" if flips else "none"
        if tta == "flip" and not flips:
            why = "was trained without flips (data.flip)" if flips is False \
                else "does not record whether it was trained with flips (data.flip)"
            raise SynthctError(f"--tta flip needs a model trained with mirrored slices; this one {why}")
        self.tta = tta
        self.runner = self._augmented(runner)
        self.meta = meta
        self.direction = direction
        self.source, self.target = DIRECTIONS[direction]
        self.batch_size = int(batch_size)
        self.resample = resample
        self.tile = tile
        self.slices = int(meta.get("slices", 1))
        self.axis = int(meta.get("axis", 0))
        self.size = int(meta.get("size", 256))
        self.trained_resize = meta.get("resize", "fit")
        self.multiple = _stride_multiple(meta)
        self.eight_bit = meta.get("intensity_mode") == "8bit"
        try:
            self.input_mapping = mapping_from_dict(meta["input_mapping"])
            self.output_mapping = mapping_from_dict(meta["output_mapping"])
        except KeyError as exc:
            raise SynthctError(f"model sidecar has no {exc.args[0]}") from None
        self._backward: Runner | None = None

    # ------------------------------------------------------------------ public API

    def translate_volume(self, vol: Volume, mask: np.ndarray | str | None = None, qa: bool = False,
                         qa_threshold: float | None = None,
                         progress: Callable[[int], None] | None = None) -> Volume | QAResult:
        """The synthetic image (float32, the input's geometry; HU for CT).

        ``mask``: a boolean array of the input's shape, "auto" (the body mask of the input; the
        default, None, means "auto") or "none"; outside the mask the output is air (-1000 HU for
        CT, the darkest MR / 8-bit level).
        With ``qa=True`` returns a :class:`QAResult` with the cycle error map and summary.
        ``progress(n)`` is called with the number of slices finished after every batch.
        """
        if mask is None:
            mask = "auto"
        elif isinstance(mask, str) and mask == "none":
            mask = None
        body, automatic = self._body_mask(vol, mask, qa)
        # The MR's own body mask fits its grey-level mapping; one found for masking is the same mask.
        source_mapping = self.source_mapping(vol, body if automatic == "mr" else None)
        axis = 0 if vol.is_2d else self.axis
        spacing_zyx = (vol.spacing[2], vol.spacing[1], vol.spacing[0])
        spacing_hw = tuple(float(s) for a, s in enumerate(spacing_zyx) if a != axis)
        x = np.moveaxis(source_mapping.forward(vol.array), axis, 0)
        y = self._translate_stack(x, spacing_hw, self.runner, progress)
        synthetic = np.moveaxis(self.output_mapping.inverse(y), 0, axis)
        if body is not None and mask is not None:
            synthetic[~body] = self.air_value()
        result = vol.with_array(np.ascontiguousarray(synthetic, dtype=np.float32), source_dtype="float32")
        if not qa:
            return result
        reconstruction = self._translate_stack(y, spacing_hw, self._backward_runner(), progress)
        error = np.abs(source_mapping.inverse(reconstruction) - source_mapping.inverse(x))
        error = np.ascontiguousarray(np.moveaxis(error, 0, axis), dtype=np.float32)
        summary = self._qa_summary(error, body, axis, qa_threshold, source_mapping)
        return QAResult(result, vol.with_array(error, source_dtype="float32"), summary)

    def source_mapping(self, vol: Volume, mr_body: np.ndarray | None = None) -> Mapping:
        """The input's mapping to [-1, 1]; MR is fitted on this volume as in training, inside its
        automatic body mask (``mr_body`` when it is already known)."""
        mapping = self.input_mapping
        if isinstance(mapping, MRPercentile):
            from synthct.data.mask import body_mask

            return mapping.fit(vol.array, body_mask(vol.array, "mr") if mr_body is None else mr_body)
        return mapping

    def air_value(self) -> float:
        if self.target == "ct" and isinstance(self.output_mapping, CTWindow):
            return CT_AIR_HU
        return float(min(0.0, float(self.output_mapping.inverse(np.float32(-1.0)))))

    def spatial_mode(self, shape_hw: tuple[int, int], spacing_hw: tuple[float, float]) -> str:
        """"fit" or "native" for slices of ``shape_hw`` pixels (see the module docstring)."""
        if self.resample != "auto":
            return self.resample
        if self.trained_resize != "fit":
            return "native"
        from synthct.data.slices import fit_layout

        new_h, new_w, _, _ = fit_layout(shape_hw, spacing_hw, self.size)
        scales = (new_h / shape_hw[0], new_w / shape_hw[1])
        return "native" if all(1 / FIT_SCALE_TOLERANCE <= s <= FIT_SCALE_TOLERANCE for s in scales) else "fit"

    # ------------------------------------------------------------------ slices

    def _translate_stack(self, x: np.ndarray, spacing_hw: tuple[float, float], runner: Runner,
                         progress) -> np.ndarray:
        """(n, H, W) model-range slices -> (n, H, W) model-range translations."""
        from numpy.lib.stride_tricks import sliding_window_view

        n = x.shape[0]
        half = self.slices // 2
        padded = np.pad(x, ((half, half), (0, 0), (0, 0)), mode="edge") if half else x
        windows = sliding_window_view(padded, self.slices, axis=0)  # (n, H, W, k), a view
        mode = self.spatial_mode(x.shape[1:], spacing_hw)
        out = np.empty(x.shape, np.float32)
        for start in range(0, n, self.batch_size):
            batch = np.array(windows[start:start + self.batch_size].transpose(0, 3, 1, 2), dtype=np.float32,
                             order="C")  # a writable copy: the window view is read-only
            y = self._fit(batch, spacing_hw, runner) if mode == "fit" else self._native(batch, runner)
            out[start:start + len(batch)] = y[:, y.shape[1] // 2]
            if progress is not None:
                progress(len(batch))
        return out

    def _run_padded(self, batch: np.ndarray, runner: Runner, tile: int | None = None) -> np.ndarray:
        """Pad H, W up to the network's stride multiple (reflection), run (in tiles if given), crop back."""
        h, w = batch.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            reflect = ph < h and pw < w
            pad = ((0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
            batch = np.pad(batch, pad, mode="reflect") if reflect else np.pad(batch, pad, constant_values=-1.0)
        y = runner(batch) if tile is None else run_tiled(batch, runner, tile)
        return y[..., ph // 2: ph // 2 + h, pw // 2: pw // 2 + w]

    def _native(self, batch: np.ndarray, runner: Runner) -> np.ndarray:
        h, w = batch.shape[-2:]
        if self.tile == 0 or (self.tile is None and h * w <= TILE_AUTO_PIXELS):
            return self._run_padded(batch, runner)
        tile = self.tile or DEFAULT_TILE
        tile = max(self.multiple, math.ceil(tile / self.multiple) * self.multiple)
        if h <= tile and w <= tile:
            return self._run_padded(batch, runner)
        return self._run_padded(batch, runner, tile)

    def _fit(self, batch: np.ndarray, spacing_hw: tuple[float, float], runner: Runner) -> np.ndarray:
        """The training transform (data.slices.fit_to_square: longest physical side to ``size``,
        square pixels, centred on an air-padded square); the output is cropped and resized back
        to the input grid."""
        import torch
        import torch.nn.functional as F

        from synthct.data.slices import fit_layout

        h, w = batch.shape[-2:]
        new_h, new_w, top, left = fit_layout((h, w), spacing_hw, self.size)
        x = F.interpolate(torch.from_numpy(batch), size=(new_h, new_w), mode="bilinear", antialias=True,
                          align_corners=False)
        square = torch.full((*x.shape[:2], self.size, self.size), -1.0)
        square[..., top:top + new_h, left:left + new_w] = x.clamp_(-1.0, 1.0)
        y = torch.from_numpy(np.ascontiguousarray(self._run_padded(square.numpy(), runner)))
        y = F.interpolate(y[..., top:top + new_h, left:left + new_w], size=(h, w), mode="bilinear",
                          antialias=True, align_corners=False)
        return y.clamp_(-1.0, 1.0).numpy()

    # ------------------------------------------------------------------ masks and QA

    def _body_mask(self, vol: Volume, mask, qa: bool) -> tuple[np.ndarray | None, str | None]:
        """The mask to apply (or, for QA, to summarise in) and, when it was found automatically,
        the modality it was found for."""
        if isinstance(mask, np.ndarray):
            if mask.shape != vol.array.shape:
                raise SynthctError(f"mask shape {mask.shape} does not match the image {vol.array.shape}",
                                   vol.path or None)
            return mask.astype(bool), None
        if mask == "auto" or (mask is None and qa):
            from synthct.data.mask import body_mask

            modality = {CTWindow: "ct", EightBit: "8bit"}.get(type(self.input_mapping), "mr")
            return body_mask(vol.array, modality), modality
        if mask is not None:
            raise SynthctError(f"mask must be a boolean array, 'auto' or 'none', got {mask!r}")
        return None, None

    def _augmented(self, runner: Runner) -> Runner:
        return FlipAveraged(runner) if self.tta == "flip" else runner

    def _backward_runner(self) -> Runner:
        if self._backward is not None:
            return self._backward
        other = OPPOSITE[self.direction]
        ref = self.qa_model or _opposite_model_ref(self.model_ref, self.direction)
        if ref is None:
            raise SynthctError(f"cycle QA needs the {other} generator of the same run; none found next to the model "
                               "(give the run folder)", self.model_ref)
        backend = "onnxruntime" if Path(ref).suffix.lower() == ".onnx" else "torch"
        runner, meta = load_runner(ref, other, backend, self.device, self.precision)
        if int(meta.get("slices", 1)) != self.slices:
            raise SynthctError(f"the {other} generator takes {meta.get('slices')} slices, "
                               f"the {self.direction} one {self.slices}; not the same run", ref)
        self._backward = self._augmented(runner)
        return self._backward

    def _qa_summary(self, error: np.ndarray, body: np.ndarray, axis: int, threshold: float | None,
                    mapping: Mapping) -> QASummary:
        extra = {"direction": self.direction, "model": self.meta.get("model"), "step": self.meta.get("step"),
                 "epoch": self.meta.get("epoch"), "slicing_axis": axis, "tta": self.tta}
        return qa_summary(error, body, axis, threshold, mapping, extra)


def read_mask(path: str | Path, vol: Volume) -> np.ndarray:
    """A body mask file (any readable format, non-zero = body) that must match ``vol``'s grid."""
    from synthct.io.image import read_image

    mask_vol = read_image(path)
    if mask_vol.array.shape != vol.array.shape:
        raise SynthctError(f"mask shape {mask_vol.array.shape} does not match the image {vol.array.shape}", path)
    if not vol.is_2d and not mask_vol.same_geometry(vol, tol=1e-3):
        raise SynthctError("mask geometry (spacing, origin or direction) differs from the image's", path)
    return mask_vol.array > 0
