"""Tuner workers on an existing Dask cluster: a real `dask scheduler` and two `dask worker`
processes (A and B, one thread each) on loopback, the smoke pipeline run against it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from glasses import cluster
from glasses.config import build_config
from glasses.errors import OutputError
from glasses.search import free_port

# One xdist worker runs this module, so the module's shared cluster is started once.
pytestmark = pytest.mark.xdist_group("dask-cluster")


class DaskCluster:
    """A scheduler and named one-thread workers, each its own process, stopped at exit."""

    def __init__(self, root: Path, names: list[str]):
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen] = {}
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        logs = root / "dask-logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.processes["scheduler"] = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
             str(self.port), "--no-dashboard"],
            stdout=open(logs / "scheduler.log", "w"), stderr=subprocess.STDOUT, env=env)
        try:
            for name in names:
                self.start_worker(name, logs, env)
            self.wait_for(len(names))
        except Exception:
            self.stop()
            raise

    def start_worker(self, name: str, logs: Path, env: dict) -> None:
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--name", name, "--nthreads", "1",
             "--nworkers", "1", "--no-nanny", "--no-dashboard", "--local-directory",
             str(logs / name)],
            stdout=open(logs / f"{name}.log", "w"), stderr=subprocess.STDOUT, env=env)

    def wait_for(self, workers: int, timeout_s: float = 60) -> None:
        from distributed import Client

        with Client(self.address, timeout=timeout_s) as client:
            client.wait_for_workers(workers, timeout=timeout_s)

    def stop(self) -> None:
        """Kills the workers (a tuner process they started follows its parent: the watchdog)
        and the scheduler; a test cluster needs no graceful close."""
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    found = DaskCluster(tmp_path_factory.mktemp("dask"), ["A", "B"])
    yield found
    found.stop()


@pytest.fixture
def dask_cluster(tmp_path):
    """A cluster of its own, for a test that kills one of its workers."""
    found = DaskCluster(tmp_path, ["A", "B"])
    yield found
    found.stop()


def test_cluster_setting_takes_threads_local_or_an_address():
    assert build_config("smoke").search.cluster == "threads"
    assert build_config("smoke", overrides={"search.cluster": "local"}).search.cluster == "local"
    address = build_config("smoke", overrides={"search.dask_address": "tcp://10.0.0.7:8786"}).search.cluster
    assert address == "tcp://10.0.0.7:8786"


def test_a_local_cluster_shares_the_cores_among_the_tuner_workers():
    assert cluster.local_cluster_kwargs(2, cpus=8) | {} == {"n_workers": 2, "threads_per_worker": 4,
                                                            "processes": True, "dashboard_address": None}
    assert cluster.local_cluster_kwargs(4, cpus=2)["threads_per_worker"] == 1


class _Client:
    """What check_storage and gpu_resources ask of a distributed.Client, answered from a table."""

    def __init__(self, workers: dict[str, dict], problems: dict[str, str | None]):
        self.workers, self.problems = workers, problems
        self.scheduler = type("Scheduler", (), {"address": "tcp://scheduler:8786"})()

    def scheduler_info(self) -> dict:
        return {"workers": self.workers}

    def run(self, function, *args):
        return dict(self.problems)


def test_gpus_are_a_resource_only_when_the_workers_declare_them():
    plain = {"tcp://h1:1": {"name": "A", "resources": {}}, "tcp://h2:1": {"name": "B"}}
    assert not cluster.gpu_resources(_Client(plain, {}))
    assert cluster.gpu_resources(_Client({**plain, "tcp://h3:1": {"name": "C", "resources": {"GPU": 2}}}, {}))


def test_the_storage_check_names_each_worker_that_cannot_use_the_work_dir(tmp_path):
    workers = {"tcp://h1:1": {"name": "gpu1"}, "tcp://h2:1": {"name": "gpu2"}}
    cluster.check_storage(_Client(workers, {"tcp://h1:1": None, "tcp://h2:1": None}), tmp_path)
    with pytest.raises(OutputError, match=r"cannot use the work dir .*: gpu2 \(tcp://h2:1\): /w does not exist "
                                          r"here\. Every host must see the work dir at the same path"):
        cluster.check_storage(_Client(workers, {"tcp://h1:1": None, "tcp://h2:1": "/w does not exist here"}), tmp_path)
    with pytest.raises(OutputError, match="has no worker"):
        cluster.check_storage(_Client({}, {}), tmp_path)


def test_a_tuner_worker_on_a_dask_worker_takes_its_name_and_threads():
    from glasses.search.launch import worker_env
    from glasses.search.spec import SearchSpec

    spec = SearchSpec.model_construct(workers=2, gpus_per_worker=1)
    env = worker_env(spec, 1, gpus=0, on_dask=("gpu2", 8))
    assert (env["GLASSES_NODE"], env["GLASSES_THREADS"], env["CUDA_VISIBLE_DEVICES"]) == ("gpu2", "4", "-1")
    # what a Dask nanny sets for its worker is not the tuner's: unset (a fixed malloc trim threshold
    # made every trial about twice as slow)
    assert env["MALLOC_TRIM_THRESHOLD_"] is None and env["OMP_NUM_THREADS"] is None
    on_gpu = worker_env(spec, 1, gpus=2, on_dask=("gpu2", 1))
    assert on_gpu["GLASSES_THREADS"] == "1" and "CUDA_VISIBLE_DEVICES" not in on_gpu  # the Dask worker's own
    here = worker_env(spec, 1, gpus=2)
    assert "GLASSES_NODE" not in here and here["CUDA_VISIBLE_DEVICES"] == "1"


def test_the_storage_check_names_the_problem(tmp_path):
    assert cluster.storage_problem(str(tmp_path)) is None
    assert "does not exist here" in cluster.storage_problem(str(tmp_path / "elsewhere"))
    assert not list(tmp_path.iterdir())  # the probe file is gone


@pytest.mark.slow
def test_the_storage_check_names_a_dask_worker_that_cannot_see_the_work_dir(shared_cluster, tmp_path):
    from distributed import Client

    work = tmp_path / "work"
    work.mkdir()
    with Client(shared_cluster.address) as client:
        cluster.check_storage(client, work)  # both see it
        with pytest.raises(OutputError, match=r"Dask worker\(s\) cannot use the work dir .*: A \(tcp://"
                                              r".*does not exist here; B \(tcp://.*shared file system"):
            cluster.check_storage(client, tmp_path / "not-on-these-hosts")


@pytest.mark.slow
def test_smoke_pipeline_on_an_existing_dask_cluster(prefect_server, shared_cluster, tmp_path):
    from flows.pipeline import pipeline

    work = tmp_path / "work"
    state = pipeline(preset="smoke", work_dir=str(work), overrides={"search": {"dask_address": shared_cluster.address}},
                     return_state=True)
    assert state.is_completed(), state.message
    tables = {stage: pd.read_csv(work / "stages" / stage / "trials.csv") for stage in ("stage1", "stage2", "stage3")}
    for stage, table in tables.items():
        assert set(table["node"]) == {"A", "B"}, (stage, table[["trial_id", "image_size", "worker", "node"]])
    # stage 1's two sizes were searched side by side: each search's span of trials overlaps the other's
    first = tables["stage1"].assign(started=lambda t: t["ended_at"] - t["seconds"])
    spans = first.groupby("image_size").agg(start=("started", "min"), end=("ended_at", "max"))
    assert len(spans) == 2 and spans["start"].max() < spans["end"].min(), spans
    assert "by node A: " in (work / "report.md").read_text()
    cards = [json.loads(card.read_text()) for card in (work / "stages").rglob("*.chief.json")]
    assert len(cards) == 4 and {card["node"] for card in cards} <= {"A", "B"}, cards  # chief_on: cluster


@pytest.mark.slow
def test_a_chief_on_the_flow_runs_in_the_flows_process(prefect_server, shared_cluster, tmp_path):
    """search.chief_on = flow: the chief in a thread of the flow's process (this one, on this
    host, not a Dask worker), its tuner workers on the Dask workers."""
    from prefect import flow
    from prefect_dask import DaskTaskRunner

    from flows.pipeline import run_searches
    from tasks import data

    config = build_config("smoke", overrides={"work_dir": tmp_path / "work"}, settings={"search": {
        "dask_address": shared_cluster.address, "chief_on": "flow", "stage1": {"image_sizes": [16]}}})

    @flow(task_runner=DaskTaskRunner(address=shared_cluster.address))
    def one_search() -> list[str]:
        source = data.source(config)
        fingerprint = data.fingerprint(source)
        split = data.split(config, data.organize(config, source, fingerprint)["dir"], fingerprint)
        return run_searches(config, "stage1", [16], {}, data.cache(config, split["dir"], fingerprint, [16]))

    [spec] = one_search()
    [card] = Path(spec).parent.glob("*.chief.json")
    found = json.loads(card.read_text())
    assert found["node"] == socket.gethostname()  # on the cluster it would be A or B
    from glasses.search import SearchSpec
    from glasses.search.records import trial_records

    trials = trial_records(SearchSpec.load(Path(spec)).project_dir)
    assert [t["status"] for t in trials] == ["COMPLETED"] * 2 and {t["node"] for t in trials} <= {"A", "B"}


@pytest.mark.slow
def test_a_dask_worker_killed_mid_search_loses_no_trial(dask_cluster, tmp_path):
    """Dask worker B dies (SIGKILL, its tuner process with it) after its tuner has finished a
    trial: the search still completes every trial, none twice, tuner0 on A doing the rest."""
    from distributed import Client

    from glasses.search import SearchSpec, run_chief, run_worker
    from glasses.search.records import trial_records
    from tests.test_search import _spec

    spec_path = _spec(tmp_path, _tiny_cache(tmp_path), max_trials=4, epochs=10, worker_timeout_s=10,
                      await_workers_s=120)
    spec = SearchSpec.load(spec_path)

    def done_by(tuner: str) -> list[str]:
        return [r["trial_id"] for r in trial_records(spec.project_dir)
                if r["worker"] == tuner and r["status"] == "COMPLETED"]

    chief = ThreadPoolExecutor(1).submit(run_chief, spec_path, _quiet)  # here, as where a flow runs
    with Client(dask_cluster.address) as client:
        # (output to the Dask worker's own log: a function of this module does not unpickle there)
        tuners = [client.submit(run_worker, spec_path, index, pure=False, workers=[name])
                  for index, name in enumerate(["A", "B"])]
        deadline = time.monotonic() + 300
        while not done_by("tuner1") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert done_by("tuner1"), "tuner1 on B finished no trial"
        dask_cluster.processes["B"].kill()
        chief.result(timeout=600)
        assert tuners[0].result(timeout=120) == "tuner0"
    completed = [r for r in trial_records(spec.project_dir) if r["status"] == "COMPLETED"]
    assert sorted(r["trial_id"] for r in completed) == sorted({r["trial_id"] for r in completed})
    assert len(completed) == 4
    assert {r["node"] for r in completed} == {"A", "B"}
    assert len(done_by("tuner0")) >= 4 - len(done_by("tuner1"))


def _quiet(line: str) -> None:
    pass


def _tiny_cache(tmp_path: Path) -> Path:
    from glasses import dataset, inputs
    from tests.conftest import balanced_labels, write_kaggle_dataset

    source = write_kaggle_dataset(tmp_path / "source", balanced_labels(40))
    organized = dataset.organize(source, tmp_path / "organized")
    split = dataset.split(organized.dir, tmp_path / "split", (0.6, 0.2, 0.2), seed=1337)
    return inputs.build_cache(split.dir, tmp_path / "cache", 16)


def test_a_role_process_does_not_inherit_what_its_environment_unsets(monkeypatch):
    from glasses.search.launch import run_process

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    lines: list[str] = []
    code = "import os; print(os.environ.get('MALLOC_TRIM_THRESHOLD_'), os.environ.get('GLASSES_NODE'))"
    assert run_process([sys.executable, "-c", code], lines.append, 30,
                       {"MALLOC_TRIM_THRESHOLD_": None, "GLASSES_NODE": "A"}) == 0
    assert lines == ["None A"]
