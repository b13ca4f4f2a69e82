"""The average ensemble: the mean of its members, raw images of any size, a faithful save."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from glasses.ensemble import Candidate, average_ensemble, save_model, select_members
from glasses.errors import SearchError
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
    return Candidate(trial_id, score, {}, None, 16, None)


def test_members_are_those_above_the_threshold():
    found = [_candidate("a", 0.93), _candidate("b", 0.9), _candidate("c", 0.88)]
    members, warning = select_members(found, 0.89, 2)
    assert [m.trial_id for m in members] == ["a", "b"] and warning is None


def test_with_none_above_the_threshold_the_best_few_are_taken_with_a_warning():
    found = [_candidate("a", 0.8), _candidate("b", 0.7), _candidate("c", 0.6)]
    members, warning = select_members(found, 0.89, 2)
    assert [m.trial_id for m in members] == ["a", "b"]
    assert "no models reached val accuracy 0.89" in warning and "best 2" in warning


def test_with_fewer_than_fallback_above_the_threshold_the_best_few_are_taken():
    found = [_candidate("a", 0.9), _candidate("b", 0.85), _candidate("c", 0.84), _candidate("d", 0.6)]
    members, warning = select_members(found, 0.89, 3)
    assert [m.trial_id for m in members] == ["a", "b", "c"]
    assert "1 model reached val accuracy 0.89" in warning and "0.9000 down to 0.8400" in warning
    members, warning = select_members(found[:2], 0.89, 3)  # fewer candidates than fallback: all of them
    assert [m.trial_id for m in members] == ["a", "b"] and "best 2" in warning
    members, warning = select_members(found[:1], 0.89, 3)
    assert [m.trial_id for m in members] == ["a"] and warning is None


def test_no_candidates_is_an_error():
    with pytest.raises(SearchError, match="no completed trial"):
        select_members([], 0.5, 2)


def test_majority_vote_on_hand_made_predictions():
    from glasses.ensemble import majority_vote

    members = np.array([[0.9, 0.2, 0.6, 0.7, 0.51],
                        [0.8, 0.3, 0.4, 0.45, 0.2],
                        [0.1, 0.9, 0.55, 0.3, 0.2]])
    votes = majority_vote(members) >= 0.5
    assert votes.tolist() == [True, False, True, False, False]
    tie = np.array([[0.9, 0.6], [0.2, 0.1]])  # one vote each; the mean decides
    assert (majority_vote(tie) >= 0.5).tolist() == [True, False]


def test_majority_ensemble_model_votes_like_the_numpy_rule(tmp_path):
    from glasses.ensemble import majority_ensemble, majority_vote

    members = _members(3)
    raw = np.random.default_rng(2).integers(0, 256, size=(8, 16, 16, 3)).astype(np.float32)
    each = np.stack([m.predict(raw / 255.0, verbose=0).reshape(-1) for m in members])
    model = keras.models.load_model(save_model(majority_ensemble(members, 16), tmp_path / "vote.keras"))
    got = model.predict(raw, verbose=0).reshape(-1)
    assert np.allclose(got, majority_vote(each), atol=1e-4)


def test_greedy_selection_picks_the_expected_members():
    from glasses.ensemble import greedy_selection

    labels = np.array([1, 1, 1, 0, 0, 0])
    members = np.array([
        [0.9, 0.9, 0.4, 0.1, 0.1, 0.1],   # a: 5/6, wrong on image 2
        [0.4, 0.9, 0.9, 0.1, 0.1, 0.1],   # b: 5/6, wrong on image 0
        [0.9, 0.4, 0.9, 0.1, 0.1, 0.1],   # c: 5/6, wrong on image 1
        [0.2, 0.2, 0.2, 0.9, 0.9, 0.9],   # d: 0/6
    ])
    weights = greedy_selection(members, labels, init=1)
    assert weights[3] == 0  # the bad member never joins
    assert weights[0] >= 1 and weights[:3].sum() >= 2
    from glasses.ensemble import average
    from glasses.evaluate import accuracy

    assert accuracy(average(members, weights), labels) == 1.0  # together they fix each other's error


def test_greedy_stops_at_the_best_single_when_nothing_helps():
    from glasses.ensemble import greedy_selection

    labels = np.array([1, 0, 1, 0])
    members = np.array([[0.9, 0.1, 0.9, 0.1], [0.1, 0.9, 0.1, 0.9]])
    assert greedy_selection(members, labels, init=1).tolist() == [1.0, 0.0]


def test_greedy_starts_from_the_best_few():
    from glasses.ensemble import greedy_selection

    labels = np.array([1, 0, 1, 0])
    members = np.array([[0.9, 0.1, 0.9, 0.1], [0.9, 0.1, 0.9, 0.6], [0.1, 0.9, 0.1, 0.9]])
    weights = greedy_selection(members, labels, init=2)
    assert weights[1] >= 1 and weights[2] == 0  # the two best start; the wrong one never joins
    assert weights[0] > weights[1]  # adding the confident, right member again lowers the log loss


def test_metrics_and_confusion_matrix():
    from glasses.evaluate import metrics

    result = metrics([0.9, 0.8, 0.3, 0.6, 0.1, 0.2], [1, 1, 1, 0, 0, 0])
    assert result["confusion"] == [[2, 1], [1, 2]]
    assert result["accuracy"] == round(4 / 6, 4)
    assert result["precision"] == round(2 / 3, 4) and result["recall"] == round(2 / 3, 4)
    assert result["roc_auc"] == round(8 / 9, 4)


def test_the_shipped_method_is_chosen_on_validation_only():
    from glasses.ensemble import choose_method

    table = {"average": {"val_accuracy": 0.90, "test_accuracy": 0.99},
             "greedy": {"val_accuracy": 0.92, "test_accuracy": 0.80},
             "majority": {"val_accuracy": 0.92, "test_accuracy": 0.70}}
    assert choose_method(table) == "greedy"  # best val; greedy before majority on a tie
    assert choose_method(table, "average") == "average"
