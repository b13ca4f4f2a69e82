"""Search tasks: plan a search, run its chief and its workers (each a process), finish a stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE
from prefect.runtime import task_run

from glasses import search, stages
from glasses.config import Config
from glasses.errors import SearchError


@task(name="plan-search", task_run_name="plan-{stage}-{image_size}px", cache_policy=NONE)
def plan(config: Config, stage: str, image_size: int, fixed: dict[str, Any], cache_dir: str) -> str:
    """Writes the search's spec (directory keyed by config, a free port) and returns its path."""
    return str(stages.plan_search(config, stage, image_size, fixed, Path(cache_dir)))


def _search_name(role: str):
    def name() -> str:
        spec = Path(task_run.parameters["spec_path"])
        suffix = f"-tuner{task_run.parameters['index']}" if "index" in task_run.parameters else ""
        return f"{role}-{spec.parent.parent.name}-{spec.stem}{suffix}"

    return name


@task(name="chief", task_run_name=_search_name("chief"), cache_policy=NONE)
def chief(spec_path: str) -> str:
    """Runs the oracle process until the search is complete; fails if trials remain.

    Its time limit is the spec's chief_timeout_s, kept by the chief itself and, as a backstop,
    by killing the process (a Prefect timeout cannot interrupt a task blocked in a thread).
    """
    logger = get_run_logger()
    spec = search.SearchSpec.load(Path(spec_path))
    if search.is_complete(spec):
        logger.info("search %s already complete: nothing to run", spec.project_dir)
        return spec_path
    code = search.run_role(search.role_command("chief", Path(spec_path)), logger.info,
                           timeout_s=spec.chief_timeout_s + 30)
    if code != 0:
        reason = (f"chief of {spec.project_dir} ended with code {code} before all "
                  f"{spec.max_trials} trials ended; re-run to continue the search")
        search.mark_chief_down(spec, reason)  # workers still waiting for it fail now, not later
        raise SearchError(reason)
    return spec_path


@task(name="worker", task_run_name=_search_name("worker"), cache_policy=NONE, retry_delay_seconds=2)
def worker(spec_path: str, index: int) -> str:
    """Runs tuner process `tuner<index>` against the chief; a retry keeps the same id."""
    logger = get_run_logger()
    spec = search.SearchSpec.load(Path(spec_path))
    if search.is_complete(spec):
        return f"tuner{index}"
    env = search.worker_env(spec, index, search.visible_gpus())
    command = search.role_command("worker", Path(spec_path), f"tuner{index}")
    code = search.run_role(command, logger.info, timeout_s=spec.chief_timeout_s + 30, env=env)
    if code != 0:
        raise SearchError(f"worker tuner{index} of {spec.project_dir} exited with code {code}")
    return f"tuner{index}"


@task(name="finish-stage", task_run_name="finish-{stage}", cache_policy=NONE)
def finish_stage(config: Config, stage: str, spec_paths: list[str]) -> dict:
    """Writes the stage's table and plots, picks its winner, publishes the table as an artifact."""
    summary = stages.finish_stage(config, stage, [Path(p) for p in spec_paths])
    get_run_logger().info("%s: %d trials, chose %s", stage, summary["trials"], summary["chosen"])
    table = Path(config.work_dir) / "stages" / stage / "trials.csv"
    import pandas as pd

    rows = pd.read_csv(table).fillna("").to_dict(orient="records")
    create_table_artifact(rows, key=f"{stage}-trials", description=f"{stage}: one row per trial")
    return summary
