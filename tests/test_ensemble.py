"""Ensembles: the mean of the members, raw images of any size, a faithful save, and the one
rule that picks what ships among the best single model and the ensembles."""

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


def _row(val_accuracy: float, val_log_loss: float | None, test_accuracy: float = 0.5) -> dict:
    return {"val_accuracy": val_accuracy, "val_log_loss": val_log_loss, "test_accuracy": test_accuracy}


# log loss favours greedy, accuracy the best single model; test would favour average
TABLE = {"best_single": _row(0.93, 0.30), "average": _row(0.90, 0.25, test_accuracy=0.99),
         "majority": _row(0.92, None), "greedy": _row(0.91, 0.20)}


def test_one_criterion_picks_among_the_best_single_model_and_every_ensemble():
    from glasses.ensemble import choose_method

    assert choose_method(TABLE) == "greedy"  # default: val_log_loss
    assert choose_method(TABLE, selection="val_log_loss") == "greedy"
    assert choose_method(TABLE, selection="val_accuracy") == "best_single"
    better_vote = {**TABLE, "majority": _row(0.95, None)}
    assert choose_method(better_vote, selection="val_accuracy") == "majority"
    assert choose_method(better_vote, selection="val_log_loss") == "greedy"  # a vote share has no log loss


def test_ties_go_to_the_other_metric_then_to_the_simpler_candidate():
    from glasses.ensemble import choose_method

    same_loss = {**TABLE, "average": _row(0.92, 0.20)}  # ties greedy on log loss, beats it on accuracy
    assert choose_method(same_loss, selection="val_log_loss") == "average"
    same_accuracy = {**TABLE, "greedy": _row(0.93, 0.29)}  # ties best single on accuracy, lower loss
    assert choose_method(same_accuracy, selection="val_accuracy") == "greedy"
    everything_equal = {name: _row(0.9, 0.3) for name in TABLE} | {"majority": _row(0.9, None)}
    assert choose_method(everything_equal, selection="val_log_loss") == "best_single"
    assert choose_method(everything_equal, selection="val_accuracy") == "best_single"
    vote_ties = {name: _row(0.8, 0.3) for name in TABLE} | {"majority": _row(0.9, None), "greedy": _row(0.9, 0.4)}
    assert choose_method(vote_ties, selection="val_accuracy") == "greedy"  # the vote's missing loss loses the tie


def test_a_named_method_ships_as_named_and_bad_names_are_refused():
    from glasses.ensemble import choose_method

    assert choose_method(TABLE, "average") == "average"
    assert choose_method(TABLE, "best_single", selection="val_log_loss") == "best_single"
    with pytest.raises(ValueError, match="ensemble.selection 'test_accuracy' is not one of"):
        choose_method(TABLE, selection="test_accuracy")
    with pytest.raises(ValueError, match="ensemble.method 'stacking' is not auto or one of"):
        choose_method(TABLE, "stacking")


def test_compare_methods_names_the_best_single_member_by_the_same_rule():
    from glasses.ensemble import compare_methods

    labels = np.array([1, 1, 1, 0, 0, 0])
    members = np.array([
        [0.9, 0.9, 0.9, 0.1, 0.1, 0.6],      # 5/6 right, confident: lowest log loss
        [0.55, 0.55, 0.55, 0.45, 0.45, 0.45],  # 6/6 right, timid: highest accuracy
        [0.2, 0.2, 0.2, 0.8, 0.8, 0.8],       # all wrong
    ])
    by_loss = compare_methods((members, labels), (members, labels), "val_log_loss")
    by_accuracy = compare_methods((members, labels), (members, labels), "val_accuracy")
    assert by_loss["best_single"]["member"] == 0 and by_accuracy["best_single"]["member"] == 1
    assert by_accuracy["best_single"]["val_accuracy"] == 1.0
    assert set(by_loss) == {"best_single", "average", "majority", "greedy"}
    assert by_loss["majority"]["val_log_loss"] is None and by_loss["average"]["val_log_loss"] > 0


def test_a_shipped_best_single_is_that_member_served_for_any_image_size(tmp_path):
    from glasses.ensemble import _shipped_model

    members = _members(3)
    table = {"best_single": {"member": 1}}
    path = save_model(_shipped_model(members, 16, "best_single", table), tmp_path / "model" / "ensemble.keras")
    loaded = keras.models.load_model(path)
    raw = np.random.default_rng(4).integers(0, 256, size=(3, 16, 16, 3)).astype(np.float32)
    expected = members[1].predict(raw / 255.0, verbose=0)
    assert np.allclose(loaded.predict(raw, verbose=0), expected, atol=1e-5)
    assert not np.allclose(expected, members[0].predict(raw / 255.0, verbose=0), atol=1e-3)  # not any member
    other = np.random.default_rng(5).integers(0, 256, size=(2, 50, 34, 3)).astype(np.float32)
    out = loaded.predict(other, verbose=0)
    assert out.shape == (2, 1) and np.all((out >= 0) & (out <= 1))


def test_the_shipped_model_is_scored_on_raw_images_and_checked_against_the_majority(tiny_cache, tmp_path):
    from glasses.dataset import read_manifest
    from glasses.ensemble import _score_shipped, single_model

    split_dir, _ = tiny_cache
    path = save_model(single_model(_members(1)[0], 16), tmp_path / "ensemble.keras")
    scored = _score_shipped(path, split_dir, tmp_path / "predictions.csv")
    train, test = read_manifest(split_dir, "train")[1], read_manifest(split_dir, "test")[1]
    alarm = scored["alarm"]
    assert alarm["majority_class"] == int(np.mean(train) >= 0.5) == 1  # the fixture's 7 in 11 glasses
    assert alarm["majority_rate"] == round(float(np.mean(np.array(test) == 1)), 4)
    assert alarm["test_accuracy"] == scored["evaluation"]["accuracy"]
    low, high = alarm["accuracy_ci95"]
    assert 0 <= low <= alarm["test_accuracy"] <= high <= 1
    # an untrained network on ten test images cannot clear the majority's rate by a 95% margin
    assert alarm["raised"] and alarm["advice"]
    assert len((tmp_path / "predictions.csv").read_text().splitlines()) == len(test) + 1
