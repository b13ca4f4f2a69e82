"""The report's hyperparameter space: maps a keras-tuner `hp` to a `ModelSpec`.

Kept apart from the model (built from plain values) and from the search strategy, so the
space can be checked without training and the model built without a tuner.
"""

from __future__ import annotations

from typing import Any, Mapping

from glasses.model import ModelSpec

MAX_CONV_LAYERS = 5
_POOLINGS = ("max", "avg")

# The one statement of the space, name pattern -> allowed values (`{i}` is a conv layer, 0 to
# MAX_CONV_LAYERS - 1). `model_spec` declares exactly these on `hp` and `check_fixed` checks a
# config's `fixed` against them, so a stage cannot fix a value the search could never try.
SPACE: dict[str, range | tuple[str, ...]] = {
    "conv_layers": range(1, MAX_CONV_LAYERS + 1),
    "filters_{i}": range(8, 64 + 1, 8),
    "pooling_{i}": _POOLINGS,
    "global_pooling": _POOLINGS,
    "optimizer": ("adam", "sgd"),
}
# The report's starting point; a choice starts at its first value.
DEFAULTS: dict[str, int] = {"conv_layers": 5, "filters_{i}": 16}


def model_spec(hp, image_size: int, fixed: Mapping[str, Any] | None = None) -> ModelSpec:
    """Declares the search space on `hp` and returns the model it picks.

    Args:
        hp: A `keras_tuner.HyperParameters`.
        image_size: The side of the (square) input images.
        fixed: Hyperparameters held at a value (stage 3 fixes conv_layers 3 and adam).
    """
    fixed = dict(fixed or {})

    def choose(pattern: str, i: int | None = None):
        name = pattern.format(i=i)
        if name in fixed:
            hp.Fixed(name, fixed[name])
            return fixed[name]  # whatever value `hp` held before, a fixed one wins
        return _declare(hp, name, pattern)

    # Declared in the report's order: the oracle samples in this order, so a seed picks the same trials.
    conv_layers = choose("conv_layers")
    filters, pooling = [], []
    for i in range(conv_layers):
        filters.append(choose("filters_{i}", i))
        pooling.append(choose("pooling_{i}", i))
    global_pooling = choose("global_pooling")
    optimizer = choose("optimizer")
    return ModelSpec(image_size=image_size, conv_layers=conv_layers, filters=tuple(filters),
                     pooling=tuple(pooling), global_pooling=global_pooling, optimizer=optimizer)


def _declare(hp, name: str, pattern: str):
    values = SPACE[pattern]
    if isinstance(values, range):
        return hp.Int(name, values.start, values[-1], step=values.step, default=DEFAULTS.get(pattern))
    return hp.Choice(name, list(values), default=DEFAULTS.get(pattern))


def allowed_values() -> dict[str, range | tuple[str, ...]]:
    """Every hyperparameter name the space can declare, with its allowed values."""
    return {pattern.format(i=i): values for pattern, values in SPACE.items()
            for i in (range(MAX_CONV_LAYERS) if "{i}" in pattern else [None])}


def check_fixed(fixed: Mapping[str, Any]) -> None:
    """Checks that every fixed hyperparameter is one of the space's, at a value it allows.

    Raises:
        ValueError: naming the unknown hyperparameter, or the value and what is allowed.
    """
    allowed = allowed_values()
    for name, value in fixed.items():
        if name not in allowed:
            raise ValueError(f"unknown hyperparameter {name!r} in fixed; known: {_describe_names()}")
        values = allowed[name]
        # A bool is an int to Python; `True` is never a layer count or a filter size.
        if isinstance(value, bool) or value not in values:
            raise ValueError(f"fixed {name} {value!r} is not one of {_describe_values(values)}")


def _describe_names() -> str:
    last = MAX_CONV_LAYERS - 1
    return ", ".join(p.replace("{i}", f"0..{p.format(i=last)}") if "{i}" in p else p for p in SPACE)


def _describe_values(values: range | tuple[str, ...]) -> str:
    if isinstance(values, range):
        step = f" in steps of {values.step}" if values.step != 1 else ""
        return f"{values.start}..{values[-1]}{step}"
    return ", ".join(values)


def spec_from_values(values: Mapping[str, Any], image_size: int) -> ModelSpec:
    """Rebuilds the model shape of a finished trial from its recorded values."""
    layers = int(values["conv_layers"])
    return ModelSpec(image_size=image_size, conv_layers=layers,
                     filters=tuple(int(values[f"filters_{i}"]) for i in range(layers)),
                     pooling=tuple(values[f"pooling_{i}"] for i in range(layers)),
                     global_pooling=values["global_pooling"], optimizer=values["optimizer"])
