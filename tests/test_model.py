"""Model and search space: built from plain values, exactly the report's space."""

from __future__ import annotations

import keras_tuner as kt
import numpy as np
import pytest

from glasses.model import ModelSpec, build_model
from glasses.space import MAX_CONV_LAYERS, allowed_values, check_fixed, model_spec, spec_from_values


def test_model_maps_images_to_one_probability():
    model = build_model(ModelSpec(image_size=16, conv_layers=2, filters=(8, 16), pooling=("max", "avg")))
    out = model.predict(np.random.default_rng(0).random((5, 16, 16, 3), dtype=np.float32), verbose=0)
    assert out.shape == (5, 1)
    assert np.all((out >= 0) & (out <= 1))
    convs = [layer for layer in model.layers if layer.name.startswith("conv_")]
    assert [c.filters for c in convs] == [8, 16]
    assert model.get_layer("p_glasses").activation.__name__ == "sigmoid"


def test_augmentation_is_the_reports():
    model = build_model(ModelSpec(image_size=16, conv_layers=1, filters=(8,), pooling=("max",)))
    aug = model.get_layer("augmentation")
    flip, translate, rotate, zoom = aug.layers
    assert flip.mode == "horizontal"
    assert (translate.height_factor, translate.width_factor, translate.fill_mode) == (0.2, 0.2, "reflect")
    assert (rotate.factor, rotate.fill_mode) == ((-0.125, 0.125), "reflect")
    assert zoom.height_factor == 0.25


def test_space_has_the_reports_names_ranges_and_defaults():
    hp = kt.HyperParameters()
    spec = model_spec(hp, 64)
    space = {p.name: p for p in hp.space}
    assert space["conv_layers"].min_value == 1 and space["conv_layers"].max_value == 5
    assert space["conv_layers"].default == 5 and spec.conv_layers == 5
    for i in range(5):
        f = space[f"filters_{i}"]
        assert (f.min_value, f.max_value, f.step, f.default) == (8, 64, 8, 16)
        assert space[f"pooling_{i}"].values == ["max", "avg"]
    assert space["global_pooling"].values == ["max", "avg"]
    assert space["optimizer"].values == ["adam", "sgd"]
    assert set(space) == {"conv_layers", "global_pooling", "optimizer"} | {f"filters_{i}" for i in range(5)} | {
        f"pooling_{i}" for i in range(5)}


def test_fixed_values_hold_in_stage_three():
    for seed in range(5):
        hp = kt.HyperParameters()
        hp.values.update({"conv_layers": 1 + seed % 5})  # a random value that must be overridden
        spec = model_spec(hp, 64, {"conv_layers": 3, "optimizer": "adam"})
        assert spec.conv_layers == 3 and spec.optimizer == "adam"
        assert len(spec.filters) == 3


def test_a_trials_values_rebuild_the_same_spec():
    hp = kt.HyperParameters()
    spec = model_spec(hp, 32)
    assert spec_from_values(hp.values, 32) == spec


def test_spec_rejects_missing_layers():
    with pytest.raises(ValueError, match="3 conv layers"):
        ModelSpec(image_size=16, conv_layers=3, filters=(8,), pooling=("max",))


def _declared(hp: kt.HyperParameters) -> dict[str, list]:
    values = {}
    for p in hp.space:
        if isinstance(p, kt.engine.hyperparameters.Int):
            values[p.name] = list(range(p.min_value, p.max_value + 1, p.step))
        else:
            values[p.name] = list(p.values)
    return values


def test_space_declares_exactly_what_fixed_may_hold():
    hp = kt.HyperParameters()
    hp.values["conv_layers"] = MAX_CONV_LAYERS  # the deepest model declares every layer's hyperparameters
    model_spec(hp, 64)
    declared = _declared(hp)
    assert declared == {name: list(values) for name, values in allowed_values().items()}
    for name, values in declared.items():
        for value in values:
            check_fixed({name: value})
        with pytest.raises(ValueError, match=f"fixed {name} .* is not one of"):
            check_fixed({name: "none" if isinstance(values[0], int) else 8})
    with pytest.raises(ValueError, match=f"unknown hyperparameter 'filters_{MAX_CONV_LAYERS}'"):
        check_fixed({f"filters_{MAX_CONV_LAYERS}": 8})
