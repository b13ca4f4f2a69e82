"""The CNN of the report, built from plain values (no tuner needed to build or test it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

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
