"""experiments.demo_recipe: variants of the demo, as training options or as demo settings."""

import pytest

from experiments import demo_recipe
from synthct.demo import DemoSettings
from synthct.errors import SynthctError


def test_a_variant_sets_demo_settings_and_training_options_apart():
    label, options = demo_recipe.parse_variant("fine grid=demo.size=128;demo.spacing=1.8,1.8,4.0;model.r1_gamma=10")
    settings = demo_recipe.demo_settings(options, steps=3, seed=2, precision="fp32")
    assert label == "fine grid"
    assert (settings.size, settings.spacing, settings.steps, settings.seed) == (128, (1.8, 1.8, 4.0), 3, 2)
    assert settings.overrides == ("model.r1_gamma=10",) and settings.ngf == DemoSettings.ngf


@pytest.mark.parametrize("option, message", [("demo.steps=9", "is not a demo setting"),
                                             ("demo.size=big", "expected a value like 96")])
def test_a_bad_setting_is_refused(option, message):
    with pytest.raises(SynthctError, match=message):
        demo_recipe.demo_settings((option,), steps=3, seed=0, precision="fp32")


def test_a_bad_variant_stops_the_screen_before_any_run(tmp_path, capsys):
    out = tmp_path / "screen"
    assert demo_recipe.main(["--variant", "fine=", "--variant", "bad=demo.nothing=1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("experiments.demo_recipe: error:") and err.count("\n") == 1
    assert not out.exists()  # the good variant before it did not run either
