"""The glasses pipeline: organize -> split -> cache -> three search stages -> ensemble -> analyses -> report.

`pipeline` takes what a person fills in (preset, data dir, work dir, overrides; each has a
default, so "Quick run" in the UI needs no edits), builds and validates the config, and runs
`stages` with its results persisted in the work dir: a retry shows finished stages Cached.
"""

import time
from contextlib import nullcontext
from datetime import date
from typing import Any, Literal

from prefect import flow
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.runtime import flow_run
from pydantic.json_schema import SkipJsonSchema

from glasses import cluster, registry
from glasses.config import Config, run_name
from glasses.planner import parse_duration
from glasses.report import Stopwatch
from glasses.stages import sizes_to_cache, sizes_to_search
from glasses.workdir import claim
from tasks import analyses, caching, data, errors, events, placement, planning, search, shipping

# Not `from __future__ import annotations`: Prefect builds the parameters' schema from these
# annotations when a deployment loads this file, and string annotations would not resolve.
Preset = Literal["quick", "paper", "smoke"]
Mode = Literal["resume", "retune"]


def run_searches(config: Config, stage: str, sizes: list[int], chosen: dict[str, Any],
                 caches: dict[int, str], kept: dict[str, dict] | None = None) -> list[str]:
    """Runs a stage's searches (one per size; none when the run keeps the stage's summary, `kept`)
    all at once: a chief task each and `workers` worker task runs each, which queue (on this
    machine one search's tuner<i> after the other's: tasks/placement.py; a worker with no trial
    left moves on to the search that follows); returns their spec paths."""
    sizes = sizes_to_search(stage, sizes, kept or {})
    return _run(config, [search.plan(config, stage, size, chosen, caches[size], followed=size != sizes[-1])
                         for size in sizes])


def _run(config: Config, specs: list[str]) -> list[str]:
    # Their time limit is the search's chief_timeout_s, kept by the chief and enforced on the role
    # processes (killed 30 s past it): a Prefect timeout cannot interrupt a task blocked in a thread.
    # A chief "on the flow" runs in a thread of the flow's process, whatever the flow's task runner.
    # Once a search's workers have all ended, its chief is released: it waits for no other.
    on_flow = cluster.is_dask(config.search.cluster) and config.search.chief_on == "flow"
    with ThreadPoolTaskRunner(max_workers=len(specs)) if on_flow else nullcontext() as here:
        chiefs = [here.submit(search.chief, {"spec_path": spec}) if here else search.chief.submit(spec)
                  for spec in specs]
        workers = placement.submit_workers(config, specs)
        wait(workers)
        wait([search.release.submit(spec, str(chief.task_run_id)) for spec, chief in zip(specs, chiefs)])
        return [chief.result() for chief in chiefs]


def _name() -> str:
    parameters = flow_run.parameters
    return run_name(parameters.get("preset", "quick"), parameters.get("data_dir"), date.today())


@flow(name="glasses-pipeline", flow_run_name=_name, retries=1, retry_delay_seconds=10, log_prints=True)
@errors.fail_once_on_our_errors
def pipeline(preset: Preset = "quick", data_dir: str | None = None, work_dir: str | None = None,
             overrides: dict[str, Any] | None = None, strict: bool = False, time_budget: str | None = None,
             budget_started_at: SkipJsonSchema[float | None] = None, mode: Mode = "resume") -> str:
    """Trains, searches and ships the glasses ensemble; returns the path of the run's summary.json.

    When the shipped model learned nothing (`summary["alarm"]`), the run ends Completed under
    the name "Nothing learned" (or "Not clearly learned": too few test images to tell), still
    returning the path, or with `strict` Failed (not retried).

    Args:
        preset: quick (a laptop, built-in data), paper (the report's settings) or smoke (tests).
        data_dir: A dataset in the Kaggle layout; empty for the built-in synthetic one.
        work_dir: Where every output goes; empty for $GLASSES_HOME or ~/.glasses.
        overrides: Any config settings, nested as in `glasses config`, e.g.
            {"search": {"workers": 1, "stage3": {"max_trials": 30}}}.
        strict: Fail the run when nothing was learned (for a deployment whose runs must count).
        time_budget: e.g. 15m, 1h30m: size the searches (trials, steps, image sizes) from the
            data and this machine's measured speed to end within it; empty: the preset as is.
        budget_started_at: When the budget's clock started (Unix time); empty: this run's start.
            `glasses run` sets its own start, so its start-up counts too. Internal: not in the
            parameters' schema, so not in a deployment's run form.
        mode: resume (continue the work dir's searches to their trial counts, reuse finished
            stages) or retune (also add `search.stage3.retune_trials` trials to stage 3 and
            rebuild the ensemble; the scheduled deployment's). Either way the run's model
            replaces the champion only if it is better (glasses.registry).
    """
    started = time.time()
    events.tag_run(preset, mode)  # a run's tags follow its own parameters, not its deployment's
    budget_s = parse_duration(time_budget)  # a bad value fails here, before any work
    config = data.configure(preset, data_dir, work_dir, overrides)
    data.check(config)
    run = {"id": str(flow_run.get_id() or ""), "flow_run": flow_run.get_name() or "", "mode": mode}
    summary = stages.with_options(result_storage=caching.result_storage(config),
                                  task_runner=placement.task_runner(config))(
        config, budget_s, budget_started_at or started, run)
    return shipping.outcome(summary, strict)


@flow(name="glasses-stages", log_prints=True)
def stages(config: Config, budget_s: float | None = None, started_at: float | None = None,
           run: dict | None = None) -> str:
    """The stages of one run, on one work dir held for the run (apart from the data, one at a time);
    with a budget (seconds from `started_at`), the searches are sized to it after the split.
    `run`: the pipeline run's id, name and mode (retune: stage 3 grows, once per run id)."""
    run = {"id": "", "flow_run": "", "mode": "resume", **(run or {})}
    run["entry"] = registry.entry_name(config.preset)
    with claim(config.work_dir, config.data.data_dir), search.spare_roles(config, budget_s):
        clock = Stopwatch()
        placement.check_storage(config)  # on a Dask cluster: every worker sees the work dir
        source = data.source(config)
        fingerprint = data.fingerprint(source)
        organized = data.organize(config, source, fingerprint)
        split = data.split(config, organized["dir"], fingerprint)
        clock.lap("data")
        config, plan = planning.size(config, split, budget_s, started_at or clock.started_at)
        clock.lap("plan")

        kept = search.kept_choices(config, fingerprint, run["mode"])  # stages 1-2 a retune may keep, or none
        caches = data.cache(config, split["dir"], fingerprint, sizes_to_cache(config.search, kept))
        specs1 = run_searches(config, "stage1", config.search.stage1.image_sizes, {}, caches, kept)
        stage1 = search.finish_stage1(config, specs1, kept)
        clock.lap("stage1")

        size = stage1["chosen"]["image_size"]
        specs2 = run_searches(config, "stage2", [size], {}, caches, kept)
        stage2 = search.finish_stage2(config, specs2, kept, specs1)  # stage 1's trials at the size count too
        clock.lap("stage2")

        config = search.retune_trials(config, size, stage2["chosen"], caches[size], run)  # retune: stage 3 grows
        specs3 = run_searches(config, "stage3", [size], stage2["chosen"], caches)
        stage3 = search.finish_stage3(config, specs3)
        clock.lap("stage3")

        shipped = shipping.ensemble(config, specs3, split["dir"])
        decision = shipping.champion(config, shipped, split["dir"], fingerprint, run)
        clock.lap("ensemble")
        drawn = analyses.draw_figures(config, shipped, [stage1, stage2, stage3])
        explained = analyses.explain_model(config, shipped, source)
        baseline = analyses.latent_baseline(config, source, fingerprint, split["dir"])
        clock.lap("analyses")
        path = analyses.summary(config, organized, split, [stage1, stage2, stage3], shipped, drawn, baseline,
                                clock.durations(), plan, decision, clock.windows(), explained=explained)
        shipping.tidy(config, specs1 + specs2 + specs3, path, decision)
        return path

