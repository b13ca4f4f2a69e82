"""The model registry: every run's model kept, the champion replaced only by a better
challenger (scored on the same images), `glasses promote` and `glasses models`, bounded size.

The models here answer a constant: P(glasses) 0.9 scores the split's glasses rate, 0.1 its
no-glasses rate, so which one is better is known before they are scored."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from glasses import dataset, registry
from glasses.errors import OutputError
from glasses.workdir import WorkDir, make_ours
from tests.conftest import balanced_labels, write_kaggle_dataset


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("registry-data")
    source = write_kaggle_dataset(root / "source", balanced_labels(40), size=(12, 10))
    organized = dataset.organize(source, root / "organized")
    return dataset.split(organized.dir, root / "split", (0.6, 0.2, 0.2), seed=3).dir


def constant_model(path: Path, probability: float) -> Path:
    """A saved Keras model that answers `probability` for any RGB image."""
    import keras

    model = keras.Sequential([keras.Input(shape=(None, None, 3)), keras.layers.GlobalAveragePooling2D(name="pool"),
                              keras.layers.Dense(1, activation="sigmoid", kernel_initializer="zeros", name="out",
                                                 bias_initializer=keras.initializers.Constant(
                                                     math.log(probability / (1 - probability))))], name="constant")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def add(work: WorkDir, name: str, probability: float) -> str:
    """A run's model registered as `name`, as the pipeline's champion task does."""
    model = constant_model(work.root / "built" / f"{name}.keras", probability)
    shipped = {"method": "best_single", "members": 1, "val_accuracy": 0.0, "test_accuracy": 0.0}
    return registry.register(work, model, name, shipped=shipped, config={"preset": "smoke"}, fingerprint="f" * 16)


def test_the_first_model_is_promoted_a_worse_one_is_not_and_a_better_one_is(tmp_path, split_dir):
    work = WorkDir(tmp_path / "work")
    add(work, "run-1", 0.1)  # answers "no glasses": the minority here
    first = registry.challenge(work, "run-1", split_dir, margin=0.02)
    assert first["promoted"] and first["reason"] == "no champion yet" and first["champion"] is None
    assert registry.champion(work)["run"] == "run-1"

    before = work.model.read_bytes()
    add(work, "run-2", 0.05)  # the same answers as run-1 (set against run-3 below)
    add(work, "run-3", 0.9)   # answers "glasses": the majority, so better
    better = registry.challenge(work, "run-3", split_dir, margin=0.02)
    assert better["promoted"] and better["champion"]["run"] == "run-1"
    assert better["challenger"]["val"] > better["champion"]["val"]
    assert work.model.read_bytes() == (work.models / "run-3" / "ensemble.keras").read_bytes() != before

    champion_bytes = work.model.read_bytes()
    worse = registry.challenge(work, "run-2", split_dir, margin=0.02)
    assert not worse["promoted"] and "below the champion's" in worse["reason"]
    assert worse["serving"] == "run-3" and work.model.read_bytes() == champion_bytes  # byte for byte
    table = registry.rows(work).set_index("run")
    assert table.loc["run-1", "promoted"] == "True" and table.loc["run-3", "promoted"] == "True"
    assert table.loc["run-2", "promoted"] == "False" and "below" in table.loc["run-2", "reason"]

    again = registry.challenge(work, "run-3", split_dir, margin=0.02)  # a re-run that changed nothing
    assert not again["promoted"] and "champion already" in again["reason"]


def test_a_challenger_worse_on_test_beyond_the_margin_is_not_promoted():
    assert registry.decide({"val": 0.90, "test": 0.85}, {"val": 0.90, "test": 0.88}, margin=0.02)[0] is False
    assert registry.decide({"val": 0.90, "test": 0.87}, {"val": 0.90, "test": 0.88}, margin=0.02)[0] is True
    assert registry.decide({"val": 0.89, "test": 0.99}, {"val": 0.90, "test": 0.88}, margin=0.02)[0] is False


def test_the_same_model_is_registered_once(tmp_path):
    work = WorkDir(tmp_path / "work")
    model = constant_model(tmp_path / "m.keras", 0.7)
    shipped = {"method": "average", "members": 3, "val_accuracy": 0.8, "test_accuracy": 0.7}
    first = registry.register(work, model, "run-a", shipped=shipped, config={}, fingerprint="x")
    second = registry.register(work, model, "run-b", shipped=shipped, config={}, fingerprint="x")
    # saved again (another run whose new trials changed no member): other bytes, the same weights
    again = constant_model(tmp_path / "again.keras", 0.7)
    assert again.read_bytes() != model.read_bytes()
    third = registry.register(work, again, "run-c", shipped=shipped, config={}, fingerprint="x")
    assert first == second == third == "run-a" and list(registry.rows(work)["run"]) == ["run-a"]
    entry = work.models / "run-a"
    assert {p.name for p in entry.iterdir()} >= {"ensemble.keras", "entry.json", "config.json"}


def test_the_registry_never_grows_past_keep_and_keeps_the_champion(tmp_path, split_dir):
    work = WorkDir(tmp_path / "work")
    add(work, "run-1", 0.9)
    registry.challenge(work, "run-1", split_dir, margin=0.0)
    for index in range(2, 7):
        add(work, f"run-{index}", 0.1 + index / 100)  # all worse (and each its own model): run-1 stays
        registry.challenge(work, f"run-{index}", split_dir, margin=0.0)
        registry.prune(work, keep=3)
        assert len(registry.rows(work)) <= 3
    assert list(registry.rows(work)["run"]) == ["run-1", "run-5", "run-6"]
    assert sorted(p.name for p in work.models.iterdir() if p.is_dir()) == ["run-1", "run-5", "run-6"]
    assert registry.champion(work)["run"] == "run-1"


def test_glasses_promote_restores_an_earlier_model_and_models_lists_it(tmp_path, split_dir):
    work = WorkDir(tmp_path / "work")
    make_ours(work.root)  # as a run's claim does
    add(work, "run-1", 0.1)
    registry.challenge(work, "run-1", split_dir, margin=0.02)
    add(work, "run-2", 0.9)
    registry.challenge(work, "run-2", split_dir, margin=0.02)
    assert registry.champion(work)["run"] == "run-2"

    def glasses(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "glasses", *args, "--work-dir", str(work.root)],
                              capture_output=True, text=True, timeout=120)

    done = glasses("promote", "run-1")
    assert done.returncode == 0, done.stderr
    assert work.model.read_bytes() == (work.models / "run-1" / "ensemble.keras").read_bytes()
    listed = glasses("models")
    assert listed.returncode == 0, listed.stderr
    lines = {line[2:].split()[0]: line for line in listed.stdout.splitlines() if line[2:].startswith("run-")}
    assert lines["run-1"].startswith("* ") and lines["run-2"].startswith("  ")
    assert "promoted by hand" in lines["run-1"] and "serving: run-1" in listed.stdout

    missing = glasses("promote", "run-9")
    assert missing.returncode == 1 and "no registry entry 'run-9'" in missing.stderr
    assert "entries: run-1, run-2" in missing.stderr


def test_promote_names_what_is_missing(tmp_path):
    with pytest.raises(OutputError, match="no registry entry 'nope'.*entries: none"):
        registry.promote(WorkDir(tmp_path), "nope")


def test_kept_choices_are_the_champions_on_changed_data_only(tmp_path, split_dir):
    work = WorkDir(tmp_path / "work")
    add(work, "run-1", 0.9)
    registry.challenge(work, "run-1", split_dir, margin=0.02)
    assert registry.kept_stages(work, "g" * 16) is None  # no summary kept with the entry yet
    plot = tmp_path / "stage1.png"
    plot.write_bytes(b"png")
    stages = {"stage1": {"stage": "stage1", "chosen": {"image_size": 24}, "plots": [str(plot), "/gone.png"]},
              "stage2": {"stage": "stage2", "chosen": {"conv_layers": 2, "optimizer": "adam"}, "plots": []}}
    (tmp_path / "summary.json").write_text(json.dumps({"stages": stages}))
    registry.attach(work, "run-1", tmp_path / "summary.json")
    assert registry.kept_stages(work, "f" * 16) is None  # the champion's own data: nothing to keep
    first, second = registry.kept_stages(work, "g" * 16)
    assert first["chosen"] == {"image_size": 24} and first["plots"] == [str(plot)]
    assert second["chosen"] == {"conv_layers": 2, "optimizer": "adam"}
    assert first["kept_from"] == second["kept_from"] == "run-1"
