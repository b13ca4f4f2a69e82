"""The tasks' failure paths, called through `.fn()` (no flow run needed): each fails with the
library's own error, and the chief's failure reaches its workers."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.logging import disable_run_logger

from glasses.config import StageConfig, build_config
from glasses.errors import DatasetError, SearchError
from glasses.search import SearchSpec
from glasses.search.records import chief_down_reason, mark_chief_down
from tasks import data, search, shipping
from tests.conftest import balanced_labels, write_kaggle_dataset


def _spec(tmp_path: Path, cache_dir: Path, worker_timeout_s: float = 3) -> Path:
    stage = StageConfig(batch_size=8, max_trials=2, max_steps=4, patience_steps=4)
    spec = SearchSpec(search_id="test-search", directory=tmp_path / "kt", project_name="size16", cache_dir=cache_dir, image_size=16,
                      stage=stage, folds=0, fixed={}, seed=1337, bind="127.0.0.1", address=None, port=0, workers=1,
                      worker_timeout_s=worker_timeout_s, chief_timeout_s=120, gpus_per_worker=1,
                      await_workers_s=worker_timeout_s)
    return spec.save(tmp_path / "spec.json")


@pytest.mark.slow
def test_a_chief_without_workers_fails_its_task_and_marks_itself_down(tiny_cache, tmp_path):
    spec_path = _spec(tmp_path, tiny_cache[1])
    with disable_run_logger(), pytest.raises(SearchError, match=r"ended with code 3 before all 2 trials ended "
                                                                 r"\(no worker came within \d+s; 0/2 trials ended\)"):
        search.chief.fn(str(spec_path))
    assert "re-run to continue" in chief_down_reason(SearchSpec.load(spec_path))


@pytest.mark.slow
def test_a_worker_task_fails_at_once_when_its_chief_is_down(tiny_cache, tmp_path):
    spec_path = _spec(tmp_path, tiny_cache[1], worker_timeout_s=300)
    mark_chief_down(SearchSpec.load(spec_path), "chief ended with code 3")
    with disable_run_logger(), pytest.raises(SearchError, match="worker tuner0 of .* exited with code 1"):
        search.worker.fn(str(spec_path), 0)  # at once: not after its 300 s of waiting for a chief


def test_the_ensemble_task_without_any_finished_trial_is_a_search_error(tiny_cache, tmp_path):
    split_dir, cache_dir = tiny_cache
    config = build_config("smoke", overrides={"work_dir": tmp_path / "work"})
    with disable_run_logger(), pytest.raises(SearchError, match="no completed trial with a checkpoint"):
        shipping.ensemble.fn(config, [str(_spec(tmp_path, cache_dir))], str(split_dir))
    assert not (tmp_path / "work" / "model").exists()


def test_the_organize_task_rejects_bad_labels_and_writes_nothing(tmp_path):
    source = write_kaggle_dataset(tmp_path / "source", balanced_labels(12))
    text = (source / "train.csv").read_text().splitlines()
    text[3] = text[3].rsplit(",", 1)[0] + ",2"  # the label of CSV line 4
    (source / "train.csv").write_text("\n".join(text) + "\n")
    config = build_config("smoke", overrides={"work_dir": tmp_path / "work", "data.data_dir": source})
    with disable_run_logger(), pytest.raises(DatasetError, match="train.csv row 4: glasses must be 0 or 1, got '2'"):
        found = data.source.fn(config)
        data.organize.fn(config, found, data.fingerprint.fn(found))
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_a_run_that_learned_nothing_ends_named_so_and_strict_fails_it_without_a_retry(prefect_server, tmp_path,
                                                                                     monkeypatch):
    from prefect import flow
    from prefect.client.orchestration import get_client

    from glasses.files import write_json
    from tests.conftest import run_summary

    learned = str(write_json(tmp_path / "a" / "summary.json", run_summary(learned=True)))
    nothing = str(write_json(tmp_path / "b" / "summary.json", run_summary(learned=False)))

    @flow(retries=1, retry_delay_seconds=0)  # as the pipeline flow's own retry
    def ends(path: str, strict: bool = False) -> str:
        return shipping.outcome(path, strict)

    def run_count(state) -> int:
        with get_client(sync_client=True) as client:
            return client.read_flow_run(state.state_details.flow_run_id).run_count

    state = ends(learned, return_state=True)
    assert state.is_completed() and state.name == "Completed" and state.result() == learned
    state = ends(nothing, return_state=True)
    assert state.is_completed() and state.name == shipping.NOTHING_LEARNED == "Nothing learned"
    assert state.message.startswith("nothing learned: test ROC-AUC 0.5000") and nothing in state.message
    assert state.result() == nothing and ends(nothing) == nothing  # callers still get the summary's path
    unsure = run_summary(learned=False)  # only too few test images to tell: named for that
    unsure["alarm"].update(too_few=True, message="not clearly learned: 20 test images are too few")
    state = ends(str(write_json(tmp_path / "c" / "summary.json", unsure)), return_state=True)
    assert state.is_completed() and state.name == shipping.NOT_CLEARLY_LEARNED == "Not clearly learned"

    failed = ends(nothing, strict=True, return_state=True)
    assert failed.is_failed() and failed.name == "Nothing learned" and "--time-budget" in failed.message
    assert run_count(failed) == 1  # not retried: a retry would meet the same models
    with pytest.raises(Exception, match="nothing learned: test ROC-AUC"):
        failed.result()
    monkeypatch.setattr(shipping, "no_retry", lambda: None)
    assert run_count(ends(nothing, strict=True, return_state=True)) == 2  # what the retry would have cost
