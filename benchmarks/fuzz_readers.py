"""Mutation fuzzing of every image reader and the config loader.

Seeds are real files (written by synthct/SimpleITK/pydicom, plus pydicom's CT_small.dcm).
Each case applies one mutation (byte flip, truncation, insertion, overwrite, or a header-field
edit that knows the format) and reads the result in a separate worker process, so a segfault
or a hang in C++ code is caught and reported with the input that caused it.

A read passes when it ends in a one-line SynthctError naming the input, or in a finite
float32 (z, y, x) array of a sane shape. Anything else (another exception, a crash, a hang)
is a failure; failing inputs are kept under --keep for replay.

    python benchmarks/fuzz_readers.py --minutes 10 [--seed 0] [--keep fuzz-failures]

tests/test_fuzz_readers.py imports this module for the same seeds, mutations and worker.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import selectors
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

# The worker refuses headers above this many voxels; far below the production default so that
# a header that slips past a check cannot allocate gigabytes on a shared test machine.
WORKER_MAX_VOXELS = 2**24
WORKER_ADDRESS_SPACE = 6 * 2**30
READ_TIMEOUT_S = 20.0
# Fresh worker after this many reads: its address-space cap is meant to catch one absurd
# allocation, not the slow growth of thousands of reads in one process.
READS_PER_WORKER = 300

FORMATS = ("nii", "nii.gz", "mha", "mhd", "nrrd", "nhdr", "dicom", "dicom-series", "png", "tiff", "npy")

INTERESTING_INTS = (0, 1, -1, 2, 3, 4, 7, 8, 255, 256, 32767, -32768, 65535, 100000, 2**31 - 1, -(2**31))
INTERESTING_FLOATS = (0.0, -1.0, 1e-30, 1e30, 3.4e38, -3.4e38, float("nan"), float("inf"), float("-inf"))
INTERESTING_TEXT = (
    "", "0", "-1", "1", "100000 100000 100000", "100000", "-5 6 4", "5 6", "5 6 4 3 2", "nan nan nan",
    "inf 1 1", "1e308 1e308 1e308", "MET_DOUBLE", "MET_UCHAR", "MET_FLOAT_ARRAY", "MET_OTHER", "bogus",
    "/etc/passwd", "../outside.raw", "../../etc/shadow", "LIST", "slice%03d.raw 1 100000 1", "LOCAL",
    "True", "False", "x" * 4000, "\x00\xff", "gzip", "raw", "bzip2", "short", "double", "block",
)

# Header fields per format: name -> (kind, location); kinds say how a value is encoded.
NIFTI_FIELDS = {
    "sizeof_hdr": ("i4", 0), "datatype": ("i2", 70), "bitpix": ("i2", 72), "vox_offset": ("f4", 108),
    "scl_slope": ("f4", 112), "scl_inter": ("f4", 116), "qform_code": ("i2", 252), "sform_code": ("i2", 254),
    "quatern_b": ("f4", 256), "srow_x0": ("f4", 280),
    **{f"dim{i}": ("i2", 40 + 2 * i) for i in range(8)},
    **{f"pixdim{i}": ("f4", 76 + 4 * i) for i in range(8)},
}
META_KEYS = ("NDims", "DimSize", "ElementType", "ElementDataFile", "ElementNumberOfChannels", "ElementSpacing",
             "CompressedData", "CompressedDataSize", "HeaderSize", "BinaryDataByteOrderMSB", "TransformMatrix",
             "Offset", "ObjectType")
NRRD_KEYS = ("dimension", "sizes", "type", "encoding", "data file", "space directions", "space origin",
             "endian", "kinds", "byte skip", "line skip", "space")
DICOM_FIELDS = {
    "Rows": (0, 1, 2, 4096, 65535), "Columns": (0, 1, 2, 4096, 65535),
    "BitsAllocated": (0, 1, 7, 8, 12, 32, 64, 65535), "BitsStored": (0, 1, 17, 64, 65535),
    "HighBit": (0, 31, 65535), "SamplesPerPixel": (0, 2, 3, 255), "PixelRepresentation": (0, 1, 2),
    "NumberOfFrames": ("0", "-1", "100000", "abc"), "RescaleSlope": ("0", "nan", "inf", "1e308", "-1e308"),
    "RescaleIntercept": ("nan", "1e308", "-inf"), "PixelSpacing": (["0", "0"], ["nan", "1"], ["-1", "1e308"]),
    "ImagePositionPatient": (["nan", "0", "0"], ["1e308", "0", "0"]),
    "ImageOrientationPatient": (["0"] * 6, ["nan"] * 6, ["1", "0", "0", "1", "0", "0"]),
    "PhotometricInterpretation": ("RGB", "PALETTE COLOR", "YBR_FULL", "bogus"),
    "TransferSyntaxUID": ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5",
                          "1.2.840.10008.1.2.2", "1.2.3.4"),
}
PNG_FIELDS = {"width": ">I", "height": ">I", "bit_depth": ">B", "colour_type": ">B"}
TIFF_TAGS = {"ImageWidth": 256, "ImageLength": 257, "BitsPerSample": 258, "Compression": 259,
             "SamplesPerPixel": 277, "StripOffsets": 273, "StripByteCounts": 279, "SampleFormat": 339}
NPY_HEADERS = (
    "{'descr': '<i2', 'fortran_order': False, 'shape': (100000, 100000, 100000), }",
    "{'descr': '<i2', 'fortran_order': False, 'shape': (-1, 6, 5), }",
    "{'descr': '|O', 'fortran_order': False, 'shape': (4, 6, 5), }",
    "{'descr': '<f8', 'fortran_order': True, 'shape': (4, 6, 5), }",
    "{'descr': '<c16', 'fortran_order': False, 'shape': (4, 6, 5), }",
    "{'descr': [('a', '<i2')], 'fortran_order': False, 'shape': (4, 6, 5), }",
    "{'descr': '<i2', 'fortran_order': False, 'shape': (), }",
    "{'descr': '<i2', 'fortran_order': False, 'shape': (0, 6, 5), }",
    "{'descr': '<i2', 'fortran_order': False, 'shape': (2, 2, 6, 5), }",
    "__import__('os').system('touch PWNED')",
    "{'descr': 'S10', 'fortran_order': False, 'shape': (4, 6, 5), }",
)


# ---------------------------------------------------------------- seeds

def _seed_volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(-1000, 2000, size=(4, 6, 5)).astype(np.float32)


def make_seeds(folder: Path) -> dict[str, Path]:
    """One valid file (or folder) per format; a .raw outside every case folder for ../ tricks."""
    import pydicom
    from pydicom.data import get_testdata_file

    from synthct.io.image import Volume, write_image

    folder.mkdir(parents=True, exist_ok=True)
    vol = Volume(array=_seed_volume(), spacing=(0.7, 1.3, 3.1), origin=(-12.5, 40.25, 7.0))
    picture = Volume(array=np.arange(30, dtype=np.float32).reshape(1, 6, 5) * 8, is_2d=True)
    seeds = {}
    for fmt, suffix in (("nii", ".nii"), ("nii.gz", ".nii.gz"), ("mha", ".mha"), ("mhd", ".mhd"),
                        ("nrrd", ".nrrd"), ("nhdr", ".nhdr"), ("npy", ".npy")):
        sub = folder / fmt
        seeds[fmt] = write_image(vol, sub / f"seed{suffix}", dtype="int16")
    seeds["png"] = write_image(picture, folder / "png" / "seed.png", dtype="uint8")
    seeds["tiff"] = write_image(picture, folder / "tiff" / "seed.tif", dtype="uint16")
    ct_small = Path(get_testdata_file("CT_small.dcm"))
    (folder / "dicom").mkdir()
    seeds["dicom"] = Path(shutil.copy(ct_small, folder / "dicom" / "seed.dcm"))
    series = folder / "dicom-series" / "seed"
    series.mkdir(parents=True)
    base = pydicom.dcmread(ct_small)
    for z in range(3):
        base.SOPInstanceUID = f"{base.SOPInstanceUID.rsplit('.', 1)[0]}.{1000 + z}"
        base.file_meta.MediaStorageSOPInstanceUID = base.SOPInstanceUID
        base.InstanceNumber = z + 1
        base.ImagePositionPatient = [-158.0, -179.0, -75.0 + 5.0 * z]
        base.save_as(series / f"slice{z}.dcm")
    seeds["dicom-series"] = series
    # A valid data file just outside the case folders: a reader that follows ../outside.raw
    # would read it successfully, so only a refusal passes.
    raw = (seeds["mhd"].parent / "seed.raw").read_bytes()
    (folder / "outside.raw").write_bytes(raw)
    return seeds


# ---------------------------------------------------------------- mutations
# A mutation is a plain tuple, so hypothesis can build and shrink it and a failure prints it:
#   ("flip", offset, bit) ("truncate", keep) ("insert", offset, data) ("overwrite", offset, data)
#   ("nifti", field, value) ("meta", key, text) ("nrrd", key, text) ("dicom", keyword, value)
#   ("png", field, value) ("tiff", tag, value) ("npy", header_text)
#   ("companion", byte_mutation) for the data file of .mhd/.nhdr, ("slice", index, mutation) for series

def mutate_bytes(data: bytes, mutation: tuple) -> bytes:
    kind = mutation[0]
    n = max(len(data), 1)
    if kind == "flip":
        offset = mutation[1] % n
        if not data:
            return data
        return data[:offset] + bytes([data[offset] ^ (1 << (mutation[2] % 8))]) + data[offset + 1:]
    if kind == "truncate":
        return data[: mutation[1] % n]
    if kind == "insert":
        offset = mutation[1] % (len(data) + 1)
        return data[:offset] + mutation[2] + data[offset:]
    if kind == "overwrite":
        offset = mutation[1] % n
        return data[:offset] + mutation[2] + data[offset + len(mutation[2]):]
    raise ValueError(f"not a byte mutation: {mutation!r}")


def _edit_nifti(data: bytes, field: str, value) -> bytes:
    kind, offset = NIFTI_FIELDS[field]
    if kind == "f4":
        packed = struct.pack("<f", value)
    else:
        bits = 16 if kind == "i2" else 32
        packed = struct.pack("<h" if kind == "i2" else "<i", ((int(value) + 2 ** (bits - 1)) % 2**bits) - 2 ** (bits - 1))
    return data[:offset] + packed + data[offset + len(packed):]


def _split_text_header(data: bytes, is_end) -> tuple[list[str], bytes]:
    """Header lines and the bytes after the line for which is_end(line) holds."""
    lines, pos = [], 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end + 1
        line = data[pos:end].decode("latin-1").rstrip("\n")
        lines.append(line)
        pos = end
        if is_end(line):
            break
    return lines, data[pos:]


def _edit_meta(data: bytes, key: str, text: str) -> bytes:
    lines, rest = _split_text_header(data, lambda ln: ln.startswith("ElementDataFile"))
    new = f"{key} = {text}"
    for i, line in enumerate(lines):
        if line.split("=")[0].strip() == key:
            lines[i] = new
            break
    else:
        lines.insert(max(len(lines) - 1, 0), new)
    return ("\n".join(lines) + "\n").encode("latin-1") + rest


def _edit_nrrd(data: bytes, key: str, text: str) -> bytes:
    lines, rest = _split_text_header(data, lambda ln: ln == "")
    body = [ln for ln in lines if ln != ""]
    new = f"{key}: {text}"
    for i, line in enumerate(body):
        if line.split(":")[0].strip() in (key, key.replace(" ", "")):
            body[i] = new
            break
    else:
        body.append(new)
    return ("\n".join(body) + "\n\n").encode("latin-1") + rest


def _edit_dicom(data: bytes, keyword: str, value) -> bytes:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if keyword == "TransferSyntaxUID":
        ds.file_meta.TransferSyntaxUID = value
    else:
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


def _edit_png(data: bytes, field: str, value: int) -> bytes:
    # IHDR follows the 8-byte signature: length, type, width, height, depth, colour, ...
    ihdr = bytearray(data[16:29])
    offsets = {"width": 0, "height": 4, "bit_depth": 8, "colour_type": 9}
    fmt = PNG_FIELDS[field]
    size = struct.calcsize(fmt)
    limit = 2 ** (8 * size)
    ihdr[offsets[field]: offsets[field] + size] = struct.pack(fmt, value % limit)
    # Recompute the CRC so the decoder trusts the edited header rather than rejecting it early.
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return data[:16] + bytes(ihdr) + crc + data[33:]


def _edit_tiff(data: bytes, tag: int, value: int) -> bytes:
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[ifd: ifd + 2])
    out = bytearray(data)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        entry_tag, entry_type = struct.unpack(order + "HH", data[entry: entry + 4])
        if entry_tag == tag:
            value_fmt = order + ("H" if entry_type == 3 else "I")
            size = struct.calcsize(value_fmt)
            out[entry + 8: entry + 8 + size] = struct.pack(value_fmt, value % 2 ** (8 * size))
    return bytes(out)


def _edit_npy(data: bytes, header_text: str) -> bytes:
    major = data[6]
    length_size = 2 if major == 1 else 4
    (header_len,) = struct.unpack("<H" if major == 1 else "<I", data[8: 8 + length_size])
    payload = data[8 + length_size + header_len:]
    header = header_text.encode("latin-1")
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


def mutate_file(path: Path, mutation: tuple) -> None:
    """Apply one mutation to the file at ``path`` in place."""
    kind = mutation[0]
    if kind == "companion":
        header = path.read_bytes()
        data_name = "seed.raw" if path.suffix == ".mhd" else _nrrd_data_file(header)
        target = path.parent / data_name
        if target.is_file():
            target.write_bytes(mutate_bytes(target.read_bytes(), mutation[1]))
        return
    data = path.read_bytes()
    gz = path.name.endswith(".nii.gz")
    if kind == "nifti":
        raw = gzip.decompress(data) if gz else data
        raw = _edit_nifti(raw, mutation[1], mutation[2])
        data = gzip.compress(raw, mtime=0) if gz else raw
    elif kind == "meta":
        data = _edit_meta(data, mutation[1], mutation[2])
    elif kind == "nrrd":
        data = _edit_nrrd(data, mutation[1], mutation[2])
    elif kind == "dicom":
        data = _edit_dicom(data, mutation[1], mutation[2])
    elif kind == "png":
        data = _edit_png(data, mutation[1], mutation[2])
    elif kind == "tiff":
        data = _edit_tiff(data, TIFF_TAGS[mutation[1]], mutation[2])
    elif kind == "npy":
        data = _edit_npy(data, mutation[1])
    else:
        data = mutate_bytes(data, mutation)
    path.write_bytes(data)


def _nrrd_data_file(header: bytes) -> str:
    for line in header.decode("latin-1").splitlines():
        key, _, value = line.partition(":")
        if key.strip().replace(" ", "") == "datafile":
            return value.strip().split()[0] if value.strip() else ""
    return ""


def make_case(seeds: dict[str, Path], fmt: str, mutation: tuple, case_dir: Path) -> Path:
    """Copy the seed of ``fmt`` (with companions) into ``case_dir``, mutate it, return what to read."""
    seed = seeds[fmt]
    case_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "dicom-series":
        target = case_dir / "series"
        shutil.copytree(seed, target)
        if mutation[0] == "slice":
            files = sorted(target.iterdir())
            mutate_file(files[mutation[1] % len(files)], mutation[2])
        return target
    for companion in seed.parent.iterdir():
        shutil.copy(companion, case_dir / companion.name)
    target = case_dir / seed.name
    mutate_file(target, mutation)
    return target


# ---------------------------------------------------------------- random mutations (long runs)

def random_byte_mutation(rng: random.Random) -> tuple:
    kind = rng.choice(("flip", "truncate", "insert", "overwrite"))
    offset = rng.choice((rng.randrange(0, 64), rng.randrange(0, 400), rng.randrange(0, 1 << 20)))
    if kind == "flip":
        return ("flip", offset, rng.randrange(8))
    if kind == "truncate":
        return ("truncate", offset)
    blob = rng.choice((bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16))),
                       b"\xff" * rng.randrange(1, 9), b"\x00" * rng.randrange(1, 9),
                       rng.choice(INTERESTING_TEXT).encode("latin-1")[:64]))
    return (kind, offset, blob)


def random_mutation(rng: random.Random, fmt: str) -> tuple:
    if fmt == "dicom-series":
        return ("slice", rng.randrange(3), random_mutation(rng, "dicom"))
    if rng.random() < 0.5:
        return random_byte_mutation(rng)
    if fmt in ("nii", "nii.gz"):
        field = rng.choice(sorted(NIFTI_FIELDS))
        value = rng.choice(INTERESTING_INTS) if NIFTI_FIELDS[field][0] != "f4" else rng.choice(INTERESTING_FLOATS)
        return ("nifti", field, value)
    if fmt in ("mha", "mhd"):
        if fmt == "mhd" and rng.random() < 0.3:
            return ("companion", random_byte_mutation(rng))
        return ("meta", rng.choice(META_KEYS), rng.choice(INTERESTING_TEXT))
    if fmt in ("nrrd", "nhdr"):
        if fmt == "nhdr" and rng.random() < 0.3:
            return ("companion", random_byte_mutation(rng))
        return ("nrrd", rng.choice(NRRD_KEYS), rng.choice(INTERESTING_TEXT))
    if fmt == "dicom":
        keyword = rng.choice(sorted(DICOM_FIELDS))
        return ("dicom", keyword, rng.choice(DICOM_FIELDS[keyword]))
    if fmt == "png":
        return ("png", rng.choice(sorted(PNG_FIELDS)), rng.choice(INTERESTING_INTS))
    if fmt == "tiff":
        return ("tiff", rng.choice(sorted(TIFF_TAGS)), rng.choice(INTERESTING_INTS))
    if fmt == "npy":
        return ("npy", rng.choice(NPY_HEADERS))
    return random_byte_mutation(rng)


# ---------------------------------------------------------------- checking a read

def judge(path: Path) -> dict:
    """Read ``path`` in this process and classify the outcome (used inside the worker)."""
    import traceback

    from synthct.errors import SynthctError
    from synthct.io.image import read_image

    try:
        vol = read_image(path)
    except SynthctError as exc:
        message = f"synthct: error: {exc}"
        if "\n" in message or exc.path is None:
            return {"outcome": "bad-error", "detail": f"not one line naming the input: {message!r}"}
        return {"outcome": "refused", "detail": message}
    except BaseException as exc:  # noqa: BLE001 - the fuzzer's job is to see every other exception
        return {"outcome": "unexpected", "detail": "".join(traceback.format_exception(exc))[-3000:]}
    array = vol.array
    problems = []
    if array.dtype != np.float32:
        problems.append(f"dtype {array.dtype}")
    if array.ndim != 3 or min(array.shape) < 1 or array.size > WORKER_MAX_VOXELS:
        problems.append(f"shape {array.shape}")
    if not np.isfinite(array).all():
        problems.append("non-finite voxels")
    if not (np.isfinite(vol.spacing).all() and np.isfinite(vol.origin).all()):
        problems.append(f"geometry spacing={vol.spacing} origin={vol.origin}")
    if problems:
        return {"outcome": "bad-read", "detail": "; ".join(problems)}
    return {"outcome": "read", "detail": f"{array.shape}"}


def worker_main() -> None:
    """Read one path per stdin line, answer one JSON line per path on stdout."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (WORKER_ADDRESS_SPACE, WORKER_ADDRESS_SPACE))
    out = sys.stdout
    sys.stdout = sys.stderr  # anything a library prints must not corrupt the protocol
    for line in sys.stdin:
        result = judge(Path(line.rstrip("\n")))
        out.write(json.dumps(result) + "\n")
        out.flush()


class ReaderWorker:
    """A reader subprocess that survives its own crashes: a dead or hung worker is replaced."""

    def __init__(self, timeout_s: float = READ_TIMEOUT_S, max_voxels: int | None = WORKER_MAX_VOXELS):
        """``max_voxels=None`` keeps synthct's production limit."""
        self.timeout_s = timeout_s
        self.max_voxels = max_voxels
        self.process: subprocess.Popen | None = None
        self.reads = 0

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ, OMP_NUM_THREADS="1", ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1")
        env.pop("SYNTHCT_MAX_VOXELS", None)
        if self.max_voxels is not None:
            env["SYNTHCT_MAX_VOXELS"] = str(self.max_voxels)
        return subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)

    def read(self, path: Path) -> dict:
        self.reads += 1
        if self.reads % READS_PER_WORKER == 0:
            self.close()
        if self.process is None or self.process.poll() is not None:
            self.process = self._start()
        proc = self.process
        try:
            proc.stdin.write(f"{path}\n")
            proc.stdin.flush()
        except BrokenPipeError:
            return self._died(proc)
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        ready = selector.select(self.timeout_s)
        selector.close()
        if not ready:
            proc.kill()
            proc.wait()
            self.process = None
            return {"outcome": "hang", "detail": f"no answer within {self.timeout_s:.0f} s"}
        line = proc.stdout.readline()
        if not line:
            return self._died(proc)
        return json.loads(line)

    def _died(self, proc: subprocess.Popen) -> dict:
        code = proc.wait()
        self.process = None
        return {"outcome": "crash", "detail": f"worker exited with {code} (negative: killed by signal)"}

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=10)
        self.process = None


PASSING = ("refused", "read")


# ---------------------------------------------------------------- config loader

def judge_config(text: bytes, folder: Path) -> dict:
    """Load mutated YAML in-process (pure Python: no crash can take the process down)."""
    import traceback

    from synthct.engine import load_config
    from synthct.errors import SynthctError

    path = folder / "config.yaml"
    path.write_bytes(text)
    try:
        load_config(path)
    except SynthctError as exc:
        if "\n" in str(exc) or exc.path is None:
            return {"outcome": "bad-error", "detail": repr(str(exc))}
        return {"outcome": "refused", "detail": str(exc)}
    except BaseException as exc:  # noqa: BLE001
        return {"outcome": "unexpected", "detail": "".join(traceback.format_exception(exc))[-3000:]}
    return {"outcome": "read", "detail": ""}


def config_seed() -> bytes:
    import yaml

    from synthct.config import RunConfig, config_to_dict

    return yaml.safe_dump(config_to_dict(RunConfig()), sort_keys=False).encode()


CONFIG_INSERTS = (b"[" * 5000, b"{a: " * 3000, b"&a [*a]", b"!!python/object:os.system ['touch PWNED']",
                  b"\t", b": :", b"\xff\xfe", b"data: {size: 1e400}", b"? [1, 2]\n: 3", b"*x", b"%YAML 9.9\n---")


def random_config_mutation(rng: random.Random) -> tuple:
    if rng.random() < 0.3:
        return ("insert", rng.randrange(0, 2000), rng.choice(CONFIG_INSERTS))
    return random_byte_mutation(rng)


# ---------------------------------------------------------------- long run

def run(minutes: float, seed: int, keep: Path | None) -> int:
    rng = random.Random(seed)
    counts: dict[str, dict[str, int]] = {}
    failures = []
    deadline = time.monotonic() + minutes * 60
    worker = ReaderWorker()
    with tempfile.TemporaryDirectory(prefix="synthct-fuzz-") as tmp:
        root = Path(tmp)
        seeds = make_seeds(root / "seeds")
        config_text = config_seed()
        case_number = 0
        while time.monotonic() < deadline:
            case_number += 1
            fmt = rng.choice(FORMATS + ("config",))
            case_dir = root / "cases" / f"{case_number:07d}"
            if fmt == "config":
                mutation = random_config_mutation(rng)
                case_dir.mkdir(parents=True)
                result = judge_config(mutate_bytes(config_text, mutation), case_dir)
                target = case_dir / "config.yaml"
            else:
                mutation = random_mutation(rng, fmt)
                try:
                    target = make_case(seeds, fmt, mutation, case_dir)
                except Exception as exc:  # noqa: BLE001 - a mutation that cannot be applied is skipped
                    shutil.rmtree(case_dir, ignore_errors=True)
                    counts.setdefault(fmt, {}).setdefault("mutation-not-applicable", 0)
                    counts[fmt]["mutation-not-applicable"] += 1
                    del exc
                    continue
                result = worker.read(target)
            tally = counts.setdefault(fmt, {})
            tally[result["outcome"]] = tally.get(result["outcome"], 0) + 1
            if result["outcome"] not in PASSING:
                failures.append((fmt, mutation, result))
                print(f"FAIL {fmt} {mutation!r}: {result['outcome']}: {result['detail'][-500:]}", flush=True)
                if keep is not None:
                    shutil.copytree(case_dir, keep / case_dir.name, dirs_exist_ok=True)
            shutil.rmtree(case_dir, ignore_errors=True)
    worker.close()
    total = sum(sum(t.values()) for t in counts.values())
    print(f"{total} cases in {minutes:g} min (seed {seed}), {len(failures)} failures")
    for fmt in sorted(counts):
        print(f"  {fmt:13s} " + ", ".join(f"{k} {v}" for k, v in sorted(counts[fmt].items())))
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="copy failing inputs here for replay")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main()
        return 0
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    return run(args.minutes, args.seed, args.keep)


if __name__ == "__main__":
    sys.exit(main())
