"""Search tasks: plan a search, run its chief and its workers (each a process), finish a stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE
from prefect.runtime import task_run

from glasses import search, stages
from glasses.config import Config
from glasses.workdir import WorkDir


@task(name="plan-search", task_run_name="plan-{stage}-{image_size}px", cache_policy=NONE)
def plan(config: Config, stage: str, image_size: int, chosen: dict[str, Any], cache_dir: str) -> str:
    """Writes the search's spec (directory keyed by config, a free port) and returns its path."""
    return str(stages.plan_search(WorkDir(config.work_dir).stage(stage), getattr(config.search, stage),
                                  config.search, image_size, chosen, Path(cache_dir)))


def _run_name(role: str):
    def name() -> str:
        spec = Path(task_run.parameters["spec_path"])
        suffix = f"-tuner{task_run.parameters['index']}" if "index" in task_run.parameters else ""
        return f"{role}-{spec.parent.parent.name}-{spec.stem}{suffix}"

    return name


@task(name="chief", task_run_name=_run_name("chief"), cache_policy=NONE)
def chief(spec_path: str) -> str:
    """Runs the oracle process until the search is complete; fails if trials remain.

    Its time limit is the spec's chief_timeout_s, kept by the chief itself and, as a backstop,
    by killing the process (a Prefect timeout cannot interrupt a task blocked in a thread).
    """
    return str(search.run_chief(Path(spec_path), get_run_logger().info))


@task(name="worker", task_run_name=_run_name("worker"), cache_policy=NONE, retry_delay_seconds=2)
def worker(spec_path: str, index: int) -> str:
    """Runs tuner process `tuner<index>` against the chief; a retry keeps the same id."""
    return search.run_worker(Path(spec_path), index, get_run_logger().info)


def _published(summary: dict) -> dict:
    """Logs the stage's choice and publishes its trials as a table artifact."""
    stage = summary["stage"]
    get_run_logger().info("%s: %d trials, chose %s", stage, summary["trials"], summary["chosen"])
    rows = pd.read_csv(summary["table"]).fillna("").to_dict(orient="records")
    create_table_artifact(rows, key=f"{stage}-trials", description=f"{stage}: one row per trial")
    return summary


@task(name="finish-stage1", cache_policy=NONE)
def finish_stage1(config: Config, spec_paths: list[str]) -> dict:
    """Stage 1's table and plot; chooses the image size."""
    return _published(stages.finish_stage1([Path(p) for p in spec_paths], config.search.stage1,
                                           WorkDir(config.work_dir).stage("stage1"), config.search.size_tolerance))


@task(name="finish-stage2", cache_policy=NONE)
def finish_stage2(config: Config, spec_paths: list[str]) -> dict:
    """Stage 2's table and plots; chooses conv_layers and the optimizer."""
    return _published(stages.finish_stage2([Path(p) for p in spec_paths], config.search.stage2,
                                           WorkDir(config.work_dir).stage("stage2"), config.search.layers_tolerance))


@task(name="finish-stage3", cache_policy=NONE)
def finish_stage3(config: Config, spec_paths: list[str]) -> dict:
    """Stage 3's table and plot; keeps the best models' checkpoints."""
    return _published(stages.finish_stage3([Path(p) for p in spec_paths], config.search.stage3,
                                           WorkDir(config.work_dir).stage("stage3"), config.ensemble.threshold))
