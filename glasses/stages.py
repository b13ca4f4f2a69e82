"""The report's three search stages: what each searches, and how its winner is chosen.

- stage1: one search per image size; the smallest size, unless a bigger one has a lower mean
  val log loss by more than the standard error of the difference (`compare`). The searches draw
  from one seed, so trial i has the same hyperparameters at every size: the difference is taken
  pair by pair, free of the spread between hyperparameters (with two pairs: better in both).
- stage2: conv_layers and optimizer at that size; the report's 3 conv layers (then the nearest
  depth) by the same rule, then
  the optimizer at that depth (over all trials if one optimizer was never tried there): adam,
  the report's, unless sgd is better beyond noise. Stage 1's trials at that size count as
  evidence too when both stages trained alike (`earlier_evidence`): they drew every
  hyperparameter at random as well.
- stage3: with those fixed, the large search that keeps the K best models.

Stages 1-2 may score their trials by k-fold cross-validation instead of on the val split
(`SearchConfig.folds` says when).

Each stage draws from its own seed (`stage_seed`), so that a later stage's trials are new points
of the space, not stage 1's again.

Each search lives in `stages/<stage>/kt-<key>/size<px>`, keyed by everything that defines it
but its trial count, so a re-run with the same config continues (or reuses) it, more trials
continue it (a retune), and any other change starts anew.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from glasses.config import CHOOSING_STAGES, Config, SearchConfig, StageConfig, fingerprint
from glasses.errors import SearchError
from glasses.figures import plot_by, plot_ranked
from glasses import cluster, registry
from glasses.files import read_json, write_json, write_text
from glasses.inputs import cache_dir_for, cache_manifest, unused_caches
from glasses.search import SearchSpec, keep_best, trials_table
from glasses.search.records import STOPPED, trial_records
from glasses.space import allowed_values
from glasses.workdir import STAGE_SUMMARY, WorkDir


LAST_STAGE = "stage3"  # no search follows its own


def stage_seed(seed: int, stage: str) -> int:
    """The seed of a stage's searches (the oracle's draws, the shuffles, the folds): stage 1's is
    `search.seed`, each later stage's is derived from it. One seed for all three made every stage
    draw the same hyperparameters in the same order: stage 2's first trials re-ran stage 1's, and
    a seed whose first draws were 5 conv layers searched 5 layers in stage 2 on every dataset."""
    if stage == "stage1":
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}/{stage}".encode()).digest()[:4], "big")


def spares_after(stage: str, followed: bool, workers: int) -> int:
    """The role processes to start ahead once a search has handed out its last trial (they
    start where its chief runs): the workers of the search queued behind it, the next stage's
    chief and workers, or none after the last stage (glasses.search.spares). `workers`: those
    that run where the chief does (0 on a Dask cluster, where they go to its workers)."""
    if followed:
        return workers
    return 0 if stage == LAST_STAGE else workers + 1


def plan_search(work: WorkDir, stage: str, search: SearchConfig, image_size: int, chosen: dict[str, Any],
                cache_dir: Path, followed: bool = False) -> Path:
    """Writes the spec of one search (a free port picked now) and returns its path.

    Args:
        work: The run's work dir; the search goes into `kt-<key>/` below its stage's folder.
        stage: The stage (stage1, stage2, stage3); its section of `search` is its budget and fixed
            hyperparameters.
        search: The roles' settings (workers, oracle address, timeouts, seed, cross-validation).
        image_size: The size the search trains at.
        chosen: Earlier stages' choices; the stage's own `fixed` wins over them.
        cache_dir: The tf.data cache at `image_size`.
        followed: Another search of the stage queues behind this one (stage 1's sizes, all at once).
    """
    path = spec_path_for(work, stage, search, image_size, chosen, cache_dir)
    directory, key = path.parent, path.parent.name.removeprefix("kt-")
    section, folds = search.stage(stage), folds_for(search, stage, cache_dir)
    start = section.progressive.size if section.progressive.applies(image_size, folds) else None
    spec = SearchSpec(
        search_id=f"{key}-{image_size}-{uuid.uuid4().hex[:8]}", directory=directory,
        project_name=f"size{image_size}", cache_dir=Path(cache_dir).resolve(), image_size=image_size,
        stage=section, folds=folds, fixed={**chosen, **section.fixed},
        seed=stage_seed(search.seed, stage), bind=search.oracle_bind, address=search.oracle_address, port=search.oracle_port or 0,
        workers=search.workers, worker_timeout_s=search.worker_timeout_s,
        chief_timeout_s=search.chief_timeout_s, gpus_per_worker=search.gpus_per_worker, precision=search.precision,
        await_workers_s=search.chief_timeout_s,  # workers may queue; the run releases the chief when all ended
        followed=followed, spares=spares_after(stage, followed, 0 if cluster.is_dask(search.cluster) else search.workers),
        start_size=start, start_cache_dir=None if start is None else cache_dir_for(Path(cache_dir).resolve().parent, start))
    return spec.save(path)


RETUNE_LEDGER = "retune.json"  # in a stage's folder: the trial count each retune run set, by run
RETUNE = "retune"  # the run mode that grows stage 3's search (and may keep the champion's choices)
RETUNED = "stage3"  # the stage a retune run grows


def retune_trials(work: WorkDir, search: SearchConfig, image_size: int, chosen: dict[str, Any], cache_dir: Path,
                  run_id: str) -> int:
    """The trial count of stage 3's search for retune run `run_id`: when the search exists, what
    it was set to (or has, if more) plus `stage3.retune_trials`; a new search (new data, say)
    gets `stage3.max_trials`. The count is recorded per run, so a retry of the same run (same id)
    gets the same count and does not add the trials twice."""
    stage = search.stage(RETUNED)
    path = spec_path_for(work, RETUNED, search, image_size, chosen, cache_dir)
    ledger = work.stage(RETUNED) / RETUNE_LEDGER
    found = read_json(ledger) if ledger.is_file() else {}
    key = f"{run_id}/{path.parent.name}"
    if key not in found:
        earlier = SearchSpec.load(path) if path.is_file() else None
        had = max(earlier.stage.max_trials, len(trial_records(earlier.project_dir))) if earlier else 0
        found[key] = max(stage.max_trials, had) + stage.retune_trials if had else stage.max_trials
        write_json(ledger, found)
    return found[key]


def retuned(config: Config, mode: str, run_id: str, image_size: int, chosen: dict[str, Any],
            cache_dir: Path) -> Config:
    """The config stage 3 searches with: a retune run's with its trial count raised
    (`retune_trials`), any other run's as it is."""
    if mode != RETUNE:
        return config
    work, search = WorkDir(config.work_dir), config.search
    trials = retune_trials(work, search, image_size, chosen, cache_dir, run_id)
    grown = search.stage(RETUNED).model_copy(update={"max_trials": trials})
    return config.model_copy(update={"search": search.model_copy(update={RETUNED: grown})})


def kept_choices(config: Config, mode: str, fingerprint: str) -> dict[str, dict]:
    """The stage summaries a run keeps instead of searching, by stage: the champion's stages 1-2
    when a retune run keeps its choices (`retune.keep_choices`) on changed data
    (`registry.kept_stages`); else none."""
    keeps = mode == RETUNE and config.retune.keep_choices
    kept = registry.kept_stages(WorkDir(config.work_dir), fingerprint) if keeps else None
    return dict(zip(CHOOSING_STAGES, kept)) if kept else {}


def sizes_to_search(stage: str, sizes: list[int], kept: dict[str, dict]) -> list[int]:
    """The image sizes `stage` searches, largest first, or none when the run keeps its summary
    (`kept_choices`). Largest first because its trials are the longest: a worker that ends its
    last one moves on to the smaller sizes' short trials, instead of one long trial ending the
    stage while the other worker idles (quick's 32/64 px: a stage 1 of 0.85-0.98x, median 0.89x,
    replaying the trial times of seven runs; measured in four runs 0.96x, within the noise;
    bench/RESULTS.md)."""
    return [] if stage in kept else sorted(sizes, reverse=True)


def sizes_to_cache(search: SearchConfig, kept: dict[str, dict]) -> list[int]:
    """The image sizes a run caches: stage 1's, or only the one it keeps (`kept_choices`), and
    the smaller sizes its stages train first at (`StageConfig.progressive`)."""
    sizes = [kept["stage1"]["chosen"]["image_size"]] if "stage1" in kept else list(search.stage1.image_sizes)
    return [*sizes, *search.start_sizes(sizes)]


def superseded_searches(work_root: Path, in_use: list[Path]) -> list[Path]:
    """The searches of ours (`stages/<stage>/kt-<key>/`, each with its spec inside) that none of
    `in_use` (spec paths) belongs to: searches of earlier settings or data. Newest first."""
    keep = {Path(p).resolve().parent for p in in_use}
    found = [folder for folder in Path(work_root).glob("stages/*/kt-*")
             if folder.resolve() not in keep and not folder.is_symlink() and any(folder.glob("size*.json"))]
    return sorted(found, key=_written_at, reverse=True)


def _written_at(search: Path) -> float:
    return max(spec.stat().st_mtime for spec in search.glob("size*.json"))


def beyond(searches: list[Path], keep: int) -> list[Path]:
    """Of `searches` (newest first), those past the `keep` newest of their stage."""
    seen: dict[str, int] = {}
    past = []
    for folder in searches:
        seen[folder.parent.name] = seen.get(folder.parent.name, 0) + 1
        if seen[folder.parent.name] > keep:
            past.append(folder)
    return past


def remove_searches(searches: list[Path]) -> list[Path]:
    for folder in searches:
        shutil.rmtree(folder)
    return searches


def describe_search(folder: Path, root: Path) -> dict[str, Any]:
    """A search as the report and `glasses prune` show it: where, trials, size on disk."""
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    return {"search": str(Path(folder).relative_to(root)), "trials": len(list(folder.glob("*/trial_*/trial.json"))),
            "mb": round(size / 2**20, 1)}


def searches_in_use(work_root: Path) -> list[Path]:
    """The spec paths a work dir's stages use now: those each stage.json names, and those of
    searches begun after it (a run that stopped before the stage ended resumes them)."""
    used = []
    for stage_dir in sorted(Path(work_root).glob("stages/stage*")):
        marker = stage_dir / STAGE_SUMMARY
        since = marker.stat().st_mtime if marker.is_file() else float("-inf")
        used += [Path(p) for p in read_json(marker).get("specs", [])] if marker.is_file() else []
        used += [spec for spec in stage_dir.glob("kt-*/size*.json") if spec.stat().st_mtime > since]
    return used


def tidy(work: WorkDir, run: str, summary_path: Path, spec_paths: list[Path], keep: int,
         keep_superseded: int) -> dict[str, list[str]]:
    """Bounded disk after a run: its summary kept with its registry entry `run`, registry entries
    beyond `keep` removed (never the champion), the searches none of `spec_paths` (the run's
    searches) uses beyond the `keep_superseded` newest of each stage, and the caches of sizes no
    search kept uses; returns what was removed."""
    registry.attach(work, run, summary_path)
    old = superseded_searches(work.root, [Path(p) for p in spec_paths])
    gone = remove_searches(beyond(old, keep_superseded))
    kept = [folder for folder in old if folder not in gone]
    sizes = set().union(*(_spec_sizes(Path(p)) for p in spec_paths)) | _sizes(kept)
    return {"models": registry.prune(work, keep), "searches": [str(p) for p in gone],
            "caches": [str(p) for p in unused_caches(work.cache, sizes)]}


def _sizes(searches: list[Path]) -> set[int]:
    """The image sizes whose caches `searches` (folders) read: their own and their start sizes."""
    # (a search's folder also holds its chief's card, size<px>.chief.json)
    return set().union(*(_spec_sizes(spec) for folder in searches for spec in folder.glob("size*.json")
                         if spec.stem.removeprefix("size").isdigit()))


def _spec_sizes(spec: Path) -> set[int]:
    """The image sizes whose caches the search of spec file `spec` reads (`SearchSpec.sizes`);
    only its own, from its name, when the file is gone or unreadable."""
    try:
        return SearchSpec.load(spec).sizes()
    except (OSError, ValueError):
        return {int(spec.stem.removeprefix("size"))}


def prune(work: WorkDir, keep: int = 0, dry_run: bool = False) -> list[dict[str, Any]]:
    """`glasses prune`: removes the searches the work dir's stages no longer use (all but the
    `keep` newest of each stage) and the caches no search kept uses; returns what it removed
    (or, with `dry_run`, would remove), each with its size."""
    in_use = searches_in_use(work.root)
    old = superseded_searches(work.root, in_use)
    going = beyond(old, keep)
    found = [describe_search(folder, work.root) for folder in going]
    if not dry_run:
        remove_searches(going)
        kept = [folder for folder in old if folder not in going]
        sizes = set().union(*(_spec_sizes(Path(p)) for p in in_use)) | _sizes(kept)
        for folder in unused_caches(work.cache, sizes):
            found.append({"search": str(folder.relative_to(work.root)), "trials": 0, "mb": None})
    return found


def folds_for(search: SearchConfig, stage: str, cache_dir: Path) -> int:
    """The folds of the stage's search on the cache at `cache_dir` (`SearchConfig.folds`)."""
    return search.folds(stage, cache_manifest(cache_dir)["counts"]["val"])


def spec_path_for(work: WorkDir, stage: str, search: SearchConfig, image_size: int, chosen: dict[str, Any],
                  cache_dir: Path) -> Path:
    """Where `plan_search` writes the spec of this search: `kt-<key>/size<px>.json` in the
    stage's folder, the key a hash of everything that defines the search (its stage config,
    size, fixed values, seed, folds, data) but its trial count: more trials continue the same
    search."""
    section, folds = search.stage(stage), folds_for(search, stage, cache_dir)
    # With early stopping off (the report's search) and progressive resizing off or not applying at
    # this size, the key is what it was before the setting existed; where it applies, how its trials
    # train (size, steps) defines them, not the rule (with_cv) that let it apply.
    exclude: dict[str, Any] = {"max_trials": True, "retune_trials": True,
                               **({"early_stop": True} if section.early_stop.rule == "off" else {}),
                               "progressive": ({"with_cv": True} if section.progressive.applies(image_size, folds)
                                               else True)}
    defining = section.model_dump(mode="json", exclude=exclude)
    key = fingerprint({"stage": defining, "size": image_size,
                       "fixed": {**chosen, **section.fixed}, "seed": stage_seed(search.seed, stage),
                       "split": cache_manifest(cache_dir)["key"], "folds": folds,
                       # float32, the only precision before the setting: the keys of those searches stay
                       **({"precision": search.precision} if search.precision != "float32" else {})})
    return (work.stage(stage) / f"kt-{key}").resolve() / f"size{image_size}.json"


# The name of stages 1-2's choice rule (`compare` and the `choose_*` functions below): in their
# finish tasks' cache keys, so a resumed run chooses again under a changed rule. Bump it when the
# rule changes; tests/test_rule_homes.py fails when the rule's code changes until you record it.
CHOICE_RULE = "val-log-loss-beyond-standard-error-paired-with-stage1-evidence"


def compare(table: pd.DataFrame, column: str, preference: list) -> dict[str, Any]:
    """Chooses a value of `column` by its trials' val log loss, telling signal from noise.

    Per value: the trials, the mean and standard error of val log loss and val accuracy. The
    standard errors use the spread of trials within a value, pooled over all values (two
    trials a value give a poor spread each). A value other than the rule's favourite wins only
    when its mean loss is lower by more than the standard error of the difference; among the
    values within that of the best, the first in `preference` (the tie-break) is chosen. Where
    every trial of a value has a twin at the best value (the same value of every other
    hyperparameter: stage 1's searches draw alike at each size) and there are two pairs or more,
    that standard error is the pairs' (`_paired`): the spread between hyperparameters cancels.

    Returns:
        {"column", "chosen", "best" (the lowest mean loss), "within_noise" (the values tied with
        it), "decided_by" ("difference": no other value was within noise; else "tie-break"),
        "metric" ("val_loss", or "val_accuracy" where losses are missing), "values": {value:
        {"trials" (completed), "val_loss", "val_loss_se", "val_accuracy", "val_accuracy_se",
        "paired": {"pairs", "difference", "difference_se"} against the best where compared in
        pairs, and "stopped": the trials stopped early, when any}}}
    """
    done = _completed(table, column)
    metric = "val_loss" if "val_loss" in done and done["val_loss"].notna().all() else "val_accuracy"
    sign = 1.0 if metric == "val_loss" else -1.0  # lower is better
    score = done[metric].astype(float) * sign
    stats = {(value, name): _mean(done, column, value, name) for value in done[column].unique()
             for name in ("val_loss", "val_accuracy")}
    pooled = {name: _pooled_sd(done, column, name) for name in ("val_loss", "val_accuracy")}
    means = score.groupby(done[column]).mean()
    counts = done.groupby(column).size()
    best = means.idxmin()
    se = pooled[metric] / np.sqrt(counts)
    paired = _paired(done, column, score, best)
    noise = {value: (float(paired[value].std(ddof=1) / np.sqrt(len(paired[value]))) if value in paired
                     else float(np.hypot(se[value], se[best]))) for value in means.index}
    within = [value for value in means.index if means[value] - means[best] <= noise[value] + 1e-12]
    ordered = [v for v in preference if v in within] + sorted(v for v in within if v not in preference)
    values = {}
    for value in sorted(means.index, key=lambda v: (preference.index(v) if v in preference else len(preference), v)):
        row = {"trials": int(counts[value])}
        for name in ("val_loss", "val_accuracy"):
            mean = stats[(value, name)]
            row[name] = None if mean is None else round(mean, 4)
            row[f"{name}_se"] = None if mean is None else round(float(pooled[name] / np.sqrt(counts[value])), 4)
        if value in paired:
            row["paired"] = {"pairs": len(paired[value]), "difference": round(float(paired[value].mean()) * sign, 4),
                             "difference_se": round(noise[value], 4)}
        values[_plain(value)] = row
    # Trials the chief stopped early are evidence too, but not finished: they are counted, never
    # averaged; a value whose every trial was stopped was behind the others and is not chosen.
    stopped = table[table["status"] == STOPPED].groupby(column).size()
    for value, count in stopped.items():
        values.setdefault(_plain(value), {"trials": 0, "val_loss": None, "val_loss_se": None,
                                          "val_accuracy": None, "val_accuracy_se": None})["stopped"] = int(count)
    return {"column": column, "chosen": _plain(ordered[0]), "best": _plain(best),
            "within_noise": [_plain(v) for v in ordered], "metric": metric,
            "decided_by": "tie-break" if len(within) > 1 else "difference", "values": values}


def _paired(done: pd.DataFrame, column: str, score: pd.Series, best: Any) -> dict[Any, pd.Series]:
    """Per value of `column` whose every completed trial has one twin at `best` (the same values
    of every other hyperparameter of the space, unset ones included) and the other way round,
    with two pairs or more: the differences of `score` to the twins."""
    others = [name for name in allowed_values() if name in done and name != column]
    if not others:
        return {}
    key = pd.Series(["|".join(map(str, row)) for row in done[others].itertuples(index=False)], index=done.index)
    at_best = done[column] == best
    twins = dict(zip(key[at_best], score[at_best]))
    if len(twins) != int(at_best.sum()):
        return {}
    found = {}
    for value in done[column].unique():
        mine = done[column] == value
        keys = key[mine].tolist()
        if value != best and len(keys) >= 2 and len(set(keys)) == len(keys) and set(keys) == set(twins):
            found[value] = pd.Series([s - twins[k] for k, s in zip(keys, score[mine])])
    return found


def _plain(value: Any) -> Any:
    """A numpy scalar as the plain Python value (for JSON and for comparing with config values)."""
    return value.item() if hasattr(value, "item") else value


def _mean(done: pd.DataFrame, column: str, value: Any, name: str) -> float | None:
    values = done.loc[done[column] == value, name].dropna().astype(float) if name in done else pd.Series()
    return None if values.empty else float(values.mean())


def _pooled_sd(done: pd.DataFrame, column: str, name: str) -> float:
    """The trials' spread within a value, pooled over the values; with one trial a value, the
    spread of all trials (an upper bound: it holds the differences between values too)."""
    if name not in done or done[name].isna().all():
        return 0.0
    groups = done.dropna(subset=[name]).groupby(column)[name]
    dof = int((groups.size() - 1).sum())
    if dof > 0:
        return float(np.sqrt((groups.var(ddof=1).fillna(0) * (groups.size() - 1)).sum() / dof))
    values = done[name].dropna().astype(float)
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _completed(table: pd.DataFrame, column: str) -> pd.DataFrame:
    done = table[(table["status"] == "COMPLETED") & table["val_accuracy"].notna()]
    if done.empty:
        raise SearchError(f"no completed trial to choose {column} from: every trial failed; "
                          "see the workers' logs and trials.csv")
    return done


def _means(table: pd.DataFrame, column: str) -> pd.Series:
    return _completed(table, column).groupby(column)["val_accuracy"].mean()


REPORT_OPTIMIZER = "adam"  # the report's default, the tie-break between optimizers
REPORT_CONV_LAYERS = 3  # the report's depth: the tie-break between depths, then the nearest (fewer first)


def choose_image_size(table: pd.DataFrame) -> tuple[dict[str, Any], list[dict]]:
    """Stage 1's winner: the smallest image size unless a bigger one is better beyond noise."""
    sizes = compare(table, "image_size", sorted(table["image_size"].unique().tolist()))
    return {"image_size": int(sizes["chosen"])}, [sizes]


def choose_depth_and_optimizer(table: pd.DataFrame) -> tuple[dict[str, Any], list[dict]]:
    """Stage 2's winner: the report's 3 conv layers (then the nearest depth, fewer first) unless
    another depth is better beyond noise; then the optimizer at that depth, adam (the report's)
    unless another is better beyond noise. ("The fewest layers" as the tie-break shipped a 1-layer
    network when a few noisy trials could not tell 1 from 4: 0.70 against 0.84-0.86.)"""
    depths = sorted(table["conv_layers"].unique().tolist(), key=lambda d: (abs(d - REPORT_CONV_LAYERS), d))
    layers = compare(table, "conv_layers", depths)
    at = _compared_at(table, "conv_layers", layers["chosen"])
    optimizer = compare(at, "optimizer", [REPORT_OPTIMIZER])
    return {"conv_layers": int(layers["chosen"]), "optimizer": str(optimizer["chosen"])}, [layers, optimizer]


def _compared_at(table: pd.DataFrame, column: str, value: Any) -> pd.DataFrame:
    """The trials at `column == value` when every optimizer was tried there, else all trials.

    Comparing optimizers at the chosen depth keeps a few shallow (bad) trials from deciding the
    optimizer: with few trials, the marginal means mostly measure which optimizer drew them.
    """
    at = table[(table[column] == value) & (table["status"] == "COMPLETED")]
    return at if at["optimizer"].nunique() == table["optimizer"].nunique() else table


def finish_stage1(spec_paths: list[Path], stage: StageConfig, stage_dir: Path) -> dict:
    """Stage 1's table, plot and choice of image size (see `finish_stage`)."""
    return finish_stage(spec_paths, stage, stage_dir, ["image_size"], choose_image_size)


def finish_stage2(spec_paths: list[Path], stage: StageConfig, stage_dir: Path,
                  earlier: list[Path] | None = None) -> dict:
    """Stage 2's table, plots and choice of conv_layers and optimizer (see `finish_stage`), with
    the trials of stage 1's searches `earlier` that count as evidence (`earlier_evidence`)."""
    return finish_stage(spec_paths, stage, stage_dir, ["conv_layers", "optimizer"], choose_depth_and_optimizer,
                        earlier=earlier)


# What must be equal for a trial of an earlier stage to count in a later stage's choice: how it
# was trained and scored (its budget, early stopping, BatchNorm statistics, folds, precision, data).
TRAINED_ALIKE = ("batch_size", "max_steps", "min_steps", "patience_steps", "bn_stats_images", "early_stop")


def earlier_evidence(earlier: list[Path], specs: list[SearchSpec], stage_name: str = "stage1"
                     ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The completed trials of an earlier stage's searches (`earlier`, spec paths) that count as
    evidence in the choice of the searches `specs`: at the same image size and cache, scored the
    same way, trained alike (`TRAINED_ALIKE`), and at every value the later searches hold fixed.
    Returns them (ids prefixed with the stage's name) and what the stage summary records:
    {"stage", "trials" (how many count), "ids", and "why" when none could}."""
    found, why = [], []
    for path in earlier:
        old = SearchSpec.load(Path(path))
        for new in specs:
            differs = [name for name in TRAINED_ALIKE if getattr(old.stage, name) != getattr(new.stage, name)]
            differs += [name for name in ("image_size", "folds", "precision", "start_size", "start_steps")
                        if getattr(old, name) != getattr(new, name)]
            if Path(old.cache_dir).resolve() != Path(new.cache_dir).resolve():
                differs.append("cache_dir")
            if differs:
                if old.image_size == new.image_size:
                    why.append(f"{stage_name} trained otherwise: " + ", ".join(
                        f"{name} {_setting(old, name)} against {_setting(new, name)}" for name in differs))
                continue
            table = trials_table(old)
            if table.empty:
                continue
            table = table[table["status"] == "COMPLETED"]
            for name, value in new.fixed.items():
                if name in table:
                    table = table[table[name] == value]
            found.append(table.assign(trial_id=[f"{stage_name}/{t}" for t in table["trial_id"]]))
    pooled = pd.concat(found, ignore_index=True) if found else pd.DataFrame()
    record: dict[str, Any] = {"stage": stage_name, "trials": len(pooled),
                              "ids": [str(t) for t in pooled["trial_id"]] if len(pooled) else []}
    if not len(pooled):
        record["why"] = "; ".join(dict.fromkeys(why)) or f"no completed {stage_name} trial at this size"
    return pooled, record


def _setting(spec: SearchSpec, name: str) -> Any:
    value = getattr(spec.stage, name, None) if name in TRAINED_ALIKE else getattr(spec, name)
    return value.model_dump() if hasattr(value, "model_dump") else value


def finish_stage3(spec_paths: list[Path], stage: StageConfig, stage_dir: Path, threshold: float) -> dict:
    """Stage 3's table and the plot of every trial against the ensemble `threshold` (see `finish_stage`)."""
    return finish_stage(spec_paths, stage, stage_dir, [], lambda table: ({}, []), threshold=threshold)


def finish_stage(spec_paths: list[Path], stage: StageConfig, stage_dir: Path, compared: list[str],
                 choose: Callable[[pd.DataFrame], tuple[dict[str, Any], list[dict]]],
                 threshold: float | None = None, earlier: list[Path] | None = None) -> dict:
    """Writes the stage's trials.csv, plots and stage.json; prunes to the stage's best `keep`.

    Args:
        compared: The columns whose mean val accuracy is plotted and reported per value.
        choose: The stage's rule, from its trials table to its chosen values and, per column,
            how it chose (see `compare`).
        threshold: The ensemble threshold drawn on the plot of the kept trials.
        earlier: An earlier stage's spec paths whose trials may count in the choice
            (`earlier_evidence`); the stage's trials.csv and counts stay its own.

    Returns:
        The stage summary: stage, trials, chosen values and how each was chosen (`choices`), mean
        val accuracy per value, folds (k of the cross-validation that scored the trials, 0 if
        none), workers, table, plots, the kept trials (None when the stage keeps every checkpoint),
        the values every trial held (`fixed`, when any), the searches whose trials trained their
        first steps smaller (`progressive`, by search size: size, steps, of the max_steps), and
        with `earlier`, the earlier trials that counted (`evidence`); means, plots and the choice
        then include them.
    """
    specs = [SearchSpec.load(p) for p in spec_paths]
    kept = [t for s in specs for t in keep_best(s, stage.keep)] if stage.keep else None
    table = pd.concat([trials_table(s) for s in specs], ignore_index=True)
    out, name = Path(stage_dir), Path(stage_dir).name
    table_path = write_text(out / "trials.csv", table.drop(columns=["checkpoint"]).to_csv(index=False))
    evidence, counted = earlier_evidence(earlier, specs) if earlier else (pd.DataFrame(), None)
    compared_on = pd.concat([table, evidence], ignore_index=True) if len(evidence) else table
    with_earlier = f" (and {len(evidence)} of {counted['stage']})" if len(evidence) else ""
    plots = [str(plot_by(compared_on, column, out / f"val_accuracy_by_{column}.png",
                         f"{name}{with_earlier}: val accuracy by {column}")) for column in compared]
    if kept is not None:
        plots.append(str(plot_ranked(table, kept, threshold or 0.0, out / "val_accuracy_by_rank.png",
                                     f"{name}: every trial, the {len(kept)} kept")))
    chosen, choices = choose(compared_on)
    summary = {"stage": name, "trials": len(table), "completed": int((table["status"] == "COMPLETED").sum()),
               "failed": int((table["status"] == "FAILED").sum()),
               "stopped": int((table["status"] == STOPPED).sum()), "chosen": chosen, "choices": choices,
               "folds": max(s.folds for s in specs),
               "means": {c: {str(k): round(v, 4) for k, v in _means(compared_on, c).items()} for c in compared},
               "workers": sorted(table["worker"].dropna().unique().tolist()),
               "trials_by_worker": {str(k): int(v) for k, v in table["worker"].value_counts().items()},
               "trials_by_node": {str(k): int(v) for k, v in table["node"].value_counts().items()},
               "best_val_accuracy": float(table["val_accuracy"].max()), "table": str(table_path),
               "specs": [str(p) for p in spec_paths], "plots": plots, "kept": kept}
    summary["tied_best"] = tied_best(table)
    fixed = {k: v for s in specs for k, v in s.fixed.items()}
    if fixed:
        summary["fixed"] = fixed
    started = {s.image_size: {"size": s.start_size, "steps": s.start_steps, "of": s.stage.max_steps}
               for s in specs if s.start_steps}
    if started:
        summary["progressive"] = {str(size): how for size, how in sorted(started.items())}
    if counted is not None:
        summary["evidence"] = counted
    write_json(out / STAGE_SUMMARY, summary)
    return summary


def tied_best(table: pd.DataFrame) -> dict[str, Any] | None:
    """When the val split cannot tell the best trials apart (two or more completed ones at the
    best val accuracy: a small val split saturates), which they are; their order, what is kept
    and the ensemble's candidates then follow their val log loss (`records.rank_key`)."""
    done = table[(table["status"] == "COMPLETED") & table["val_accuracy"].notna()] if len(table) else table
    if done.empty:
        return None
    tied = done[done["val_accuracy"] == done["val_accuracy"].max()]
    if len(tied) < 2:
        return None
    return {"val_accuracy": float(tied["val_accuracy"].iloc[0]), "trials": sorted(map(str, tied["trial_id"])),
            "broken_by": "val_loss"}
