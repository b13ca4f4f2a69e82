"""The report's hyperparameter space: maps a keras-tuner `hp` to a `ModelSpec`.

Kept apart from the model (built from plain values) and from the search strategy, so the
space can be checked without training and the model built without a tuner.
"""

from __future__ import annotations

from typing import Any, Mapping

from glasses.model import ModelSpec

MAX_CONV_LAYERS = 5


def model_spec(hp, image_size: int, fixed: Mapping[str, Any] | None = None) -> ModelSpec:
    """Declares the search space on `hp` and returns the model it picks.

    Args:
        hp: A `keras_tuner.HyperParameters`.
        image_size: The side of the (square) input images.
        fixed: Hyperparameters held at a value (stage 3 fixes conv_layers 3 and adam).
    """
    fixed = dict(fixed or {})

    def choose(name: str, declare):
        if name in fixed:
            hp.Fixed(name, fixed[name])
            return fixed[name]  # whatever value `hp` held before, a fixed one wins
        return declare()

    conv_layers = choose("conv_layers", lambda: hp.Int("conv_layers", 1, MAX_CONV_LAYERS, default=5))
    filters, pooling = [], []
    for i in range(conv_layers):
        filters.append(choose(f"filters_{i}", lambda i=i: hp.Int(f"filters_{i}", 8, 64, step=8, default=16)))
        pooling.append(choose(f"pooling_{i}", lambda i=i: hp.Choice(f"pooling_{i}", ["max", "avg"])))
    global_pooling = choose("global_pooling", lambda: hp.Choice("global_pooling", ["max", "avg"]))
    optimizer = choose("optimizer", lambda: hp.Choice("optimizer", ["adam", "sgd"]))
    return ModelSpec(image_size=image_size, conv_layers=conv_layers, filters=tuple(filters),
                     pooling=tuple(pooling), global_pooling=global_pooling, optimizer=optimizer)


def spec_from_values(values: Mapping[str, Any], image_size: int) -> ModelSpec:
    """Rebuilds the model shape of a finished trial from its recorded values."""
    layers = int(values["conv_layers"])
    return ModelSpec(image_size=image_size, conv_layers=layers,
                     filters=tuple(int(values[f"filters_{i}"]) for i in range(layers)),
                     pooling=tuple(values[f"pooling_{i}"] for i in range(layers)),
                     global_pooling=values["global_pooling"], optimizer=values["optimizer"])
