"""The glasses pipeline: organize -> split -> cache -> three search stages -> ensemble -> analyses -> report.

`pipeline` takes what a person fills in (preset, data dir, work dir, overrides; each has a
default, so "Quick run" in the UI needs no edits), builds and validates the config, and runs
`stages` with its results persisted in the work dir: a retry shows finished stages Cached.
"""

from datetime import date
from typing import Any, Literal

from prefect import flow
from prefect.futures import wait
from prefect.runtime import flow_run

from glasses.config import Config, run_name
from glasses.report import Stopwatch
from glasses.workdir import claim
from tasks import caching, data, model, search

# Not `from __future__ import annotations`: Prefect builds the parameters' schema from these
# annotations when a deployment loads this file, and string annotations would not resolve.
Preset = Literal["quick", "paper", "smoke"]


def run_search(config: Config, stage: str, size: int, chosen: dict[str, Any], split: dict, fingerprint: str) -> str:
    """One distributed search: a chief task and `workers` concurrent worker task runs."""
    cache_dir = data.cache(config, split["dir"], fingerprint, size)
    spec = search.plan(config, stage, size, chosen, cache_dir)
    # Their time limit is the search's chief_timeout_s, kept by the chief and enforced on the role
    # processes (killed 30 s past it): a Prefect timeout cannot interrupt a task blocked in a thread.
    chief = search.chief.submit(spec)
    worker = search.worker.with_options(retries=config.search.worker_retries)
    workers = [worker.submit(spec, index) for index in range(config.search.workers)]
    wait(workers)
    return chief.result()


def _name() -> str:
    parameters = flow_run.parameters
    return run_name(parameters.get("preset", "quick"), parameters.get("data_dir"), date.today())


@flow(name="glasses-pipeline", flow_run_name=_name, retries=1, retry_delay_seconds=10, log_prints=True)
def pipeline(preset: Preset = "quick", data_dir: str | None = None, work_dir: str | None = None,
             overrides: dict[str, Any] | None = None) -> str:
    """Trains, searches and ships the glasses ensemble; returns the path of the run's summary.json.

    Args:
        preset: quick (a laptop, built-in data), paper (the report's settings) or smoke (tests).
        data_dir: A dataset in the Kaggle layout; empty for the built-in synthetic one.
        work_dir: Where every output goes; empty for $GLASSES_HOME or ~/.glasses.
        overrides: Any config settings, nested as in `glasses config`, e.g.
            {"search": {"workers": 1, "stage3": {"max_trials": 30}}}.
    """
    config = data.configure(preset, data_dir, work_dir, overrides)
    return stages.with_options(result_storage=caching.result_storage(config))(config)


@flow(name="glasses-stages", log_prints=True)
def stages(config: Config) -> str:
    """The stages of one run, on one work dir held for the run (apart from the data, one at a time)."""
    with claim(config.work_dir, config.data.data_dir):
        clock = Stopwatch()
        source = data.source(config)
        fingerprint = data.fingerprint(source)
        organized = data.organize(config, source, fingerprint)
        split = data.split(config, organized["dir"], fingerprint)
        clock.lap("data")

        specs1 = [run_search(config, "stage1", size, {}, split, fingerprint)
                  for size in config.search.stage1.image_sizes]
        stage1 = search.finish_stage1(config, specs1)
        clock.lap("stage1")

        size = stage1["chosen"]["image_size"]
        stage2 = search.finish_stage2(config, [run_search(config, "stage2", size, {}, split, fingerprint)])
        clock.lap("stage2")

        specs3 = [run_search(config, "stage3", size, stage2["chosen"], split, fingerprint)]
        stage3 = search.finish_stage3(config, specs3)
        clock.lap("stage3")

        shipped = model.ensemble(config, specs3, split["dir"])
        clock.lap("ensemble")
        drawn = model.draw_figures(config, shipped, [stage1, stage2, stage3])
        latent = model.latent_baseline(config, source, fingerprint)
        clock.lap("analyses")
        return model.summary(config, organized, split, [stage1, stage2, stage3], shipped, drawn, latent,
                             clock.durations())

