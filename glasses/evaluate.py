"""Scoring: accuracy, log loss and the test metrics, the alarm when nothing was learned (the
majority class, a confidence interval), a model applied to image files (predict), a batch at a
time in bounded memory whatever the number and size of the images."""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from glasses.dataset import CLASSES, IMAGE_EXTENSIONS, find_layout, read_labels, read_manifest, require_image
from glasses.errors import DatasetError, GlassesError
from glasses.inputs import read_rgb, resize_uint8

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


PREDICT_BATCH = 32  # images a predict step: lines come out soon, and a batch of model-sized images is small
# A model that takes images of any size as they are (no Resizing layer on its input) gets them
# at full size: a batch ends at this many pixels too (16 M: 192 MiB as float32), at least one image.
MAX_BATCH_PIXELS = 16 * 1024 * 1024
READ_THREADS = 4  # images decoded at once (PIL releases the GIL): at most this many full-size decodes live


def predict_arrays(model, images: list[np.ndarray], batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """P(glasses) for RGB uint8 arrays of any sizes, batched by shape, in input order."""
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        by_shape[image.shape].append(index)
    out = np.zeros(len(images), dtype=np.float32)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            part = indices[start:start + batch_size]
            stacked = np.stack([images[i] for i in part]).astype(np.float32)
            out[part] = np.asarray(model.predict_on_batch(stacked)).reshape(-1)
    return out


def predict_images(model, paths: list[str], batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """P(glasses) for image files, in bounded memory (`iter_predictions`); an unreadable file raises."""
    found = [p for batch in iter_predictions(model, list(map(Path, paths)), batch_size=batch_size) for _, p in batch]
    return np.asarray(found, dtype=np.float32)


def model_input_size(model) -> tuple[int, int] | None:
    """The (height, width) at which every image reaches `model`'s layers, when an image can be
    brought to it before the model: a fixed input shape, or a nearest-neighbour Resizing layer
    (the shipped ensemble's "resize") that alone reads the input. None otherwise.

    Resizing an image to it with `glasses.inputs.resize_uint8` gives the model the very pixels its own layer
    would pick (`glasses.inputs.nearest_indices`), and that layer is then the identity.
    """
    import keras

    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        return None
    source = model.inputs[0]
    height, width = source.shape[1:3]
    if height is not None and width is not None:
        return int(height), int(width)
    readers = [layer for layer in model.layers if _reads(layer, source)]
    if len(readers) != 1 or not isinstance(readers[0], keras.layers.Resizing):
        return None
    layer = readers[0]
    if (layer.interpolation != "nearest" or layer.crop_to_aspect_ratio or layer.pad_to_aspect_ratio
            or layer.data_format != "channels_last"):
        return None
    return int(layer.height), int(layer.width)


def _reads(layer, tensor) -> bool:
    """Whether `layer` may read `tensor` (True when Keras cannot say: a layer called twice)."""
    import keras

    if isinstance(layer, keras.layers.InputLayer):
        return False
    try:
        inputs = layer.input
    except (AttributeError, ValueError):
        return True
    return any(t is tensor for t in keras.tree.flatten(inputs))


def read_for_model(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """An image file as RGB uint8, at `size` when given: the full-size decode lives only here.

    Raises:
        DatasetError: naming the file when its header claims more than
            `glasses.dataset.MAX_IMAGE_PIXELS` pixels (nothing is decoded then).
        OSError: when it is not a decodable image.
    """
    image = read_rgb(path)
    return image if size is None or image.shape[:2] == size else resize_uint8(image, size)


def skip_reason(path: Path, error: BaseException) -> str:
    """Why an image was skipped, in one line: our own errors as they are (without the path they
    start with), any other as its type and message."""
    if isinstance(error, GlassesError):
        return str(error).removeprefix(f"{path}: ")
    why = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {why}".rstrip(": ")


def iter_predictions(model, files: list[Path], on_skip=None, batch_size: int = PREDICT_BATCH,
                     threads: int = READ_THREADS) -> Iterator[list[tuple[Path, float]]]:
    """P(glasses) of image files, a batch at a time, in input order, in bounded memory.

    Each image is decoded (on up to `threads` threads) and at once resized to the model's input
    size (`model_input_size`); `batch_size` of them are predicted together and yielded as
    (path, P(glasses)) pairs. So memory holds `threads` full-size decodes and one batch of small
    images whatever the number and size of the files (an image over
    `glasses.dataset.MAX_IMAGE_PIXELS` is refused from its header). For a model that takes any
    size as it is, a batch also ends at MAX_BATCH_PIXELS.

    Args:
        on_skip: Called with (path, reason) for each unreadable file, which is left out; without
            it, the first unreadable file raises.
    """
    size = model_input_size(model)
    batch: list[tuple[Path, np.ndarray]] = []
    pixels = 0
    for path, image, error in _read_ahead(files, lambda p: read_for_model(p, size), max(1, threads)):
        if error is not None:
            if on_skip is None:
                raise error
            on_skip(path, skip_reason(path, error))
            continue
        batch.append((path, image))
        pixels += image.shape[0] * image.shape[1]
        if len(batch) >= batch_size or pixels >= MAX_BATCH_PIXELS:
            yield _predicted(model, batch)
            batch, pixels = [], 0
    if batch:
        yield _predicted(model, batch)


def _predicted(model, batch: list[tuple[Path, np.ndarray]]) -> list[tuple[Path, float]]:
    probabilities = predict_arrays(model, [image for _, image in batch], batch_size=len(batch))
    return [(path, float(p)) for (path, _), p in zip(batch, probabilities)]


def _read_ahead(files: list[Path], read, threads: int) -> Iterator[tuple[Path, np.ndarray | None, Exception | None]]:
    """(path, read(path), None) or (path, None, the error) for each file in order, read on
    `threads` threads: at most `threads` reads are running or waiting to be taken at any time."""
    def attempt(path: Path):
        try:
            return path, read(path), None
        except Exception as error:  # any undecodable file: the caller skips it or raises
            return path, None, error

    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque = deque()
        for path in files:
            pending.append(pool.submit(attempt, path))
            if len(pending) >= threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


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


def predict_files(model, files: list[Path], on_skip=None, batch_size: int = PREDICT_BATCH) -> list[tuple[Path, float]]:
    """P(glasses) of each readable image, in input order (`iter_predictions`, all at once);
    unreadable ones are reported to `on_skip` (when given) and left out."""
    skip = on_skip or (lambda path, why: None)
    return [pair for batch in iter_predictions(model, files, skip, batch_size) for pair in batch]


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
