"""The time budget's task: measure this machine and size the run to the budget (glasses.planner)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from glasses.config import Config
from glasses.planner import Counts, size_to_budget
from glasses.workdir import WorkDir
from tasks import caching


@task(name="budget", cache_key_fn=caching.budget_key, persist_result=True)
def size(config: Config, split: dict, budget_s: float | None, started_at: float) -> tuple[Config, dict | None]:
    """The config sized to end within `budget_s` seconds of `started_at` (Unix time), and its plan
    (None, and the config as it is, without a budget). Cached: a retry keeps the plan it made."""
    counts = Counts(split["train"], split["val"], split["test"])
    sized, plan = size_to_budget(config, Path(split["dir"]), counts, budget_s, started_at,
                                 WorkDir(config.work_dir).plan)
    if plan is not None:
        get_run_logger().info("time budget %.0f s, %.0f s gone: planned %s (scale %.3g; stage 1 sizes %s, "
                              "trials %d/%d/%d)", budget_s, plan.spent_s, plan.stages, plan.scale,
                              sized.search.stage1.image_sizes, sized.search.stage1.max_trials,
                              sized.search.stage2.max_trials, sized.search.stage3.max_trials)
    return sized, None if plan is None else plan.to_dict()
