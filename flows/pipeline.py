"""The glasses pipeline: organize -> split -> cache -> three search stages -> ensemble -> analyses -> report."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.futures import wait

from glasses.config import Config
from glasses.report import Stopwatch
from glasses.workdir import claim
from tasks import data, model, search


def run_search(config: Config, stage: str, size: int, chosen: dict[str, Any], split_dir: str) -> str:
    """One distributed search: a chief task and `workers` concurrent worker task runs."""
    cache_dir = data.cache(config, split_dir, size)
    spec = search.plan(config, stage, size, chosen, cache_dir)
    chief = search.chief.submit(spec)  # its own limit: chief_timeout_s, enforced on the process
    worker = search.worker.with_options(retries=config.search.worker_retries)
    workers = [worker.submit(spec, index) for index in range(config.search.workers)]
    wait(workers)
    return chief.result()


@flow(name="glasses-pipeline", log_prints=True)
def pipeline(config: Config) -> str:
    """Runs the whole pipeline for `config`; every step reuses what earlier runs left on disk.

    Returns the path of the run's summary.json.
    """
    with claim(config.work_dir, config.data.data_dir):  # apart from the data, one run at a time
        clock = Stopwatch()
        source = data.source(config)
        organized = data.organize(config, source)
        split = data.split(config, organized["dir"])
        clock.lap("data")

        specs1 = [run_search(config, "stage1", size, {}, split["dir"]) for size in config.search.stage1.image_sizes]
        stage1 = search.finish_stage1(config, specs1)
        clock.lap("stage1")

        size = stage1["chosen"]["image_size"]
        stage2 = search.finish_stage2(config, [run_search(config, "stage2", size, {}, split["dir"])])
        clock.lap("stage2")

        specs3 = [run_search(config, "stage3", size, stage2["chosen"], split["dir"])]
        stage3 = search.finish_stage3(config, specs3)
        clock.lap("stage3")

        shipped = model.ensemble(config, specs3, split["dir"])
        clock.lap("ensemble")
        drawn = model.draw_figures(config, shipped, [stage1, stage2, stage3])
        latent = model.latent_baseline(config, source)
        clock.lap("analyses")
        return model.summary(config, organized, split, [stage1, stage2, stage3], shipped, drawn, latent,
                             clock.durations())
