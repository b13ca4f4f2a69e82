"""The CNN of the report, built from plain values (no tuner needed to build or test it)."""

from __future__ import annotations

from dataclasses import dataclass, field
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


def augmentation_layers(seed: int | None = None):
    """The report's augmentation as the report built it, Keras layers first in the model (facts.md):
    flip, translate, rotate +-45 degrees, zoom, active only in training. On a GPU they run on the
    device; on a CPU `glasses.inputs.augment` draws the same transforms in one resampling."""
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


def build_model(spec: ModelSpec, name: str = "cnn", compile: bool = True, augment: bool = False,
                any_size: bool = False):
    """Builds and compiles the report's CNN for images of `spec.image_size` in [0, 1] (of any
    side with `any_size`: the weights do not depend on it, so a model can train on smaller
    images first, `glasses.config.ProgressiveConfig`, and load into one built for its size).

    Blocks of Conv2D(3x3, same) -> pooling -> BatchNorm -> ReLU, then global pooling,
    Dense(8, relu) and Dense(1, sigmoid) giving P(glasses). With `augment`, the report's
    augmentation layers come first (`augmentation_layers`); without, training batches come
    augmented from the input pipeline (`glasses.inputs.augment`). Weights load either way.
    """
    import keras

    side = None if any_size else spec.image_size
    inputs = keras.Input((side, side, 3), name="image")
    x = augmentation_layers()(inputs) if augment else inputs
    for i in range(spec.conv_layers):
        x = keras.layers.Conv2D(spec.filters[i], 3, padding="same", name=f"conv_{i}")(x)
        x = _pool(spec.pooling[i])(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = _pool(spec.global_pooling, global_=True)(x)
    x = keras.layers.Dense(spec.dense_units, activation="relu")(x)
    # float32 even under a mixed-precision policy: a sigmoid and its log loss in bfloat16 (8 bits
    # of mantissa) round probabilities near 0 and 1; the policy's own default layers otherwise.
    outputs = keras.layers.Dense(1, activation="sigmoid", name="p_glasses", dtype="float32")(x)
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

    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    chain = _chain(model)
    if chain is None:  # any other graph: each layer's inputs through a model up to it
        for norm in norms:
            upto = keras.Model(model.inputs, norm.input)
            _set_from(norm, [upto(images[i:i + chunk], training=False) for i in range(0, len(images), chunk)])
        return len(norms)
    # build_model's chain, in one pass: the images go layer by layer, in chunks, and at each
    # BatchNormalization its statistics are set before the chunks go through it
    chunks = [images[i:i + chunk] for i in range(0, len(images), chunk)]
    pending: list = []
    for layer in chain:
        if isinstance(layer, keras.layers.BatchNormalization):
            chunks = [_through(pending, c) for c in chunks]
            _set_from(layer, chunks)
            pending = []
        pending.append(layer)
    return len(norms)


def _chain(model) -> list | None:
    """`model`'s layers when each takes the output of the one before (build_model's CNN), else None."""
    previous = model.inputs[0] if len(model.inputs) == 1 else None
    layers = [layer for layer in model.layers if layer.__class__.__name__ != "InputLayer"]
    for layer in layers:
        try:
            if previous is None or layer.input is not previous:
                return None
            previous = layer.output
        except (AttributeError, ValueError):  # a layer called more than once, or with several inputs
            return None
    return layers


def _through(layers: list, x):
    for layer in layers:
        x = layer(x, training=False)
    return x


def _set_from(norm, chunks: list) -> None:
    """Sets a BatchNormalization layer's moving mean and variance to those of its inputs `chunks`
    (two passes: the mean, then the squared deviations from it; float64 across chunks)."""
    import keras

    chunks = [keras.ops.cast(c, "float32") for c in chunks]  # bfloat16 under mixed precision
    axis = norm.axis % len(chunks[0].shape)
    axes = [i for i in range(len(chunks[0].shape)) if i != axis]
    count = sum(int(np.prod([c.shape[i] for i in axes])) for c in chunks)
    mean = sum(np.asarray(keras.ops.sum(c, axis=axes), np.float64) for c in chunks) / count
    shape = [1 if i in axes else -1 for i in range(len(chunks[0].shape))]
    centred = keras.ops.reshape(keras.ops.convert_to_tensor(mean.astype(np.float32)), shape)
    variance = sum(np.asarray(keras.ops.sum(keras.ops.square(c - centred), axis=axes), np.float64) for c in chunks) / count
    norm.moving_mean.assign(mean.astype(np.float32))
    norm.moving_variance.assign(variance.astype(np.float32))


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
