"""The distributed search with real processes on loopback: a chief and two workers."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import psutil
import numpy as np
import pytest

from glasses import search
from glasses.budget import epochs_for
from glasses.config import StageConfig
from glasses.errors import SearchError
from glasses.search import SearchSpec, free_port, run_chief, run_worker, trial_records

pytestmark = pytest.mark.slow


def _spec(tmp_path: Path, cache_dir: Path, max_trials: int = 4, epochs: int = 1, patience: int = 1,
          bn_images: int = 512, early_stop: dict | None = None, **overrides) -> Path:
    """A search on the tiny cache (28 training images: 4 steps an epoch at batch 8)."""
    stage = StageConfig(batch_size=8, max_trials=max_trials, max_steps=4 * epochs, patience_steps=4 * patience,
                        bn_stats_images=bn_images, early_stop=early_stop or {})
    values = dict(search_id="test-search", directory=tmp_path / "kt", project_name="size16", cache_dir=cache_dir, image_size=16,
                  stage=stage, folds=0, fixed={}, seed=1337, bind="127.0.0.1", address=None, port=0, workers=2,
                  worker_timeout_s=30, chief_timeout_s=300, gpus_per_worker=1)
    values.update(overrides)
    values.setdefault("await_workers_s", values["worker_timeout_s"])
    return SearchSpec(**values).save(tmp_path / "spec.json")


class Role(threading.Thread):
    """One role, launched as the Prefect tasks launch it (`run_chief` / `run_worker`), its lines kept."""

    def __init__(self, spec_path: Path, role: str, index: int | None = None, token: str | None = None):
        super().__init__(daemon=True)
        self.spec_path, self.role, self.index, self.token = spec_path, role, index, token
        self.tuner_id = None if index is None else f"tuner{index}"
        self.lines: list[str] = []
        self.error: SearchError | None = None

    def run(self) -> None:
        try:
            if self.role == "chief":
                run_chief(self.spec_path, self.lines.append, self.token)
            else:
                run_worker(self.spec_path, self.index, self.lines.append)
        except SearchError as error:
            self.error = error
        finally:
            self.ended_at = time.time()

    @property
    def ok(self) -> bool:
        return not self.is_alive() and self.error is None


def _search(spec_path: Path, workers: int = 2) -> tuple[Role, list[Role]]:
    chief = Role(spec_path, "chief")
    chief.start()
    tuners = [Role(spec_path, "worker", i) for i in range(workers)]
    for tuner in tuners:
        tuner.start()
    return chief, tuners


def _join(*roles: Role) -> None:
    for role in roles:
        role.join(300)
        assert not role.is_alive(), f"{role.role} {role.tuner_id or ''} still running"


def _completed(spec_path: Path) -> list[dict]:
    spec = SearchSpec.load(spec_path)
    return [r for r in trial_records(spec.project_dir) if r["status"] == "COMPLETED"]


def test_chief_and_two_workers_run_each_trial_once(tiny_cache, tmp_path, monkeypatch):
    system_tmp = tmp_path / "system-tmp"  # the roles' inherited TMPDIR: they must leave nothing there
    system_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(system_tmp))
    spec_path = _spec(tmp_path, tiny_cache[1])
    chief, tuners = _search(spec_path)
    _join(chief, *tuners)
    # TensorFlow's autograph files went to each role's own temp folder, removed as the role ended.
    assert list(system_tmp.iterdir()) == []
    assert list((tmp_path / "kt").rglob("*.glasses-tmp")) == []
    assert chief.ok, "\n".join(chief.lines[-20:])
    assert [t.ok for t in tuners] == [True, True]
    records = trial_records(SearchSpec.load(spec_path).project_dir)
    assert sorted(r["trial_id"] for r in records) == ["0", "1", "2", "3"]
    assert all(r["status"] == "COMPLETED" and r["epochs"] == 1 for r in records)
    assert {r["bn_images"] for r in records} == {28}  # BatchNorm statistics of all 28 training images
    assert {r["worker"] for r in records} == {"tuner0", "tuner1"}
    assert all(Path(r["checkpoint"]).is_file() for r in records)
    table = search.trials_table(SearchSpec.load(spec_path))
    assert set(table.columns) >= {"trial_id", "conv_layers", "optimizer", "val_accuracy", "epochs",
                                  "seconds", "worker", "status"}

    # A re-run of the finished search runs no new trial and rewrites none.
    stamps = {r["trial_id"]: Path(r["checkpoint"]).stat().st_mtime_ns for r in records}
    again_chief, again = _search(spec_path)
    _join(again_chief, *again)
    assert again_chief.ok and [t.ok for t in again] == [True, True]
    assert any("already complete" in line for line in again_chief.lines)
    after = trial_records(SearchSpec.load(spec_path).project_dir)
    assert {r["trial_id"]: Path(r["checkpoint"]).stat().st_mtime_ns for r in after} == stamps


def test_cross_validation_scores_each_trial_by_the_mean_of_its_folds(tiny_cache, tmp_path):
    spec_path = _spec(tmp_path, tiny_cache[1], max_trials=2, workers=1, folds=3)
    chief, tuners = _search(spec_path)
    _join(chief, *tuners)
    assert chief.ok, "\n".join(chief.lines[-20:])
    assert any("scored by 3-fold cross-validation" in line for line in tuners[0].lines)
    records = trial_records(SearchSpec.load(spec_path).project_dir)
    assert len(records) == 2
    for record in records:
        assert record["status"] == "COMPLETED" and len(record["folds"]) == 3
        assert 20 <= record["bn_images"] < 28 + 9  # a fold's training images: 2/3 of train+val
        folds = record["folds"]
        assert record["score"] == pytest.approx(sum(f["val_accuracy"] for f in folds) / 3, abs=1e-6)
        assert record["val_loss"] == pytest.approx(sum(f["val_loss"] for f in folds) / 3, abs=1e-5)
    assert (search.trials_table(SearchSpec.load(spec_path))["folds"] == 3).all()


def _kill_when_training(role: Role, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not any("val_accuracy" in line for line in role.lines):
        assert time.monotonic() < deadline, "worker never trained"
        time.sleep(0.1)
    for process in psutil.process_iter(["cmdline"]):  # this search's (tests may run side by side)
        command = process.info["cmdline"] or []
        if role.tuner_id in command and str(role.spec_path) in command:
            process.kill()  # SIGKILL, mid-trial


def test_a_worker_killed_mid_search_does_not_stop_the_search(tiny_cache, tmp_path):
    spec_path = _spec(tmp_path, tiny_cache[1], max_trials=3, epochs=40, patience=40, worker_timeout_s=8)
    chief, (tuner0, tuner1) = _search(spec_path)
    _kill_when_training(tuner1)
    _join(chief, tuner0, tuner1)
    assert "exited with code -9" in str(tuner1.error)  # killed by a signal
    assert chief.ok, "\n".join(chief.lines[-20:])
    assert any("tuner1" in line and "requeued" in line for line in chief.lines)
    done = _completed(spec_path)
    assert sorted(r["trial_id"] for r in done) == ["0", "1", "2"]
    assert all(r["worker"] == "tuner0" for r in done)  # tuner0 finished tuner1's trial too


def test_the_chief_gives_up_at_its_timeout(tiny_cache, tmp_path):
    spec_path = _spec(tmp_path, tiny_cache[1], max_trials=60, workers=1, worker_timeout_s=10,
                      chief_timeout_s=20)
    chief, (tuner0,) = _search(spec_path, workers=1)
    _join(chief)
    assert "before all 60 trials ended" in str(chief.error)
    assert any("timeout after 20s" in line for line in chief.lines)
    tuner0.join(90)
    assert "exited with code" in str(tuner0.error)  # its chief is gone; the worker fails instead of hanging


def test_a_chief_waits_for_queued_workers_until_released_and_only_by_its_own_release(tiny_cache, tmp_path):
    # Workers may queue behind another search's (the run's stage 1): no worker for a long time is
    # no reason to give up; the run's release, once every worker it started has ended, is.
    spec_path = _spec(tmp_path, tiny_cache[1], worker_timeout_s=2, await_workers_s=300)
    spec = SearchSpec.load(spec_path)
    search.mark_released(spec, "an earlier run's chief")  # not this one's: ignored
    chief = Role(spec_path, "chief", token="this chief")
    chief.start()
    deadline = time.monotonic() + 60
    while not any("oracle serving" in line for line in chief.lines):
        assert chief.is_alive() and time.monotonic() < deadline, chief.lines
        time.sleep(0.2)
    time.sleep(4)  # twice worker_timeout_s with no worker: still waiting
    assert chief.is_alive()
    search.mark_released(spec, "this chief")
    chief.join(30)
    assert not chief.is_alive()
    assert "every worker started for it has ended, none came" in str(chief.error)


def test_an_interrupted_search_continues_where_it_stopped(tiny_cache, tmp_path):
    spec_path = _spec(tmp_path, tiny_cache[1], max_trials=3, epochs=40, patience=40, workers=1)
    chief, (tuner0,) = _search(spec_path, workers=1)
    deadline = time.monotonic() + 120
    trial_epochs = epochs_for(SearchSpec.load(spec_path).stage, 28).epochs  # of the tiny cache's 28 images
    while len(_completed(spec_path)) < 1 or sum("val_accuracy" in line for line in tuner0.lines) <= trial_epochs:
        assert time.monotonic() < deadline, "the first trial never finished"
        time.sleep(0.2)
    first = {r["trial_id"]: Path(r["checkpoint"]).stat().st_mtime_ns for r in _completed(spec_path)}
    for process in psutil.process_iter(["cmdline"]):  # the machine goes down: every role dies
        if str(spec_path) in (process.info["cmdline"] or []):
            process.kill()
    _join(chief, tuner0)
    again_chief, (again,) = _search(spec_path, workers=1)
    _join(again_chief, again)
    assert again_chief.ok and again.ok
    done = _completed(spec_path)
    assert sorted(r["trial_id"] for r in done) == ["0", "1", "2"]  # none lost, none added
    assert {t: Path(r["checkpoint"]).stat().st_mtime_ns for r in done for t in [r["trial_id"]] if t in first} == first


def test_a_second_chief_on_a_taken_port_is_a_clear_error(tiny_cache, tmp_path):
    spec_path = _spec(tmp_path, tiny_cache[1], worker_timeout_s=20)  # port 0: the chief binds a free one
    first = Role(spec_path, "chief")
    first.start()
    spec = SearchSpec.load(spec_path)
    while search.records.chief_address(spec) is None:
        assert first.is_alive(), "\n".join(first.lines[-20:])
        time.sleep(0.2)
    address, port = search.records.chief_address(spec)
    assert address == "127.0.0.1" and port > 0  # what it bound, published for the workers
    other = _spec(tmp_path / "other", tiny_cache[1], port=port)  # another search, the same port
    with pytest.raises(SearchError, match=f"port {port} on 127.0.0.1 is in use"):
        run_chief(other, lambda line: None)
    _join(first)  # no worker came: the first chief gives up on its own


def test_a_worker_does_not_take_a_stranger_on_the_port_for_its_chief(tiny_cache, tmp_path):
    port = free_port()
    spec_path = _spec(tmp_path, tiny_cache[1], worker_timeout_s=6, port=port)
    with socket.create_server(("127.0.0.1", port)):  # something else listens on the configured port
        tuner0 = Role(spec_path, "worker", 0)
        tuner0.start()
        _join(tuner0)
    assert "exited with code 1" in str(tuner0.error)
    assert any("no chief of search test-search" in line and "has not published" in line for line in tuner0.lines)


def test_a_truncated_trial_json_is_named_before_any_role_starts(tiny_cache, tmp_path):
    spec_path = _spec(tmp_path, tiny_cache[1], max_trials=1, bn_images=0)
    chief, tuners = _search(spec_path, workers=1)
    _join(chief, *tuners)
    assert [r["bn_images"] for r in _completed(spec_path)] == [0]  # Keras' own BatchNorm statistics, as asked
    trial_json = next(SearchSpec.load(spec_path).project_dir.glob("trial_*/trial.json"))
    trial_json.write_text(trial_json.read_text()[:40])  # a kill mid-write (before writes were atomic)
    with pytest.raises(SearchError, match=f"{trial_json} is truncated or corrupt"):
        run_chief(spec_path, lambda line: None)


def _nan_cache(root: Path) -> Path:
    """A cache whose labels are NaN: any model's loss is NaN from the first step."""
    import numpy as np

    from glasses.files import write_json
    from glasses.inputs import CACHE_FORMAT

    for subset in ("train", "val", "test"):  # pixels cannot be NaN in uint8: the labels are
        (root / subset).mkdir(parents=True)
        np.save(root / subset / "images.npy", np.zeros((8, 16, 16, 3), dtype=np.uint8))
        np.save(root / subset / "labels.npy", np.full((8, 1), np.nan, dtype=np.float32))
    write_json(root / "cache.json", {"key": "nan", "size": 16, "counts": {"train": 8, "val": 8, "test": 8},
                                     "format": CACHE_FORMAT})
    return root


def test_three_failures_in_a_row_end_the_search_naming_the_trials_and_errors(tmp_path):
    # Each trial's loss is NaN from the first step: TerminateOnNaN ends it, and it is FAILED.
    spec_path = _spec(tmp_path, _nan_cache(tmp_path / "cache"), max_trials=6, epochs=2, patience=2, workers=1)
    chief, tuners = _search(spec_path, workers=1)
    _join(chief, *tuners)
    message = str(chief.error)
    assert "before all 6 trials ended (3 trials failed in a row (trial 0: " in message, message
    assert message.count("loss became nan at epoch 1") == 3, message
    records = trial_records(SearchSpec.load(spec_path).project_dir)
    assert [r["status"] for r in records] == ["FAILED"] * 3  # no trial after the third failure


def test_a_trial_whose_worker_dies_on_it_twice_is_failed_not_requeued_forever(tiny_cache, tmp_path):
    # Also what a Prefect task retry does after one death: the worker comes back under its id and
    # resumes its trial (only so can trial 0 die twice).
    spec_path = _spec(tmp_path, tiny_cache[1], max_trials=3, epochs=40, patience=40, workers=1,
                      worker_timeout_s=60)
    chief, (tuner0,) = _search(spec_path, workers=1)
    for attempt in range(2):  # killed (as by the OOM killer) twice on trial 0; the task retries it
        _kill_when_training(tuner0)
        tuner0.join(60)
        tuner0 = Role(spec_path, "worker", 0)
        tuner0.start()
    _join(chief, tuner0)
    assert chief.ok and tuner0.ok, "\n".join(chief.lines[-20:])
    records = {r["trial_id"]: r for r in trial_records(SearchSpec.load(spec_path).project_dir)}
    assert records["0"]["status"] == "FAILED"
    assert [r["status"] for k, r in sorted(records.items()) if k != "0"] == ["COMPLETED", "COMPLETED"]


class MadeUpWorker:
    """A worker that trains nothing: it speaks keras-tuner's gRPC protocol to a real chief and
    reports the evaluations a test makes up."""

    def __init__(self, spec_path: Path, tuner_id: str):
        import grpc
        from keras_tuner.src.protos import get_service, get_service_grpc

        spec = SearchSpec.load(spec_path)
        deadline = time.monotonic() + 60
        while search.records.chief_address(spec) is None:
            assert time.monotonic() < deadline, "the chief never published its address"
            time.sleep(0.2)
        address, port = search.records.chief_address(spec)
        self.stub = get_service_grpc().OracleStub(grpc.insecure_channel(f"{address}:{port}"))
        self.service, self.tuner_id = get_service(), tuner_id

    def next_trial(self):
        return self.stub.CreateTrial(self.service.CreateTrialRequest(tuner_id=self.tuner_id), timeout=30).trial

    def evaluate(self, trial_id: str, losses: list[float]) -> list[str]:
        """Reports `losses` as the trial's evaluations (4 steps apart); the chief's answers."""
        from keras_tuner.src.engine.trial import TrialStatus

        from glasses.search.early_stop import Evaluation

        answers = []
        for epoch, loss in enumerate(losses):
            metrics = Evaluation(0, epoch, 4 * (epoch + 1), loss, 1.0 - loss).to_metrics()
            request = self.service.UpdateTrialRequest(trial_id=trial_id, metrics=metrics, step=epoch)
            answers.append(TrialStatus.from_proto(self.stub.UpdateTrial(request, timeout=30).trial.status))
        return answers

    def end(self, trial, loss: float) -> None:
        """Reports the trial's result and ends it, as keras-tuner's worker does after training."""
        from keras_tuner.src.engine.trial import Trial, TrialStatus

        metrics = {"val_accuracy": 1.0 - loss, "val_loss": loss}
        self.stub.UpdateTrial(self.service.UpdateTrialRequest(trial_id=trial.trial_id, metrics=metrics, step=0),
                              timeout=30)
        ended = Trial.from_proto(trial)
        ended.status = TrialStatus.COMPLETED
        self.stub.EndTrial(self.service.EndTrialRequest(trial=ended.to_proto()), timeout=30)


def _kill_chief(spec_path: Path) -> None:
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if "chief" in command and str(spec_path) in command:
            process.kill()


def test_the_chief_stops_a_trial_behind_the_others_even_across_its_restart(tiny_cache, tmp_path):
    spec_path = _spec(tmp_path, tiny_cache[1], max_trials=3, epochs=3, early_stop={"rule": "median", "peers": 1})
    chief = Role(spec_path, "chief")
    chief.start()
    ahead, behind = MadeUpWorker(spec_path, "tuner0"), MadeUpWorker(spec_path, "tuner1")
    first, second = ahead.next_trial(), behind.next_trial()
    assert ahead.evaluate(first.trial_id, [0.5, 0.4]) == ["RUNNING", "RUNNING"]
    assert behind.evaluate(second.trial_id, [0.45, 0.6]) == ["RUNNING", "STOPPED"]  # 0.45 > 0.4 at epoch 1

    # The chief dies before the stopped trial is ended; a new one keeps it stopped, ended at its stop.
    _kill_chief(spec_path)
    _join(chief)
    search.records.chief_card(SearchSpec.load(spec_path)).unlink()  # the dead chief's address
    chief = Role(spec_path, "chief")
    chief.start()
    ahead, behind = MadeUpWorker(spec_path, "tuner0"), MadeUpWorker(spec_path, "tuner1")
    # The worker whose trial was stopped takes the next one: the trial the dead chief left
    # running (requeued); the stopped trial is never handed out again.
    redo, new = behind.next_trial(), ahead.next_trial()
    assert (first.trial_id, second.trial_id, redo.trial_id, new.trial_id) == ("0", "1", "0", "2")
    assert behind.evaluate(redo.trial_id, [0.3, 0.3, 0.3]) == ["RUNNING"] * 3
    behind.end(redo, 0.3)
    assert ahead.evaluate(new.trial_id, [0.25, 0.25, 0.25]) == ["RUNNING"] * 3
    ahead.end(new, 0.25)
    from keras_tuner.src.engine.trial import TrialStatus

    over = [TrialStatus.from_proto(w.next_trial().status) for w in (ahead, behind)]
    assert over == ["STOPPED", "STOPPED"]  # every trial has ended: the search is over
    _join(chief)
    assert chief.ok, "\n".join(chief.lines[-20:])
    assert any(f"trial {second.trial_id} had been stopped early" in line for line in chief.lines)
    records = {r["trial_id"]: r for r in trial_records(SearchSpec.load(spec_path).project_dir)}
    assert {t: r["status"] for t, r in records.items()} == {"0": "COMPLETED", "1": "STOPPED", "2": "COMPLETED"}
    assert records["1"]["stopped_steps"] == 8 and records["1"]["score"] == pytest.approx(0.55)
    table = search.trials_table(SearchSpec.load(spec_path))
    assert table.set_index("trial_id").loc["1", "stopped_steps"] == 8


def test_real_workers_report_every_evaluation_and_stopped_trials_end_early(tiny_cache, tmp_path):
    from glasses.search.early_stop import load_progress

    # 144 steps: 3 epochs of 50 (an epoch is at least 50 steps), evaluated after each
    spec_path = _spec(tmp_path, tiny_cache[1], max_trials=4, epochs=36, patience=36,
                      early_stop={"rule": "median", "peers": 1})
    chief, tuners = _search(spec_path)
    _join(chief, *tuners)
    assert chief.ok, "\n".join(chief.lines[-20:])
    project = SearchSpec.load(spec_path).project_dir
    records, progress = trial_records(project), load_progress(project)
    assert sorted(progress) == ["0", "1", "2", "3"]
    for record in records:
        evaluations = progress[record["trial_id"]]["evaluations"]
        assert [e["steps"] for e in evaluations] == [50, 100, 150][:len(evaluations)]
        if record["status"] == "STOPPED":  # behind at its last evaluation: trained fewer epochs
            assert record["stopped_steps"] == evaluations[-1]["steps"] and record["epochs"] == len(evaluations)
        else:
            assert record["status"] == "COMPLETED" and len(evaluations) == 3


def test_a_worker_of_a_followed_search_leaves_at_once_when_no_trial_is_left(tiny_cache, tmp_path):
    # Another search queues behind this one's workers (stage 1's sizes): the worker that finds no
    # trial left goes to it at once instead of idling through the other worker's last trial.
    spec_path = _spec(tmp_path, tiny_cache[1], max_trials=1, epochs=200, patience=200, followed=True)
    chief, tuners = _search(spec_path)
    _join(chief, *tuners)
    assert chief.ok and [t.ok for t in tuners] == [True, True], chief.lines
    (record,) = trial_records(SearchSpec.load(spec_path).project_dir)
    assert record["status"] == "COMPLETED" and record["seconds"] > 4, record
    idle = next(t for t in tuners if t.tuner_id != record["worker"])
    assert idle.ended_at < record["ended_at"] - 2  # gone while the trial still ran, not with it


def test_a_search_not_followed_keeps_its_idle_worker_to_the_end(tiny_cache, tmp_path):
    # The last search of a stage keeps an idle worker, to take over a trial whose worker goes silent.
    spec_path = _spec(tmp_path, tiny_cache[1], max_trials=1, epochs=200, patience=200)
    chief, tuners = _search(spec_path)
    _join(chief, *tuners)
    (record,) = trial_records(SearchSpec.load(spec_path).project_dir)
    idle = next(t for t in tuners if t.tuner_id != record["worker"])
    assert idle.ok and idle.ended_at >= record["ended_at"]


@pytest.mark.parametrize("folds", [0, 3])
def test_a_worker_trains_on_augmented_batches_and_sets_batchnorm_from_clean_ones(tiny_cache, tmp_path, folds):
    """CPU workers augment in the input pipeline; the BatchNorm statistics' images must still be
    the cache's own (clean), or the validations read augmented statistics."""
    from glasses.inputs import subset_arrays
    from glasses.search.worker import training_data

    spec = SearchSpec.load(_spec(tmp_path, tiny_cache[1], folds=folds))
    data, fold_sets, clean, images = training_data(spec, 8, augment=True)
    cached = np.concatenate([subset_arrays(tiny_cache[1], s)[0] for s in ("train", "val")])
    known = {np.round(image, 5).tobytes() for image in cached}
    trains = [train for train, _, _ in fold_sets] if folds else [data["x"]]
    assert len(clean) == len(trains) == max(1, folds) and images > 0
    for train, plain in zip(trains, clean):
        augmented = next(iter(train))[0].numpy()
        assert not any(np.round(image, 5).tobytes() in known for image in augmented)
        clean_images = np.concatenate([x.numpy() for x, _ in plain.take(3)])  # a fold repeats for ever
        assert all(np.round(image, 5).tobytes() in known for image in clean_images)
