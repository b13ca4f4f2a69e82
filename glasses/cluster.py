"""Where the searches' roles run: this machine's threads, a Dask cluster started for the run, or an
existing Dask scheduler (`search.cluster`). The Prefect side (the task runner) is in
`tasks/placement.py`; this module holds what needs only Dask.

On a Dask cluster every host must see the work dir at the same path (NFS or similar):
`check_storage` asks each Dask worker before anything is trained.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from glasses.errors import OutputError
from glasses.files import TEMPORARY_SUFFIX

THREADS = "threads"  # the flow's own threads, every role a process on this machine
LOCAL = "local"  # a distributed.LocalCluster started for the run, sized to this machine


def is_dask(cluster: str) -> bool:
    return cluster != THREADS


def local_cluster_kwargs(workers: int, cpus: int | None = None) -> dict[str, Any]:
    """A LocalCluster with one Dask worker process per tuner worker, the cores shared among them."""
    cpus = cpus or os.cpu_count() or 1
    return {"n_workers": workers, "threads_per_worker": max(1, cpus // workers), "processes": True,
            "dashboard_address": None}


def dask_worker() -> tuple[str, int] | None:
    """The name and thread count of the Dask worker this code runs on, or None when it does not."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    return str(worker.name), int(worker.state.nthreads)


def leave_thread_pool() -> None:
    """On a Dask worker, gives this task's thread slot back (`secede`): for a task that only waits
    (the chief), so that tuner workers can run there. Elsewhere, nothing."""
    if dask_worker() is not None:
        from distributed import secede

        secede()


def storage_problem(work_dir: str) -> str | None:
    """None when this host can read the work dir and write a file in it, else what is wrong."""
    root = Path(work_dir)
    if not root.is_dir():
        return f"{root} does not exist here"
    probe = root / f".storage-check-{uuid.uuid4().hex[:8]}{TEMPORARY_SUFFIX}"
    try:
        probe.write_text("glasses")
        read = probe.read_text()
    except OSError as error:
        return f"cannot write in {root}: {error.strerror or error}"
    finally:
        probe.unlink(missing_ok=True)
    return None if read == "glasses" else f"{root} gives back other bytes than written"


def check_storage(client, work_dir: Path) -> None:
    """Raises OutputError naming every Dask worker (of `client`'s cluster) that cannot read and
    write the work dir at its path: all hosts must share it (NFS or similar)."""
    names = {address: info.get("name", address) for address, info in client.scheduler_info()["workers"].items()}
    if not names:
        raise OutputError(f"the Dask cluster at {client.scheduler.address} has no worker")
    found = client.run(storage_problem, str(work_dir))
    problems = sorted(f"{names.get(address, address)} ({address}): {problem}"
                      for address, problem in found.items() if problem)
    if problems:
        raise OutputError(f"Dask worker(s) cannot use the work dir {work_dir}: {'; '.join(problems)}. Every "
                          "host must see the work dir at the same path (a shared file system)")


def gpu_resources(client) -> bool:
    """Whether the cluster's workers declare GPUs as a Dask resource (`--resources GPU=n`)."""
    return any(info.get("resources", {}).get("GPU") for info in client.scheduler_info()["workers"].values())
