"""The average ensemble of the kept models, shipped as one Keras model for raw images."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glasses.search import SearchSpec, trial_records
from glasses.space import spec_from_values

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A finished trial with a checkpoint: a possible ensemble member."""

    trial_id: str
    val_accuracy: float
    values: dict
    checkpoint: Path
    image_size: int


def candidates(spec_paths: list[Path]) -> list[Candidate]:
    """Completed trials of the given searches that still have a checkpoint, best first."""
    found = []
    for spec in (SearchSpec.load(p) for p in spec_paths):
        for record in trial_records(spec.project_dir):
            if record["status"] == "COMPLETED" and Path(record["checkpoint"]).is_file():
                found.append(Candidate(record["trial_id"], float(record["score"]), record["values"],
                                       Path(record["checkpoint"]), spec.image_size))
    return sorted(found, key=lambda c: c.val_accuracy, reverse=True)


def select_members(found: list[Candidate], threshold: float, fallback: int) -> tuple[list[Candidate], str | None]:
    """Members above the validation threshold; the best `fallback` with a warning if none passes."""
    if not found:
        raise ValueError("no completed trial with a checkpoint to build an ensemble from")
    passing = [c for c in found if c.val_accuracy >= threshold]
    if passing:
        return passing, None
    warning = (f"no model reached val accuracy {threshold}; falling back to the best {min(fallback, len(found))} "
               f"(best {found[0].val_accuracy:.4f})")
    log.warning(warning)
    return found[:fallback], warning


def load_member(candidate: Candidate, name: str):
    """Rebuilds a trial's model from its hyperparameters and loads its best-epoch weights."""
    from glasses.model import build_model

    model = build_model(spec_from_values(candidate.values, candidate.image_size), name=name, compile=False)
    model.load_weights(str(candidate.checkpoint), skip_mismatch=False)
    return model


def average_ensemble(members: list, image_size: int):
    """One model taking images of any size with values 0..255 and returning P(glasses).

    Resizing (nearest, as the training cache) and rescaling are inside, then the members'
    outputs are averaged with Keras' Average layer.
    """
    import keras

    inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.Resizing(image_size, image_size, interpolation="nearest", name="resize")(inputs)
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(x)
    outputs = [member(x) for member in members]
    averaged = keras.layers.Average(name="average")(outputs) if len(outputs) > 1 else outputs[0]
    return keras.Model(inputs, averaged, name="ensemble")


def save_model(model, path: Path) -> Path:
    """Saves a Keras model to a temporary `.keras` beside `path`, then renames it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".keras", dir=path.parent)
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def accuracy(probabilities: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    return float(np.mean((np.asarray(probabilities).reshape(-1) >= threshold) == np.asarray(labels).reshape(-1)))
