"""How hard is the built-in synthetic dataset? A linear pixel baseline against a small CNN.

Synthesizes a dataset into a temporary directory, splits it 80/20 (stratified), then reports
  1. logistic regression on raw 32x32 pixels (grey and RGB; NumPy, L2 grid; the best test
     accuracy over the grid, so an optimistic figure for the baseline),
  2. a small Keras CNN at --size px with the report's augmentation layers inside the model,
  3. the synthesis time.
The data should be hard for (1), easy for (2): the search only matters if a linear model fails.

    .venv/bin/python bench/synth_difficulty.py --n 1500 --resolution 128 --size 48 --epochs 15
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glasses.dataset import IMAGE_SUBDIR, face_file_name  # noqa: E402
from glasses.synth import plan, render_face, synthesize  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1500, help="labelled images to synthesize")
    parser.add_argument("--resolution", type=int, default=128, help="side of the synthesized PNGs")
    parser.add_argument("--size", type=int, default=48, help="side the CNN sees")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--models", type=int, default=1, help="CNNs averaged into an ensemble")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--interp", default="nearest", help="tf.image.resize method (the report used nearest)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--data", type=Path, default=None, help="reuse/keep the dataset here")
    parser.add_argument("--skip-cnn", action="store_true")
    parser.add_argument("--sheet", type=Path, default=None, help="also save a 4x4 contact sheet here")
    return parser.parse_args(argv)


def load(root: Path, size: int, interp: str) -> tuple[np.ndarray, np.ndarray]:
    """Images of train.csv resized to size x size (uint8 NHWC) and their labels."""
    import tensorflow as tf

    frame = pd.read_csv(root / "train.csv", usecols=["id", "glasses"])
    images = [np.asarray(Image.open(root / IMAGE_SUBDIR / face_file_name(i)).convert("RGB")) for i in frame["id"]]
    resized = tf.image.resize(np.stack(images), (size, size), method=interp)
    return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8), frame["glasses"].to_numpy()


def stratified_split(labels: np.ndarray, seed: int, test: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, held = [], []
    for value in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == value))
        cut = int(round(len(index) * test))
        held.append(index[:cut])
        train.append(index[cut:])
    return rng.permutation(np.concatenate(train)), np.concatenate(held)


def logistic_accuracy(x_train, y_train, x_test, y_test, l2: float, steps: int = 400) -> float:
    """Full-batch Adam on the L2-regularised logistic loss; test accuracy."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mean) / std, (x_test - mean) / std
    w, bias = np.zeros(a.shape[1]), 0.0
    m, v, mb, vb = np.zeros_like(w), np.zeros_like(w), 0.0, 0.0
    for t in range(1, steps + 1):
        p = 1 / (1 + np.exp(-(a @ w + bias)))
        gw, gb = a.T @ (p - y_train) / len(a) + l2 * w, float(np.mean(p - y_train))
        m, v = 0.9 * m + 0.1 * gw, 0.999 * v + 0.001 * gw**2
        mb, vb = 0.9 * mb + 0.1 * gb, 0.999 * vb + 0.001 * gb**2
        w -= 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        bias -= 0.01 * (mb / (1 - 0.9**t)) / (np.sqrt(vb / (1 - 0.999**t)) + 1e-8)
    return float(np.mean(((b @ w + bias) > 0) == y_test))


def pixel_baselines(root: Path, train: np.ndarray, test: np.ndarray) -> dict[str, float]:
    images, labels = load(root, 32, "area")
    grey = images.astype(np.float64) @ [0.299, 0.587, 0.114]
    results = {}
    for name, x in (("grey32", grey.reshape(len(grey), -1)), ("rgb32", images.reshape(len(images), -1) / 255.0)):
        scores = {l2: logistic_accuracy(x[train], labels[train], x[test], labels[test], l2) for l2 in (1e-3, 1e-2, 1e-1, 1.0)}
        best = max(scores, key=scores.get)
        print(f"logreg {name}: " + " ".join(f"l2={k:g}:{s:.3f}" for k, s in scores.items()), flush=True)
        results[name] = scores[best]
    return results


def build_cnn(size: int, seed: int):
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.RandomFlip("horizontal")(x)
    x = layers.RandomTranslation(0.2, 0.2, fill_mode="reflect")(x)
    x = layers.RandomRotation(0.125, fill_mode="reflect")(x)
    x = layers.RandomZoom(0.25)(x)
    for filters in (16, 32, 32):
        x = layers.Conv2D(filters, 3, padding="same")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(8, activation="relu")(x)
    model = keras.Model(inputs, layers.Dense(1, activation="sigmoid")(x))
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return model


def cnn_accuracy(root: Path, train: np.ndarray, test: np.ndarray, args: argparse.Namespace) -> dict[str, float]:
    images, labels = load(root, args.size, args.interp)
    probabilities, singles, best = [], [], []
    for k in range(args.models):
        started = time.perf_counter()
        model = build_cnn(args.size, args.seed + k)
        history = model.fit(images[train], labels[train], validation_data=(images[test], labels[test]),
                            epochs=args.epochs, batch_size=args.batch, verbose=0)
        p = model.predict(images[test], verbose=0)[:, 0]
        probabilities.append(p)
        singles.append(float(np.mean((p > 0.5) == labels[test])))
        best.append(max(history.history["val_accuracy"]))
        print("val", " ".join(f"{a:.2f}" for a in history.history["val_accuracy"]), flush=True)
        rate = len(train) * args.epochs / (time.perf_counter() - started)
        print(f"cnn {k}: final test {singles[-1]:.3f}, best epoch {best[-1]:.3f}, "
              f"train acc {history.history['accuracy'][-1]:.3f}, {rate:.0f} img/s", flush=True)
    ensemble = float(np.mean((np.mean(probabilities, 0) > 0.5) == labels[test]))
    return {"cnn_single_mean": float(np.mean(singles)), "cnn_best_epoch_mean": float(np.mean(best)),
            "cnn_ensemble": ensemble}


def save_sheet(path: Path, seed: int, resolution: int) -> None:
    p = plan(16, seed)
    sheet = Image.new("RGB", (4 * resolution, 4 * resolution))
    for i in range(16):
        sheet.paste(render_face(p.latents[i], bool(p.drawn[i]), resolution), ((i % 4) * resolution, (i // 4) * resolution))
    sheet.save(path)


def run(args: argparse.Namespace, root: Path) -> None:
    result = synthesize(root, n=args.n, resolution=args.resolution, seed=args.seed, workers=args.workers)
    print(f"synth: {result.train}+{result.test} images at {args.resolution}px in {result.seconds:.1f}s "
          f"({(result.train + result.test) / result.seconds:.0f} img/s, workers={args.workers or os.cpu_count()}); "
          f"glasses {result.glasses}, no glasses {result.no_glasses}, mislabelled {result.mislabelled}", flush=True)
    labels = pd.read_csv(root / "train.csv", usecols=["glasses"])["glasses"].to_numpy()
    train, test = stratified_split(labels, args.seed)
    print(f"split: {len(train)} train / {len(test)} test, prior {labels[test].mean():.3f}", flush=True)
    results = pixel_baselines(root, train, test)
    if not args.skip_cnn:
        results |= cnn_accuracy(root, train, test, args)
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in results.items()), flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.sheet:
        save_sheet(args.sheet, args.seed, args.resolution)
    if args.data is not None:
        run(args, args.data)
        return
    with tempfile.TemporaryDirectory(prefix="synth-difficulty-") as tmp:
        run(args, Path(tmp) / "data")


if __name__ == "__main__":
    main()
