"""Scoring: accuracy, log loss and the test metrics, a model applied to image files (predict)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from glasses.dataset import CLASSES, IMAGE_EXTENSIONS, find_layout, read_labels, read_manifest, require_image
from glasses.errors import DatasetError
from glasses.inputs import read_rgb

def accuracy(probabilities: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    """The share of images whose P(glasses) >= threshold agrees with the label."""
    return float(np.mean((np.asarray(probabilities).reshape(-1) >= threshold) == np.asarray(labels).reshape(-1)))


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of P(glasses) against the labels (clipped away from 0 and 1)."""
    p = np.clip(np.asarray(probabilities, dtype=float).reshape(-1), 1e-7, 1 - 1e-7)
    y = np.asarray(labels).reshape(-1)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def metrics(probabilities, labels, threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall, F1, ROC-AUC and the confusion matrix [[tn, fp], [fn, tp]]."""
    p, y = np.asarray(probabilities, dtype=float).reshape(-1), np.asarray(labels).reshape(-1).astype(int)
    predicted = (p >= threshold).astype(int)
    tp, fp = int(np.sum((predicted == 1) & (y == 1))), int(np.sum((predicted == 1) & (y == 0)))
    fn, tn = int(np.sum((predicted == 0) & (y == 1))), int(np.sum((predicted == 0) & (y == 0)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"n": int(len(y)), "accuracy": round(accuracy(p, y, threshold), 4), "precision": round(precision, 4),
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


def score_split(model, split_dir: Path, subset: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Image paths, P(glasses) and labels of one subset of a split, read from the image files."""
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
    return [(require_image(layout, image_id, row, spelled), int(label))
            for image_id, label, row, spelled in zip(labels["id"], labels["glasses"], labels["row"],
                                                     labels["id_text"])]
