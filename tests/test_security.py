"""Nothing in synthct unpickles, pickled models are refused unopened, and output names from
untrusted text (DICOM tags, file names) cannot escape the output folder."""

from __future__ import annotations

import ast
import pathlib
import pickle
from pathlib import Path

import numpy as np
import pytest

from synthct.cli import main
from synthct.io.image import write_image
from synthct.io.volume import Volume
from synthct.io.names import MAX_NAME_LENGTH, safe_name

SRC = Path(__file__).resolve().parents[1] / "src" / "synthct"

UNPICKLING_CALLS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "cPickle.loads",
                    "dill.load", "dill.loads", "joblib.load", "shelve.open", "marshal.load", "marshal.loads",
                    "yaml.unsafe_load", "yaml.full_load"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def unsafe_loads(source: str, filename: str = "<source>") -> list[str]:
    """Calls in ``source`` that could unpickle (or construct arbitrary objects), as 'file:line: call'."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        short = name.replace("numpy.", "np.")
        problem = None
        if name in UNPICKLING_CALLS or name.endswith(".Unpickler"):
            problem = name
        elif name.endswith("torch.load"):
            weights_only = _keyword(node, "weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                problem = f"{name} without weights_only=True"
        elif short == "np.load":
            allow = _keyword(node, "allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                problem = "np.load with allow_pickle other than False"
        elif name == "yaml.load":
            loader = _dotted(_keyword(node, "Loader") or ast.Name(id=""))
            if not loader.endswith(("SafeLoader", "CSafeLoader")):
                problem = "yaml.load without SafeLoader"
        if problem:
            found.append(f"{filename}:{node.lineno}: {problem}")
    return found


def _sources():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20, "source tree not found"
    return files


def test_no_unpickling_call_anywhere_in_the_source_tree():
    problems = [p for path in _sources() for p in unsafe_loads(path.read_text(encoding="utf-8"), str(path))]
    assert problems == []


def test_no_pickle_module_imported_and_no_textual_escape_hatch():
    # The AST check misses aliases (from torch import load as l); a plain text scan backs it up.
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in node.names} | {node.module for node in ast.walk(tree)
                                                if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & {"pickle", "cPickle", "dill", "shelve", "marshal", "joblib"}, path
        assert "allow_pickle=True" not in text.replace(" ", ""), path
        assert "weights_only=False" not in text.replace(" ", ""), path
        for line_number, line in enumerate(text.splitlines(), 1):
            if "torch.load(" in line:
                assert "weights_only=True" in line.replace(" ", ""), f"{path}:{line_number}"


@pytest.mark.parametrize("snippet", [
    "import torch\ntorch.load(f)",
    "import torch\ntorch.load(f, weights_only=False)",
    "import pickle\npickle.load(fh)",
    "import pickle\npickle.loads(b)",
    "import numpy as np\nnp.load(p, allow_pickle=True)",
    "import numpy\nnumpy.load(p, allow_pickle=flag)",
    "import yaml\nyaml.load(text, Loader=yaml.Loader)",
    "import yaml\nyaml.unsafe_load(text)",
])
def test_the_checker_flags_unsafe_loads(snippet):
    assert len(unsafe_loads(snippet)) == 1


@pytest.mark.parametrize("snippet", [
    "import torch\ntorch.load(f, weights_only=True)",
    "import numpy as np\nnp.load(p, mmap_mode='r', allow_pickle=False)",
    "import numpy as np\nnp.load(p)",
    "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
])
def test_the_checker_passes_safe_loads(snippet):
    assert unsafe_loads(snippet) == []


# ---------------------------------------------------------------- pickled models are refused unopened

class _TouchOnUnpickle:
    """Unpickling this object creates the marker file: proof that something unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _hostile_models(folder: Path, marker: Path) -> list[Path]:
    import torch

    payload = {"state_dict": _TouchOnUnpickle(marker)}
    models = []
    for name in ("evil.pkl", "evil.pth", "disguised.bin"):
        models.append(folder / name)
        models[-1].write_bytes(pickle.dumps(payload))
    models.append(folder / "evil.pt")
    torch.save(payload, models[-1])
    run = folder / "run"
    run.mkdir()
    torch.save(payload, run / "latest_net_G_A.pth")  # a pytorch-CycleGAN-style run folder
    models.append(run)
    return models


@pytest.fixture
def hostile(tmp_path):
    marker = tmp_path / "UNPICKLED"
    # Self-check: the payload really does create the marker when unpickled.
    pickle.loads(pickle.dumps(_TouchOnUnpickle(marker)))
    assert marker.exists()
    marker.unlink()
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    return marker, _hostile_models(models_dir, marker)


def test_pickled_models_are_refused_by_load_generator(hostile):
    from synthct.models.saved import load_generator
    from synthct.errors import SynthctError

    marker, models = hostile
    for model in models:
        with pytest.raises(SynthctError, match="pickle"):
            load_generator(model, "mr2ct")
    assert not marker.exists()


def test_pickled_models_given_to_translate_are_one_line_refusals(hostile, tmp_path, capsys):
    marker, models = hostile
    source = write_image(Volume(array=np.zeros((2, 8, 8), np.float32)), tmp_path / "mr.nii.gz")
    for model in models:
        out = tmp_path / f"out_{model.name}"
        code = main(["translate", "--model", str(model), "--direction", "mr2ct", str(source), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("synthct: error:") and "\n" not in err, err
        assert "pickle" in err and str(model) in err
        assert not out.exists() or not any(out.iterdir())
    assert not marker.exists()


# ---------------------------------------------------------------- safe names

HOSTILE_NAMES = ["../../etc/passwd", "/abs/path", "a/b\\c", "..", ".", "", "   ", "...hidden", "-rf",
                 "nul\x00byte", "C:\\Windows\\system32", "Ünïcödé Sériès", "頭部 CT", "x" * 500, "CON", "a" * 99 + "/..",
                 "~/.ssh/id_rsa", "name\nwith\nnewlines", "%2e%2e%2fetc", "..\\..\\boot.ini"]


@pytest.mark.parametrize("text", HOSTILE_NAMES)
def test_safe_name_is_one_safe_component(text, tmp_path):
    name = safe_name(text, "series")
    assert name and len(name) <= MAX_NAME_LENGTH
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    assert not name.startswith((".", "-")) and name not in (".", "..")
    assert name.split(".")[0].upper() not in ("CON", "NUL")
    # Joined to an output folder it stays a direct child of that folder.
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_safe_name_keeps_ordinary_names_and_transliterates_accents():
    assert safe_name("T1_brain-01.v2", "x") == "T1_brain-01.v2"
    assert safe_name("Ünïcödé Sériès", "x") == "Unicode_Series"
    assert safe_name("../../etc/passwd", "x") == "etc_passwd"
    assert safe_name("a/b\\c", "x") == "a_b_c"


def test_safe_name_falls_back_when_nothing_usable_remains():
    assert safe_name("..", "series") == "series"
    assert safe_name("", "PatientID 7") == "PatientID_7"
    assert safe_name("頭部", "") == "unnamed"
    assert safe_name("\x00", "../..") == "unnamed"
