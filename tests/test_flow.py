"""The whole pipeline as a Prefect flow on a real (test) Prefect server, smoke preset: its
outputs, its artifacts and registry, a re-run that is all Cached, a retune with a changed stage-3
config failed in stage 3 and its retry (the same flow run) resuming there, adding its trials once."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import FlowRunSort


pytestmark = pytest.mark.slow


def _weights(work: Path) -> dict[str, int]:
    """Each completed trial and when its weights were written (a trial run again rewrites them)."""
    return {str(p.parent): p.stat().st_mtime_ns for p in (work / "stages").rglob("checkpoint.weights.h5")
            if json.loads((p.parent / "trial.json").read_text())["status"] == "COMPLETED"}


def _last_stage_task_runs(wait_s: float = 60) -> list:
    """The task runs of the latest `glasses-stages` flow run, once each has a final state.

    Task run states reach the server as events, a moment after the flow returns: wait for them.
    """
    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["glasses-stages"])),
                                     sort=FlowRunSort.START_TIME_DESC, limit=1)
        while True:
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[runs[0].id])))
            # (a task run can reach the server before its first state does: state None)
            if all(t.state is not None and t.state.is_final() for t in tasks) or time.monotonic() > deadline:
                return tasks
            time.sleep(1)


def _last_stage_runs(wait_s: float = 60) -> dict[str, str]:
    """Task run name -> final state name of the latest `glasses-stages` flow run."""
    # run names end in a short suffix ("organize-3fa") unless the task names its runs ("cache-16-24px")
    return {re.sub(r"-[0-9a-f]{3}$", "", t.name): t.state.name if t.state else "None"
            for t in _last_stage_task_runs(wait_s)}


def _check_stage1_queue(tasks: list, workers: int = 2) -> None:
    """Stage 1's searches ran at once: both chiefs up before any worker ended; the workers
    queued, tuner<i> of size 16 after tuner<i> of size 24 (the largest first: its trials are the
    longest), never more than `workers` at once."""
    runs = {t.name: t for t in tasks if "-stage1-" in t.name}
    chiefs = [runs[f"chief-stage1-size{px}"] for px in (16, 24)]
    tuners = {(px, i): runs[f"worker-stage1-size{px}-tuner{i}"] for px in (16, 24) for i in range(workers)}
    assert max(c.start_time for c in chiefs) < min(t.end_time for t in tuners.values())
    for i in range(workers):
        assert tuners[(16, i)].start_time >= tuners[(24, i)].end_time
    for t in tuners.values():  # at each worker's start, how many were running
        assert sum(o.start_time <= t.start_time < o.end_time for o in tuners.values()) <= workers


def test_smoke_flow_on_the_built_in_data_end_to_end_then_resumes(prefect_server, tmp_path):
    from flows.pipeline import pipeline

    work = tmp_path / "work"
    state = pipeline(preset="smoke", work_dir=str(work), return_state=True)
    assert state.is_completed(), state.message
    _check_stage1_queue(_last_stage_task_runs())
    summary = json.loads((work / "summary.json").read_text())
    dataset, split = summary["dataset"], summary["split"]
    assert dataset["labelled"] == 60 == dataset["glasses"] + dataset["no_glasses"]
    assert dataset["ratio"] == pytest.approx(dataset["glasses"] / dataset["no_glasses"], abs=1e-3)
    assert split["train"] + split["val"] + split["test"] == 60
    for key in ("members", "val_accuracy", "test_accuracy"):
        assert key in summary["ensemble"]
    assert 0 <= summary["ensemble"]["test_accuracy"] <= 1
    assert set(summary["best_single"]) >= {"val_accuracy", "test_accuracy"}
    assert summary["durations_s"]["total"] > 0
    busy = summary["utilization"]  # trial seconds over workers x wall, per stage searched in this run
    assert set(busy) == {"stage1", "stage2", "stage3", "overall"}
    assert all(0 < stage["utilization"] <= 1 and stage["workers"] == 2 for stage in busy.values())
    evaluation = summary["evaluation"]
    assert set(evaluation) >= {"accuracy", "precision", "recall", "f1", "roc_auc", "confusion"}
    assert sum(map(sum, evaluation["confusion"])) == split["test"]
    assert evaluation["accuracy"] == summary["ensemble"]["test_accuracy"]
    assert set(summary["ensembles"]) == {"best_single", "average", "majority", "greedy"}
    assert summary["ensemble"]["method"] in ("best_single", "average", "majority", "greedy")
    assert summary["ensemble"]["selection"] == "val_log_loss" and summary["ensemble"]["configured_method"] == "auto"
    assert summary["ensemble"]["selected"] == summary["ensemble"]["method"]
    alarm = summary["alarm"]
    assert alarm["majority_class"] in (0, 1) and 0 <= alarm["majority_rate"] <= 1
    assert alarm["test_accuracy"] == evaluation["accuracy"] and alarm["test_roc_auc"] == evaluation["roc_auc"]
    low, high = alarm["accuracy_ci95"]
    assert low <= alarm["test_accuracy"] <= high
    assert alarm["raised"] == (state.name in ("Nothing learned", "Not clearly learned"))  # the run is marked
    assert (state.name == "Not clearly learned") == alarm["too_few"]
    assert summary["latent"]["skipped"] is False and summary["latent"]["test"] > 0
    for name in ("augmentation", "misclassified", "confusion", "stage1_val_accuracy_by_image_size",
                 "stage2_val_accuracy_by_conv_layers", "stage2_val_accuracy_by_optimizer",
                 "stage3_val_accuracy_by_rank"):
        assert Path(summary["figures"][name]).stat().st_size > 1000, name
        assert Path(summary["figures"][name]).parent == work / "figures"
    report = (work / "report.md").read_text()
    links = [line.split("](", 1)[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert len(links) >= 7 and all((work / link).is_file() for link in links)
    assert "## Latent vectors" in report and "## Ensembles" in report
    assert "Shipped: **" in report and "test is never used to choose" in report
    assert (f"> **Warning: {alarm['verdict']}.**" in report) == alarm["raised"]

    stages = {name: pd.read_csv(work / "stages" / name / "trials.csv") for name in ("stage1", "stage2", "stage3")}
    assert len(stages["stage1"]) == 4 and sorted(stages["stage1"]["image_size"].unique()) == [16, 24]
    assert len(stages["stage2"]) == 2 and len(stages["stage3"]) == 2
    assert (stages["stage3"]["conv_layers"] == 3).all() and (stages["stage3"]["optimizer"] == "adam").all()
    for table in stages.values():
        assert (table["status"] == "COMPLETED").all()
    assert set(stages["stage1"]["worker"]) == {"tuner0", "tuner1"}
    assert (work / "stages" / "stage1" / "val_accuracy_by_image_size.png").stat().st_size > 1000
    assert summary["stages"]["stage1"]["chosen"]["image_size"] in (16, 24)

    model = keras.models.load_model(work / "model" / "ensemble.keras")
    # CPU workers augment in the input pipeline: the shipped members have no random layers
    def flat(layer):
        return [layer, *[inner for sub in getattr(layer, "layers", []) for inner in flat(sub)]]

    assert not [layer for layer in flat(model) if layer.__class__.__name__.startswith("Random")]
    for shape in ((3, 50, 40, 3), (2, 16, 16, 3)):
        out = model.predict(np.random.default_rng(0).integers(0, 256, shape).astype("float32"), verbose=0)
        assert out.shape == (shape[0], 1) and np.all((out >= 0) & (out <= 1))

    _assert_artifacts()
    # The registry: this first model is the champion, what model/ensemble.keras serves.
    decision = summary["champion"]
    assert decision["promoted"] and decision["reason"] == "no champion yet" and decision["champion"] is None
    registered = pd.read_csv(work / "models" / "registry.csv")
    assert list(registered["run"]) == [decision["challenger"]["run"]] == [decision["serving"]]
    assert (work / "model" / "ensemble.keras").read_bytes() == \
        (work / "models" / decision["serving"] / "ensemble.keras").read_bytes()
    assert (work / "models" / decision["serving"] / "summary.json").is_file()
    assert "## Champion" in report

    # A re-run reuses every finished stage: each stage task is Cached, no trial runs again.
    stamps = _weights(work)
    pipeline(preset="smoke", work_dir=str(work))
    assert _weights(work) == stamps
    runs = _last_stage_runs()
    stage_tasks = {name: state for name, state in runs.items()
                   if name not in ("fingerprint", "kept-choices", "retune-trials", "summary", "champion",
                                   "tidy")}  # (these always run)
    assert {name: state for name, state in stage_tasks.items() if state != "Cached"} == {}
    assert {"organize", "split", "cache-16-24px", "finish-stage1", "finish-stage3", "ensemble"} <= set(runs)
    again = json.loads((work / "summary.json").read_text())
    assert again["ensemble"]["test_accuracy"] == summary["ensemble"]["test_accuracy"]
    assert len(pd.read_csv(work / "models" / "registry.csv")) == 1  # the same model: not registered again
    assert "champion already" in again["champion"]["reason"]

    # A retune (the scheduled deployment's mode) with stage 3's config changed, failing mid-search
    # (the test-only fault switch): stages 1-2 stay Cached; the retry of that same flow run
    # continues stage 3, reruns no finished trial and adds retune_trials (2) to its 3 once, not twice.
    overrides = {"search": {"stage3": {"max_trials": 3}}}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GLASSES_FAULT", "stage3")
        once = pipeline.with_options(retries=0)  # (the flow's own retry would fail the same way)
        failed = once(preset="smoke", work_dir=str(work), overrides=overrides, mode="retune", return_state=True)
    assert failed.is_failed()
    assert "fault injected by GLASSES_FAULT=stage3" in str(failed.message) + _messages()
    before_retry = _weights(work)
    _retry(failed.state_details.flow_run_id)
    runs = _last_stage_runs()
    for name in ("organize", "split", "finish-stage1", "finish-stage2"):
        assert runs[name] == "Cached", runs
    assert runs["finish-stage3"] == "Completed" and runs["ensemble"] == "Completed"
    after = _weights(work)  # (stage 3 keeps the 2 best: the other checkpoints are pruned)
    kept = {k: v for k, v in before_retry.items() if k in after}
    assert {k: after[k] for k in kept} == kept and any("stage1" in k for k in kept)
    stage3 = pd.read_csv(work / "stages" / "stage3" / "trials.csv")
    assert len(stage3) == 3 + 2 and (stage3["status"] == "COMPLETED").all()
    assert list(json.loads((work / "stages" / "stage3" / "retune.json").read_text()).values()) == [5]
    retuned = json.loads((work / "summary.json").read_text())
    registered = pd.read_csv(work / "models" / "registry.csv")
    assert retuned["champion"]["challenger"]["run"] in set(registered["run"])
    assert registered["mode"].iloc[-1] == "retune" and len(registered) <= 3
    assert retuned["champion"]["serving"] == json.loads((work / "model" / "champion.json").read_text())["run"]


def _messages() -> str:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=3)
    return " ".join(str(r.state.message) for r in runs if r.state)


def _retry(flow_run_id) -> None:
    """What `prefect flow-run retry ID --entrypoint flows/pipeline.py:pipeline` does for a run
    without a deployment: schedule the same flow run again and run it here."""
    from prefect.flow_engine import run_flow
    from prefect.states import Scheduled

    from flows.pipeline import pipeline

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Scheduled(message="retry"), force=True)
        flow_run = client.read_flow_run(flow_run_id)
    state = run_flow(flow=pipeline, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")
    assert state.is_completed(), state.message


def _assert_artifacts() -> None:
    with get_client(sync_client=True) as client:
        latest = {a.key: a for a in client.read_latest_artifacts(limit=200)}
    for key in ("glasses-summary", "glasses-report", "glasses-alarm", "ensembles", "test-metrics", "model",
                "stage1-leaderboard",
                "stage2-leaderboard", "stage3-leaderboard", "progress-stage1-size16", "progress-stage3-size16",
                "progress-stage3-size24"):
        assert key in latest or key.startswith("progress-stage3"), sorted(latest)
    assert any(latest[k].data == 100 for k in latest if k.startswith("progress-stage3"))
    assert latest["progress-stage1-size16"].data == 100
    report = latest["glasses-report"].data
    assert report.count("](data:image/png;base64,") >= 7 and "](figures/" not in report
    ensembles = json.loads(latest["ensembles"].data)
    assert {row["model"] for row in ensembles} == {"best single", "average", "majority", "greedy"}
    assert sum(row["shipped"] for row in ensembles) == 1
    leaderboard = json.loads(latest["stage1-leaderboard"].data)
    scores = [row["val_accuracy"] for row in leaderboard]
    assert len(leaderboard) == 4 and scores == sorted(scores, reverse=True)
    assert "(file:///" in latest["model"].data and latest["model"].data.endswith("ensemble.keras)")


def test_the_flow_takes_no_required_parameter_and_fails_on_a_bad_value(prefect_server, tmp_path):
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import pipeline

    schema = parameter_schema(pipeline.fn).model_dump()
    assert not schema.get("required")
    assert {name: prop.get("default") for name, prop in schema["properties"].items()} == {
        "preset": "quick", "data_dir": None, "work_dir": None, "overrides": None, "strict": False,
        "time_budget": None, "mode": "resume"}  # (budget_started_at: internal, not in the form)
    assert schema["properties"]["mode"]["enum"] == ["resume", "retune"]  # a drop-down in the UI
    pipeline.validate_parameters({"time_budget": "15m"})  # the UI's form: a text field
    pipeline.validate_parameters({})  # "Quick run" in the UI: nothing to fill in
    state = pipeline.with_options(retries=0)(preset="smoke", work_dir=str(tmp_path / "w"),
                                             overrides={"search": {"workers": 0}}, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="search.workers: Input should be greater than or equal to 1"):
        state.result()
    assert not (tmp_path / "w").exists()
