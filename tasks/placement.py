"""The task runner a run's stages use, from `search.cluster` (glasses/cluster.py): Prefect's
thread pool, or a Dask cluster (one started for the run, or an existing scheduler)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import dask
from prefect import allow_failure
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from glasses import cluster
from glasses.config import Config
from tasks import search


def task_runner(config: Config) -> TaskRunner:
    kind = config.search.cluster
    if not cluster.is_dask(kind):
        return ThreadPoolTaskRunner()
    if kind == cluster.LOCAL:
        return DaskTaskRunner(cluster_kwargs=cluster.local_cluster_kwargs(config.search.workers))
    return DaskTaskRunner(address=kind)


def check_storage(config: Config) -> None:
    """On a Dask cluster, fails naming each Dask worker that cannot use the work dir."""
    runner = FlowRunContext.get().task_runner
    if isinstance(runner, DaskTaskRunner):
        cluster.check_storage(runner.client, config.work_dir.resolve())


def worker_placement(config: Config) -> AbstractContextManager:
    """Where tuner worker task runs may go: on a Dask cluster whose workers declare GPUs
    (`dask worker --resources GPU=n`), each needs `gpus_per_worker` of them ("all": one per
    Dask worker), so no more tuner workers run on a host than it has GPUs for."""
    runner = FlowRunContext.get().task_runner
    per = config.search.gpus_per_worker
    if isinstance(runner, DaskTaskRunner) and per != 0 and cluster.gpu_resources(runner.client):
        return dask.annotate(resources={"GPU": 1 if per == "all" else per})
    return nullcontext()


def submit_workers(config: Config, specs: list[str]) -> list[PrefectFuture]:
    """Submits the tuner worker task runs of the searches `specs` (a stage's, all at once);
    returns their futures.

    On this machine, worker `tuner<i>` of each search starts when `tuner<i>` of the one before
    has ended, whether it succeeded or not: never more than `search.workers` at once, each with
    its own share of the cores, and a worker whose search has no trial left for it moves on at
    once to the next search instead of waiting for the others' last trials (stage 1's sizes:
    trials of one search differ up to 3x in time). On a Dask cluster all are submitted, tuner0
    of every search first, and the cluster queues them, each needing its GPUs if it has any.
    """
    worker = search.worker.with_options(retries=config.search.worker_retries)
    indices = range(config.search.workers)
    if cluster.is_dask(config.search.cluster):
        with worker_placement(config):
            return [worker.submit(spec, index) for index in indices for spec in specs]
    futures, last = [], {}
    for spec in specs:
        for index in indices:
            after = [allow_failure(last[index])] if index in last else None
            last[index] = worker.submit(spec, index, wait_for=after)
            futures.append(last[index])
    return futures
