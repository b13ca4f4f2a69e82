"""The model registry: every run's shipped model is kept, and the champion changes only for a
better one.

- `<work>/models/<run>/`: a run's model (`ensemble.keras`), `entry.json` (when, the data's
  fingerprint, what shipped, the model's hash), `config.json` and, once written, `summary.json`;
  listed in `<work>/models/registry.csv`.
- `<work>/model/ensemble.keras`: the champion, what `glasses predict` serves, and
  `<work>/model/champion.json` (which run, since when, why).

A run's model (the challenger) replaces the champion only if it is at least as good on the
current validation split and not worse by more than a margin on the current test split, both
scored now on the same image files. The registry keeps the newest `keep` entries and always the
champion.
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from glasses.config import CHOOSING_STAGES
from glasses.errors import OutputError
from glasses.files import OUTPUT_MARKER, atomic_dir, read_json, temporary_file, write_json, write_text
from glasses.workdir import WorkDir

COLUMNS = ["run", "date", "flow_run", "mode", "data_fingerprint", "method", "members", "val_accuracy",
           "test_accuracy", "promoted", "reason"]
MODEL_FILE = "ensemble.keras"


def entry_name(preset: str, when: datetime | None = None) -> str:
    """A new entry's name: UTC time and preset, e.g. 20261129-170512-quick."""
    return f"{(when or datetime.now(timezone.utc)):%Y%m%d-%H%M%S}-{preset}"


def rows(work: WorkDir) -> pd.DataFrame:
    """The registry, oldest first (empty, with its columns, before the first run)."""
    if not work.registry.is_file():
        return pd.DataFrame(columns=COLUMNS)
    return pd.read_csv(work.registry, dtype={"run": str, "flow_run": str, "promoted": str, "reason": str,
                                             "data_fingerprint": str}, keep_default_na=False)


def _write_rows(work: WorkDir, table: pd.DataFrame) -> None:
    write_text(work.registry, table[COLUMNS].to_csv(index=False))


def champion(work: WorkDir) -> dict | None:
    """Which run serves (`run`, `since`, `reason`), or None while no model has been promoted."""
    if not (work.champion.is_file() and work.model.is_file()):
        return None
    return read_json(work.champion)


def identity(path: Path) -> str:
    """What makes two saved models the same model: a hash of their weights (`model.weights.h5`
    in the .keras archive; the archive's metadata carries the time it was saved), else of the file."""
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return "weights:" + digest.hexdigest()
    except (zipfile.BadZipFile, KeyError):
        return "file:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def register(work: WorkDir, model_path: Path, name: str, *, shipped: dict, config: dict, fingerprint: str,
             flow_run: str = "", mode: str = "resume") -> str:
    """Keeps the model at `model_path` as registry entry `name` and lists it; returns the entry's
    name. The same model (the same weights: `identity`) already registered is not added again:
    its entry's name is returned (a run that reused every stage, or whose new trials changed no
    member of the ensemble, ships the model an earlier run registered)."""
    digest = identity(model_path)
    table = rows(work)
    for run in table["run"]:
        entry = work.models / run / "entry.json"
        if entry.is_file() and read_json(entry).get("identity") == digest:
            return run
    if name in set(table["run"]):
        raise OutputError(f"registry entry {name} exists with another model; name the run differently")
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with atomic_dir(work.models / name, replace=False) as tmp:
        shutil.copyfile(model_path, tmp / MODEL_FILE)
        write_json(tmp / "entry.json", {"run": name, "date": date, "flow_run": flow_run, "mode": mode,
                                        "data_fingerprint": fingerprint, "identity": digest, "shipped": shipped})
        write_json(tmp / "config.json", config)
    row = {"run": name, "date": date, "flow_run": flow_run, "mode": mode, "data_fingerprint": fingerprint,
           "method": shipped["method"], "members": shipped["members"], "val_accuracy": shipped["val_accuracy"],
           "test_accuracy": shipped["test_accuracy"], "promoted": "False", "reason": ""}
    _write_rows(work, pd.concat([table, pd.DataFrame([row])], ignore_index=True))
    return name


def attach(work: WorkDir, name: str, path: Path) -> None:
    """Copies a file of the run (its summary.json) into its registry entry."""
    folder = work.models / name
    if folder.is_dir():
        with temporary_file(folder / Path(path).name) as tmp:
            shutil.copyfile(path, tmp)


def score(model_path: Path, split_dir: Path) -> dict[str, float]:
    """The model's val and test accuracy on the split's image files, as `glasses predict` reads them."""
    import keras

    from glasses.evaluate import accuracy, score_split

    model = keras.models.load_model(model_path)
    return {subset: round(accuracy(*score_split(model, split_dir, subset)[1:]), 4) for subset in ("val", "test")}


def decide(challenger: dict[str, float], current: dict[str, float] | None, margin: float) -> tuple[bool, str]:
    """Whether the challenger (val, test accuracy) replaces the champion, and why, in words."""
    if current is None:
        return True, "no champion yet"
    if challenger["val"] < current["val"]:
        return False, f"val {challenger['val']:.4f} is below the champion's {current['val']:.4f}"
    if challenger["test"] < current["test"] - margin:
        return False, (f"val {challenger['val']:.4f} is at least the champion's {current['val']:.4f}, but test "
                       f"{challenger['test']:.4f} is below its {current['test']:.4f} by more than {margin:g}")
    return True, (f"val {challenger['val']:.4f} is at least the champion's {current['val']:.4f} and test "
                  f"{challenger['test']:.4f} is not below its {current['test']:.4f} by more than {margin:g}")


def challenge(work: WorkDir, name: str, split_dir: Path, margin: float) -> dict[str, Any]:
    """Entry `name` against the champion, both scored now on `split_dir`'s val and test images;
    promotes it when `decide` says so. Returns the decision: challenger and champion (run and
    scores; champion None before the first), `promoted`, `reason` and the run `serving` after."""
    challenger = score(work.models / name / MODEL_FILE, split_dir)
    holder = champion(work)
    if holder is not None and holder["run"] == name:
        promoted, reason = False, "it is the champion already (the same model)"
        current = dict(challenger)
    else:
        current = score(work.model, split_dir) if holder is not None else None
        promoted, reason = decide(challenger, current, margin)
    if promoted:
        install(work, name, reason)
        _note(work, name, promoted=True, reason=reason)
    elif holder is None or holder["run"] != name:
        _note(work, name, promoted=False, reason=reason)
    return {"challenger": {"run": name, **challenger},
            "champion": None if holder is None else {"run": holder["run"], **current},
            "promoted": promoted, "reason": reason, "margin": margin, "serving": champion(work)["run"]}


def install(work: WorkDir, name: str, reason: str) -> None:
    """Makes entry `name` the champion: its model copied to `<work>/model/ensemble.keras`
    (written to a temporary name and renamed), and champion.json."""
    known = list(rows(work)["run"])
    source = work.models / name / MODEL_FILE
    if name not in known or not source.is_file():  # a name of registry.csv, never a path elsewhere
        raise OutputError(f"no registry entry {name!r} in {work.models} (entries: {', '.join(known) or 'none'}); "
                          "`glasses models` lists them")
    with temporary_file(work.model) as tmp:
        shutil.copyfile(source, tmp)
    write_json(work.champion, {"run": name, "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "reason": reason})


def promote(work: WorkDir, name: str) -> dict:
    """`glasses promote RUN`: entry `name` serves again, whatever the scores; returns champion.json."""
    reason = f"promoted by hand (glasses promote) on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    install(work, name, reason)
    _note(work, name, promoted=True, reason=reason)
    return read_json(work.champion)


def _note(work: WorkDir, name: str, *, promoted: bool, reason: str) -> None:
    table = rows(work)
    at = table["run"] == name
    if at.any():
        table.loc[at, "promoted"] = str(promoted)
        table.loc[at, "reason"] = reason
        _write_rows(work, table)


def prune(work: WorkDir, keep: int) -> list[str]:
    """Removes the oldest entries so that `keep` remain: the champion and the newest others;
    returns the names removed. Only a folder this project made (its marker inside) is deleted."""
    table = rows(work)
    holder = champion(work)
    serving = holder["run"] if holder else None
    others = [run for run in table["run"] if run != serving]
    room = keep - (1 if serving in set(table["run"]) else 0)
    gone = others[:max(0, len(others) - room)]
    for run in gone:
        folder = work.models / run
        if (folder / OUTPUT_MARKER).is_file() and not folder.is_symlink():
            shutil.rmtree(folder)
    if gone:
        _write_rows(work, table[~table["run"].isin(gone)])
    return gone


def listing(work: WorkDir) -> pd.DataFrame:
    """The registry with a `serving` column (the champion marked), for `glasses models`."""
    table = rows(work)
    holder = champion(work)
    return table.assign(serving=[holder is not None and run == holder["run"] for run in table["run"]])


def kept_stages(work: WorkDir, fingerprint: str) -> list[dict] | None:
    """`retune.keep_choices` on changed data: the champion's stage 1 and 2 summaries (its image
    size, conv layers and optimizer, with their tables and whichever plots are still on disk),
    each marked `kept_from` its run; None when there is no champion, its data is this data (the
    stages are reused anyway) or its summary is gone."""
    holder = champion(work)
    if holder is None:
        return None
    entry = work.models / holder["run"]
    if not (entry / "summary.json").is_file() or read_json(entry / "entry.json")["data_fingerprint"] == fingerprint:
        return None
    stages = read_json(entry / "summary.json")["stages"]
    return [{**stages[name], "plots": [p for p in stages[name]["plots"] if Path(p).is_file()],
             "kept_from": holder["run"]} for name in CHOOSING_STAGES]
