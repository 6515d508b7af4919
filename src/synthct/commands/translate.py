"""synthct translate: MR -> synthetic CT (or CT -> synthetic MR) for files, folders and DICOM series."""

from __future__ import annotations

import json
import sys
from pathlib import Path

HELP = "translate volumes or pictures with a trained generator (MR -> sCT in HU, or CT -> sMR)"

TARGET_TAG = {"mr2ct": "sct", "ct2mr": "smr"}
# The closing summary names this many failed inputs; each one has its own error line above it.
SUMMARY_LISTS_FAILURES = 10


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image/volume files or folders (a DICOM series folder is one input)")
    parser.add_argument("--model", help="run folder, generator .safetensors/.json, or an exported .onnx")
    parser.add_argument("--direction", required=True, choices=("mr2ct", "ct2mr"))
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--format", choices=("nifti", "mha", "mhd", "nrrd", "png", "tiff", "npy"),
                        help="output format (default: the input's own; NIfTI for DICOM inputs)")
    parser.add_argument("--dtype", choices=("int16", "float32", "uint8"),
                        help="output type (default: int16 for synthetic CT in HU, uint8 for 8-bit models, "
                             "float32 for synthetic MR)")
    parser.add_argument("--mask", default="auto",
                        help="body mask file (non-zero = body; one input only), 'auto' (the input's own body "
                             "mask, the default) or 'none': outside the body the output is air")
    parser.add_argument("--tta", default="auto", choices=("auto", "none", "flip"),
                        help="test-time augmentation: flip averages each slice's translation with the mirrored "
                             "translation of its mirror image (2 passes; models trained with data.flip); "
                             "auto (default): flip for models trained with flips, none otherwise")
    parser.add_argument("--resample", default="auto", choices=("auto", "native", "fit"),
                        help="native: translate at the input's pixel grid; fit: the training resize "
                             "(longest side to the training size) and back; auto: fit only when the "
                             "in-plane size differs from training by more than 25%% (default)")
    parser.add_argument("--tile", type=int, default=None,
                        help="translate slices in overlapping N x N tiles (0: never; default: only "
                             "slices above 1024 x 1024 pixels)")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--backend", choices=("torch", "onnxruntime"),
                        help="default: onnxruntime for .onnx models, torch otherwise")
    parser.add_argument("--onnx", metavar="FILE", help="exported ONNX generator to run with onnxruntime "
                                                       "(--model then only locates the run for --qa)")
    parser.add_argument("--dicom-out", metavar="DIR", help="also write each synthetic CT as a DICOM CT series "
                                                           "in DIR/<name>_sct/")
    parser.add_argument("--qa", action="store_true",
                        help="cycle-consistency QA: write <name>_cycle_error and <name>_qa.json")
    parser.add_argument("--qa-threshold", type=float, default=None,
                        help="flag slices whose mean cycle error (source units) exceeds this "
                             "(default: mean + 3 std over slices)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def input_stem(path: Path) -> str:
    from synthct.io.formats import image_stem
    from synthct.io.names import safe_name

    if path.is_dir():
        return safe_name(path.resolve().name, "input")
    return safe_name(image_stem(path.name) if path.is_file() else path.name, "input")


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files and DICOM series to translate, and (input, problem) for inputs that cannot be listed."""
    from synthct.errors import SynthctError
    from synthct.io.image import list_images

    found: list[Path] = []
    problems: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item)
        try:
            listed = list_images(path)
            if not listed:
                raise SynthctError("no images in folder", path)
        except SynthctError as exc:
            problems.append((item, str(exc)))
            continue
        found.extend(p for p in listed if p not in found)
    return found, problems


def _plan_outputs(inputs: list[Path], tag: str) -> list[tuple[Path, str, str]]:
    """(input, output stem, QA stem) for each input; made unique so two inputs never share an output."""
    seen: dict[str, int] = {}
    plan = []
    for path in inputs:
        name = input_stem(path)
        stem, qa_stem = f"{name}_{tag}", name
        if stem in seen:
            seen[stem] += 1
            stem, qa_stem = f"{stem}_{seen[stem]}", f"{name}_{seen[stem]}"
        else:
            seen[stem] = 1
        plan.append((path, stem, qa_stem))
    return plan


def _check_writable(path: Path, inputs: set[Path], overwrite: bool) -> None:
    from synthct.errors import SynthctError
    from synthct.io.atomic import refuse_existing

    if path.resolve() in inputs:
        raise SynthctError("output would replace an input; choose another --out", path)
    refuse_existing([path], overwrite)


def run(args) -> int:
    from tqdm import tqdm

    from synthct.errors import SynthctError
    from synthct.translate.translator import Translator

    if not args.model and not args.onnx:
        raise SynthctError("give the model: --model RUN_DIR|WEIGHTS or --onnx FILE")
    model_ref = args.onnx or args.model
    backend = args.backend or ("onnxruntime" if args.onnx or str(model_ref).lower().endswith(".onnx") else "torch")
    if args.dicom_out and args.direction != "mr2ct":
        raise SynthctError("--dicom-out writes synthetic CT series; it needs --direction mr2ct")
    inputs, problems = expand_inputs(args.inputs)
    if not inputs and len(problems) == 1:
        raise SynthctError(problems[0][1])
    if not inputs:
        raise SynthctError("no inputs to translate")
    mask_file = args.mask if args.mask not in (None, "auto", "none") else None
    if mask_file and len(inputs) > 1:
        raise SynthctError("a mask file fits one input; use --mask auto for several inputs", mask_file)

    translator = Translator(model_ref, args.direction, device=args.device, precision=args.precision,
                            batch_size=args.batch_size, backend=backend, resample=args.resample, tile=args.tile,
                            qa_model=args.model if args.onnx else None, tta=args.tta)
    if args.dicom_out and translator.eight_bit:
        raise SynthctError("--dicom-out needs a model trained in HU, not on 8-bit pictures")
    dtype = args.dtype or ("uint8" if translator.eight_bit else "int16" if translator.target == "ct" else "float32")
    resolved_inputs = {p.resolve() for p in inputs}
    failures = [f"{item}: {problem}" for item, problem in problems]
    for item, problem in problems:
        print(f"synthct: error: {problem}", file=sys.stderr)

    bar = tqdm(total=len(inputs), unit="volume", desc="translate", disable=None, file=sys.stderr)
    for path, stem, qa_stem in _plan_outputs(inputs, TARGET_TAG[args.direction]):
        try:
            _translate_one(translator, args, path, stem, qa_stem, dtype, mask_file, resolved_inputs)
        except SynthctError as exc:
            if len(inputs) == 1 and not problems:
                raise
            message = str(exc) if exc.path else f"{path}: {exc}"
            tqdm.write(f"synthct: error: {message}", file=sys.stderr)
            failures.append(message)
        bar.update(1)
    bar.close()
    done = len(inputs) - (len(failures) - len(problems))
    print(f"translated {done} of {len(inputs)} input{'s' if len(inputs) != 1 else ''} into {Path(args.out)}")
    return _report_failures(failures)


def _translate_one(translator, args, path: Path, stem: str, qa_stem: str, dtype: str, mask_file: str | None,
                   inputs: set[Path]) -> None:
    """Read, translate and write one input with its QA and DICOM outputs; every output is
    checked for a clash before any is written."""
    from tqdm import tqdm

    from synthct.errors import SynthctError
    from synthct.io.image import output_suffix, read_image
    from synthct.translate.qa import QAResult
    from synthct.translate.translator import read_mask

    vol = read_image(path)
    suffix = output_suffix(vol, args.format)
    if suffix == ".png" and vol.shape[0] != 1:
        raise SynthctError(f"PNG output holds one slice; this volume has {vol.shape[0]} (use --format nifti)", path)
    out_dir = Path(args.out)
    target = out_dir / f"{stem}{suffix}"
    planned = [target]
    if args.qa:
        planned += [out_dir / f"{qa_stem}_cycle_error{suffix}", out_dir / f"{qa_stem}_qa.json"]
    if args.dicom_out:
        planned.append(Path(args.dicom_out) / stem)
    for p in planned:
        _check_writable(p, inputs, args.overwrite)
    mask = read_mask(mask_file, vol) if mask_file else args.mask
    slices_bar = tqdm(total=_slice_count(vol, translator, args.qa), unit="slice", leave=False,
                      desc=path.name[:30], disable=None, file=sys.stderr)
    with slices_bar:
        result = translator.translate_volume(vol, mask=mask, qa=args.qa, qa_threshold=args.qa_threshold,
                                             progress=slices_bar.update)
    synthetic = result.synthetic if isinstance(result, QAResult) else result
    _write(synthetic, target, dtype, suffix, args.overwrite)
    if isinstance(result, QAResult):
        error_dtype = "uint8" if suffix == ".png" else "float32"
        _write(result.cycle_error, planned[1], error_dtype, suffix, args.overwrite)
        _write_qa_json(result, planned[2], path, target)
    if args.dicom_out:
        from synthct.io.dicom_out import write_ct_series

        source = vol if vol.dicom else None
        write_ct_series(synthetic, planned[-1], source, overwrite=args.overwrite)


def _report_failures(failures: list[str]) -> int:
    """The closing error line naming the failed inputs, and the exit status."""
    if not failures:
        return 0
    listed = "; ".join(failures[:SUMMARY_LISTS_FAILURES])
    if len(failures) > SUMMARY_LISTS_FAILURES:
        listed += f"; and {len(failures) - SUMMARY_LISTS_FAILURES} more (see the error lines above)"
    print(f"synthct: error: {len(failures)} input{'s' if len(failures) != 1 else ''} failed: {listed}",
          file=sys.stderr)
    return 2


def _slice_count(vol, translator, qa: bool) -> int:
    axis = 0 if vol.is_2d else translator.axis
    return vol.shape[axis] * (2 if qa else 1)


def _write(vol, path: Path, dtype: str, suffix: str, overwrite: bool) -> None:
    from synthct.io.image import write_image

    if suffix == ".png" and dtype not in ("uint8", "uint16"):
        from synthct.errors import SynthctError

        raise SynthctError(f"PNG output needs 8-bit pixels; this model writes {dtype} (use --format nifti)", path)
    write_image(vol, path, dtype=dtype, overwrite=overwrite)


def _write_qa_json(result, path: Path, source: Path, target: Path) -> None:
    from synthct.io.atomic import atomic_write_text

    summary = {"input": str(source), "output": str(target), **result.summary.to_dict()}
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
