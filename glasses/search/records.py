"""A search's records on disk: its trials (Keras Tuner's trial.json plus our worker.json) and
the marker a failed chief leaves for its workers."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pandas as pd

from glasses.config import is_loopback
from glasses.errors import SearchError
from glasses.files import read_json, write_json
from glasses.search.early_stop import stop_record
from glasses.search.spec import SearchSpec

ENDED = ("COMPLETED", "FAILED")  # Keras Tuner's statuses of a trial that ended
STOPPED = "STOPPED"  # ours: a trial the chief stopped early (Keras Tuner's COMPLETED, scored at the stop)
# How a chief process ends when not every trial has (0: all ended): chief.py returns them, launch.py
# tells them apart. Here, not in chief.py, because that module imports keras-tuner.
EXIT_INCOMPLETE = 3
EXIT_PORT_IN_USE = 4


def trial_records(project_dir: Path) -> list[dict[str, Any]]:
    """One record per trial of a project: id, status, values, score and who ran it how long."""
    records = []
    for trial_json in sorted(Path(project_dir).glob("trial_*/trial.json")):
        trial = read_state(trial_json)
        meta_path = trial_json.parent / "worker.json"
        meta = read_state(meta_path) if meta_path.is_file() else {}
        stop = stop_record(trial_json.parent)
        stopped = stop is not None and trial["status"] == "COMPLETED"
        records.append({
            "trial_id": trial["trial_id"], "status": STOPPED if stopped else trial["status"],
            "score": trial.get("score"), "stopped_steps": stop["steps"] if stopped else None,
            "val_loss": _last_value(trial, "val_loss"),
            "values": trial["hyperparameters"]["values"], "worker": meta.get("tuner_id"), "node": meta.get("node"),
            "epochs": meta.get("epochs"), "seconds": meta.get("seconds"), "ended_at": meta.get("ended_at"),
            "folds": meta.get("folds"), "bn_images": meta.get("bn_images"),
            "checkpoint": str(trial_json.parent / "checkpoint.weights.h5"),
        })
    return records


def _last_value(trial: dict, metric: str) -> float | None:
    """A metric as Keras Tuner recorded it at the trial's end: at the epoch of the best val
    accuracy, averaged over the trial's fits (its folds, under cross-validation)."""
    observations = trial.get("metrics", {}).get("metrics", {}).get(metric, {}).get("observations") or []
    return float(observations[-1]["value"][0]) if observations else None


def read_state(path: Path) -> Any:
    """A JSON state file of a search; a truncated or corrupt one is a SearchError naming it."""
    try:
        return read_json(path)
    except (ValueError, UnicodeDecodeError) as error:
        raise SearchError(f"{path} is truncated or corrupt ({error}); a run killed mid-write left it: "
                          "remove it (its trial is then run again) or restore it from a backup") from error


def check_state(spec: SearchSpec) -> None:
    """Reads every state file of the search (oracle, trials), so a corrupt one is named before
    a role starts (Keras Tuner would fail on it with a bare JSONDecodeError)."""
    for path in sorted(spec.project_dir.glob("*.json")) + sorted(spec.project_dir.glob("trial_*/*.json")):
        read_state(path)


def ended_trials(spec: SearchSpec) -> int:
    """How many trials of the search have ended (completed, stopped early or failed)."""
    return sum(1 for r in trial_records(spec.project_dir) if r["status"] in (*ENDED, STOPPED))


def is_complete(spec: SearchSpec) -> bool:
    """Whether all `max_trials` trials of the search have ended (completed or failed)."""
    return ended_trials(spec) >= spec.stage.max_trials


def trials_table(spec: SearchSpec) -> pd.DataFrame:
    """The search's trials as a table: id, image size, hyperparameters, val accuracy and loss,
    epochs, seconds, when it ended (Unix time), worker id, node (the host or Dask worker it ran on), folds (None without
    cross-validation), status (COMPLETED, STOPPED: stopped early by the chief, scored at the stop, FAILED),
    the steps it had trained when stopped, and checkpoint."""
    rows = []
    for record in trial_records(spec.project_dir):
        rows.append({"trial_id": record["trial_id"], "image_size": spec.image_size, **record["values"],
                     "val_accuracy": record["score"], "val_loss": record["val_loss"], "epochs": record["epochs"],
                     "seconds": record["seconds"], "ended_at": record["ended_at"], "worker": record["worker"],
                     "node": record["node"],
                     "folds": len(record["folds"]) if record["folds"] else None, "status": record["status"],
                     "stopped_steps": record["stopped_steps"], "checkpoint": record["checkpoint"]})
    return pd.DataFrame(rows)


def rank_key(val_accuracy: float, val_loss: float | None) -> tuple[float, float]:
    """A trial's rank, lower is better: val accuracy, then val log loss on a tie (a small val
    split saturates: every good model at 1.0 on 37 images, where the loss still tells them apart)."""
    return -val_accuracy, (float("inf") if val_loss is None else val_loss)


def keep_best(spec: SearchSpec, keep: int) -> list[str]:
    """Deletes the checkpoints of all but the `keep` best completed trials (`rank_key`; and of every trial
    stopped early: it trained less, and is never a member); returns those kept."""
    records = trial_records(spec.project_dir)
    stopped = [r for r in records if r["status"] == STOPPED]
    records = [r for r in records if r["status"] == "COMPLETED" and r["score"] is not None]
    records.sort(key=lambda r: rank_key(r["score"], r["val_loss"]))
    for record in records[keep:] + stopped:
        Path(record["checkpoint"]).unlink(missing_ok=True)
    return [r["trial_id"] for r in records[:keep]]


CHIEF_DOWN = ".chief-down"  # the suffix of `chief_down_marker`'s file


def chief_down_marker(spec: SearchSpec) -> Path:
    """A file saying this search's chief has ended badly: its workers stop waiting for it."""
    return spec.directory / f"{spec.project_name}{CHIEF_DOWN}"


def mark_chief_down(spec: SearchSpec, reason: str) -> None:
    write_json(chief_down_marker(spec), {"reason": reason, "search_id": spec.search_id})


def chief_down_reason(spec: SearchSpec) -> str | None:
    """Why this search's chief ended badly, or None while it has not."""
    marker = chief_down_marker(spec)
    if not marker.is_file():
        return None
    found = read_json(marker)
    return found["reason"] if found.get("search_id") == spec.search_id else None


RELEASED = ".workers-ended"  # the suffix of `release_marker`'s file
# What the chief says once it has handed out its last trial (the launcher then starts the next
# search's spare processes, glasses.search.spares).
LAST_ROUND = "chief: every trial handed out"
RELEASE_ENV = "GLASSES_RELEASE_TOKEN"  # the chief's token, from whoever runs it (its Prefect task run id)


def release_marker(spec: SearchSpec) -> Path:
    """A file saying every worker started for this search has ended: its chief waits for none."""
    return spec.directory / f"{spec.project_name}{RELEASED}"


def mark_released(spec: SearchSpec, token: str) -> None:
    """Tells the chief started with `token` that no worker will come any more (all have ended)."""
    write_json(release_marker(spec), {"token": token, "search_id": spec.search_id})


def released(spec: SearchSpec, token: str | None) -> bool:
    """Whether this chief (its `token`) was told that every worker of its search has ended. A
    marker for another token is an earlier run's: a chief started without a token waits as before."""
    marker = release_marker(spec)  # written whole (renamed into place): never half read
    return bool(token) and marker.is_file() and read_json(marker).get("token") == token


def chief_card(spec: SearchSpec) -> Path:
    """What a chief publishes once it listens: its search id, the address and port workers dial
    (the port it actually bound), its host, node (Dask worker name or host) and pid. Workers dial only what this says."""
    return spec.directory / f"{spec.project_name}.chief.json"


def publish_chief(spec: SearchSpec, address: str, port: int, node: str) -> None:
    write_json(chief_card(spec), {"search_id": spec.search_id, "address": address, "port": port,
                                  "host": socket.gethostname(), "node": node, "pid": os.getpid()})


def chief_address(spec: SearchSpec) -> tuple[str, int] | None:
    """Where this search's own chief (same search id) listens, once it has published it."""
    card = chief_card(spec)
    if not card.is_file():
        return None
    found = read_state(card)
    return (found["address"], int(found["port"])) if found.get("search_id") == spec.search_id else None


def dial_address(spec: SearchSpec) -> str:
    """The address workers should dial to reach a chief bound to `spec.bind` on this host: the
    configured one, else loopback for a loopback bind, the bound address itself, or, for a
    wildcard bind (0.0.0.0, ::), this host's address on its default route."""
    if spec.address:
        return spec.address
    if is_loopback(spec.bind):
        return "127.0.0.1"
    if spec.bind not in ("0.0.0.0", "::", ""):
        return spec.bind
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # UDP: sends nothing, only picks the route
            return probe.getsockname()[0]
        except OSError:
            return socket.gethostbyname(socket.gethostname())


def error_file(spec: SearchSpec, trial_id: str) -> Path:
    """Where a worker writes the end of a failed trial's traceback."""
    return spec.project_dir / f"trial_{trial_id}" / "error.txt"


def last_error_line(spec: SearchSpec, trial_id: str) -> str | None:
    """The last non-empty line of a failed trial's error, if a worker wrote one."""
    path = error_file(spec, trial_id)
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return lines[-1].strip() if lines else None
