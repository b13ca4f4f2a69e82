"""The report's three search stages: what each searches, and how its winner is chosen.

- stage1: one search per image size; choose the smallest size whose mean val accuracy is
  within `size_tolerance` of the best (bigger only if it truly helps).
- stage2: conv_layers and optimizer at that size; the fewest conv layers within
  `layers_tolerance` of the best, and the optimizer with the best mean at that depth (over
  all trials if one optimizer was never tried there).
- stage3: with those fixed, the large search that keeps the K best models.

Each search lives in `stages/<stage>/kt-<key>/size<px>`, keyed by everything that defines it,
so a re-run with the same config continues (or reuses) it and a changed config starts anew.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from glasses.config import Config, fingerprint
from glasses.files import read_json, write_json, write_text
from glasses.plots import plot_by, plot_ranked
from glasses.search import SearchSpec, chief_down_marker, free_port, keep_best, trials_table
from glasses.workdir import WorkDir

STAGES = ("stage1", "stage2", "stage3")


def plan_search(config: Config, stage: str, image_size: int, fixed: dict[str, Any],
                cache_dir: Path) -> Path:
    """Writes the spec of one search (a free port picked now) and returns its path."""
    stage_config = getattr(config.search, stage)
    split_key = read_json(Path(cache_dir) / "cache.json")["key"]
    key = fingerprint({"stage": stage_config.model_dump(mode="json"), "size": image_size, "fixed": fixed,
                       "seed": config.search.seed, "split": split_key})
    directory = WorkDir(config.work_dir).stage(stage) / f"kt-{key}"
    spec = SearchSpec(
        directory=directory.resolve(), project_name=f"size{image_size}", cache_dir=Path(cache_dir).resolve(),
        image_size=image_size, batch_size=stage_config.batch_size, max_trials=stage_config.max_trials,
        epochs=stage_config.epochs, patience=stage_config.patience,
        warmup_epochs=stage_config.warmup_epochs, fixed=fixed, seed=config.search.seed,
        host=config.search.oracle_host,
        port=config.search.oracle_port or free_port(config.search.oracle_host),
        workers=config.search.workers, worker_timeout_s=config.search.worker_timeout_s,
        chief_timeout_s=config.search.chief_timeout_s, gpus_per_worker=config.search.gpus_per_worker)
    chief_down_marker(spec).unlink(missing_ok=True)  # a new attempt: an old chief's failure is past
    return spec.save(directory / f"size{image_size}.json")


def stage_fixed(config: Config, stage: str, chosen: dict[str, Any] | None = None) -> dict[str, Any]:
    """The hyperparameters a stage holds fixed: the earlier stage's choice, then the config's."""
    return {**(chosen or {}), **getattr(config.search, stage).fixed}


def smallest_within(table: pd.DataFrame, column: str, tolerance: float) -> Any:
    """The smallest value of `column` whose mean val accuracy is within `tolerance` of the best."""
    means = _means(table, column)
    best = means.max()
    return min(value for value, mean in means.items() if mean >= best - tolerance - 1e-12)


def best_mean(table: pd.DataFrame, column: str) -> Any:
    """The value of `column` with the best mean val accuracy (first in sort order on a tie)."""
    means = _means(table, column).sort_index()
    return means.idxmax()


def _means(table: pd.DataFrame, column: str) -> pd.Series:
    done = table[(table["status"] == "COMPLETED") & table["val_accuracy"].notna()]
    if done.empty:
        raise ValueError(f"no completed trial to choose {column} from")
    return done.groupby(column)["val_accuracy"].mean()


def choose(config: Config, stage: str, table: pd.DataFrame) -> dict[str, Any]:
    """The stage's winner: the image size (stage1) or conv_layers and optimizer (stage2)."""
    if stage == "stage1":
        return {"image_size": int(smallest_within(table, "image_size", config.search.size_tolerance))}
    if stage == "stage2":
        layers = int(smallest_within(table, "conv_layers", config.search.layers_tolerance))
        return {"conv_layers": layers, "optimizer": str(best_mean(_compared_at(table, "conv_layers", layers),
                                                                  "optimizer"))}
    return {}


def _compared_at(table: pd.DataFrame, column: str, value: Any) -> pd.DataFrame:
    """The trials at `column == value` when every optimizer was tried there, else all trials.

    Comparing optimizers at the chosen depth keeps a few shallow (bad) trials from deciding the
    optimizer: with few trials, the marginal means mostly measure which optimizer drew them.
    """
    at = table[(table[column] == value) & (table["status"] == "COMPLETED")]
    return at if at["optimizer"].nunique() == table["optimizer"].nunique() else table


PLOTS = {"stage1": ["image_size"], "stage2": ["conv_layers", "optimizer"], "stage3": []}


def finish_stage(config: Config, stage: str, spec_paths: list[Path]) -> dict[str, Any]:
    """Writes the stage's trials.csv, plots and stage.json; prunes stage 3 to its best K.

    Returns the stage summary: trials, chosen values, mean val accuracy per group, workers,
    plots, and (stage 3) the kept trials.
    """
    specs = [SearchSpec.load(p) for p in spec_paths]
    keep = getattr(config.search, stage).keep
    kept = [t for s in specs for t in keep_best(s, keep)] if keep else None
    table = pd.concat([trials_table(s) for s in specs], ignore_index=True)
    out = WorkDir(config.work_dir).stage(stage)
    write_text(out / "trials.csv", table.drop(columns=["checkpoint"]).to_csv(index=False))
    plots = [str(plot_by(table, column, out / f"val_accuracy_by_{column}.png",
                         f"{stage}: val accuracy by {column}")) for column in PLOTS[stage]]
    if kept is not None:
        plots.append(str(plot_ranked(table, kept, config.ensemble.threshold, out / "val_accuracy_by_rank.png",
                                     f"{stage}: every trial, the {len(kept)} kept")))
    summary = {"trials": len(table), "completed": int((table["status"] == "COMPLETED").sum()),
               "failed": int((table["status"] == "FAILED").sum()),
               "chosen": choose(config, stage, table),
               "means": {c: {str(k): round(v, 4) for k, v in _means(table, c).items()} for c in PLOTS[stage]},
               "workers": sorted(table["worker"].dropna().unique().tolist()),
               "trials_by_worker": {str(k): int(v) for k, v in table["worker"].value_counts().items()},
               "best_val_accuracy": float(table["val_accuracy"].max()),
               "specs": [str(p) for p in spec_paths], "plots": plots, "kept": kept}
    write_json(out / "stage.json", summary)
    return summary
