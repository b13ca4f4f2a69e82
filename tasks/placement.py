"""The task runner a run's stages use, from `search.cluster` (glasses/cluster.py): Prefect's
thread pool, or a Dask cluster (one started for the run, or an existing scheduler)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import dask
from prefect.context import FlowRunContext
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from glasses import cluster
from glasses.config import Config


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
