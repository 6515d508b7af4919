"""Mutated inputs to every reader and the config loader end in a clean SynthctError or a sane read.

Reads run in a worker subprocess (benchmarks/fuzz_readers.py): a segfault or hang in SimpleITK
is reported as a failure naming the mutation instead of killing pytest. The worker refuses
headers above 2**24 voxels and caps its address space, so a header that slipped past a size
check fails loudly instead of allocating gigabytes. Longer runs:
``python benchmarks/fuzz_readers.py --minutes 10``.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

HARNESS_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_readers.py"
_spec = importlib.util.spec_from_file_location("fuzz_readers", HARNESS_PATH)
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_readers"] = fuzz
_spec.loader.exec_module(fuzz)

EXAMPLES_PER_FORMAT = 25
FUZZ_SETTINGS = settings(max_examples=EXAMPLES_PER_FORMAT, deadline=None, derandomize=True, database=None)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return fuzz.make_seeds(tmp_path_factory.mktemp("fuzz") / "seeds")


@pytest.fixture(scope="module")
def worker():
    reader = fuzz.ReaderWorker(timeout_s=300)
    yield reader
    reader.close()


_case_numbers = itertools.count()


def _read_mutated(seeds, worker, fmt, mutation) -> dict:
    case_dir = seeds["npy"].parents[1].parent / "cases" / f"{next(_case_numbers):05d}"
    target = fuzz.make_case(seeds, fmt, mutation, case_dir)
    return worker.read(target)


def _assert_clean(result, fmt, mutation):
    assert result["outcome"] in fuzz.PASSING, f"{fmt} {mutation!r}: {result['outcome']}: {result['detail']}"


offsets = st.one_of(st.integers(0, 400), st.integers(0, 2**20))
blobs = st.one_of(st.binary(min_size=1, max_size=16),
                  st.sampled_from(fuzz.INTERESTING_TEXT).map(lambda t: t.encode("latin-1")[:64] or b"\0"))
byte_mutations = st.one_of(
    st.tuples(st.just("flip"), offsets, st.integers(0, 7)),
    st.tuples(st.just("truncate"), offsets),
    st.tuples(st.sampled_from(["insert", "overwrite"]), offsets, blobs),
)
nifti_edits = st.sampled_from(sorted(fuzz.NIFTI_FIELDS)).flatmap(
    lambda field: st.tuples(
        st.just("nifti"), st.just(field),
        st.sampled_from(fuzz.INTERESTING_FLOATS) if fuzz.NIFTI_FIELDS[field][0] == "f4"
        else st.sampled_from(fuzz.INTERESTING_INTS)))
meta_edits = st.tuples(st.just("meta"), st.sampled_from(fuzz.META_KEYS), st.sampled_from(fuzz.INTERESTING_TEXT))
nrrd_edits = st.tuples(st.just("nrrd"), st.sampled_from(fuzz.NRRD_KEYS), st.sampled_from(fuzz.INTERESTING_TEXT))
dicom_edits = st.sampled_from(sorted(fuzz.DICOM_FIELDS)).flatmap(
    lambda key: st.tuples(st.just("dicom"), st.just(key), st.sampled_from(fuzz.DICOM_FIELDS[key])))
png_edits = st.tuples(st.just("png"), st.sampled_from(sorted(fuzz.PNG_FIELDS)), st.sampled_from(fuzz.INTERESTING_INTS))
tiff_edits = st.tuples(st.just("tiff"), st.sampled_from(sorted(fuzz.TIFF_TAGS)), st.sampled_from(fuzz.INTERESTING_INTS))
npy_edits = st.tuples(st.just("npy"), st.sampled_from(fuzz.NPY_HEADERS))

MUTATIONS = {
    "nii": byte_mutations | nifti_edits,
    "nii.gz": byte_mutations | nifti_edits,
    "mha": byte_mutations | meta_edits,
    "mhd": byte_mutations | meta_edits | st.tuples(st.just("companion"), byte_mutations),
    "nrrd": byte_mutations | nrrd_edits,
    "nhdr": byte_mutations | nrrd_edits | st.tuples(st.just("companion"), byte_mutations),
    "dicom": byte_mutations | dicom_edits,
    "dicom-series": st.tuples(st.just("slice"), st.integers(0, 2), byte_mutations | dicom_edits),
    "png": byte_mutations | png_edits,
    "tiff": byte_mutations | tiff_edits,
    "npy": byte_mutations | npy_edits,
}


@pytest.mark.parametrize("fmt", fuzz.FORMATS)
def test_mutated_inputs_end_in_clean_error_or_sane_read(seeds, worker, fmt):
    @FUZZ_SETTINGS
    @given(mutation=MUTATIONS[fmt])
    def check(mutation):
        try:
            result = _read_mutated(seeds, worker, fmt, mutation)
        except Exception:  # noqa: BLE001 - pydicom cannot write some edits; nothing to read then
            if mutation[0] in ("dicom", "slice"):
                return
            raise
        _assert_clean(result, fmt, mutation)

    check()


@pytest.mark.parametrize("fmt", fuzz.FORMATS)
def test_unmutated_seeds_read_as_finite_float32(seeds, worker, fmt):
    result = worker.read(seeds[fmt])
    assert result["outcome"] == "read", result


@pytest.fixture(scope="module")
def production_limit_worker():
    """Reads with the default MAX_VOXELS (2**30): absurd headers must be refused by the check."""
    reader = fuzz.ReaderWorker(timeout_s=300, max_voxels=None)
    yield reader
    reader.close()


ABSURD_HEADERS = [
    ("nii", [("nifti", "dim1", 32767), ("nifti", "dim2", 32767), ("nifti", "dim3", 32767)]),
    ("nii.gz", [("nifti", "dim1", 32767), ("nifti", "dim2", 32767), ("nifti", "dim3", 32767)]),
    ("mha", [("meta", "DimSize", "100000 100000 100000")]),
    ("mhd", [("meta", "DimSize", "100000 100000 100000")]),
    ("nrrd", [("nrrd", "sizes", "100000 100000 100000")]),
    ("png", [("png", "width", 100000), ("png", "height", 100000)]),
    ("tiff", [("tiff", "ImageWidth", 100000), ("tiff", "ImageLength", 100000)]),
    ("npy", [("npy", fuzz.NPY_HEADERS[0])]),
    ("dicom", [("dicom", "Rows", 65535), ("dicom", "Columns", 65535)]),
]


@pytest.mark.parametrize("fmt, edits", ABSURD_HEADERS, ids=[fmt for fmt, _ in ABSURD_HEADERS])
def test_absurd_header_sizes_are_refused_before_allocating(seeds, production_limit_worker, tmp_path, fmt, edits):
    target = fuzz.make_case(seeds, fmt, edits[0], tmp_path / "case")
    for edit in edits[1:]:
        fuzz.mutate_file(target, edit)
    result = production_limit_worker.read(target)
    assert result["outcome"] == "refused", result
    # .npy is memory-mapped: a shape larger than the file is refused by the mapping, not allocated.
    refused_early = "refusing to allocate" in result["detail"] or (
        fmt == "npy" and "greater than file size" in result["detail"])
    assert refused_early and str(target) in result["detail"], result


def _outside_raw(seeds) -> Path:
    return seeds["npy"].parents[1] / "outside.raw"


@pytest.mark.parametrize("fmt", ["mha", "mhd", "nhdr"])
@pytest.mark.parametrize("where", ["/etc/passwd", "../outside.raw", "ABSOLUTE", "sub/../../outside.raw",
                                   "..\\outside.raw", "../slice%03d.raw 1 4 1"])
def test_detached_data_file_outside_the_header_folder_is_refused(seeds, worker, tmp_path, fmt, where):
    where = str(_outside_raw(seeds)) if where == "ABSOLUTE" else where
    edit = ("nrrd", "data file", where) if fmt == "nhdr" else ("meta", "ElementDataFile", where)
    target = fuzz.make_case(seeds, fmt, edit, tmp_path / "case")
    result = worker.read(target)
    assert result["outcome"] == "refused", result
    assert "outside its folder" in result["detail"]


def test_listed_data_files_outside_the_folder_are_refused(seeds, worker, tmp_path):
    target = fuzz.make_case(seeds, "mhd", ("meta", "ElementDataFile", "LIST"), tmp_path / "case")
    target.write_text(target.read_text() + "seed.raw\n../outside.raw\n")
    result = worker.read(target)
    assert result["outcome"] == "refused" and "outside its folder" in result["detail"], result


def test_data_file_in_a_subfolder_still_reads(seeds, worker, tmp_path):
    target = fuzz.make_case(seeds, "mhd", ("meta", "ElementDataFile", "data/seed.raw"), tmp_path / "case")
    (target.parent / "data").mkdir()
    (target.parent / "seed.raw").rename(target.parent / "data" / "seed.raw")
    assert worker.read(target)["outcome"] == "read"


# ---------------------------------------------------------------- config loader (pure Python, in-process)

yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
yaml_documents = st.recursive(
    yaml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["data", "model", "train", "size", "lr", "ct_window", "epochs", "flip"]) | st.text(max_size=8),
        inner, max_size=4),
    max_leaves=12,
)
config_mutations = st.one_of(
    byte_mutations,
    st.tuples(st.just("insert"), st.integers(0, 2000), st.sampled_from(fuzz.CONFIG_INSERTS)),
)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(mutation=config_mutations)
def test_mutated_config_yaml_is_loaded_or_refused(tmp_path_factory, mutation):
    folder = tmp_path_factory.mktemp("cfg")
    result = fuzz.judge_config(fuzz.mutate_bytes(fuzz.config_seed(), mutation), folder)
    assert result["outcome"] in fuzz.PASSING, f"{mutation!r}: {result['detail']}"


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(document=yaml_documents, section=st.sampled_from(["data", "model", "train", None]))
def test_arbitrary_yaml_structures_are_loaded_or_refused(tmp_path_factory, document, section):
    folder = tmp_path_factory.mktemp("cfg")
    text = yaml.safe_dump(document if section is None else {section: document}).encode()
    result = fuzz.judge_config(text, folder)
    assert result["outcome"] in fuzz.PASSING, f"{text!r}: {result['detail']}"


def test_python_object_tags_in_config_are_refused_not_executed(tmp_path):
    marker = tmp_path / "PWNED"
    text = f"data: !!python/object/apply:os.system ['touch {marker}']\n".encode()
    result = fuzz.judge_config(text, tmp_path)
    assert result["outcome"] == "refused" and not marker.exists()


def test_deeply_nested_config_is_a_clean_error(tmp_path):
    result = fuzz.judge_config(b"data: " + b"[" * 20000, tmp_path)
    assert result["outcome"] == "refused", result
    assert "nested too deeply" in result["detail"] and "\n" not in result["detail"]
