"""RegGAN, the supervised regression and semi-supervised CycleGAN (data.pairs) in the engine:
they resume bit for bit, export the generator alone, train without discriminators where they
have none, record the paired cases, and refuse options and data they cannot use in one line."""

import shutil

import pytest
import torch
import yaml

from synthct.cli import main
from synthct.engine.checkpoint import load_state
from synthct.engine.trainer import train
from synthct.errors import SynthctError
from synthct.models.registration import smoothness, warp
from synthct.models.saved import load_generator, sha256_of
from test_distributed import TINY_RUN, _two_ranks
from test_engine import _state_tensors, tiny_config
from test_train_cli import TINY, one_line_error

VARIANTS = {
    "reggan": {"name": "reggan", "pool_size": 50},
    "regression": {"name": "regression", "pool_size": 50, "ndf": 64},
    "cyclegan_pairs": {"name": "cyclegan"},
    "cyclegan_pairs_registered": {"name": "cyclegan", "register": True},
}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from synthct.data.phantom import write_phantoms

    root = tmp_path_factory.mktemp("phantoms")
    write_phantoms(2, root, size=(32, 32, 10))
    return root


def variant_config(root, variant, steps=6, **train):
    cfg = tiny_config(root, steps=steps, **train)
    for key, value in VARIANTS[variant].items():
        setattr(cfg.model, key, value)
    if variant.startswith("cyclegan"):
        cfg.data.pairs = str(root)
    return cfg


def test_warp_moves_by_the_field_in_pixels_and_a_shift_is_smooth():
    image = torch.arange(36.0).reshape(1, 1, 6, 6)
    assert torch.allclose(warp(image, torch.zeros(1, 2, 6, 6)), image)
    one_right = torch.zeros(1, 2, 6, 6)
    one_right[:, 0] = 1.0  # sample one pixel to the right: the image moves left
    assert torch.allclose(warp(image, one_right)[..., :-1], image[..., 1:])
    assert smoothness(one_right) == 0
    one_right[0, 1, 3, 3] = 2.0
    assert smoothness(one_right) > 0


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stop_and_resume_is_bitwise_identical_and_exports_the_generators_alone(phantoms, tmp_path, variant):
    cfg = variant_config(phantoms, variant, decay_start=0.5)
    straight = train(cfg, tmp_path / "straight", quiet=True)
    cfg.train.stop_at_step = 3
    assert train(cfg, tmp_path / "split", quiet=True).stopped == "step"
    assert train(cfg, tmp_path / "split", resume=True, quiet=True).steps == 6

    expected, resumed = _state_tensors(tmp_path / "straight"), _state_tensors(tmp_path / "split")
    assert expected.keys() == resumed.keys()
    for key, value in expected.items():
        assert torch.equal(value, resumed[key]) if isinstance(value, torch.Tensor) else value == resumed[key], key
    for direction, path in straight.generators.items():
        assert sha256_of(path) == sha256_of(tmp_path / "split" / path.name), direction
    # Only the translators ship; a registration network stays in the training state.
    assert set(straight.generators) == ({"mr2ct", "ct2mr"} if variant.startswith("cyclegan") else {"mr2ct"})
    generator, _ = load_generator(tmp_path / "straight", "mr2ct")
    assert generator.state_dict().keys() == straight.model.G.state_dict().keys()
    assert generator(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)
    registered = any(key.startswith("registration.") for key in straight.model.state_dict())
    assert registered == (variant in ("reggan", "cyclegan_pairs_registered"))


def test_regression_trains_without_discriminators(phantoms, tmp_path):
    result = train(variant_config(phantoms, "regression", steps=4), tmp_path, quiet=True)
    assert list(result.model.discriminator_parameters()) == []
    assert set(result.losses) == {"l1"} and result.losses["l1"] > 0
    state, _ = load_state(tmp_path / "checkpoints")
    assert "opt_d" not in state and state["opt_g"]["state"]  # the generator's Adam stepped


@pytest.mark.parametrize("variant", ["cyclegan_pairs", "reggan"])
def test_the_health_check_does_not_judge_discriminators_when_pairs_steer_the_generator(phantoms, tmp_path, variant):
    import json

    cfg = variant_config(phantoms, variant, steps=4)
    cfg.train.checkpoint_every = 2
    train(cfg, tmp_path / "run", quiet=True)
    checks = json.loads((tmp_path / "run" / "health.json").read_text())["checks"]
    assert [c["step"] for c in checks] == [2, 4]
    for check in checks:  # judged on its translations alone (unpaired runs: test_health)
        assert "discriminators_at_chance" not in check["evidence"] and "mr_order" in check["evidence"]


def test_paired_cases_are_recorded_and_other_pairs_refused_on_resume(phantoms, tmp_path):
    cfg = variant_config(phantoms, "cyclegan_pairs", steps=4, stop_at_step=2)
    train(cfg, tmp_path / "run", quiet=True)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["pair_cases"] == ["phantom_000", "phantom_001"]
    fewer = tmp_path / "fewer"
    shutil.copytree(phantoms / "phantom_000", fewer / "phantom_000")
    cfg.data.pairs = str(fewer)
    with pytest.raises(SynthctError, match="phantom_000, phantom_001"):
        train(cfg, tmp_path / "run", resume=True, quiet=True)


def test_pairs_folder_pairs_mr_and_ct_by_file_name(phantoms, tmp_path):
    pairs = tmp_path / "pairs"
    for modality in ("mr", "ct"):
        (pairs / modality).mkdir(parents=True)
        shutil.copy(phantoms / "phantom_001" / f"{modality}.nii.gz", pairs / modality / "p1.nii.gz")
    cfg = variant_config(phantoms, "cyclegan_pairs", steps=2)
    cfg.data.pairs = str(pairs)
    train(cfg, tmp_path / "run", quiet=True)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["pair_cases"] == ["p1.nii.gz"]
    (pairs / "ct" / "p1.nii.gz").rename(pairs / "ct" / "other.nii.gz")
    with pytest.raises(SynthctError, match="unmatched: other.nii.gz, p1.nii.gz"):
        train(cfg, tmp_path / "again", quiet=True)


@pytest.mark.parametrize("args, message", [
    (["--model", "pix2pix", "--pairs", "{data}"], "pix2pix does not train on extra pairs"),
    (["--set", "model.register=true"], "model.register registers the paired slices"),
    (["--model", "pix2pix", "--set", "model.lambda_corr=5"], "model.lambda_corr: only the reggan model has it"),
    (["--model", "reggan", "--set", "model.lambda_smooth=-1"], "model.lambda_smooth: must be 0 (off) or positive"),
    (["--pairs", "{missing}"], "not found"),
])
def test_inapplicable_pair_options_are_one_line_errors(phantoms, tmp_path, capsys, args, message):
    args = [a.format(data=phantoms, missing=tmp_path / "missing") for a in args]
    assert main(["train", "--data", str(phantoms), "--out", str(tmp_path / "run"), *TINY, "--steps", "1",
                 *args]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_two_gloo_ranks_train_reggan_to_identical_weights(phantoms, tmp_path):
    worker = TINY_RUN + (
        "cfg.model.name = 'reggan'\ncfg.model.pool_size = 50\ncfg.train.steps = 2\n"
        "result = train(cfg, sys.argv[2], quiet=True)\n"
        "torch_save = __import__('safetensors.torch', fromlist=['save_file']).save_file\n"
        "torch_save({k: v.contiguous() for k, v in result.model.state_dict().items()}, "
        "f\"{sys.argv[3]}/rank{os.environ['RANK']}.safetensors\")\n")
    _two_ranks(worker, str(phantoms), str(tmp_path / "run"), str(tmp_path))
    from safetensors.torch import load_file

    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2))
    assert any(key.startswith("registration.") for key in rank0)
    assert all(torch.equal(rank0[key], rank1[key]) for key in rank0)
