"""Distributed random search: one Keras Tuner chief (the gRPC oracle) and N worker processes.

The same module serves both roles, chosen on the command line (keras-tuner takes the role
from process-wide environment variables, so each role is its own process):

    python -m glasses.search chief  --spec SPEC.json
    python -m glasses.search worker --spec SPEC.json --tuner-id tuner0

Beyond keras-tuner's own server loop, the chief here
- tracks when it last heard from each worker (workers send a heartbeat every few seconds), and
  hands the trial of a worker silent for `worker_timeout_s` to another worker, so a worker gone
  for good does not lose its trial or hang the search;
- keeps idle workers waiting (instead of telling them to stop) while other trials still run, so
  they are there to take such a trial over;
- gives up after `chief_timeout_s`, or once no worker is left, and says which trials remain;
  the oracle's state is on disk, so a re-run continues the search (no trial run twice).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict

from glasses.errors import SearchError
from glasses.files import read_json, write_json

HEARTBEAT_S = 3.0
IDLE_POLL_S = 2.0
EXIT_INCOMPLETE = 3
ENDED = ("COMPLETED", "FAILED")


class SearchSpec(BaseModel):
    """Everything both roles of one search need; written to a JSON file they both read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    directory: Path
    project_name: str
    cache_dir: Path
    image_size: int
    batch_size: int
    max_trials: int
    epochs: int
    patience: int
    warmup_epochs: int = 0
    fixed: dict[str, int | str] = {}
    seed: int = 1337
    host: str = "127.0.0.1"
    port: int
    workers: int = 1
    worker_timeout_s: float = 120
    chief_timeout_s: float = 3600
    gpus_per_worker: int | Literal["all"] = 1

    @property
    def project_dir(self) -> Path:
        return self.directory / self.project_name

    def save(self, path: Path) -> Path:
        return write_json(path, self.model_dump(mode="json"))

    @classmethod
    def load(cls, path: Path) -> SearchSpec:
        return cls.model_validate(read_json(path))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Results on disk


def trial_records(project_dir: Path) -> list[dict[str, Any]]:
    """One record per trial of a project: id, status, values, score and who ran it how long."""
    records = []
    for trial_json in sorted(Path(project_dir).glob("trial_*/trial.json")):
        trial = read_json(trial_json)
        meta_path = trial_json.parent / "worker.json"
        meta = read_json(meta_path) if meta_path.is_file() else {}
        records.append({
            "trial_id": trial["trial_id"], "status": trial["status"], "score": trial.get("score"),
            "values": trial["hyperparameters"]["values"], "worker": meta.get("tuner_id"),
            "epochs": meta.get("epochs"), "seconds": meta.get("seconds"),
            "checkpoint": str(trial_json.parent / "checkpoint.weights.h5"),
        })
    return records


def is_complete(spec: SearchSpec) -> bool:
    """Whether all `max_trials` trials of the search have ended (completed or failed)."""
    ended = [r for r in trial_records(spec.project_dir) if r["status"] in ENDED]
    return len(ended) >= spec.max_trials


def trials_table(spec: SearchSpec) -> pd.DataFrame:
    """The search's trials as a table: id, image size, hyperparameters, val accuracy, epochs,
    seconds, worker id and status."""
    rows = []
    for record in trial_records(spec.project_dir):
        rows.append({"trial_id": record["trial_id"], "image_size": spec.image_size, **record["values"],
                     "val_accuracy": record["score"], "epochs": record["epochs"],
                     "seconds": record["seconds"], "worker": record["worker"], "status": record["status"],
                     "checkpoint": record["checkpoint"]})
    return pd.DataFrame(rows)


def keep_best(spec: SearchSpec, keep: int) -> list[str]:
    """Deletes the checkpoints of all but the `keep` best completed trials; returns those kept."""
    records = [r for r in trial_records(spec.project_dir) if r["status"] == "COMPLETED" and r["score"] is not None]
    records.sort(key=lambda r: r["score"], reverse=True)
    for record in records[keep:]:
        Path(record["checkpoint"]).unlink(missing_ok=True)
    return [r["trial_id"] for r in records[:keep]]


# ---------------------------------------------------------------------------------------------
# Running the roles as processes (called by the Prefect tasks, and by tests)


def role_command(role: str, spec_path: Path, tuner_id: str | None = None) -> list[str]:
    command = [sys.executable, "-m", "glasses.search", role, "--spec", str(spec_path)]
    return command + (["--tuner-id", tuner_id] if tuner_id else [])


def worker_env(spec: SearchSpec, index: int, gpus: int) -> dict[str, str]:
    """The environment of worker `index`: its GPUs (if any) and its share of the CPU cores."""
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1",
           "GLASSES_THREADS": str(max(1, (os.cpu_count() or 1) // spec.workers))}
    if not gpus:
        env["CUDA_VISIBLE_DEVICES"] = "-1"  # no CUDA probing (and its error lines) on a CPU host
    elif spec.gpus_per_worker != "all":
        per = int(spec.gpus_per_worker)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str((index * per + k) % gpus) for k in range(per))
    return env


def visible_gpus() -> int:
    """GPUs on this host, counted without importing TensorFlow (nvidia-smi), 0 if none."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def run_role(command: list[str], on_line: Callable[[str], None], timeout_s: float,
             env: dict[str, str] | None = None) -> int:
    """Runs a role's process to the end, streaming its output lines, killing it at the timeout.

    Returns the exit code (negative for a signal). The process group is killed if we are
    interrupted, so no tuner process outlives its task.
    """
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                               start_new_session=True)
    timer = threading.Timer(timeout_s, _kill_group, args=(process,))
    timer.start()
    try:
        for line in process.stdout:
            on_line(line.rstrip())
        return process.wait()
    finally:
        timer.cancel()
        _kill_group(process)


def _kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


# ---------------------------------------------------------------------------------------------
# Inside the role processes


def _hypermodel(spec: SearchSpec):
    from glasses.model import build_model
    from glasses.space import model_spec

    def build(hp):
        return build_model(model_spec(hp, spec.image_size, spec.fixed))

    return build


def _tuner(spec: SearchSpec, strategy=None):
    import keras_tuner as kt

    class GlassesTuner(kt.RandomSearch):
        """RandomSearch that records who ran each trial, for how long and for how many epochs."""

        def run_trial(self, trial, *args, **kwargs):
            started = time.monotonic()
            with _Heartbeat(self.oracle, trial.trial_id):
                histories = super().run_trial(trial, *args, **kwargs)
            epochs = max(len(h.history.get("loss", [])) for h in histories)
            write_json(Path(self.get_trial_dir(trial.trial_id)) / "worker.json",
                       {"tuner_id": self.tuner_id, "seconds": round(time.monotonic() - started, 2),
                        "epochs": epochs})
            return histories

    return GlassesTuner(
        _hypermodel(spec), objective="val_accuracy", max_trials=spec.max_trials, seed=spec.seed,
        max_retries_per_trial=1, max_consecutive_failed_trials=3, directory=str(spec.directory),
        project_name=spec.project_name, overwrite=False, distribution_strategy=strategy)


class _Heartbeat:
    """Tells the chief every few seconds, during a trial, that this worker is alive."""

    def __init__(self, oracle, trial_id: str):
        self.oracle, self.trial_id = oracle, trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                self.oracle.get_trial(self.trial_id)
            except Exception:  # a missed beat is not fatal; the chief decides on silence
                pass

    def __enter__(self) -> _Heartbeat:
        if hasattr(self.oracle, "stub"):  # only a distributed worker has a chief to tell
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()


def _set_role_env(spec: SearchSpec, tuner_id: str) -> None:
    os.environ["KERASTUNER_TUNER_ID"] = tuner_id
    os.environ["KERASTUNER_ORACLE_IP"] = spec.host
    os.environ["KERASTUNER_ORACLE_PORT"] = str(spec.port)


def run_chief(spec: SearchSpec) -> int:
    """Serves the oracle until every trial has ended, no worker is left, or the timeout.

    Returns 0 when the search is complete, EXIT_INCOMPLETE otherwise.
    """
    _set_role_env(spec, "chief")
    from glasses.chief import serve

    tuner = _tuner(spec)
    tuner.save()
    return serve(tuner.oracle, spec)


def chief_down_marker(spec: SearchSpec) -> Path:
    """A file saying this search's chief has ended badly: its workers stop waiting for it."""
    return spec.directory / f"{spec.project_name}.chief-down"


def mark_chief_down(spec: SearchSpec, reason: str) -> None:
    write_json(chief_down_marker(spec), {"reason": reason, "port": spec.port})


def _wait_for_chief(spec: SearchSpec) -> None:
    deadline = time.monotonic() + spec.worker_timeout_s
    while True:
        marker = chief_down_marker(spec)
        if marker.is_file() and read_json(marker).get("port") == spec.port:
            raise SearchError(f"the chief at {spec.host}:{spec.port} is down: {read_json(marker)['reason']}")
        try:
            with socket.create_connection((spec.host, spec.port), timeout=2):
                return
        except OSError as error:
            if time.monotonic() > deadline:
                raise SearchError(f"no chief listening at {spec.host}:{spec.port} after "
                                  f"{spec.worker_timeout_s:.0f}s ({error})") from error
            time.sleep(0.5)


def _limit_threads() -> None:
    import tensorflow as tf

    threads = int(os.environ.get("GLASSES_THREADS", "0"))
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))


def _strategy():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return (tf.distribute.MirroredStrategy() if gpus else None), max(1, len(gpus))


def run_worker(spec: SearchSpec, tuner_id: str) -> int:
    """Runs trials handed out by the chief until it says the search is over."""
    if is_complete(spec):
        print(f"{tuner_id}: search {spec.project_dir} already complete", flush=True)
        return 0
    _set_role_env(spec, tuner_id)
    _limit_threads()
    import keras

    from glasses.pipeline import load_subset

    from keras_tuner.src.distribute import oracle_client

    # A chief that is gone should fail this worker's calls soon (the task retries), not in an hour.
    oracle_client.TIMEOUT = max(10.0, spec.worker_timeout_s)
    strategy, replicas = _strategy()
    _wait_for_chief(spec)
    tuner = _tuner(spec, strategy)
    tuner.oracle = _PatientClient(tuner.oracle)
    batch = spec.batch_size * replicas
    train = load_subset(spec.cache_dir, "train", batch, shuffle_seed=spec.seed)
    val = load_subset(spec.cache_dir, "val", batch)
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=spec.patience,
                                         restore_best_weights=True, start_from_epoch=spec.warmup_epochs)
    print(f"{tuner_id}: {replicas} replica(s), batch {batch}, {os.environ.get('GLASSES_THREADS')} threads",
          flush=True)
    tuner.search(train, validation_data=val, epochs=spec.epochs, callbacks=[stop], verbose=2)
    return 0


class _PatientClient:
    """The worker's oracle client, waiting a moment between asks while the chief says 'idle'."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client, name)

    def create_trial(self, tuner_id):
        trial = self._client.create_trial(tuner_id)
        if trial.status == "IDLE":
            time.sleep(IDLE_POLL_S)
        return trial


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glasses.search", description=__doc__.split("\n")[0])
    parser.add_argument("role", choices=["chief", "worker"])
    parser.add_argument("--spec", type=Path, required=True, help="the search's JSON spec")
    parser.add_argument("--tuner-id", default=None, help="a worker's stable id: tuner0, tuner1, ...")
    args = parser.parse_args(argv)
    spec = SearchSpec.load(args.spec)
    if args.role == "chief":
        return run_chief(spec)
    if not args.tuner_id or "chief" in args.tuner_id:
        parser.error("a worker needs --tuner-id, and it must not contain 'chief'")
    return run_worker(spec, args.tuner_id)


if __name__ == "__main__":
    sys.exit(main())
