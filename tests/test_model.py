"""Model and search space: built from plain values, exactly the report's space."""

from __future__ import annotations

import keras_tuner as kt
import numpy as np
import pytest

from glasses.model import ModelSpec, _chain, batchnorm_callback, build_model, clean_sample, set_batchnorm_statistics
from glasses.space import MAX_CONV_LAYERS, allowed_values, check_fixed, model_spec, spec_from_values


def test_model_maps_images_to_one_probability():
    model = build_model(ModelSpec(image_size=16, conv_layers=2, filters=(8, 16), pooling=("max", "avg")))
    out = model.predict(np.random.default_rng(0).random((5, 16, 16, 3), dtype=np.float32), verbose=0)
    assert out.shape == (5, 1)
    assert np.all((out >= 0) & (out <= 1))
    convs = [layer for layer in model.layers if layer.name.startswith("conv_")]
    assert [c.filters for c in convs] == [8, 16]
    assert model.get_layer("p_glasses").activation.__name__ == "sigmoid"


def test_the_model_has_no_random_layers_and_predicts_the_same_twice(tmp_path):
    """Augmentation is the input pipeline's (`inputs.augment`): a saved model is plain layers."""
    import keras

    model = build_model(ModelSpec(image_size=16, conv_layers=1, filters=(8,), pooling=("max",)))
    assert not [layer for layer in model.layers if layer.__class__.__name__.startswith("Random")]
    images = np.random.default_rng(0).random((4, 16, 16, 3), dtype=np.float32)
    np.testing.assert_array_equal(model(images, training=True), model(images, training=True))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)


def test_the_layers_form_is_the_reports_and_shares_the_weights_of_the_plain_model(tmp_path):
    """On a GPU the report's layers come first in the model (facts.md); a checkpoint of either
    form loads into the other, so the ensemble rebuilds members without them."""
    spec = ModelSpec(image_size=16, conv_layers=2, filters=(8, 16), pooling=("max", "avg"))
    layered = build_model(spec, augment=True)
    flip, translate, rotate, zoom = layered.get_layer("augmentation").layers
    assert flip.mode == "horizontal"
    assert (translate.height_factor, translate.width_factor, translate.fill_mode) == (0.2, 0.2, "reflect")
    assert (rotate.factor, rotate.fill_mode) == ((-0.125, 0.125), "reflect")
    assert zoom.height_factor == 0.25
    layered.save_weights(tmp_path / "layered.weights.h5")
    plain = build_model(spec)
    plain.load_weights(tmp_path / "layered.weights.h5")
    images = np.random.default_rng(0).random((4, 16, 16, 3), dtype=np.float32)
    np.testing.assert_allclose(plain.predict(images, verbose=0), layered.predict(images, verbose=0), atol=1e-6)


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


# ---------------------------------------------------------------------------------------------
# BatchNorm statistics from clean training images


def _two_layer_model():
    import keras

    keras.utils.set_random_seed(3)
    return build_model(ModelSpec(image_size=16, conv_layers=2, filters=(8, 16), pooling=("max", "avg")))


def _bn_inputs(model, images):
    """Each BatchNorm layer's inputs on `images`, in inference mode (no augmentation)."""
    import keras

    return [keras.Model(model.inputs, layer.input).predict(images, verbose=0)
            for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def test_batchnorm_statistics_are_those_of_the_clean_images_layer_after_layer():
    import keras

    model = _two_layer_model()
    images = np.random.default_rng(0).random((70, 16, 16, 3), dtype=np.float32) * 0.5 + 0.25
    assert _chain(model) is not None  # build_model's CNN takes the one-pass way
    assert set_batchnorm_statistics(model, images, chunk=32) == 2  # 70 in chunks of 32, 32, 6
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer, inputs in zip(layers, _bn_inputs(model, images)):  # the second's inputs pass the first as set
        np.testing.assert_allclose(layer.moving_mean.numpy(), inputs.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(), inputs.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-5)
    # what Keras starts from (0 and 1) is gone: the statistics are the data's
    assert not np.allclose(layers[0].moving_variance.numpy(), 1.0)


def test_batchnorm_statistics_of_a_graph_that_is_not_a_chain():
    import keras

    keras.utils.set_random_seed(4)
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3, padding="same")(inputs))
    b = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 1)(a))
    model = keras.Model(inputs, keras.layers.Add()([a, b]))  # a feeds b and the sum: no chain
    images = np.random.default_rng(2).random((40, 8, 8, 3), dtype=np.float32)
    assert set_batchnorm_statistics(model, images, chunk=16) == 2
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer, inputs in zip(norms, _bn_inputs(model, images)):
        np.testing.assert_allclose(layer.moving_mean.numpy(), inputs.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(), inputs.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-5)


def test_clean_sample_takes_the_first_images_of_the_batches():
    batches = [(np.full((4, 2, 2, 3), i, np.float32), np.zeros(4)) for i in range(5)]
    sample = clean_sample(batches, 10)
    assert sample.shape == (10, 2, 2, 3)
    assert [float(v) for v in sample[:, 0, 0, 0]] == [0] * 4 + [1] * 4 + [2] * 2
    assert len(clean_sample(batches[:1], 10)) == 4  # fewer than asked: all there are
    with pytest.raises(ValueError, match="no training images"):
        clean_sample([], 10)


def test_fit_validates_and_keeps_the_statistics_of_the_clean_images():
    import keras

    rng = np.random.default_rng(1)
    x, y = rng.random((48, 16, 16, 3), dtype=np.float32), rng.integers(0, 2, 48).astype("float32")
    model = _two_layer_model()
    first = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    seen = []

    class Probe(keras.callbacks.Callback):  # after the BatchNorm callback: what validation uses
        def on_test_begin(self, logs=None):
            seen.append(first.moving_mean.numpy().copy())

    sample = x[:32]
    model.fit(x, y, batch_size=8, epochs=2, validation_data=(x[32:], y[32:]), verbose=0,
              callbacks=[batchnorm_callback(sample), Probe()])
    assert len(seen) == 2  # one validation an epoch
    after_fit = [v.numpy().copy() for v in first.weights]
    set_batchnorm_statistics(model, sample)  # the same weights and images: nothing moves
    for before, now in zip(after_fit, first.weights):
        np.testing.assert_allclose(before, now.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seen[-1], first.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
