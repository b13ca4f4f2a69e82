"""The average ensemble: the mean of its members, raw images of any size, a faithful save."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from glasses.ensemble import Candidate, average_ensemble, save_model, select_members
from glasses.model import ModelSpec, build_model


def _members(count: int, size: int = 16):
    keras.utils.set_random_seed(3)
    return [build_model(ModelSpec(image_size=size, conv_layers=2, filters=(8, 8), pooling=("max", "avg")),
                        name=f"m{i}", compile=False) for i in range(count)]


def test_ensemble_is_the_mean_of_its_members_on_random_images():
    members = _members(3)
    ensemble = average_ensemble(members, 16)
    raw = np.random.default_rng(0).integers(0, 256, size=(6, 16, 16, 3)).astype(np.float32)
    expected = np.mean([m.predict(raw / 255.0, verbose=0) for m in members], axis=0)
    assert np.allclose(ensemble.predict(raw, verbose=0), expected, atol=1e-5)


def test_saved_ensemble_round_trips_and_takes_any_size(tmp_path):
    ensemble = average_ensemble(_members(2), 16)
    path = save_model(ensemble, tmp_path / "model" / "ensemble.keras")
    loaded = keras.models.load_model(path)
    rng = np.random.default_rng(1)
    for shape in ((2, 16, 16, 3), (2, 40, 28, 3)):
        raw = rng.integers(0, 256, size=shape).astype(np.float32)
        out = loaded.predict(raw, verbose=0)
        assert out.shape == (2, 1) and np.all((out >= 0) & (out <= 1))
        assert np.allclose(out, ensemble.predict(raw, verbose=0), atol=1e-6)
    assert [p.name for p in path.parent.iterdir()] == ["ensemble.keras"]  # no temp file left


def _candidate(trial_id: str, score: float) -> Candidate:
    return Candidate(trial_id, score, {}, None, 16)


def test_members_are_those_above_the_threshold():
    found = [_candidate("a", 0.93), _candidate("b", 0.9), _candidate("c", 0.88)]
    members, warning = select_members(found, 0.89, 2)
    assert [m.trial_id for m in members] == ["a", "b"] and warning is None


def test_with_none_above_the_threshold_the_best_few_are_taken_with_a_warning():
    found = [_candidate("a", 0.8), _candidate("b", 0.7), _candidate("c", 0.6)]
    members, warning = select_members(found, 0.89, 2)
    assert [m.trial_id for m in members] == ["a", "b"]
    assert "0.89" in warning and "best 2" in warning


def test_no_candidates_is_an_error():
    with pytest.raises(ValueError, match="no completed trial"):
        select_members([], 0.5, 2)
