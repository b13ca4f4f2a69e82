"""Search tasks: plan a search, run its chief and its workers (each a process), finish a stage.

Every one of them is Cached once its search is complete on disk (tasks/caching.py); the chief
task shows the search's progress as an artifact while it runs.
"""

from __future__ import annotations

import contextvars
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.context import TaskRunContext
from prefect.runtime import task_run

from glasses import cluster, search, stages
from glasses.search import launch, spares
from glasses.config import Config
from glasses.search.records import ended_trials
from glasses.workdir import WorkDir
from tasks import caching, events

PROGRESS_EVERY_S = 5.0


@task(name="plan-search", task_run_name="plan-{stage}-{image_size}px", cache_key_fn=caching.plan_key,
      persist_result=True)
def plan(config: Config, stage: str, image_size: int, chosen: dict[str, Any], cache_dir: str,
         followed: bool = False) -> str:
    """Writes the search's spec (directory keyed by config, a free port) and returns its path;
    `followed`: another search of the stage queues behind this one."""
    return str(stages.plan_search(WorkDir(config.work_dir), stage, config.search, image_size, chosen,
                                  Path(cache_dir), followed))


@contextmanager
def spare_roles(config: Config, budget_s: float | None = None) -> Iterator[None]:
    """Role processes started ahead for stage 1 (glasses.search.spares), importing while the run
    prepares its data; this process's spares are killed when the block ends. With a time budget
    none start here: the budget's throughput measurement must have the cores to itself."""
    if budget_s is None:  # `glasses run` may have started them already, before Prefect
        started = launch.start_spares(config.search)
        get_run_logger().info("%d spare role processes for stage 1's searches (%d started now)",
                              spares.count(), started)
    try:
        yield
    finally:
        spares.retire()


@task(name="retune-trials", cache_policy=NONE)
def retune_trials(config: Config, image_size: int, chosen: dict[str, Any], cache_dir: str, run: dict) -> Config:
    """The config stage 3 searches with: a retune run's continues stage 3's search with
    `retune_trials` more trials (once per run: a retry of the run gets the same count); any
    other run's is as it is (glasses.stages.retuned)."""
    config = stages.retuned(config, run["mode"], run["id"], image_size, chosen, Path(cache_dir))
    get_run_logger().info("%s run: stage 3 searches up to %d trials", run["mode"], config.search.stage3.max_trials)
    return config


@task(name="kept-choices", cache_policy=NONE)
def kept_choices(config: Config, fingerprint: str, mode: str) -> dict[str, dict]:
    """The stage summaries this run keeps instead of searching, by stage: the champion's stages
    1-2 for retune.keep_choices on changed data, else none (glasses.stages.kept_choices)."""
    kept = stages.kept_choices(config, mode, fingerprint)
    for summary in kept.values():
        get_run_logger().info("%s: keeping %s's choice %s (retune.keep_choices)", summary["stage"],
                              summary["kept_from"], summary["chosen"])
    return kept


def _run_name(role: str):
    def name() -> str:
        spec = Path(task_run.parameters["spec_path"])
        suffix = f"-tuner{task_run.parameters['index']}" if "index" in task_run.parameters else ""
        return f"{role}-{spec.parent.parent.name}-{spec.stem}{suffix}"

    return name


@task(name="chief", task_run_name=_run_name("chief"), cache_key_fn=caching.search_key, persist_result=True,
      on_failure=[events.stage_failed])
def chief(spec_path: str) -> str:
    """Runs the oracle process until the search is complete; fails if trials remain.

    Its time limit is the spec's chief_timeout_s, kept by the chief itself and, as a backstop,
    by killing the process (a Prefect timeout cannot interrupt a task blocked in a thread). On a
    Dask worker it gives its thread slot back first: it only waits, and tuner workers need it.
    """
    cluster.leave_thread_pool()
    with _progress(Path(spec_path)):
        # Its own task run id is the token its `release` names: a chief of another run (a retry is
        # one) never takes an earlier release for its own. Without a task run, it is never released.
        context = TaskRunContext.get()
        token = str(context.task_run.id) if context else None
        return str(search.run_chief(Path(spec_path), get_run_logger().info, token))


@task(name="release", task_run_name=_run_name("release"), cache_key_fn=caching.search_key, persist_result=True)
def release(spec_path: str, chief_run_id: str) -> None:
    """Tells the chief (task run `chief_run_id`) that every worker started for its search has
    ended, so that it waits for none: workers may queue behind another search's, so it no
    longer gives up on its own (`await_workers_s`)."""
    search.mark_released(search.SearchSpec.load(Path(spec_path)), chief_run_id)


@contextmanager
def _progress(spec_path: Path) -> Iterator[None]:
    """A progress artifact of the search (trials ended / planned), updated while the block runs
    (only in a task run: a direct `.fn()` call has no run to attach it to)."""
    if TaskRunContext.get() is None:
        yield
        return
    spec = search.SearchSpec.load(spec_path)
    key = re.sub(r"[^a-z0-9-]+", "-", f"progress-{spec.directory.parent.name}-{spec.project_name}".lower())

    def percent() -> float:
        return round(100.0 * min(1.0, ended_trials(spec) / spec.stage.max_trials), 1)

    artifact = create_progress_artifact(percent(), key=key,
                                        description=f"{spec.directory.parent.name} {spec.project_name}: trials ended")
    done = threading.Event()

    def update() -> None:
        while not done.wait(PROGRESS_EVERY_S):
            update_progress_artifact(artifact, percent())

    thread = threading.Thread(target=contextvars.copy_context().run, args=(update,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        update_progress_artifact(artifact, percent())


@task(name="worker", task_run_name=_run_name("worker"), cache_key_fn=caching.search_key, persist_result=True,
      retry_delay_seconds=2)
def worker(spec_path: str, index: int) -> str:
    """Runs tuner process `tuner<index>` against the chief; a retry keeps the same id."""
    return search.run_worker(Path(spec_path), index, get_run_logger().info)


def _published(summary: dict) -> dict:
    """Logs the stage's choice and publishes its trials, best first, as a table artifact."""
    stage = summary["stage"]
    get_run_logger().info("%s: %d trials, chose %s", stage, summary["trials"], summary["chosen"])
    table = pd.read_csv(summary["table"]).sort_values("val_accuracy", ascending=False, na_position="last")
    create_table_artifact(table.fillna("").to_dict(orient="records"), key=f"{stage}-leaderboard",
                          description=f"{stage}: every trial, best val accuracy first; chose {summary['chosen']}")
    return summary


@task(name="finish-stage1", cache_key_fn=caching.finish_key, persist_result=True,
      on_failure=[events.stage_failed])
def finish_stage1(config: Config, spec_paths: list[str], kept: dict[str, dict] | None = None) -> dict:
    """Stage 1's table and plot; chooses the image size (or keeps the champion's: `kept_choices`)."""
    if "stage1" in (kept or {}):
        return kept["stage1"]
    return _published(stages.finish_stage1([Path(p) for p in spec_paths], config.search.stage1,
                                           WorkDir(config.work_dir).stage("stage1")))


@task(name="finish-stage2", cache_key_fn=caching.finish_key, persist_result=True,
      on_failure=[events.stage_failed])
def finish_stage2(config: Config, spec_paths: list[str], kept: dict[str, dict] | None = None,
                  earlier: list[str] | None = None) -> dict:
    """Stage 2's table and plots; chooses conv_layers and the optimizer, with stage 1's trials
    (`earlier`, its spec paths) that count as evidence (or keeps the champion's: `kept_choices`)."""
    if "stage2" in (kept or {}):
        return kept["stage2"]
    return _published(stages.finish_stage2([Path(p) for p in spec_paths], config.search.stage2,
                                           WorkDir(config.work_dir).stage("stage2"),
                                           [Path(p) for p in earlier or []]))


@task(name="finish-stage3", cache_key_fn=caching.finish_key, persist_result=True,
      on_failure=[events.stage_failed])
def finish_stage3(config: Config, spec_paths: list[str]) -> dict:
    """Stage 3's table and plot; keeps the best models' checkpoints."""
    return _published(stages.finish_stage3([Path(p) for p in spec_paths], config.search.stage3,
                                           WorkDir(config.work_dir).stage("stage3"), config.ensemble.threshold))
