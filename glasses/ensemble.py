"""Ensembles of the kept models: members, the ways to combine them (average, majority vote,
greedy selection), the comparison with the best single model on validation by one rule, and the
one shipped as a Keras model for raw images."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from glasses.config import EnsembleConfig
from glasses.errors import SearchError
from glasses.dataset import read_manifest
from glasses.evaluate import accuracy, check_learning, log_loss, metrics, score_split
from glasses.files import TEMPORARY_SUFFIX, temporary_file, write_text
from glasses.inputs import subset_arrays
from glasses.search import SearchSpec, trial_records
from glasses.search.records import rank_key
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
    val_loss: float | None = None  # at the epoch of its best val accuracy: breaks a tie of accuracies


def candidates(spec_paths: list[Path]) -> list[Candidate]:
    """Completed trials of the given searches that still have a checkpoint, best first (`rank_key`)."""
    found = []
    for spec in (SearchSpec.load(p) for p in spec_paths):
        for record in trial_records(spec.project_dir):
            if record["status"] == "COMPLETED" and Path(record["checkpoint"]).is_file():
                found.append(Candidate(record["trial_id"], float(record["score"]), record["values"],
                                       Path(record["checkpoint"]), spec.image_size,
                                       spec.cache_dir, record["val_loss"]))
    return sorted(found, key=lambda c: rank_key(c.val_accuracy, c.val_loss))


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


def single_model(member, image_size: int):
    """One member served as the ensembles are: images of any size with values 0..255 in,
    P(glasses) out (Resizing and Rescaling inside)."""
    import keras

    inputs, x = _serving_input(image_size)
    return keras.Model(inputs, member(x), name="best_single")


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
    with temporary_file(path, suffix=TEMPORARY_SUFFIX + ".keras") as tmp:  # Keras insists on the .keras suffix
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


CANDIDATES = ("best_single", "average", "majority", "greedy")  # simplest first: the order breaks a full tie
METHODS = CANDIDATES[1:]  # the ways to combine members
SELECTIONS = ("val_log_loss", "val_accuracy")


def _rank(row: dict, selection: str) -> tuple[float, float]:
    """A row's sort key, lower is better: the `selection` metric first, the other one on a tie.
    A missing log loss (a majority vote's) ranks last."""
    loss = row.get("val_log_loss")
    loss, error = (float("inf") if loss is None else loss), -row["val_accuracy"]
    return (loss, error) if selection == "val_log_loss" else (error, loss)


def compare_methods(val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                    selection: str = "val_log_loss") -> dict:
    """Val and test accuracy and val log loss of the best single member and each way to combine them.

    Args:
        val, test: (member probabilities [members, images], labels) on each subset.
        selection: The validation metric that names the best single member ("val_log_loss" or
            "val_accuracy"), the other one breaking a tie: the rule `choose_method` ships by.
    """
    (pv, yv), (pt, yt) = val, test
    rows = [{"val_accuracy": accuracy(p, yv), "val_log_loss": log_loss(p, yv)} for p in pv]
    best = min(range(len(pv)), key=lambda i: _rank(rows[i], selection))
    weights = greedy_selection(pv, yv)
    combine = {"average": lambda p: average(p), "greedy": lambda p: average(p, weights),
               "majority": majority_vote}
    table = {"best_single": {"member": best, **rows[best], "test_accuracy": accuracy(pt[best], yt)}}
    for name, fn in combine.items():
        table[name] = {"val_accuracy": accuracy(fn(pv), yv), "test_accuracy": accuracy(fn(pt), yt),
                       # a vote share is no probability (3 members: 0, 1/3, 2/3 or 1): its log loss
                       # would measure the clipping, not the model
                       "val_log_loss": None if name == "majority" else log_loss(fn(pv), yv)}
    table["greedy"]["weights"] = [int(w) for w in weights]
    return {k: {m: (round(v, 4) if isinstance(v, float) else v) for m, v in row.items()} for k, row in table.items()}


def choose_method(table: dict, method: str = "auto", selection: str = "val_log_loss") -> str:
    """What to ship: `method` when the config names one, else (auto) the best of CANDIDATES on
    validation (never test) by the one rule `selection`.

    The rule: the lowest val log loss ("val_log_loss") or the highest val accuracy
    ("val_accuracy") as the table shows them (4 decimals); on a tie the other metric, then the
    simpler candidate (the order of CANDIDATES). A majority vote has no log loss, so under
    "val_log_loss" it is never chosen, and under "val_accuracy" it loses any tie in accuracy.

    Raises:
        ValueError: An unknown `selection` or `method`.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"ensemble.selection {selection!r} is not one of {', '.join(SELECTIONS)}")
    if method != "auto":
        if method not in CANDIDATES:
            raise ValueError(f"ensemble.method {method!r} is not auto or one of {', '.join(CANDIDATES)}")
        return method
    return min(CANDIDATES, key=lambda name: (*_rank(table[name], selection), CANDIDATES.index(name)))


def _member_predictions(models: list, cache_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for subset in ("val", "test"):
        x, y = subset_arrays(cache_dir, subset)
        out[subset] = (np.stack([m.predict(x, verbose=0).reshape(-1) for m in models]), y)
    return out


def _shipped_model(models: list, size: int, method: str, table: dict):
    if method == "best_single":
        return single_model(models[table["best_single"]["member"]], size)
    if method == "majority":
        return majority_ensemble(models, size)
    weights = table["greedy"]["weights"] if method == "greedy" else None
    kept = [(m, w) for m, w in zip(models, weights or [1] * len(models)) if w]
    return average_ensemble([m for m, _ in kept], size, [w for _, w in kept])


def _score_shipped(model_path: Path, split_dir: Path, predictions_csv: Path | None) -> dict:
    """The saved model reloaded and scored on the raw val and test images, as a user would run it;
    the test predictions written; the alarm checked against the train split's majority class."""
    import keras

    shipped = keras.models.load_model(model_path)
    val_accuracy = accuracy(*score_split(shipped, split_dir, "val")[1:])
    paths, probabilities, labels = score_split(shipped, split_dir, "test")
    if predictions_csv:
        write_text(predictions_csv, pd.DataFrame({"path": paths, "label": labels, "probability": probabilities})
                   .to_csv(index=False))
    train_labels = read_manifest(split_dir, "train")[1]
    return {"val_accuracy": round(val_accuracy, 4), "evaluation": metrics(probabilities, labels),
            "alarm": check_learning(probabilities, labels, train_labels).to_dict()}


def ship_ensemble(spec_paths: list[Path], split_dir: Path, model_path: Path, settings: EnsembleConfig,
                  predictions_csv: Path | None = None) -> dict:
    """Builds and compares the best single model and the ensembles of the passing models, ships
    one, scores it on raw images and checks it learned something.

    The candidates are compared on the cached val/test arrays; the one shipped is
    `settings.method`, or with auto the one `settings.selection` picks on validation only
    (`choose_method`). It is saved, reloaded from disk and scored on the raw test image files, as
    a user would run it. Its test predictions go to `predictions_csv` (path, label, probability).

    Returns:
        "ensemble" (what shipped: method, selection, the rule's pick `selected`, the configured
        method, scores), "best_single", "ensembles" (the comparison table), "evaluation" (test
        metrics) and "alarm" (`glasses.evaluate.Alarm.to_dict`).
    """
    members, warning = select_members(candidates(spec_paths), settings.threshold, settings.fallback)
    size, cache_dir = members[0].image_size, members[0].cache_dir  # the data the members trained on
    models = [load_member(c, name=f"member_{i}_trial_{c.trial_id}") for i, c in enumerate(members)]
    predicted = _member_predictions(models, cache_dir)
    table = compare_methods(predicted["val"], predicted["test"], settings.selection)
    method = choose_method(table, settings.method, settings.selection)
    save_model(_shipped_model(models, size, method, table), model_path)
    scored, best = _score_shipped(model_path, split_dir, predictions_csv), table["best_single"]
    return {
        "ensemble": {"method": method, "selection": settings.selection, "configured_method": settings.method,
                     "selected": choose_method(table, "auto", settings.selection), "members": len(members),
                     "val_accuracy": scored["val_accuracy"], "test_accuracy": scored["evaluation"]["accuracy"],
                     "image_size": size, "trial_ids": [c.trial_id for c in members],
                     "threshold": settings.threshold, "warning": warning, "path": str(model_path)},
        "best_single": {"trial_id": members[best["member"]].trial_id, "val_accuracy": best["val_accuracy"],
                        "test_accuracy": best["test_accuracy"]},
        "ensembles": table,
        "evaluation": scored["evaluation"],
        "alarm": scored["alarm"],
    }
