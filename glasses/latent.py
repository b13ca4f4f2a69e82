"""The report's latent-vector baseline: a small dense network on `train.csv`'s v1..v512.

The Kaggle CSV lists, beside each label, the 512-d GAN latent the face was generated from. The
report trained Dense 128-16-1 (adam, batch 64, 5 epochs) on them with the same stratified
.8/.1/.1 split as the images and got 0.9956 test accuracy: an upper reference for the CNNs.
A CSV without the latent columns (a folder of images labelled by hand) skips the baseline
with one log line instead of failing.

TensorFlow/Keras are imported inside the training function, so importing this module is cheap.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from glasses.dataset import (CLASSES, LATENT_COLUMNS, ROW_COLUMN, SUBSETS, face_file_name, has_latent_columns,
                             read_columns, read_labels, stable_subsets)
from glasses.dataset import split_assignments as dataset_split_assignments
from glasses.errors import DatasetError
from glasses.evaluate import accuracy

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class LatentResult:
    """What the latent baseline did, or why it did not run.

    Attributes:
        skipped: True when the CSV has no latent columns and nothing was trained.
        reason: Why it was skipped, else None.
        train: Rows trained on.
        val: Rows validated on.
        test: Rows tested on.
        val_accuracy: Accuracy on val after the last epoch (None if skipped or val is empty).
        test_accuracy: Accuracy on test (None if skipped or test is empty).
        epochs: Epochs trained (0 if skipped).
        seconds: Wall time of the call.
    """

    skipped: bool
    reason: str | None
    train: int
    val: int
    test: int
    val_accuracy: float | None
    test_accuracy: float | None
    epochs: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def read_latents(csv: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Reads and validates the latents and labels of a labels CSV with Dask.

    Ids and labels are validated by `glasses.dataset.read_labels`; the latents are read in
    the same (CSV) order, so row i of both arrays is CSV line i + 2.

    Returns:
        (latents float32 (n, 512) in v1..v512 order, labels int (n,)), or None when the CSV
        lacks any of v1..v512.

    Raises:
        DatasetError: naming the file and row of a bad id or label (see `read_labels`), or the
            file, row and column of a latent that is empty, non-numeric or not finite.
    """
    table = _read_table(Path(csv))
    return None if table is None else (table[1], table[2])


def _read_table(csv: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(ids, latents, labels) of a labels CSV, or None without latent columns."""
    if not has_latent_columns(csv):
        return None
    labels = read_labels(csv)
    # strings first, so that a bad cell can be reported by row and column instead of a parse error
    frame = read_columns(csv, LATENT_COLUMNS)
    if len(frame) != len(labels):  # both reads parse the same file; this only guards a change under us
        raise DatasetError(f"{csv}: changed while being read ({len(labels)} then {len(frame)} rows); retry")
    return labels["id"].to_numpy(), _parse_latents(csv, frame), labels["glasses"].to_numpy()


def _parse_latents(csv: Path, frame: pd.DataFrame) -> np.ndarray:
    """The latents of `read_columns(csv, LATENT_COLUMNS)` as float32, or a DatasetError naming the bad cell."""
    cells = frame[list(LATENT_COLUMNS)]
    values = cells.apply(lambda column: pd.to_numeric(column.str.strip(), errors="coerce"))
    values = values.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        index, column = np.argwhere(bad)[0]
        raise DatasetError(f"{csv} row {frame[ROW_COLUMN].iat[index]}, column {LATENT_COLUMNS[column]}: latent value "
                           f"{cells.iat[index, column]!r} is not a finite number; fix or remove the row")
    return values.astype(np.float32)


def split_subsets(ids: np.ndarray, labels: np.ndarray, fractions: tuple[float, float, float],
                  seed: int, assignments: dict[str, str] | None = None) -> np.ndarray:
    """Subset index (0 train, 1 val, 2 test) of each row, stratified by class.

    With `assignments` (the image split's, `glasses.dataset.split_assignments`: image name ->
    subset), each row goes where its image `face-<id>` went, so the latent test set is the image
    test set, also after data was added. Without, the images' rule on these rows alone
    (`glasses.dataset.stable_subsets`), which a first split of the same images also gives.
    """
    ids, labels = np.asarray(ids), np.asarray(labels)
    names = [Path(face_file_name(i)).stem for i in ids]
    if assignments is not None:
        missing = [name for name in names if name not in assignments]
        if missing:
            raise DatasetError(f"{len(missing)} labelled row(s) have no image in the split, e.g. {missing[0]}; "
                               "the latent baseline needs the split made from the same train.csv")
        return np.array([SUBSETS.index(assignments[name]) for name in names], dtype=int)
    classes = {name: [names[i] for i in np.flatnonzero(labels == label)] for label, name in enumerate(CLASSES)}
    found = stable_subsets(classes, fractions, seed)
    return np.array([found[name] for name in names], dtype=int)


def build_latent_model(inputs: int = len(LATENT_COLUMNS)):
    """The report's latent classifier: Dense(128, relu) -> Dense(16, relu) -> Dense(1, sigmoid)."""
    import keras

    model = keras.Sequential([
        keras.Input(shape=(inputs,)),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ], name="latent")
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return model


def _score(model, x: np.ndarray, y: np.ndarray) -> float | None:
    """The model's accuracy on (x, y), or None for an empty subset."""
    return accuracy(model.predict(x, verbose=0), y) if len(y) else None


def _skip(csv: Path, started: float) -> LatentResult:
    reason = f"{csv} has no latent columns v1..v512; latent baseline skipped"
    log.warning(reason)
    return LatentResult(skipped=True, reason=reason, train=0, val=0, test=0, val_accuracy=None,
                        test_accuracy=None, epochs=0, seconds=round(time.perf_counter() - started, 3))


def _fit(parts: list[tuple[np.ndarray, np.ndarray]], seed: int, epochs: int, batch_size: int):
    import keras

    keras.utils.set_random_seed(seed)  # weights, shuffling: the same seed gives the same model
    model = build_latent_model(parts[0][0].shape[1])
    (x_train, y_train), (x_val, y_val), _ = parts
    validation = (x_val, y_val) if len(y_val) else None
    model.fit(x_train, y_train, validation_data=validation, epochs=epochs, batch_size=batch_size,
              shuffle=True, verbose=0)
    return model


def latent_baseline(csv: Path, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 1337,
                    epochs: int = 5, batch_size: int = 64, split_dir: Path | None = None) -> LatentResult:
    """Trains and tests the report's dense network on the latents of a labels CSV.

    Split as the images are (`split_subsets`; with `split_dir`, as that split placed them), seeded with `keras.utils.set_random_seed(seed)`,
    validated on val each epoch and scored on test once at the end.

    Returns:
        The split sizes and accuracies, or a skipped result (with the reason, also logged)
        when the CSV has no v1..v512 columns.

    Raises:
        DatasetError: for a bad id, label or latent value (see `read_latents`).
    """
    started = time.perf_counter()
    csv = Path(csv)
    table = _read_table(csv)
    if table is None:
        return _skip(csv, started)
    ids, x, y = table
    assignments = dataset_split_assignments(split_dir) if split_dir else None
    subsets = split_subsets(ids, y, fractions, seed, assignments)
    parts = [(x[subsets == s], y[subsets == s]) for s in range(3)]
    model = _fit(parts, seed, epochs, batch_size)
    return LatentResult(skipped=False, reason=None, train=len(parts[0][1]), val=len(parts[1][1]),
                        test=len(parts[2][1]), val_accuracy=_score(model, *parts[1]),
                        test_accuracy=_score(model, *parts[2]), epochs=epochs,
                        seconds=round(time.perf_counter() - started, 3))

