"""Config: presets, files, overrides, and errors that name what is wrong."""

from __future__ import annotations

import json

import pytest

from glasses.config import PRESETS, build_config, fingerprint
from glasses.errors import ConfigError


def test_paper_preset_has_the_reports_exact_settings():
    config = build_config("paper")
    s1, s2, s3 = config.search.stage1, config.search.stage2, config.search.stage3
    # the report's epochs as steps on its 3,599 training images (tests/test_stages.py turns them back)
    assert (s1.image_sizes, s1.batch_size, s1.max_trials, s1.max_steps, s1.patience_steps) == (
        [64, 128, 256], 16, 5, 50 * 225, 5 * 225)
    assert (s2.batch_size, s2.max_trials, s2.max_steps, s2.patience_steps) == (64, 100, 50 * 57, 10 * 57)
    assert (s3.batch_size, s3.max_trials, s3.max_steps, s3.patience_steps) == (64, 150, 100 * 57, 10 * 57)
    assert s3.fixed == {"conv_layers": 3, "optimizer": "adam"} and s3.keep == 100
    assert config.search.seed == 1337 and config.data.seed == 1337
    assert config.data.fractions == (0.8, 0.1, 0.1)
    assert config.ensemble.threshold == 0.89
    # BatchNorm as the report trained it: Keras' moving averages
    assert {s.bn_stats_images for s in (s1, s2, s3)} == {0}


def test_other_presets_validate_with_clean_batchnorm_statistics():
    for preset in ("quick", "smoke"):
        search = build_config(preset).search
        assert {s.bn_stats_images for s in (search.stage1, search.stage2, search.stage3)} == {512}


def test_quick_is_the_default_and_smoke_is_tiny():
    assert build_config().preset == "quick"
    smoke = build_config("smoke")
    assert max(smoke.search.stage1.image_sizes) <= 32
    assert smoke.search.stage3.max_steps == 6 and smoke.search.stage3.max_trials == 2
    assert smoke.search.cv_below == 0  # no cross-validation in tests' pipeline runs


def test_file_then_overrides_layer_on_the_preset(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("preset: smoke\nsearch:\n  workers: 3\n  stage2:\n    max_trials: 7\n")
    config = build_config("quick", file, {"search.workers": 5, "work_dir": tmp_path / "w", "data.data_dir": None})
    assert config.preset == "smoke"
    assert config.search.workers == 5  # the CLI wins over the file
    assert config.search.stage2.max_trials == 7  # the file wins over the preset
    assert config.search.stage2.max_steps == PRESETS["smoke"]["search"]["stage2"]["max_steps"]
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


def rejected(overrides: dict, preset: str = "smoke") -> str:
    with pytest.raises(ConfigError) as caught:
        build_config(preset, overrides=overrides)
    return str(caught.value)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds(preset):
    assert build_config(preset).preset == preset


_WEEK = 7 * 24 * 3600


@pytest.mark.parametrize("overrides, fragments", [
    ({"search.oracle_port": 0}, ["search.oracle_port", "0 is not", "1024 to 65535", "root"]),
    ({"search.oracle_port": -1}, ["search.oracle_port", "-1 is not", "1024 to 65535"]),
    ({"search.oracle_port": 80}, ["search.oracle_port", "80 is not", "root"]),
    ({"search.oracle_port": 70000}, ["search.oracle_port", "70000 is not", "1024 to 65535"]),
    ({"search.worker_timeout_s": float("inf")}, ["search.worker_timeout_s", "finite", "got inf"]),
    ({"search.chief_timeout_s": float("nan")}, ["search.chief_timeout_s", "finite", "got nan"]),
    ({"search.worker_timeout_s": 0}, ["search.worker_timeout_s", "greater than 0", "got 0"]),
    ({"search.chief_timeout_s": -5}, ["search.chief_timeout_s", "greater than 0", "got -5"]),
    ({"search.worker_timeout_s": 86401, "search.chief_timeout_s": _WEEK},
     ["search.worker_timeout_s", "less than or equal to 86400", "got 86401"]),
    ({"search.chief_timeout_s": _WEEK + 1}, ["search.chief_timeout_s", "less than or equal to 604800"]),
    ({"search.worker_timeout_s": 600}, ["search:", "worker_timeout_s 600 must be below chief_timeout_s 600"]),
    ({"search.workers": 0}, ["search.workers", "greater than or equal to 1", "got 0"]),
    ({"search.workers": 65}, ["search.workers", "less than or equal to 64", "got 65"]),
    ({"search.worker_retries": -1}, ["search.worker_retries", "got -1"]),
    ({"search.worker_retries": 11}, ["search.worker_retries", "less than or equal to 10", "got 11"]),
    ({"search.gpus_per_worker": -1}, ["search.gpus_per_worker", "-1 is not", "0 to 64"]),
    ({"search.stage1.image_sizes": [4]}, ["search.stage1.image_sizes", "greater than or equal to 8", "got 4"]),
    ({"search.stage1.image_sizes": [32, 2048]}, ["search.stage1.image_sizes", "1024", "got 2048"]),
    ({"search.stage1.image_sizes": [16, 24, 16]}, ["search.stage1.image_sizes", "[16]", "more than once"]),
    ({"search.stage1.image_sizes": []}, ["search", "stage1.image_sizes", "at least one"]),
    ({"data.synth_resolution": 2048}, ["data.synth_resolution", "got 2048"]),
    ({"search.stage2.batch_size": 0}, ["search.stage2.batch_size", "got 0"]),
    ({"search.stage2.batch_size": 4097}, ["search.stage2.batch_size", "4096", "got 4097"]),
    ({"search.stage1.max_trials": 10_001}, ["search.stage1.max_trials", "10000", "got 10001"]),
    ({"search.stage3.max_steps": 0}, ["search.stage3.max_steps", "got 0"]),
    ({"search.stage3.max_steps": 10_000_001}, ["search.stage3.max_steps", "got 10000001"]),
    ({"search.stage2.patience_steps": 0}, ["search.stage2.patience_steps", "got 0"]),
    ({"search.stage2.min_steps": 6}, ["search.stage2", "min_steps 6 must be below max_steps 6"]),
    ({"search.cv_folds": 1}, ["search.cv_folds", "got 1"]),
    ({"search.cv_below": -1}, ["search.cv_below", "got -1"]),
    ({"ensemble.selection": "test_accuracy"}, ["ensemble.selection", "got 'test_accuracy'"]),
    ({"search.stage3.keep": 3}, ["search.stage3", "keep 3 must be at most max_trials 2"]),
    ({"data.seed": -1}, ["data.seed", "greater than or equal to 0", "got -1"]),
    ({"search.seed": 2**32}, ["search.seed", f"got {2**32}"]),
    ({"data.fractions": [0.8, 0.1, float("nan")]}, ["data.fractions", "finite", "got nan"]),
    ({"data.fractions": [0.5, 0.5, 0.5]}, ["data.fractions", "summing to 1", "(0.5, 0.5, 0.5)"]),
    ({"ensemble.threshold": 1.5}, ["ensemble.threshold", "got 1.5"]),
    ({"ensemble.fallback": 0}, ["ensemble.fallback", "got 0"]),
])
def test_out_of_range_values_name_the_field_value_and_limit(overrides, fragments):
    message = rejected(overrides)
    assert message.startswith("invalid config: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("overrides", [
    {"search.oracle_port": 1024}, {"search.oracle_port": 65535}, {"search.oracle_port": None},
    {"search.workers": 1}, {"search.workers": 64}, {"search.worker_retries": 0}, {"search.worker_retries": 10},
    {"search.worker_timeout_s": 599.5}, {"search.worker_timeout_s": 86400, "search.chief_timeout_s": _WEEK},
    {"search.gpus_per_worker": 0}, {"search.gpus_per_worker": "all"},
    {"search.stage1.image_sizes": [8, 1024]}, {"data.synth_resolution": 1024},
    {"search.stage2.batch_size": 1}, {"search.stage2.batch_size": 4096},
    {"search.stage1.max_trials": 10_000, "search.stage3.max_steps": 10_000_000},
    {"search.stage2.max_steps": 5, "search.stage2.min_steps": 4}, {"search.stage3.keep": 2},
    {"search.cv_folds": 2, "search.cv_below": 0}, {"search.cv_folds": 20},
    {"data.seed": 0, "search.seed": 2**32 - 1},
])
def test_values_at_the_limits_pass(overrides):
    config = build_config("smoke", overrides=overrides)
    for dotted, value in overrides.items():
        node = config
        for part in dotted.split("."):
            node = getattr(node, part)
        assert node == value


def test_infinite_and_nan_timeouts_from_yaml_are_rejected(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("search:\n  worker_timeout_s: .nan\n  chief_timeout_s: .inf\n")
    with pytest.raises(ConfigError) as caught:
        build_config("quick", file)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"invalid config (from {file}):"
    assert lines[1:] == ["  search.worker_timeout_s: Input should be a finite number (got nan)",
                         "  search.chief_timeout_s: Input should be a finite number (got inf)"]


@pytest.mark.parametrize("stage", ["stage1", "stage2", "stage3"])
@pytest.mark.parametrize("fixed, fragments", [
    ({"layers": 3}, ["unknown hyperparameter 'layers' in fixed", "known: conv_layers, filters_0..filters_4, "
                     "pooling_0..pooling_4, global_pooling, optimizer"]),
    ({"filters_5": 8}, ["unknown hyperparameter 'filters_5'"]),
    ({"optimizer": "rmsprop"}, ["fixed optimizer 'rmsprop' is not one of adam, sgd"]),
    ({"conv_layers": 6}, ["fixed conv_layers 6 is not one of 1..5"]),
    ({"conv_layers": "3"}, ["fixed conv_layers '3' is not one of 1..5"]),
    ({"filters_0": 12}, ["fixed filters_0 12 is not one of 8..64 in steps of 8"]),
    ({"pooling_2": "min"}, ["fixed pooling_2 'min' is not one of max, avg"]),
])
def test_fixed_outside_the_space_is_rejected(stage, fixed, fragments):
    message = rejected({f"search.{stage}.fixed": fixed})
    assert f"search.{stage}.fixed: " in message
    for fragment in fragments:
        assert fragment in message


def test_fixed_inside_the_space_passes():
    fixed = {"conv_layers": 1, "filters_0": 64, "pooling_4": "avg", "global_pooling": "max", "optimizer": "sgd"}
    assert build_config("smoke", overrides={"search.stage2.fixed": fixed}).search.stage2.fixed == fixed


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "192.168.1.20", "::", "fe80::1", "gpu-node-1",
                                  "localhost.example.com"])
def test_a_remote_oracle_is_refused_unless_allowed(host):
    message = rejected({"search.oracle_bind": host})
    for fragment in [f"oracle_bind {host!r} is not loopback", "unauthenticated gRPC",
                     "anyone who can reach its port can read and change the search",
                     "search.allow_remote_oracle", "trusted network"]:
        assert fragment in message
    config = build_config("smoke", overrides={"search.oracle_bind": host, "search.allow_remote_oracle": True})
    assert config.search.oracle_bind == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.4.5.6", "::1", "localhost", "LocalHost"])
def test_a_loopback_oracle_needs_no_flag(host):
    config = build_config("smoke", overrides={"search.oracle_bind": host})
    assert config.search.oracle_bind == host and config.search.allow_remote_oracle is False


def test_quick_built_in_data_has_a_val_split_at_the_cross_validation_threshold():
    # Each class's val share rounds down: 3,000 images gave 299 val images, and stages 1-2 of every
    # quick run on the built-in data cross-validated (k times the training).
    import numpy as np

    from glasses.dataset import subset_sizes
    from glasses.synth import plan

    config = build_config("quick")
    drawn = plan(config.data.synth_n, config.data.seed)
    labels = np.asarray(drawn.labels).reshape(-1)[:config.data.synth_n].astype(int)  # the labelled ones first
    val = sum(subset_sizes(int(count), config.data.fractions)[1] for count in np.bincount(labels))
    assert val >= config.search.cv_below
