"""Early stopping across trials: the chief's median rule on made-up evaluations, its record on
disk, and a chief restarted after it stopped a trial (a real oracle and its servicer in-process;
the gRPC round trip with real processes is in tests/test_search.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from glasses.config import EarlyStopConfig, StageConfig
from glasses.search import SearchSpec, trial_records
from glasses.search.early_stop import Evaluation, MedianStop, load_progress

MEDIAN = EarlyStopConfig(rule="median", after_steps=20, peers=2)


def _evaluate(stopper: MedianStop, trial_id: str, losses: list[float], fold: int = 0) -> list[bool]:
    """Reports `losses` as the trial's evaluations (10 steps apart); the chief's answers."""
    return [stopper.report(trial_id, Evaluation(fold, epoch, 10 * (epoch + 1), loss, 1.0 - loss))
            for epoch, loss in enumerate(losses)]


def test_a_trial_behind_the_median_is_stopped_and_one_that_leads_is_not(tmp_path):
    stopper = MedianStop(tmp_path, MEDIAN, min_steps=0)
    assert _evaluate(stopper, "00", [0.70, 0.60, 0.50, 0.40]) == [False] * 4  # no peers yet
    assert _evaluate(stopper, "01", [0.72, 0.62, 0.52, 0.42]) == [False] * 4  # one peer: not enough
    assert _evaluate(stopper, "02", [0.60, 0.45, 0.35, 0.30]) == [False] * 4  # leads at every evaluation
    # At epoch 1 (20 steps, the end of the grace) its best 0.80 is behind the median 0.60 of 0.60, 0.62, 0.45.
    answers = _evaluate(stopper, "03", [0.90, 0.80, 0.75])
    assert answers == [False, True, True]  # epoch 0 is within the grace of 20 steps
    stop = stopper.stop_of("03")
    assert stop == {"fold": 0, "epoch": 1, "steps": 20, "val_loss": 0.80, "val_accuracy": pytest.approx(0.2),
                    "median_val_loss": 0.60, "peers": 3}
    assert stopper.stop_of("02") is None


def test_the_bar_is_the_median_of_trials_that_got_to_the_same_evaluation(tmp_path):
    stopper = MedianStop(tmp_path, EarlyStopConfig(rule="median", peers=2), min_steps=0)
    _evaluate(stopper, "00", [0.5])  # stopped or ended after one evaluation: absent later
    _evaluate(stopper, "01", [0.6, 0.3, 0.2])
    assert _evaluate(stopper, "02", [0.5, 0.4, 0.3]) == [False] * 3  # only 01 got past epoch 0
    # At epoch 0 the median of 0.5, 0.6 and 0.5 is 0.5: 0.45 goes on; at epoch 2 only 01 and 02
    # got there (median 0.25), and 0.28 is behind it.
    assert _evaluate(stopper, "03", [0.45, 0.35, 0.28]) == [False, False, True]
    # Cross-validation: fold 1's evaluations compare with fold 1's only.
    _evaluate(stopper, "01", [0.9], fold=1)
    assert _evaluate(stopper, "04", [0.1, 0.1, 0.1]) == [False] * 3
    assert _evaluate(stopper, "04", [0.8], fold=1) == [False]  # one peer in fold 1


def test_off_records_every_evaluation_and_stops_nothing(tmp_path):
    stopper = MedianStop(tmp_path, EarlyStopConfig(), min_steps=0)
    for trial in ("00", "01", "02"):
        _evaluate(stopper, trial, [0.3, 0.2])
    assert _evaluate(stopper, "03", [5.0, 5.0, float("nan")]) == [False] * 3
    assert sorted(load_progress(tmp_path)) == ["00", "01", "02", "03"]
    assert load_progress(tmp_path)["03"]["evaluations"][-1]["val_loss"] == float("inf")  # NaN is the worst


def test_a_stop_is_kept_on_disk_and_a_rerun_of_the_trial_reports_from_its_start(tmp_path):
    stopper = MedianStop(tmp_path, MEDIAN, min_steps=0)
    for trial in ("00", "01"):
        _evaluate(stopper, trial, [0.3, 0.2, 0.1])
    _evaluate(stopper, "02", [0.3, 0.25, 0.2])  # behind at epoch 1 (20 steps): stopped
    assert stopper.stop_of("02")["epoch"] == 1
    again = MedianStop(tmp_path, MEDIAN, min_steps=0)  # a restarted chief
    assert again.stop_of("02") == stopper.stop_of("02")
    assert _evaluate(again, "02", [0.01]) == [True]  # stays stopped, whatever it reports
    # A trial whose worker died is run again from its first epoch: its old evaluations go.
    _evaluate(again, "01", [0.9])
    assert [e["val_loss"] for e in load_progress(tmp_path)["01"]["evaluations"]] == [0.9]


def test_the_grace_defaults_to_the_stage_warm_up(tmp_path):
    stopper = MedianStop(tmp_path, EarlyStopConfig(rule="median", peers=1), min_steps=30)
    _evaluate(stopper, "00", [0.1, 0.1, 0.1])
    assert _evaluate(stopper, "01", [0.9, 0.9, 0.9]) == [False, False, True]  # 10, 20 steps < 30


def test_early_stop_settings_are_checked():
    with pytest.raises(ValueError, match="after_steps 100 must be below max_steps 100"):
        StageConfig(batch_size=8, max_trials=2, max_steps=100, patience_steps=10,
                    early_stop={"rule": "median", "after_steps": 100})
    with pytest.raises(ValueError):
        EarlyStopConfig(rule="asha")
    assert StageConfig(batch_size=8, max_trials=2, max_steps=100, patience_steps=10).early_stop.rule == "off"


def _spec(tmp_path: Path, cache_dir: Path) -> SearchSpec:
    stage = StageConfig(batch_size=8, max_trials=4, max_steps=8, patience_steps=4,
                        early_stop={"rule": "median", "peers": 1})
    return SearchSpec(search_id="early", directory=tmp_path / "kt", project_name="size16", cache_dir=cache_dir,
                      image_size=16, stage=stage, folds=0, fixed={}, seed=1337, bind="127.0.0.1", address=None,
                      port=0, workers=2, worker_timeout_s=30, chief_timeout_s=300, await_workers_s=30,
                      gpus_per_worker=1)


def _update(servicer, trial_id: str, epoch: int, loss: float) -> str:
    from keras_tuner.src.engine.trial import TrialStatus
    from keras_tuner.src.protos import get_service

    request = get_service().UpdateTrialRequest(trial_id=trial_id, step=epoch, metrics=Evaluation(
        0, epoch, 4 * (epoch + 1), loss, 1.0 - loss).to_metrics())
    return TrialStatus.from_proto(servicer.UpdateTrial(request, None).trial.status)


def test_a_trial_stopped_before_the_chief_died_stays_stopped_after_its_restart(tiny_cache, tmp_path, monkeypatch):
    from keras_tuner.src.protos import get_service

    from glasses.search.keras_tuner_private import LivenessServicer, pending_retries, settle_stopped_trials
    from glasses.search.tuner import build_tuner

    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.delenv(name, raising=False)
    spec = _spec(tmp_path, tiny_cache[1])
    tuner = build_tuner(spec)
    tuner.save()  # as the chief does: a later chief reloads the search from it
    oracle = tuner.oracle
    servicer = LivenessServicer(oracle, 30, MedianStop(spec.project_dir, spec.stage.early_stop, 0))
    first, second = (servicer.CreateTrial(get_service().CreateTrialRequest(tuner_id=t), None).trial.trial_id
                     for t in ("tuner0", "tuner1"))
    assert [_update(servicer, first, e, loss) for e, loss in enumerate([0.5, 0.4])] == ["RUNNING"] * 2
    assert [_update(servicer, second, e, loss) for e, loss in enumerate([0.45, 0.5])] == ["RUNNING", "STOPPED"]
    assert oracle.trials[second].status == "RUNNING"  # only the answer says STOPPED; the worker ends it

    # The chief dies before the worker ends the trial: a new chief reloads the oracle from disk,
    # where the trial is still running, so Keras Tuner queues it to run again.
    reloaded = build_tuner(spec).oracle
    assert pending_retries(reloaded) == 2
    stopper = MedianStop(spec.project_dir, spec.stage.early_stop, 0)
    assert settle_stopped_trials(reloaded, stopper) == [second]
    assert reloaded.trials[second].status == "COMPLETED"
    assert reloaded.trials[second].score == pytest.approx(0.55)  # its best val accuracy at the stop
    records = {r["trial_id"]: r for r in trial_records(spec.project_dir)}
    assert records[second]["status"] == "STOPPED" and records[second]["stopped_steps"] == 8
    assert records[first]["status"] == "RUNNING"

    # The worker that ran it asks for work again: it gets the trial still to run, not the stopped one.
    servicer = LivenessServicer(reloaded, 30, stopper)
    handed = servicer.CreateTrial(get_service().CreateTrialRequest(tuner_id="tuner1"), None).trial.trial_id
    assert handed == first

