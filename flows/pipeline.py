"""The glasses pipeline: organize -> split -> cache -> three search stages -> ensemble -> analyses -> report."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.futures import wait

from glasses.config import Config
from glasses.report import Stopwatch
from glasses.stages import stage_fixed
from glasses.workdir import WorkDir
from tasks import data, model, search


def run_search(config: Config, stage: str, size: int, fixed: dict[str, Any], split_dir: str) -> str:
    """One distributed search: a chief task and `workers` concurrent worker task runs."""
    cache_dir = data.cache(split_dir, str(WorkDir(config.work_dir).cache), size)
    spec = search.plan(config, stage, size, fixed, cache_dir)
    chief = search.chief.submit(spec)  # its own limit: chief_timeout_s, enforced on the process
    worker = search.worker.with_options(retries=config.search.worker_retries)
    workers = [worker.submit(spec, index) for index in range(config.search.workers)]
    wait(workers)
    return chief.result()


@flow(name="glasses-pipeline", log_prints=True)
def pipeline(config: Config) -> dict:
    """Runs the whole pipeline for `config`; every step reuses what earlier runs left on disk."""
    work, clock = WorkDir(config.work_dir), Stopwatch()
    source = str(config.data.data_dir) if config.data.data_dir else data.synthesize_data(config)
    organized = data.organize(source, str(work.organized))
    split = data.split(organized["dir"], str(work.split), config.data.fractions, config.data.seed)
    clock.lap("data")

    fixed1 = stage_fixed(config, "stage1")
    specs1 = [run_search(config, "stage1", size, fixed1, split["dir"]) for size in config.search.stage1.image_sizes]
    stage1 = search.finish_stage(config, "stage1", specs1)
    clock.lap("stage1")

    size = stage1["chosen"]["image_size"]
    specs2 = [run_search(config, "stage2", size, stage_fixed(config, "stage2"), split["dir"])]
    stage2 = search.finish_stage(config, "stage2", specs2)
    clock.lap("stage2")

    fixed3 = stage_fixed(config, "stage3", chosen=stage2["chosen"])
    specs3 = [run_search(config, "stage3", size, fixed3, split["dir"])]
    stage3 = search.finish_stage(config, "stage3", specs3)
    clock.lap("stage3")

    shipped = model.ensemble(config, specs3, split["dir"])
    clock.lap("ensemble")
    stage_plots = {"stage1": stage1["plots"], "stage2": stage2["plots"], "stage3": stage3["plots"]}
    drawn = model.draw_figures(config, shipped["evaluation"]["confusion"], stage_plots, size)
    latent = model.latent_baseline(source, config.data.fractions, config.data.seed)
    clock.lap("analyses")
    parts = {"dataset": organized, "split": split, "workers": config.search.workers,
             "stages": {"stage1": stage1, "stage2": stage2, "stage3": stage3},
             **shipped, "figures": drawn, "latent": latent, "durations_s": clock.durations()}
    model.summary(config, parts)
    return parts
