"""The CLI as a user runs it: predict, evaluate, synth, config, download."""

from __future__ import annotations

import json
import sys
import types

import keras
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from glasses.cli import app
from glasses.ensemble import average_ensemble, save_model
from glasses.model import ModelSpec, build_model
from tests.conftest import balanced_labels, write_kaggle_dataset

runner = CliRunner()


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
    assert missing.exit_code == 2 and "none.keras" in missing.stderr


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
    assert result.exit_code == 2 and "train.csv" in result.stderr


def test_synth_and_config_commands(tmp_path):
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "d"), "--n", "30", "--resolution", "32"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "train.csv").is_file()
    shown = runner.invoke(app, ["config", "--preset", "paper"])
    assert json.loads(shown.stdout)["search"]["stage3"]["keep"] == 100


def test_download_without_kagglehub_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # an import of it fails, as when not installed
    result = runner.invoke(app, ["download", "--out", str(tmp_path / "k")])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: kagglehub is not installed: pip install 'glasses[download]'"


def test_a_failed_download_is_one_line_and_links_nothing(tmp_path, monkeypatch):
    def offline(handle):
        raise ConnectionError(f"cannot reach the hub for {handle}\nretries exhausted")

    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(dataset_download=offline))
    result = runner.invoke(app, ["download", "--out", str(tmp_path / "k")])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: cannot download jeffheaton/glasses-or-no-glasses: ConnectionError: "
                                     "cannot reach the hub for jeffheaton/glasses-or-no-glasses")
    assert not (tmp_path / "k").exists()
