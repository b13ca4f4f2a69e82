"""Config: presets, files, overrides, and errors that name what is wrong."""

from __future__ import annotations

import json

import pytest

from glasses.config import PRESETS, build_config, fingerprint
from glasses.errors import ConfigError


def test_paper_preset_has_the_reports_exact_settings():
    config = build_config("paper")
    s1, s2, s3 = config.search.stage1, config.search.stage2, config.search.stage3
    assert (s1.image_sizes, s1.batch_size, s1.max_trials, s1.epochs, s1.patience) == ([64, 128, 256], 16, 5, 50, 5)
    assert (s2.batch_size, s2.max_trials, s2.epochs, s2.patience) == (64, 100, 50, 10)
    assert (s3.batch_size, s3.max_trials, s3.epochs, s3.patience) == (64, 150, 100, 10)
    assert s3.fixed == {"conv_layers": 3, "optimizer": "adam"} and s3.keep == 100
    assert config.search.seed == 1337 and config.data.seed == 1337
    assert config.data.fractions == (0.8, 0.1, 0.1)
    assert config.ensemble.threshold == 0.89


def test_quick_is_the_default_and_smoke_is_tiny():
    assert build_config().preset == "quick"
    smoke = build_config("smoke")
    assert max(smoke.search.stage1.image_sizes) <= 32
    assert smoke.search.stage3.epochs == 1 and smoke.search.stage3.max_trials == 2


def test_file_then_overrides_layer_on_the_preset(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("preset: smoke\nsearch:\n  workers: 3\n  stage2:\n    max_trials: 7\n")
    config = build_config("quick", file, {"search.workers": 5, "work_dir": tmp_path / "w", "data.data_dir": None})
    assert config.preset == "smoke"
    assert config.search.workers == 5  # the CLI wins over the file
    assert config.search.stage2.max_trials == 7  # the file wins over the preset
    assert config.search.stage2.epochs == PRESETS["smoke"]["search"]["stage2"]["epochs"]
    assert config.work_dir == tmp_path / "w"


def test_json_file_works_too(tmp_path):
    file = tmp_path / "run.json"
    file.write_text(json.dumps({"ensemble": {"threshold": 0.5}}))
    assert build_config("smoke", file).ensemble.threshold == 0.5


@pytest.mark.parametrize("content, needle", [
    ("search:\n  workers: 0\n", "workers"),
    ("search:\n  stage1:\n    image_sizes: []\n", "image_sizes"),
    ("search:\n  stage1:\n    image_sizes: [4]\n", "image_sizes"),
    ("data:\n  fractions: [0.5, 0.5, 0.5]\n", "fractions"),
    ("nonsense: 1\n", "nonsense"),
    ("- a list\n", "mapping"),
])
def test_bad_file_values_name_the_field(tmp_path, content, needle):
    file = tmp_path / "bad.yaml"
    file.write_text(content)
    with pytest.raises(ConfigError, match=needle):
        build_config("quick", file)


def test_unknown_preset_is_named():
    with pytest.raises(ConfigError, match="'fast'"):
        build_config("fast")


def test_fingerprint_is_stable_and_sensitive():
    a, b = build_config("smoke"), build_config("smoke", overrides={"search.seed": 1})
    assert fingerprint(a) == fingerprint(build_config("smoke"))
    assert fingerprint(a) != fingerprint(b)
