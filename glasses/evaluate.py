"""Scoring: accuracy, log loss and the test metrics, the alarm when nothing was learned (the
majority class, a confidence interval), a model applied to image files (predict)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist

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


# ---------------------------------------------------------------------------------------------
# Did the shipped model learn anything? The majority class, a confidence interval, an alarm

Z95 = NormalDist().inv_cdf(0.975)  # 1.95996...: a two-sided 95% interval
MIN_ROC_AUC = 0.65  # below this a model barely ranks glasses above no glasses
ADVICE = ("try a bigger budget: more steps and trials (search.stage<N>.max_steps, max_trials), bigger "
          "image sizes (search.stage1.image_sizes), a longer --time-budget, or more labelled data")
# When the model ranks well and beats the majority's rate, but on too few test images to be sure.
TOO_FEW_ADVICE = ("score it on more labelled images (`glasses evaluate --data-dir D`, or a bigger test share in "
                  "data.fractions) to tell; to improve it, ")


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion `successes / n` (95% with the default z).

    Unlike the normal approximation it stays inside [0, 1] and is not of zero width at 0 or n.
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got successes={successes}, n={n}")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # exact at the ends: the formula gives 0 and 1 there, up to rounding
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)


def majority_baseline(train_labels: np.ndarray, test_labels: np.ndarray) -> tuple[int, float]:
    """The class most frequent in TRAIN (a tie: 1, glasses) and the share of TEST images in it:
    the accuracy of a model that always answers that class."""
    train, test = np.asarray(train_labels).reshape(-1), np.asarray(test_labels).reshape(-1)
    if not len(train) or not len(test):
        raise ValueError(f"need train and test labels, got {len(train)} train and {len(test)} test")
    majority = int(np.mean(train == 1) >= 0.5)
    return majority, float(np.mean(test == majority))


@dataclass(frozen=True)
class Alarm:
    """The verdict on whether a model learned anything, with the numbers behind it.

    Attributes:
        raised: True when the model does not clearly beat always answering the majority class.
        reason: Why it was raised (None when not).
        majority_class: The most frequent class in train (0 no glasses, 1 glasses).
        majority_rate: The test accuracy of always answering that class.
        test_accuracy: The model's test accuracy (P(glasses) >= 0.5).
        accuracy_ci95: The Wilson 95% interval of that accuracy, [low, high].
        test_roc_auc: The model's test ROC-AUC (None when test holds one class).
        min_roc_auc: The ROC-AUC the model must reach.
        advice: What to try when raised (None when not).
        too_few: Raised only because the test images are too few to tell a model that ranks
            well and beats the majority's rate from that rate: "not clearly learned".
    """

    raised: bool
    reason: str | None
    majority_class: int
    majority_rate: float
    test_accuracy: float
    accuracy_ci95: tuple[float, float]
    test_roc_auc: float | None
    min_roc_auc: float
    advice: str | None
    too_few: bool = False

    @property
    def verdict(self) -> str:
        """The verdict: "learned", "nothing learned", or "not clearly learned" (too few test images)."""
        if not self.raised:
            return "learned"
        return "not clearly learned" if self.too_few else "nothing learned"

    @property
    def message(self) -> str:
        """One human line: the verdict, and what to try when raised."""
        if self.raised:
            return f"{self.verdict}: {self.reason}; {self.advice}"
        auc = "n/a" if self.test_roc_auc is None else f"{self.test_roc_auc:.4f}"
        low, high = self.accuracy_ci95
        return (f"learned: test accuracy {self.test_accuracy:.4f} (95% CI {low:.4f}-{high:.4f}) above the "
                f"majority class's {self.majority_rate:.4f}; test ROC-AUC {auc}")

    def to_dict(self) -> dict:
        return {**asdict(self), "accuracy_ci95": list(self.accuracy_ci95), "verdict": self.verdict,
                "message": self.message}


def check_learning(probabilities: np.ndarray, labels: np.ndarray, train_labels: np.ndarray,
                   min_roc_auc: float = MIN_ROC_AUC) -> Alarm:
    """Raises the alarm when a model's test predictions do not clearly beat the majority class:
    a test ROC-AUC under `min_roc_auc`, or the majority class's test rate inside (or above) the
    95% Wilson interval of the test accuracy (its lower bound <= that rate).

    Args:
        probabilities, labels: The model's P(glasses) on the test images, and their labels.
        train_labels: The train split's labels, which name the majority class.
    """
    p, y = np.asarray(probabilities, dtype=float).reshape(-1), np.asarray(labels).reshape(-1).astype(int)
    majority, rate = majority_baseline(train_labels, y)
    correct = int(np.sum((p >= 0.5) == y))
    low, high = wilson_interval(correct, len(y))
    auc = roc_auc(p, y)
    reasons = []
    if auc is not None and auc < min_roc_auc:
        reasons.append(f"test ROC-AUC {auc:.4f} is under {min_roc_auc}")
    advice, too_few = ADVICE, False
    if low <= rate:
        where = "inside" if rate <= high else "above"
        reasons.append(f"always answering {CLASSES[majority]} (the train majority) scores {rate:.4f} on test, "
                       f"{where} the test accuracy's 95% interval [{low:.4f}, {high:.4f}]")
        if not reasons[:-1] and correct / len(y) > rate:  # a fair ranking and a better accuracy: maybe noise
            reasons.append(f"{len(y)} test images are too few to tell this model from the majority class")
            advice, too_few = TOO_FEW_ADVICE + ADVICE, True
    raised = bool(reasons)
    return Alarm(raised, "; ".join(reasons) or None, majority, round(rate, 4), round(correct / len(y), 4),
                 (round(low, 4), round(high, 4)), auc, min_roc_auc, advice if raised else None, too_few)


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
