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

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from glasses.config import SearchConfig, StageConfig, fingerprint
from glasses.errors import SearchError
from glasses.figures import plot_by, plot_ranked
from glasses.files import read_json, write_json, write_text
from glasses.search import SearchSpec, free_port, keep_best, trials_table


def plan_search(stage_dir: Path, stage: StageConfig, search: SearchConfig, image_size: int,
                chosen: dict[str, Any], cache_dir: Path) -> Path:
    """Writes the spec of one search (a free port picked now) and returns its path.

    Args:
        stage_dir: The stage's folder; the search goes into `kt-<key>/` below it.
        stage: The stage's config (budget, fixed hyperparameters).
        search: The roles' settings (workers, oracle address, timeouts, seed).
        image_size: The size the search trains at.
        chosen: Earlier stages' choices; the stage's own `fixed` wins over them.
        cache_dir: The tf.data cache at `image_size`.
    """
    path = spec_path_for(stage_dir, stage, search, image_size, chosen, cache_dir)
    directory, key = path.parent, path.parent.name.removeprefix("kt-")
    spec = SearchSpec(
        search_id=f"{key}-{image_size}-{uuid.uuid4().hex[:8]}", directory=directory,
        project_name=f"size{image_size}", cache_dir=Path(cache_dir).resolve(), image_size=image_size,
        stage=stage, fixed={**chosen, **stage.fixed}, seed=search.seed, host=search.oracle_host,
        port=search.oracle_port or free_port(search.oracle_host), workers=search.workers,
        worker_timeout_s=search.worker_timeout_s, chief_timeout_s=search.chief_timeout_s,
        gpus_per_worker=search.gpus_per_worker)
    return spec.save(path)


def spec_path_for(stage_dir: Path, stage: StageConfig, search: SearchConfig, image_size: int,
                  chosen: dict[str, Any], cache_dir: Path) -> Path:
    """Where `plan_search` writes the spec of this search: `kt-<key>/size<px>.json`, the key a
    hash of everything that defines the search (its stage config, size, fixed values, seed, data)."""
    split_key = read_json(Path(cache_dir) / "cache.json")["key"]
    key = fingerprint({"stage": stage.model_dump(mode="json"), "size": image_size,
                       "fixed": {**chosen, **stage.fixed}, "seed": search.seed, "split": split_key})
    return (Path(stage_dir) / f"kt-{key}").resolve() / f"size{image_size}.json"


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
        raise SearchError(f"no completed trial to choose {column} from: every trial failed; "
                          "see the workers' logs and trials.csv")
    return done.groupby(column)["val_accuracy"].mean()


def choose_image_size(table: pd.DataFrame, size_tolerance: float) -> dict[str, Any]:
    """Stage 1's winner: the smallest image size within `size_tolerance` of the best."""
    return {"image_size": int(smallest_within(table, "image_size", size_tolerance))}


def choose_depth_and_optimizer(table: pd.DataFrame, layers_tolerance: float) -> dict[str, Any]:
    """Stage 2's winner: the fewest conv layers within `layers_tolerance` of the best, and the
    optimizer with the best mean at that depth."""
    layers = int(smallest_within(table, "conv_layers", layers_tolerance))
    return {"conv_layers": layers, "optimizer": str(best_mean(_compared_at(table, "conv_layers", layers),
                                                              "optimizer"))}


def _compared_at(table: pd.DataFrame, column: str, value: Any) -> pd.DataFrame:
    """The trials at `column == value` when every optimizer was tried there, else all trials.

    Comparing optimizers at the chosen depth keeps a few shallow (bad) trials from deciding the
    optimizer: with few trials, the marginal means mostly measure which optimizer drew them.
    """
    at = table[(table[column] == value) & (table["status"] == "COMPLETED")]
    return at if at["optimizer"].nunique() == table["optimizer"].nunique() else table


def finish_stage1(spec_paths: list[Path], stage: StageConfig, stage_dir: Path, size_tolerance: float) -> dict:
    """Stage 1's table, plot and choice of image size (see `finish_stage`)."""
    return finish_stage(spec_paths, stage, stage_dir, ["image_size"],
                        lambda table: choose_image_size(table, size_tolerance))


def finish_stage2(spec_paths: list[Path], stage: StageConfig, stage_dir: Path, layers_tolerance: float) -> dict:
    """Stage 2's table, plots and choice of conv_layers and optimizer (see `finish_stage`)."""
    return finish_stage(spec_paths, stage, stage_dir, ["conv_layers", "optimizer"],
                        lambda table: choose_depth_and_optimizer(table, layers_tolerance))


def finish_stage3(spec_paths: list[Path], stage: StageConfig, stage_dir: Path, threshold: float) -> dict:
    """Stage 3's table and the plot of every trial against the ensemble `threshold` (see `finish_stage`)."""
    return finish_stage(spec_paths, stage, stage_dir, [], lambda table: {}, threshold=threshold)


def finish_stage(spec_paths: list[Path], stage: StageConfig, stage_dir: Path, compared: list[str],
                 choose: Callable[[pd.DataFrame], dict[str, Any]], threshold: float | None = None) -> dict:
    """Writes the stage's trials.csv, plots and stage.json; prunes to the stage's best `keep`.

    Args:
        compared: The columns whose mean val accuracy is plotted and reported per value.
        choose: The stage's rule, from its trials table to its chosen values.
        threshold: The ensemble threshold drawn on the plot of the kept trials.

    Returns:
        The stage summary: stage, trials, chosen values, mean val accuracy per value, workers,
        table, plots, and the kept trials (None when the stage keeps every checkpoint).
    """
    specs = [SearchSpec.load(p) for p in spec_paths]
    kept = [t for s in specs for t in keep_best(s, stage.keep)] if stage.keep else None
    table = pd.concat([trials_table(s) for s in specs], ignore_index=True)
    out, name = Path(stage_dir), Path(stage_dir).name
    table_path = write_text(out / "trials.csv", table.drop(columns=["checkpoint"]).to_csv(index=False))
    plots = [str(plot_by(table, column, out / f"val_accuracy_by_{column}.png",
                         f"{name}: val accuracy by {column}")) for column in compared]
    if kept is not None:
        plots.append(str(plot_ranked(table, kept, threshold or 0.0, out / "val_accuracy_by_rank.png",
                                     f"{name}: every trial, the {len(kept)} kept")))
    summary = {"stage": name, "trials": len(table), "completed": int((table["status"] == "COMPLETED").sum()),
               "failed": int((table["status"] == "FAILED").sum()), "chosen": choose(table),
               "means": {c: {str(k): round(v, 4) for k, v in _means(table, c).items()} for c in compared},
               "workers": sorted(table["worker"].dropna().unique().tolist()),
               "trials_by_worker": {str(k): int(v) for k, v in table["worker"].value_counts().items()},
               "best_val_accuracy": float(table["val_accuracy"].max()), "table": str(table_path),
               "specs": [str(p) for p in spec_paths], "plots": plots, "kept": kept}
    write_json(out / "stage.json", summary)
    return summary
