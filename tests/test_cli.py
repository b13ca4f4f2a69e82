"""The CLI as a user runs it: predict, evaluate, check, synth, config, download.

Every bad input is one line `error: ...` on stderr and exit code 1 (2 is typer's own, for a
misused command), raised on purpose (SystemExit), never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import types
import zipfile

import keras
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from glasses.cli import app
from glasses.ensemble import average_ensemble, save_model
from glasses.errors import GlassesError
from glasses.model import ModelSpec, build_model
from glasses import dataset
from tests.conftest import (
    BAD_DATASETS,
    CSV_DIALECTS,
    DATASET_LABELS,
    balanced_labels,
    snapshot,
    write_bad_dataset,
    write_kaggle_dataset,
    write_odd_dataset,
)

runner = CliRunner()


def assert_error(result, *fragments: str) -> str:
    """The command failed on purpose: exit 1, one stderr line `error: ...` naming each fragment."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # an uncaught error is itself
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    keras.utils.set_random_seed(0)
    members = [build_model(ModelSpec(image_size=16, conv_layers=1, filters=(8,), pooling=("max",)),
                           name=f"m{i}", compile=False) for i in range(2)]
    return save_model(average_ensemble(members, 16), tmp_path_factory.mktemp("model") / "ensemble.keras")


def _photos(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "a.png")
    Image.fromarray(pixels).save(folder / "b.jpg", quality=90)
    Image.fromarray(pixels).convert("L").save(folder / "c_grey.png")
    Image.fromarray(pixels).convert("RGBA").save(folder / "d_rgba.png")
    Image.fromarray(pixels[:13, :77]).save(folder / "e_wide.jpeg")
    (folder / "f_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_prints_one_line_per_readable_image_and_skips_the_corrupt_one(model_path, tmp_path):
    folder = _photos(tmp_path / "photos")
    result = runner.invoke(app, ["predict", str(folder), "--model", str(model_path), "--threshold", "0.5"])
    assert result.exit_code == 0, result.output
    lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [p.rsplit("/", 1)[1] for p, _, _ in lines] == ["a.png", "b.jpg", "c_grey.png", "d_rgba.png", "e_wide.jpeg"]
    for _, probability, label in lines:
        assert 0.0 <= float(probability) <= 1.0
        assert label == ("glasses" if float(probability) >= 0.5 else "no_glasses")
    assert "skipped" in result.stderr and "f_corrupt.png" in result.stderr
    assert lines[0][1] == lines[3][1]  # RGBA is read as its RGB


def test_predict_on_a_single_file_and_a_missing_model(model_path, tmp_path):
    folder = _photos(tmp_path / "photos")
    result = runner.invoke(app, ["predict", str(folder / "b.jpg"), "--model", str(model_path)])
    assert result.exit_code == 0 and len(result.stdout.strip().splitlines()) == 1
    missing = runner.invoke(app, ["predict", str(folder), "--model", str(tmp_path / "none.keras")])
    assert_error(missing, f"no model at {tmp_path / 'none.keras'}")


@pytest.mark.parametrize("kind, why", [("a text file", "not a zip archive"), ("an empty file", "not a zip archive"),
                                       ("a truncated .keras zip", "not a zip archive"), ("a directory", "a directory"),
                                       ("a zip of something else", "ValueError: ")])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_model_file_that_is_not_a_keras_model_is_one_error_line(model_path, tmp_path, kind, why, command):
    bad = tmp_path / "bad.keras"
    if kind == "a text file":
        bad.write_text("these are not the weights you are looking for\n")
    elif kind == "an empty file":
        bad.touch()
    elif kind == "a truncated .keras zip":
        bad.write_bytes(model_path.read_bytes()[:2000])
    elif kind == "a directory":
        bad.mkdir()
    else:
        with zipfile.ZipFile(bad, "w") as archive:
            archive.writestr("config.json", "{}")
    folder = _photos(tmp_path / "photos")
    data = ["--data-dir", str(write_kaggle_dataset(tmp_path / "kaggle", balanced_labels(12)))]
    args = [command, *([str(folder)] if command == "predict" else data), "--model", str(bad)]
    assert_error(runner.invoke(app, args), f"error: {bad} is not a Keras model ({why}")


def test_evaluate_on_class_folders_and_on_the_kaggle_layout(model_path, tmp_path):
    (tmp_path / "folders").mkdir()
    _photos(tmp_path / "folders" / "glasses")
    _photos(tmp_path / "folders" / "no_glasses")
    result = runner.invoke(app, ["evaluate", "--data-dir", str(tmp_path / "folders"), "--model", str(model_path)])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["n"] == 10 and scores["skipped"] == 2
    assert sum(map(sum, scores["confusion"])) == 10

    kaggle = write_kaggle_dataset(tmp_path / "kaggle", balanced_labels(12))
    result = runner.invoke(app, ["evaluate", "--data-dir", str(kaggle), "--model", str(model_path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == 12


def test_evaluate_names_a_directory_it_cannot_read(model_path, tmp_path):
    result = runner.invoke(app, ["evaluate", "--data-dir", str(tmp_path), "--model", str(model_path)])
    assert_error(result, str(tmp_path), "train.csv")
    for path, why in ((tmp_path / "nowhere", "does not exist"), (model_path, "is not a folder")):
        result = runner.invoke(app, ["evaluate", "--data-dir", str(path), "--model", str(model_path)])
        assert_error(result, f"data dir {path} {why}")


def test_synth_and_config_commands(tmp_path):
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "d"), "--n", "30", "--resolution", "32"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "train.csv").is_file()
    grey = runner.invoke(app, ["synth", "--out", str(tmp_path / "g"), "--n", "30", "--resolution", "32", "--grey"])
    assert grey.exit_code == 0 and "32px grey" in grey.stdout, grey.output
    with Image.open(next((tmp_path / "g").rglob("*.png"))) as image:
        assert image.mode == "L"
    shown = runner.invoke(app, ["config", "--preset", "paper"])
    assert json.loads(shown.stdout)["search"]["stage3"]["keep"] == 100


def test_download_without_kagglehub_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # an import of it fails, as when not installed
    result = runner.invoke(app, ["download", "--out", str(tmp_path / "k")])
    assert_error(result)
    assert result.stderr.strip() == "error: kagglehub is not installed: pip install 'glasses[download]'"


def test_a_failed_download_is_one_line_and_links_nothing(tmp_path, monkeypatch):
    def offline(handle):
        raise ConnectionError(f"cannot reach the hub for {handle}\nretries exhausted")

    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(dataset_download=offline))
    result = runner.invoke(app, ["download", "--out", str(tmp_path / "k")])
    assert_error(result)
    assert result.stderr.strip() == ("error: cannot download jeffheaton/glasses-or-no-glasses: ConnectionError: "
                                     "cannot reach the hub for jeffheaton/glasses-or-no-glasses")
    assert not (tmp_path / "k").exists()


def test_a_misused_command_is_still_typers_usage_error_2(tmp_path):
    result = runner.invoke(app, ["check"])  # --data-dir is required
    assert result.exit_code == 2 and "--data-dir" in result.output


# ---------------------------------------------------------------------------------------------
# glasses check: every dataset check of a run, nothing written


@pytest.fixture
def quiet_tmp(tmp_path, monkeypatch):
    """A fresh cwd and temp dir, so that a test can prove nothing was written to either."""
    for name in ("cwd", "tmp"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    return tmp_path


def _check(data_dir, *options: str):
    return runner.invoke(app, ["check", "--data-dir", str(data_dir), *options])


@pytest.mark.parametrize("dialect", CSV_DIALECTS)
def test_check_passes_odd_but_valid_data_prints_what_it_found_and_writes_nothing(quiet_tmp, dialect):
    data = write_odd_dataset(quiet_tmp / "data", dialect)
    before = snapshot(quiet_tmp)
    result = _check(data)
    assert result.exit_code == 0, result.output
    assert snapshot(quiet_tmp) == before  # the data, the cwd and the temp dir
    out = result.stdout
    assert f"labelled: {len(DATASET_LABELS)} images: 12 no_glasses, 20 glasses" in out
    for kind in ("27 PNG RGB 24x24", "1 PNG I;16 24x24", "1 JPEG CMYK 16x16", "1 PNG RGB 2000x50"):
        assert kind in out, kind
    assert "latents v1..v512: absent" in out
    assert "split 0.8/0.1/0.1, seed 1337:" in out
    table = [line.split() for line in out.splitlines() if line.split()[:1] in (["train"], ["val"], ["test"])]
    assert table == [["train", "9", "16"], ["val", "1", "2"], ["test", "2", "2"]]
    assert out.strip().endswith("ok: a run would accept this dataset")


def test_check_plans_the_split_of_a_preset_or_config_file(quiet_tmp):
    data = write_kaggle_dataset(quiet_tmp / "data", DATASET_LABELS, latents=512)
    config = quiet_tmp / "cwd" / "my.yaml"
    config.write_text("data:\n  fractions: [0.5, 0.25, 0.25]\n  seed: 7\n")
    result = _check(data, "--config", str(config))
    assert result.exit_code == 0, result.output
    assert "split 0.5/0.25/0.25, seed 7:" in result.stdout and "latents v1..v512: present" in result.stdout
    table = [line.split() for line in result.stdout.splitlines() if line.split()[:1] in (["train"], ["val"])]
    assert table == [["train", "6", "10"], ["val", "3", "5"]]
    assert_error(_check(data, "--preset", "nonesuch"), "nonesuch")


@pytest.mark.parametrize("case", BAD_DATASETS)
def test_check_rejects_each_bad_dataset_with_one_error_line(quiet_tmp, case):
    data_dir, fragments = write_bad_dataset(quiet_tmp / "data", case)
    before = snapshot(quiet_tmp)
    assert_error(_check(data_dir), *fragments)
    assert snapshot(quiet_tmp) == before


def test_check_rejects_a_class_too_small_for_the_split(quiet_tmp):
    data = write_kaggle_dataset(quiet_tmp / "data", [1] * 12 + [0] * 9)
    before = snapshot(quiet_tmp)
    assert_error(_check(data), "class no_glasses has 9 images: the split 0.8/0.1/0.1 gives val 0, need at least 1")
    assert snapshot(quiet_tmp) == before


def test_check_rejects_an_image_over_the_pixel_limit(quiet_tmp, monkeypatch):
    monkeypatch.setattr(dataset, "MAX_IMAGE_PIXELS", 24 * 24 - 1)
    data = write_kaggle_dataset(quiet_tmp / "data", DATASET_LABELS)
    assert_error(_check(data), "face-1.png: 24x24 is 576 pixels, more than the limit of 575")


# ---------------------------------------------------------------------------------------------
# `glasses run` when the shipped model learned nothing: a warning, and with --strict exit code 3


@pytest.fixture()
def fake_run(monkeypatch, tmp_path):
    """`glasses run` with the flow replaced: it writes a made-up summary.json (its alarm raised
    or not, as `fake_run(learned)` says) and returns its path, as the flow does."""
    import flows.pipeline
    from glasses import watchdog
    from glasses.files import write_json
    from glasses.workdir import make_ours
    from tests.conftest import run_summary

    calls = []
    monkeypatch.setattr(watchdog, "reap_on_death", lambda: None)  # no watcher process for a fake run
    for name in ("PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_LOGGING_EXTRA_LOGGERS",
                 "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # what `run` sets, undone after the test
        if not os.environ[name]:
            monkeypatch.delenv(name)

    def invoke(learned: bool, *options: str):
        def pipeline(**parameters):
            calls.append(parameters)
            make_ours(tmp_path / "work")  # as the flow's claim does
            return str(write_json(tmp_path / "work" / "summary.json", run_summary(learned=learned)))

        monkeypatch.setattr(flows.pipeline, "pipeline", pipeline)
        return runner.invoke(app, ["run", "--preset", "smoke", "--work-dir", str(tmp_path / "work"), *options])

    invoke.calls = calls
    return invoke


def test_run_warns_on_stderr_when_nothing_was_learned_and_still_exits_0(fake_run):
    from glasses.evaluate import wilson_interval

    result = fake_run(False)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: nothing learned: test ROC-AUC 0.5000")
    assert "--time-budget" in warnings[0] and "max_steps" in warnings[0]
    low, high = wilson_interval(6, 20)  # with its interval: on 20 images 0.30 could be 0.15 or 0.52
    assert f"shipped model (greedy) test accuracy: 0.3000 (95% CI {low:.4f}-{high:.4f}, 20 test images)" in result.stdout
    assert fake_run.calls[0]["preset"] == "smoke" and "strict" not in fake_run.calls[0]  # the CLI judges


def test_run_strict_exits_3_when_nothing_was_learned_and_0_when_it_learned(fake_run):
    from glasses.cli import NOTHING_LEARNED_EXIT

    failed = fake_run(False, "--strict")
    assert failed.exit_code == NOTHING_LEARNED_EXIT == 3, failed.output
    assert isinstance(failed.exception, SystemExit)
    assert failed.stderr.startswith("warning: nothing learned")
    passed = fake_run(True, "--strict")
    assert passed.exit_code == 0, passed.output
    assert "warning" not in passed.stderr and "shipped model (greedy) test accuracy: 1.0000" in passed.stdout


def test_the_strict_option_documents_its_exit_code():
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--strict" in result.stdout and "Exit with code 3" in result.stdout


def test_run_passes_its_time_budget_and_start_to_the_flow(tmp_path, monkeypatch):
    import flows.pipeline

    called = {}

    def pipeline(**parameters):
        called.update(parameters)
        raise GlassesError("stopped by the test")

    monkeypatch.setattr(flows.pipeline, "pipeline", pipeline)
    before = time.time()
    result = runner.invoke(app, ["run", "--work-dir", str(tmp_path / "w"), "--time-budget", "1h30m"])
    assert_error(result, "stopped by the test")
    assert called["time_budget"] == "1h30m" and before <= called["budget_started_at"] <= time.time()
    assert runner.invoke(app, ["run", "--work-dir", str(tmp_path / "v")]).exit_code == 1
    assert called["time_budget"] is None


def test_run_rejects_a_bad_time_budget_before_starting_anything(tmp_path, monkeypatch):
    import flows.pipeline

    monkeypatch.setattr(flows.pipeline, "pipeline", lambda **kw: pytest.fail("the flow started"))
    result = runner.invoke(app, ["run", "--work-dir", str(tmp_path / "w"), "--time-budget", "15x"])
    assert_error(result, "time budget '15x' is not a duration", "15m")
    assert not (tmp_path / "w").exists()
