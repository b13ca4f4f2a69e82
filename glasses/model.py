"""The CNN of the report, built from plain values (no tuner needed to build or test it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

Pooling = Literal["max", "avg"]


@dataclass(frozen=True)
class ModelSpec:
    """The shape of one model: everything the search chooses."""

    image_size: int
    conv_layers: int = 5
    filters: tuple[int, ...] = (16, 16, 16, 16, 16)
    pooling: tuple[Pooling, ...] = ("max", "max", "max", "max", "max")
    global_pooling: Pooling = "max"
    optimizer: Literal["adam", "sgd"] = "adam"
    dense_units: int = field(default=8)

    def __post_init__(self) -> None:
        if len(self.filters) < self.conv_layers or len(self.pooling) < self.conv_layers:
            raise ValueError(f"need filters and pooling for {self.conv_layers} conv layers, got "
                             f"{len(self.filters)} filters and {len(self.pooling)} poolings")

    def to_dict(self) -> dict:
        return asdict(self)


def augmentation(seed: int | None = None):
    """The report's augmentation, active only in training: flip, translate, rotate ±45°, zoom."""
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomTranslation(0.2, 0.2, fill_mode="reflect", seed=seed),
        keras.layers.RandomRotation(0.125, fill_mode="reflect", seed=seed),
        keras.layers.RandomZoom(0.25, seed=seed),
    ], name="augmentation")


def _pool(kind: Pooling, global_: bool = False):
    import keras

    if global_:
        return keras.layers.GlobalMaxPooling2D() if kind == "max" else keras.layers.GlobalAveragePooling2D()
    return keras.layers.MaxPooling2D(2, padding="same") if kind == "max" else keras.layers.AveragePooling2D(2, padding="same")


def build_model(spec: ModelSpec, name: str = "cnn", compile: bool = True):
    """Builds and compiles the report's CNN for images of `spec.image_size` in [0, 1].

    Blocks of Conv2D(3x3, same) -> pooling -> BatchNorm -> ReLU, then global pooling,
    Dense(8, relu) and Dense(1, sigmoid) giving P(glasses).
    """
    import keras

    inputs = keras.Input((spec.image_size, spec.image_size, 3), name="image")
    x = augmentation()(inputs)
    for i in range(spec.conv_layers):
        x = keras.layers.Conv2D(spec.filters[i], 3, padding="same", name=f"conv_{i}")(x)
        x = _pool(spec.pooling[i])(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = _pool(spec.global_pooling, global_=True)(x)
    x = keras.layers.Dense(spec.dense_units, activation="relu")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="p_glasses")(x)
    model = keras.Model(inputs, outputs, name=name)
    if compile:
        model.compile(optimizer=spec.optimizer, loss="binary_crossentropy", metrics=["accuracy"])
    return model


def set_batchnorm_statistics(model, images: np.ndarray, chunk: int = 256) -> int:
    """Sets the moving mean and variance of each of `model`'s BatchNormalization layers to the
    mean and variance of its inputs over `images` (in inference mode, so without augmentation),
    layer after layer; returns how many layers it set.

    Why: Keras keeps a moving average (momentum 0.99, ~100 steps) of batch statistics taken on
    augmented images under weights that change every step, and infers with it. On the built-in
    data that made a network's val accuracy swing by 5-8 points from one epoch to the next
    (0.821, 0.791, 0.711, 0.774), so early stopping and the search's ranking read noise; with the
    statistics of clean training images its epochs read 0.811, 0.821, 0.801, 0.834 and two
    networks scored 0.837 and 0.832 on held-out images instead of 0.809 and 0.807
    (bench/retrain.py --bn-images 0 512, bench/RESULTS.md; "precise BatchNorm", Wu and Johnson 2021).
    """
    import keras

    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:  # in order: each one's inputs come through the layers set before it
        upto = keras.Model(model.inputs, layer.input)
        axes = tuple(i for i in range(len(upto.output.shape)) if i != layer.axis % len(upto.output.shape))
        total = squares = 0.0
        count = 0
        for start in range(0, len(images), chunk):
            h = np.asarray(upto(images[start:start + chunk], training=False), dtype=np.float64)
            total = total + h.sum(axis=axes)
            squares = squares + (h * h).sum(axis=axes)
            count += h.size // h.shape[layer.axis]
        mean = total / count
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(np.maximum(squares / count - mean * mean, 0.0).astype(np.float32))
    return len(layers)


def clean_sample(batches, images: int) -> np.ndarray:
    """The first `images` images of a dataset of (images, labels) batches, as one array (of a
    repeated dataset, ask for at most one pass: it does not know where a pass ends)."""
    taken, count = [], 0
    for x, _ in batches:
        taken.append(np.asarray(x))
        count += len(taken[-1])
        if count >= images:
            break
    if not taken:
        raise ValueError("no training images to take BatchNorm statistics from")
    return np.concatenate(taken)[:images]


def batchnorm_callback(images: np.ndarray):
    """A Keras callback that, before each validation in `fit`, sets the model's BatchNorm
    statistics from `images` (clean training images: `clean_sample`), so val metrics, early
    stopping and the checkpoints of the best epoch all use them."""
    import keras

    class CleanBatchNorm(keras.callbacks.Callback):
        def __init__(self, images: np.ndarray):
            super().__init__()
            self.images = images

        def on_test_begin(self, logs=None):
            set_batchnorm_statistics(self.model, self.images)

    return CleanBatchNorm(images)
