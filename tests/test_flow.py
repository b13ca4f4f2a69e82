"""The whole pipeline as a Prefect flow on a real (test) Prefect server, smoke preset."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from glasses.config import build_config
from tests.conftest import balanced_labels, write_kaggle_dataset

pytestmark = pytest.mark.slow


def _trial_stamps(work: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in (work / "stages").rglob("trial.json")}


def test_smoke_flow_on_the_built_in_data_end_to_end_then_resumes(prefect_server, tmp_path):
    from flows.pipeline import pipeline

    config = build_config("smoke", overrides={"work_dir": tmp_path / "work"})
    pipeline(config)
    work = config.work_dir
    summary = json.loads((work / "summary.json").read_text())
    dataset, split = summary["dataset"], summary["split"]
    assert dataset["labelled"] == 60 == dataset["glasses"] + dataset["no_glasses"]
    assert dataset["ratio"] == pytest.approx(dataset["glasses"] / dataset["no_glasses"], abs=1e-3)
    assert split["train"] + split["val"] + split["test"] == 60
    for key in ("members", "val_accuracy", "test_accuracy"):
        assert key in summary["ensemble"]
    assert 0 <= summary["ensemble"]["test_accuracy"] <= 1
    assert set(summary["best_single"]) >= {"val_accuracy", "test_accuracy"}
    assert summary["durations_s"]["total"] > 0
    evaluation = summary["evaluation"]
    assert set(evaluation) >= {"accuracy", "precision", "recall", "f1", "roc_auc", "confusion"}
    assert sum(map(sum, evaluation["confusion"])) == split["test"]
    assert evaluation["accuracy"] == summary["ensemble"]["test_accuracy"]
    assert set(summary["ensembles"]) == {"best_single", "average", "majority", "greedy"}
    assert summary["ensemble"]["method"] in ("average", "majority", "greedy")
    assert summary["latent"]["skipped"] is False and summary["latent"]["test"] > 0
    for name in ("augmentation", "misclassified", "confusion", "stage1_val_accuracy_by_image_size",
                 "stage2_val_accuracy_by_conv_layers", "stage2_val_accuracy_by_optimizer",
                 "stage3_val_accuracy_by_rank"):
        assert Path(summary["figures"][name]).stat().st_size > 1000, name
        assert Path(summary["figures"][name]).parent == work / "figures"
    report = (work / "report.md").read_text()
    links = [line.split("](", 1)[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert len(links) >= 7 and all((work / link).is_file() for link in links)
    assert "## Latent vectors" in report and "## Ensembles" in report

    stages = {name: pd.read_csv(work / "stages" / name / "trials.csv") for name in ("stage1", "stage2", "stage3")}
    assert len(stages["stage1"]) == 4 and sorted(stages["stage1"]["image_size"].unique()) == [16, 24]
    assert len(stages["stage2"]) == 2 and len(stages["stage3"]) == 2
    assert (stages["stage3"]["conv_layers"] == 3).all() and (stages["stage3"]["optimizer"] == "adam").all()
    for table in stages.values():
        assert (table["status"] == "COMPLETED").all()
    assert set(stages["stage1"]["worker"]) == {"tuner0", "tuner1"}
    assert (work / "stages" / "stage1" / "val_accuracy_by_image_size.png").stat().st_size > 1000
    assert summary["stages"]["stage1"]["chosen"]["image_size"] in (16, 24)

    model = keras.models.load_model(work / "model" / "ensemble.keras")
    for shape in ((3, 50, 40, 3), (2, 16, 16, 3)):
        out = model.predict(np.random.default_rng(0).integers(0, 256, shape).astype("float32"), verbose=0)
        assert out.shape == (shape[0], 1) and np.all((out >= 0) & (out <= 1))

    # A re-run (as after a failure, or a retry from the UI) reuses every finished stage.
    stamps = _trial_stamps(work)
    pipeline(config)
    assert _trial_stamps(work) == stamps
    again = json.loads((work / "summary.json").read_text())
    assert again["ensemble"]["test_accuracy"] == summary["ensemble"]["test_accuracy"]


def test_smoke_flow_on_a_real_layout_of_grey_non_square_images(prefect_server, tmp_path):
    from flows.pipeline import pipeline

    source = write_kaggle_dataset(tmp_path / "download", balanced_labels(40), size=(30, 20), mode="L",
                                  latents=512)
    listing = sorted(str(p.relative_to(source)) for p in source.rglob("*"))
    config = build_config("smoke", overrides={"work_dir": tmp_path / "work", "data.data_dir": source})
    pipeline(config)
    summary = json.loads((config.work_dir / "summary.json").read_text())
    assert summary["dataset"]["labelled"] == 40
    assert summary["split"]["test"] >= 4
    assert (config.work_dir / "model" / "ensemble.keras").is_file()
    assert sorted(str(p.relative_to(source)) for p in source.rglob("*")) == listing  # source untouched
