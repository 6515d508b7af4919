"""synthct pair: pseudo pairs from unpaired data, by registering other subjects' CTs onto each MR."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

HELP = ("pair every MR with a synthetic CT fused from other subjects' CTs registered onto it "
        "(multi-atlas; writes PAIRS/mr/, PAIRS/ct/ and PAIRS/pairs.csv for `synthct train --pairs PAIRS`)")

CSV_COLUMNS = ("name", "mr", "subject", "mutual_information", "body_dice", "cts", "cts_mutual_information",
               "registered")


def add_arguments(parser) -> None:
    parser.add_argument("--mr", required=True, metavar="DIR", help="folder (or file) of MR images or volumes")
    parser.add_argument("--ct", required=True, metavar="DIR", help="folder (or file) of CTs to register onto them")
    parser.add_argument("--out", required=True, metavar="PAIRS",
                        help="output folder: PAIRS/mr/NAME (the MR), PAIRS/ct/NAME (its fused CT on the MR's "
                             "grid, air outside the CTs' field of view) and PAIRS/pairs.csv")
    parser.add_argument("--subjects", metavar="CSV",
                        help="CSV with columns file,subject (file: an image's file name, MR or CT): no MR is "
                             "paired with a CT of its own subject; without it every CT is a candidate")
    parser.add_argument("--k", type=int, default=3, metavar="K", help="registered CTs fused per MR, by voxel-wise median "
                                                         "(default 3)")
    parser.add_argument("--candidates", type=int, default=6, metavar="N",
                        help="CTs registered per MR, those whose body outline matches best (default 6)")
    parser.add_argument("--workers", type=int, default=2, metavar="N", help="registrations run in parallel (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the registrations' metric sampling")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def _check_numbers(args) -> None:
    from synthct.errors import SynthctError

    for flag, value in (("--k", args.k), ("--candidates", args.candidates), ("--workers", args.workers)):
        if value < 1:
            raise SynthctError(f"{flag} must be at least 1, got {value}")
    if args.k > args.candidates:
        raise SynthctError(f"--k ({args.k}) cannot exceed --candidates ({args.candidates})")
    if args.seed < 0:
        raise SynthctError(f"--seed must be 0 or more, got {args.seed}")


def read_subjects(path: str | Path) -> dict[str, str]:
    """file name -> subject, from a CSV with columns file and subject."""
    from synthct.errors import SynthctError

    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SynthctError(f"cannot read the subjects CSV ({getattr(exc, 'strerror', None) or exc})", path) from None
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"file", "subject"} <= {name.strip() for name in reader.fieldnames}:
        raise SynthctError(f"the subjects CSV needs columns file and subject, found {reader.fieldnames or 'none'}",
                           path)
    subjects: dict[str, str] = {}
    for line, row in enumerate(reader, start=2):
        row = {(key or "").strip(): (value or "").strip() for key, value in row.items()}
        name, subject = row["file"], row["subject"]
        if not name or not subject:
            raise SynthctError(f"line {line}: empty file or subject", path)
        if subjects.setdefault(name, subject) != subject:
            raise SynthctError(f"line {line}: {name} is listed under two subjects", path)
    return subjects


def _subject_of(path: Path, subjects: dict[str, str] | None, csv_path) -> str:
    """The subject of an image: from the CSV, or the image itself without one."""
    from synthct.errors import SynthctError

    if subjects is None:
        return str(path)
    if path.name not in subjects:
        raise SynthctError(f"{path.name} is not listed in the subjects CSV", csv_path)
    return subjects[path.name]


def _storage_dtype(array, source_dtype: str) -> str:
    """The MR's own stored type when its values fit it unchanged, float32 otherwise."""
    import numpy as np

    kind = np.dtype(source_dtype).kind
    return source_dtype if kind in "iu" and np.array_equal(array, np.rint(array)) else "float32"


def run(args) -> int:
    from tqdm import tqdm

    from synthct.errors import SynthctError
    from synthct.io.atomic import atomic_write_text, refuse_existing
    from synthct.io.formats import image_stem
    from synthct.io.image import list_images, output_suffix, read_image, write_image
    from synthct.registration.atlas import image_of, outline, preselect, synthesise

    _check_numbers(args)
    subjects = read_subjects(args.subjects) if args.subjects else None
    mr_paths, ct_paths = list_images(args.mr), list_images(args.ct)
    for folder, found in ((args.mr, mr_paths), (args.ct, ct_paths)):
        if not found:
            raise SynthctError("no images found", folder)

    # Every CT is read once here: bad files stop the run before any registration, and the
    # outlines serve every MR's pre-selection.
    cts, kinds, ct_dims = {}, set(), set()
    for path in ct_paths:
        ct = image_of(read_image(path), "ct")
        kinds.add(ct.kind)
        ct_dims.add(ct.volume.is_2d)
        cts[str(path)] = (_subject_of(path, subjects, args.subjects), outline(ct))
    if len(kinds) > 1:
        raise SynthctError("the CTs mix HU volumes and 8-bit pictures; give one kind", args.ct)
    if len(ct_dims) > 1:
        raise SynthctError("the CTs mix 2D pictures and 3D volumes; give one kind", args.ct)
    kind, ct_is_2d = kinds.pop(), ct_dims.pop()

    out = Path(args.out)
    jobs, rows = {}, {}
    for path in mr_paths:
        mr = image_of(read_image(path), "mr")
        if mr.volume.is_2d != ct_is_2d:
            raise SynthctError(f"a {'2D picture' if mr.volume.is_2d else '3D volume'} cannot be paired with "
                               f"{'2D' if ct_is_2d else '3D'} CTs", path)
        subject = _subject_of(path, subjects, args.subjects)
        others = {ct: ol for ct, (ct_subject, ol) in cts.items() if ct_subject != subject}
        if not others:
            raise SynthctError("every CT is of this MR's own subject; no CT to pair it with", path)
        suffix = output_suffix(mr.volume)
        if kind == "hu" and suffix == ".png":  # a PNG cannot hold HU
            suffix = ".nii.gz"
        name = image_stem(path.name) + suffix
        if any(row["name"] == name for row in rows.values()):
            raise SynthctError(f"two MRs would both be written as {name}; rename one", path)
        jobs[str(path)] = preselect(outline(mr), others, args.candidates)
        rows[str(path)] = {"name": name, "mr": str(path), "subject": subject,
                           "mr_dtype": _storage_dtype(mr.volume.array, mr.volume.source_dtype)}
    outputs = [out / folder / row["name"] for row in rows.values() for folder in ("mr", "ct")]
    refuse_existing(outputs + [out / "pairs.csv"], args.overwrite)

    tasks = sum(len(cts) for cts in jobs.values())
    bar = tqdm(total=tasks, unit="registration", desc="pair", disable=None, file=sys.stderr)

    def failed(mr: str, ct: str, why: str) -> None:
        tqdm.write(f"synthct: warning: {ct}: could not be registered onto {mr} ({why}); left out", file=sys.stderr)

    with bar:
        for mr_path, synthesis in synthesise(jobs, kind, args.k, args.seed, min(args.workers, tasks),
                                             on_registered=bar.update, on_failed=failed):
            row = rows[mr_path]
            mr = read_image(mr_path)
            write_image(mr.with_array(synthesis.array), out / "ct" / row["name"],
                        dtype="uint8" if kind == "8bit" else "int16", overwrite=args.overwrite)
            write_image(mr, out / "mr" / row["name"], dtype=row.pop("mr_dtype"), overwrite=args.overwrite)
            row.update(mutual_information=f"{synthesis.mutual_information:.4f}",
                       body_dice=f"{synthesis.body_dice:.4f}",
                       cts=";".join(Path(ct).name for ct in synthesis.cts),
                       cts_mutual_information=";".join(f"{mi:.4f}" for mi in synthesis.cts_mutual_information),
                       registered=synthesis.registered)

    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows.values(), key=lambda row: row["name"]))
    atomic_write_text(out / "pairs.csv", table.getvalue())
    print(f"paired {len(rows)} MR{'s' if len(rows) != 1 else ''} with fused CTs in {out} "
          f"(k={args.k} of up to {args.candidates} registered each); see {out / 'pairs.csv'}")
    return 0
