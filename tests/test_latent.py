"""glasses.latent: the report's dense baseline on the 512 GAN latents of train.csv.

The CSVs are made here with numpy: labels are a linear rule on all 512 latents, `z @ w > 0`,
with the samples kept at least MARGIN from the boundary along w. Without a margin, a few hundred
rows in 512 dimensions are too few for any model to generalise well (about 0.6-0.8 test accuracy
at 300-1000 rows); with it, the rule is learnable from 240 training rows in a few seconds.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from glasses import dataset
from glasses.dataset import CLASSES, LATENT_COLUMNS, SUBSETS, subset_sizes
from glasses.errors import DatasetError
from glasses.latent import LatentResult, latent_baseline, read_latents, split_subsets
from tests.conftest import balanced_labels, write_kaggle_dataset

ROWS = 300
MARGIN = 2.0
EPOCHS = 10
BATCH = 32
FRACTIONS = (0.8, 0.1, 0.1)


def linear_latents(rows: int = ROWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Latents ~ N(0, I) moved off the boundary of `z @ w > 0`, and their labels (~63% ones)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(len(LATENT_COLUMNS))
    w /= np.linalg.norm(w)
    z = rng.standard_normal((rows, len(LATENT_COLUMNS)))
    side = rng.choice([-1.0, 1.0], size=rows, p=[0.37, 0.63])
    along = side * (MARGIN + np.abs(rng.standard_normal(rows)))
    z = z - np.outer(z @ w, w) + np.outer(along, w)
    return z, (z @ w > 0).astype(int)


def write_csv(path: Path, latents: np.ndarray | None, labels: np.ndarray, ids=None) -> Path:
    """A train.csv: id, the latent columns given (v1..vK), glasses."""
    frame = pd.DataFrame(index=range(len(labels)))
    frame["id"] = ids if ids is not None else range(1, len(labels) + 1)
    if latents is not None:
        names = [f"v{i}" for i in range(1, latents.shape[1] + 1)]
        frame = pd.concat([frame, pd.DataFrame(latents.round(6), columns=names)], axis=1)
    frame["glasses"] = labels
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def linear_csv(tmp_path_factory) -> Path:
    z, y = linear_latents()
    return write_csv(tmp_path_factory.mktemp("latent") / "train.csv", z, y)


@pytest.fixture(scope="module")
def trained(linear_csv) -> LatentResult:
    return latent_baseline(linear_csv, FRACTIONS, seed=1337, epochs=EPOCHS, batch_size=BATCH)


# --- reading -----------------------------------------------------------------------------------


def test_read_latents_returns_float32_latents_and_int_labels_in_csv_order(linear_csv):
    z, y = linear_latents()
    latents, labels = read_latents(linear_csv)
    assert latents.shape == (ROWS, 512) and latents.dtype == np.float32
    np.testing.assert_allclose(latents, z.round(6), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(labels, y)


def test_read_latents_orders_columns_v1_to_v512_whatever_the_csv_order(tmp_path):
    z, y = linear_latents(rows=20)
    path = write_csv(tmp_path / "train.csv", z, y)
    frame = pd.read_csv(path)
    frame = frame[["glasses"] + list(LATENT_COLUMNS[::-1]) + ["id"]]
    frame.to_csv(path, index=False)
    latents, _ = read_latents(path)
    np.testing.assert_allclose(latents, z.round(6), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("latents", [None, 4])
def test_read_latents_is_none_without_all_512_columns(tmp_path, latents):
    z = None if latents is None else np.zeros((6, latents))
    assert read_latents(write_csv(tmp_path / "train.csv", z, np.array([0, 1] * 3))) is None


@pytest.mark.parametrize("value", ["abc", "", "nan", "inf", "1.2.3"])
def test_a_bad_latent_names_file_row_and_column(tmp_path, value):
    z, y = linear_latents(rows=10)
    path = write_csv(tmp_path / "train.csv", z, y)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[6, "v37"] = value  # frame row 6 is CSV line 8 (line 1 is the header)
    frame.to_csv(path, index=False)
    with pytest.raises(DatasetError) as caught:
        read_latents(path)
    message = str(caught.value)
    assert str(path) in message and "row 8" in message and "column v37" in message


def test_a_bad_label_is_reported_by_read_labels_rules(tmp_path):
    z, y = linear_latents(rows=10)
    path = write_csv(tmp_path / "train.csv", z, y.astype(str))
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[3, "glasses"] = "2"
    frame.to_csv(path, index=False)
    with pytest.raises(DatasetError, match=r"row 5: glasses must be 0 or 1"):
        read_latents(path)


# --- splitting ---------------------------------------------------------------------------------


def test_split_is_stratified_per_class_with_the_image_rule():
    _, y = linear_latents()
    ids = np.arange(1, ROWS + 1)
    subsets = split_subsets(ids, y, FRACTIONS, seed=1337)
    for label in range(len(CLASSES)):
        count = int((y == label).sum())
        expected = np.array(subset_sizes(count, FRACTIONS))
        np.testing.assert_array_equal(np.bincount(subsets[y == label], minlength=3), expected)
        assert expected[0] == int(count * 0.8) and expected[1] == int(count * 0.1)


def test_split_puts_each_row_in_the_subset_of_its_image(tmp_path):
    labels = balanced_labels(36)  # ids 1..36: sorting face-<id>.png by name is not numeric order
    source = write_kaggle_dataset(tmp_path / "source", labels, size=(8, 8), test_ids=0)
    organized = dataset.organize(source, tmp_path / "organized")
    images = dataset.split(organized.dir, tmp_path / "split", (0.6, 0.2, 0.2), seed=7)
    image_subset = {}
    for index, subset in enumerate(SUBSETS):
        for path in dataset.read_manifest(images.dir, subset)[0]:
            image_subset[int(Path(path).stem.removeprefix("face-"))] = index
    subsets = split_subsets(np.arange(1, 37), np.array(labels), (0.6, 0.2, 0.2), seed=7)
    assert {i + 1: int(s) for i, s in enumerate(subsets)} == image_subset
    # and after the split changed (here: made with another seed), as the split placed them
    moved = dataset.split(organized.dir, tmp_path / "split", (0.6, 0.2, 0.2), seed=8)
    placed = dataset.split_assignments(moved.dir)
    subsets = split_subsets(np.arange(1, 37), np.array(labels), (0.6, 0.2, 0.2), seed=7, assignments=placed)
    assert [SUBSETS[s] for s in subsets] == [placed[f"face-{i}"] for i in range(1, 37)]
    with pytest.raises(DatasetError, match="1 labelled row.*no image in the split, e.g. face-37"):
        split_subsets(np.arange(1, 38), np.array(labels + [1]), (0.6, 0.2, 0.2), seed=7, assignments=placed)


# --- training ----------------------------------------------------------------------------------


def test_baseline_learns_a_linear_rule_on_the_latents(trained):
    assert not trained.skipped and trained.reason is None
    assert trained.test_accuracy >= 0.85
    assert trained.val_accuracy >= 0.85
    assert trained.epochs == EPOCHS and trained.seconds > 0


def test_baseline_split_counts_add_up_and_are_stratified(trained):
    _, y = linear_latents()
    assert trained.train + trained.val + trained.test == ROWS
    per_class = [np.array(subset_sizes(int((y == c).sum()), FRACTIONS)) for c in (0, 1)]
    assert [trained.train, trained.val, trained.test] == list(per_class[0] + per_class[1])


def test_baseline_is_deterministic_for_a_seed(linear_csv, trained):
    again = latent_baseline(linear_csv, FRACTIONS, seed=1337, epochs=EPOCHS, batch_size=BATCH)
    assert (again.val_accuracy, again.test_accuracy) == (trained.val_accuracy, trained.test_accuracy)
    assert (again.train, again.val, again.test) == (trained.train, trained.val, trained.test)


@pytest.mark.parametrize("latents", [None, 4])
def test_baseline_skips_cleanly_without_latent_columns(tmp_path, caplog, latents):
    z = None if latents is None else np.zeros((6, latents))
    path = write_csv(tmp_path / "train.csv", z, np.array([0, 1] * 3))
    with caplog.at_level(logging.INFO, logger="glasses.latent"):
        result = latent_baseline(path)
    assert result.skipped and "v1..v512" in result.reason and str(path) in result.reason
    assert (result.train, result.val, result.test, result.epochs) == (0, 0, 0, 0)
    assert result.val_accuracy is None and result.test_accuracy is None
    assert [r.getMessage() for r in caplog.records] == [result.reason]


def test_result_to_dict_has_every_field(trained):
    data = trained.to_dict()
    assert set(data) == {"skipped", "reason", "train", "val", "test", "val_accuracy",
                         "test_accuracy", "epochs", "seconds"}
    assert data["test_accuracy"] == trained.test_accuracy
