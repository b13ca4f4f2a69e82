"""Scoring: the ensemble methods compared, the shipped model on raw images, metrics, predict."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from glasses.config import EnsembleConfig
from glasses.dataset import CLASSES, IMAGE_EXTENSIONS, find_layout, image_path, read_labels, read_manifest
from glasses.ensemble import (accuracy, average, average_ensemble, candidates, greedy_selection, load_member,
                              log_loss, majority_ensemble, majority_vote, save_model, select_members,
                              validation_score)
from glasses.errors import DatasetError
from glasses.files import write_text
from glasses.pipeline import read_rgb, subset_arrays

log = logging.getLogger(__name__)

METHODS = ("average", "greedy", "majority")  # preference order on a validation tie


def metrics(probabilities, labels, threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall, F1, ROC-AUC and the confusion matrix [[tn, fp], [fn, tp]]."""
    p, y = np.asarray(probabilities, dtype=float).reshape(-1), np.asarray(labels).reshape(-1).astype(int)
    predicted = (p >= threshold).astype(int)
    tp, fp = int(np.sum((predicted == 1) & (y == 1))), int(np.sum((predicted == 1) & (y == 0)))
    fn, tn = int(np.sum((predicted == 0) & (y == 1))), int(np.sum((predicted == 0) & (y == 0)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"n": int(len(y)), "accuracy": round((tp + tn) / len(y), 4), "precision": round(precision, 4),
            "recall": round(recall, 4), "f1": round(f1, 4), "roc_auc": roc_auc(p, y),
            "confusion": [[tn, fp], [fn, tp]], "threshold": threshold}


def roc_auc(probabilities: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); None for one class."""
    positives, negatives = int(np.sum(labels == 1)), int(np.sum(labels == 0))
    if not positives or not negatives:
        return None
    ranks = pd.Series(probabilities).rank(method="average").to_numpy()
    u = ranks[labels == 1].sum() - positives * (positives + 1) / 2
    return round(float(u / (positives * negatives)), 4)


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


def predict_arrays(model, images: list[np.ndarray], batch_size: int = 64) -> np.ndarray:
    """P(glasses) for RGB uint8 arrays of any sizes, batched by shape, in input order."""
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        by_shape[image.shape].append(index)
    out = np.zeros(len(images), dtype=np.float32)
    for indices in by_shape.values():
        stacked = np.stack([images[i] for i in indices]).astype(np.float32)
        out[indices] = model.predict(stacked, batch_size=batch_size, verbose=0).reshape(-1)
    return out


def predict_images(model, paths: list[str], chunk: int = 256) -> np.ndarray:
    """P(glasses) for image files, decoded a chunk at a time so memory stays bounded."""
    parts = [predict_arrays(model, [read_rgb(p) for p in paths[i:i + chunk]]) for i in range(0, len(paths), chunk)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


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


def ship_ensemble(spec_paths: list[Path], cache_dir: Path, split_dir: Path, model_path: Path,
                  settings: EnsembleConfig, predictions_csv: Path | None = None) -> dict:
    """Builds, compares and ships the ensemble of the passing models; scores it on raw images.

    The methods are compared on the cached val/test arrays; the one shipped is chosen on
    validation only, saved, reloaded from disk and scored on the raw test image files, as a
    user would run it. Its test predictions go to `predictions_csv` (path, label, probability).
    """
    import keras

    members, warning = select_members(candidates(spec_paths), settings.threshold, settings.fallback)
    size = members[0].image_size
    models = [load_member(c, name=f"member_{i}_trial_{c.trial_id}") for i, c in enumerate(members)]
    predicted = _member_predictions(models, cache_dir)
    table = compare_methods(predicted["val"], predicted["test"])
    method = choose_method(table, settings.method)
    save_model(_shipped_model(models, size, method, table), model_path)
    shipped = keras.models.load_model(model_path)
    shipped_val = accuracy(*_score_split(shipped, split_dir, "val")[1:])
    paths, probabilities, labels = _score_split(shipped, split_dir, "test")
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


def _score_split(model, split_dir: Path, subset: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    paths, labels = read_manifest(split_dir, subset)
    return paths, predict_images(model, paths), np.asarray(labels)


# ---------------------------------------------------------------------------------------------
# Applying a model to files: `glasses predict` and `glasses evaluate`


def image_files(inputs: list[Path]) -> list[Path]:
    """The files named, and the image files under the directories named, sorted per directory."""
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            found.append(item)
    return found


def predict_files(model, files: list[Path], on_skip=None, chunk: int = 256) -> list[tuple[Path, float]]:
    """P(glasses) of each readable image; unreadable ones are reported to `on_skip` and left out."""
    results = []
    for start in range(0, len(files), chunk):
        readable, images = [], []
        for path in files[start:start + chunk]:
            try:
                images.append(read_rgb(path))
                readable.append(path)
            except Exception as error:  # any undecodable file: say so, carry on with the rest
                if on_skip:
                    on_skip(path, f"{type(error).__name__}: {error}")
        if images:
            results += list(zip(readable, map(float, predict_arrays(model, images))))
    return results


def labelled_images(data_dir: Path) -> list[tuple[Path, int]]:
    """(image, label) pairs of a dataset in the Kaggle layout or in glasses/ + no_glasses/ folders."""
    data_dir = Path(data_dir)
    if all((data_dir / name).is_dir() for name in CLASSES):
        return [(p, label) for label, name in enumerate(CLASSES) for p in image_files([data_dir / name])]
    if not (data_dir / "train.csv").is_file():
        raise DatasetError(f"{data_dir}: neither train.csv (Kaggle layout) nor glasses/ and no_glasses/ folders")
    layout = find_layout(data_dir)
    labels = read_labels(layout.csv)
    pairs = []
    for image_id, label, row in zip(labels["id"], labels["glasses"], labels["row"]):
        path = image_path(layout.image_dir, image_id)
        if path is None:
            raise DatasetError(f"{layout.csv} row {row}: no image for id {image_id} in {layout.image_dir}")
        pairs.append((path, int(label)))
    return pairs
