"""Ensembles of the kept models: members, the ways to combine them (average, majority vote,
greedy selection), the comparison on validation, and the one shipped as a Keras model for raw images."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from glasses.config import EnsembleConfig
from glasses.errors import SearchError
from glasses.evaluate import accuracy, log_loss, metrics, score_split
from glasses.files import temporary_file, write_text
from glasses.inputs import subset_arrays
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
    cache_dir: Path  # the data it trained on


def candidates(spec_paths: list[Path]) -> list[Candidate]:
    """Completed trials of the given searches that still have a checkpoint, best first."""
    found = []
    for spec in (SearchSpec.load(p) for p in spec_paths):
        for record in trial_records(spec.project_dir):
            if record["status"] == "COMPLETED" and Path(record["checkpoint"]).is_file():
                found.append(Candidate(record["trial_id"], float(record["score"]), record["values"],
                                       Path(record["checkpoint"]), spec.image_size,
                                       spec.cache_dir))
    return sorted(found, key=lambda c: c.val_accuracy, reverse=True)


def select_members(found: list[Candidate], threshold: float, fallback: int) -> tuple[list[Candidate], str | None]:
    """Members above the validation threshold; if fewer than `fallback` pass, the best `fallback`
    with a warning (an "ensemble" of the one model that happened to pass would be no ensemble)."""
    if not found:
        raise SearchError("no completed trial with a checkpoint to build an ensemble from; re-run to continue the search")
    passing = [c for c in found if c.val_accuracy >= threshold]
    if len(passing) >= min(fallback, len(found)):
        return passing, None
    taken = found[:fallback]
    warning = (f"{len(passing) or 'no'} model{'' if len(passing) == 1 else 's'} reached val accuracy {threshold}; "
               f"taking the best {len(taken)} ({found[0].val_accuracy:.4f} down to {taken[-1].val_accuracy:.4f})")
    log.warning(warning)
    return taken, warning


def load_member(candidate: Candidate, name: str):
    """Rebuilds a trial's model from its hyperparameters and loads its best-epoch weights."""
    from glasses.model import build_model

    model = build_model(spec_from_values(candidate.values, candidate.image_size), name=name, compile=False)
    model.load_weights(str(candidate.checkpoint), skip_mismatch=False)
    return model


def average_ensemble(members: list, image_size: int, weights: list[int] | None = None):
    """One model taking images of any size with values 0..255 and returning P(glasses).

    Resizing (nearest, as the training cache) and rescaling are inside, then the members'
    outputs are averaged with Keras' Average layer (a member of weight k enters k times).
    """
    import keras

    inputs, x = _serving_input(image_size)
    outputs = [member(x) for member, w in zip(members, weights or [1] * len(members)) for _ in range(int(w))]
    return keras.Model(inputs, _mean(outputs, "average"), name="ensemble")


def majority_ensemble(members: list, image_size: int):
    """One model whose output is the share of members voting 'glasses' (ties: the mean decides).

    Built from stock layers only, so plain `keras.models.load_model` loads it: a vote is a
    hard sigmoid of 1e6 * (p - 0.5), and 0.001 * (mean - 0.5) breaks ties without moving any
    other share across 0.5 (for up to 100 members).
    """
    import keras

    inputs, x = _serving_input(image_size)
    outputs = [member(x) for member in members]
    votes = [keras.layers.Activation("hard_sigmoid")(keras.layers.Rescaling(1e6, offset=-5e5)(p)) for p in outputs]
    share = _mean(votes, "share")
    nudge = keras.layers.Rescaling(1e-3, offset=-5e-4)(_mean(outputs, "mean"))
    voted = keras.layers.ReLU(max_value=1.0, name="vote")(keras.layers.Add()([share, nudge]))
    return keras.Model(inputs, voted, name="ensemble")


def _serving_input(image_size: int):
    import keras

    inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.Resizing(image_size, image_size, interpolation="nearest", name="resize")(inputs)
    return inputs, keras.layers.Rescaling(1.0 / 255, name="rescale")(x)


def _mean(tensors: list, name: str):
    import keras

    return keras.layers.Average(name=name)(tensors) if len(tensors) > 1 else tensors[0]


def save_model(model, path: Path) -> Path:
    """Saves a Keras model to a temporary `.keras` beside `path`, then renames it into place."""
    with temporary_file(path, suffix=".keras") as tmp:  # Keras insists on the .keras suffix
        model.save(tmp)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Ways to combine members' predictions (rows: members, columns: images)


def average(probabilities: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The (weighted) mean of the members' P(glasses)."""
    return np.average(np.asarray(probabilities), axis=0, weights=weights)


def majority_vote(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The share of members voting 'glasses'; a tie is broken by the mean probability.

    Returned as a score in [0, 1] so that `>= 0.5` is the majority's label (the same
    arithmetic as `majority_ensemble`).
    """
    probabilities = np.asarray(probabilities)
    share = np.mean(probabilities >= threshold, axis=0)
    return np.clip(share + 1e-3 * (average(probabilities) - 0.5), 0.0, 1.0)


def validation_score(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Accuracy, then lower log loss: on a few hundred images many accuracies tie."""
    return accuracy(probabilities, labels), -log_loss(probabilities, labels)


def greedy_selection(probabilities: np.ndarray, labels: np.ndarray, init: int = 3,
                     steps: int | None = None) -> np.ndarray:
    """Forward selection with replacement (Caruana et al., 2004) on validation predictions.

    Starts from the `init` best members (sorted initialisation: the one member best on a
    small validation set is partly best by luck), then `steps` times adds, possibly again,
    the member whose addition scores best (accuracy, then log loss), and keeps the step that
    scored best overall.

    Returns:
        The weight (times chosen) of each member.
    """
    probabilities, labels = np.asarray(probabilities), np.asarray(labels).reshape(-1)
    count = len(probabilities)
    ranked = sorted(range(count), key=lambda i: validation_score(probabilities[i], labels), reverse=True)
    weights = np.zeros(count)
    weights[ranked[:init]] = 1
    best, best_weights = validation_score(average(probabilities, weights), labels), weights.copy()
    for _ in range(steps if steps is not None else 2 * count):
        scores = [validation_score(average(probabilities, weights + np.eye(count)[i]), labels) for i in range(count)]
        weights[max(range(count), key=lambda i: scores[i])] += 1
        score = validation_score(average(probabilities, weights), labels)
        if score > best:
            best, best_weights = score, weights.copy()
    return best_weights


# ---------------------------------------------------------------------------------------------
# Comparing the ways to combine, and shipping the best on validation


METHODS = ("average", "greedy", "majority")  # preference order on a validation tie


def compare_methods(val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> dict:
    """Val and test accuracy of the best single member and each way to combine the members.

    Args:
        val, test: (member probabilities [members, images], labels) on each subset.
    """
    (pv, yv), (pt, yt) = val, test
    best = max(range(len(pv)), key=lambda i: validation_score(pv[i], yv))
    weights = greedy_selection(pv, yv)
    combine = {"average": lambda p: average(p), "greedy": lambda p: average(p, weights),
               "majority": majority_vote}
    table = {"best_single": {"member": best, "val_accuracy": accuracy(pv[best], yv),
                             "val_log_loss": log_loss(pv[best], yv), "test_accuracy": accuracy(pt[best], yt)}}
    for name, fn in combine.items():
        table[name] = {"val_accuracy": accuracy(fn(pv), yv), "test_accuracy": accuracy(fn(pt), yt),
                       # a vote share is no probability: a log loss of it would mean nothing
                       "val_log_loss": None if name == "majority" else log_loss(fn(pv), yv)}
    table["greedy"]["weights"] = [int(w) for w in weights]
    return {k: {m: (round(v, 4) if isinstance(v, float) else v) for m, v in row.items()} for k, row in table.items()}


def choose_method(table: dict, method: str = "auto") -> str:
    """The method to ship: the config's, or with 'auto' the best on validation (never test):
    accuracy, then log loss, then the order of METHODS."""
    if method != "auto":
        return method
    def loss(m: str) -> float:
        value = table[m].get("val_log_loss")
        return float("inf") if value is None else value

    return max(METHODS, key=lambda m: (table[m]["val_accuracy"], -loss(m), -METHODS.index(m)))


def _member_predictions(models: list, cache_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for subset in ("val", "test"):
        x, y = subset_arrays(cache_dir, subset)
        out[subset] = (np.stack([m.predict(x, verbose=0).reshape(-1) for m in models]), y)
    return out


def _shipped_model(models: list, size: int, method: str, table: dict):
    if method == "majority":
        return majority_ensemble(models, size)
    weights = table["greedy"]["weights"] if method == "greedy" else None
    kept = [(m, w) for m, w in zip(models, weights or [1] * len(models)) if w]
    return average_ensemble([m for m, _ in kept], size, [w for _, w in kept])


def ship_ensemble(spec_paths: list[Path], split_dir: Path, model_path: Path, settings: EnsembleConfig,
                  predictions_csv: Path | None = None) -> dict:
    """Builds, compares and ships the ensemble of the passing models; scores it on raw images.

    The methods are compared on the cached val/test arrays; the one shipped is chosen on
    validation only, saved, reloaded from disk and scored on the raw test image files, as a
    user would run it. Its test predictions go to `predictions_csv` (path, label, probability).
    """
    import keras

    members, warning = select_members(candidates(spec_paths), settings.threshold, settings.fallback)
    size, cache_dir = members[0].image_size, members[0].cache_dir  # the data the members trained on
    models = [load_member(c, name=f"member_{i}_trial_{c.trial_id}") for i, c in enumerate(members)]
    predicted = _member_predictions(models, cache_dir)
    table = compare_methods(predicted["val"], predicted["test"])
    method = choose_method(table, settings.method)
    save_model(_shipped_model(models, size, method, table), model_path)
    shipped = keras.models.load_model(model_path)
    shipped_val = accuracy(*score_split(shipped, split_dir, "val")[1:])
    paths, probabilities, labels = score_split(shipped, split_dir, "test")
    if predictions_csv:
        write_text(predictions_csv, pd.DataFrame({"path": paths, "label": labels, "probability": probabilities})
                   .to_csv(index=False))
    evaluation = metrics(probabilities, labels)
    best = table["best_single"]
    return {
        "ensemble": {"method": method, "members": len(members), "val_accuracy": round(shipped_val, 4),
                     "test_accuracy": evaluation["accuracy"], "image_size": size,
                     "trial_ids": [c.trial_id for c in members], "threshold": settings.threshold,
                     "warning": warning, "path": str(model_path)},
        "best_single": {"trial_id": members[best["member"]].trial_id, "val_accuracy": best["val_accuracy"],
                        "test_accuracy": best["test_accuracy"]},
        "ensembles": table,
        "evaluation": evaluation,
    }
