"""The stage choice rules on made-up trial tables, and a trial's budget in steps."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from glasses.budget import epochs_for
from glasses.config import ProgressiveConfig, StageConfig, build_config
from glasses.errors import SearchError
from glasses.stages import choose_depth_and_optimizer, choose_image_size, compare


def _table(column: str, groups: dict) -> pd.DataFrame:
    """Trials per value as (val_loss, val_accuracy) pairs, plus a failed trial that never counts."""
    rows = [{column: value, "val_loss": loss, "val_accuracy": acc, "status": "COMPLETED"}
            for value, trials in groups.items() for loss, acc in trials]
    rows.append({column: 999, "val_loss": 0.0, "val_accuracy": 1.0, "status": "FAILED"})
    return pd.DataFrame(rows)


def test_a_bigger_size_within_noise_of_the_best_loses_to_the_smaller():
    # 48 px has the lowest mean loss, but by less than the trials' spread: the tie-break decides.
    table = _table("image_size", {32: [(0.42, 0.80), (0.50, 0.76)], 40: [(0.47, 0.79), (0.41, 0.82)],
                                  48: [(0.40, 0.83), (0.44, 0.80)]})
    chosen, [how] = choose_image_size(table)
    assert chosen == {"image_size": 32}
    assert how["best"] == 48 and how["decided_by"] == "tie-break" and how["within_noise"] == [32, 40, 48]
    assert how["metric"] == "val_loss"
    assert how["values"][48]["trials"] == 2 and how["values"][48]["val_loss"] == pytest.approx(0.42)


def test_a_bigger_size_better_beyond_noise_wins():
    table = _table("image_size", {32: [(0.60, 0.70), (0.62, 0.69)], 48: [(0.35, 0.86), (0.36, 0.85)]})
    chosen, [how] = choose_image_size(table)
    assert chosen == {"image_size": 48} and how["decided_by"] == "difference" and how["within_noise"] == [48]
    # its standard error: the spread within a size (variances 0.02²/2 and 0.01²/2), pooled, over sqrt(2)
    assert how["values"][48]["val_loss_se"] == pytest.approx(np.sqrt((0.02**2 / 2 + 0.01**2 / 2) / 2) / np.sqrt(2),
                                                             abs=1e-4)


def test_sizes_drawn_alike_compare_in_pairs_and_the_spread_between_hyperparameters_cancels():
    # A quick run's stage 1 (seed 3, 3 layers held): trial i drew the same hyperparameters at each
    # size; adam against sgd spreads the losses far more than 64 against 32 px does.
    def trials(rows):
        # as trials.csv holds them (pandas' string columns, unset hyperparameters missing)
        return pd.read_csv(io.StringIO(pd.DataFrame([
            {"image_size": size, "conv_layers": 3, "optimizer": opt, "filters_0": f0, "pooling_3": None,
             "val_loss": loss, "val_accuracy": acc, "status": "COMPLETED"}
            for size, opt, f0, loss, acc in rows]).to_csv(index=False)))

    rows = [(64, "adam", 16, 0.3119, 0.87), (64, "sgd", 24, 0.4853, 0.77), (32, "adam", 16, 0.3948, 0.83),
            (32, "sgd", 24, 0.5070, 0.75)]
    chosen, [how] = choose_image_size(trials(rows))
    assert chosen == {"image_size": 64} and how["decided_by"] == "difference"  # better in both pairs
    assert how["values"][32]["paired"] == {"pairs": 2, "difference": pytest.approx(0.0523, abs=1e-4),
                                           "difference_se": pytest.approx(0.0306, abs=1e-4)}
    assert "paired" not in how["values"][64]

    # Not drawn alike (another filter count at 32 px): no pairs, and the spread between trials decides.
    unpaired = [r if r[:2] != (32, "sgd") else (32, "sgd", 32, *r[3:]) for r in rows]
    chosen, [how] = choose_image_size(trials(unpaired))
    assert chosen == {"image_size": 32} and how["decided_by"] == "tie-break" and "paired" not in how["values"][32]
    # Drawn alike but 64 px worse in one pair: within the pairs' noise, so the smaller size.
    mixed = [(64, "adam", 16, 0.3119, 0.87), (64, "sgd", 24, 0.5253, 0.74)] + rows[2:]
    chosen, [how] = choose_image_size(trials(mixed))
    assert chosen == {"image_size": 32} and how["best"] == 64 and how["values"][32]["paired"]["pairs"] == 2


def test_the_rule_compares_losses_not_accuracies():
    # 32 px has the better mean accuracy, 48 the clearly lower loss (its models are confident and right).
    table = _table("image_size", {32: [(0.60, 0.81), (0.61, 0.81)], 48: [(0.30, 0.80), (0.31, 0.80)]})
    assert choose_image_size(table)[0] == {"image_size": 48}


def test_without_losses_the_rule_falls_back_to_accuracy():
    table = _table("image_size", {32: [(None, 0.60), (None, 0.62)], 48: [(None, 0.85), (None, 0.86)]})
    chosen, [how] = choose_image_size(table)
    assert chosen == {"image_size": 48} and how["metric"] == "val_accuracy"


def test_one_trial_a_value_uses_the_spread_of_all_trials():
    # The report's stage 2 shape: one trial per depth, 3 to 5 alike, 1 clearly worse.
    table = _table("conv_layers", {1: [(0.70, 0.70)], 2: [(0.45, 0.83)], 3: [(0.40, 0.85)], 5: [(0.39, 0.86)]})
    how = compare(table, "conv_layers", [1, 2, 3, 5])
    assert how["best"] == 5 and 1 not in how["within_noise"]
    assert how["chosen"] == how["within_noise"][0] < 5 and how["decided_by"] == "tie-break"


def test_stage2_breaks_a_depth_tie_with_the_reports_3_layers_then_the_nearest_depth():
    # A quick run's stage 2 (seed 1337): depths 1, 3, 3, 4, every one within noise of the best (4)
    # with one or two trials a depth; "the fewest layers" took 1 and shipped a 1-layer network.
    rows = [(4, "adam", 0.4455, 0.8007), (3, "sgd", 0.4437, 0.7708), (1, "adam", 0.5716, 0.7143),
            (3, "sgd", 0.5757, 0.6678)]
    table = pd.DataFrame([{"conv_layers": c, "optimizer": o, "val_loss": lo, "val_accuracy": a, "status": "COMPLETED"}
                          for c, o, lo, a in rows])
    chosen, (layers, _) = choose_depth_and_optimizer(table)
    assert layers["decided_by"] == "tie-break" and set(layers["within_noise"]) == {1, 3, 4}
    assert chosen["conv_layers"] == 3 and layers["within_noise"] == [3, 4, 1]
    # no 3 among the tied: the nearest depth, fewer first
    assert choose_depth_and_optimizer(table[table["conv_layers"] != 3])[0]["conv_layers"] == 4
    two_five = table.assign(conv_layers=table["conv_layers"].map({4: 5, 3: 2, 1: 1}))
    assert choose_depth_and_optimizer(two_five)[1][0]["within_noise"][0] == 2


def test_stage2_prefers_the_reports_depth_and_adam_unless_beaten_beyond_noise():
    rows = [(3, "adam", 0.40, 0.85), (3, "sgd", 0.41, 0.84), (3, "adam", 0.42, 0.84), (3, "sgd", 0.39, 0.86),
            (4, "adam", 0.38, 0.86), (4, "sgd", 0.43, 0.83)]
    table = pd.DataFrame([{"conv_layers": c, "optimizer": o, "val_loss": lo, "val_accuracy": a, "status": "COMPLETED"}
                          for c, o, lo, a in rows])
    chosen, (layers, optimizer) = choose_depth_and_optimizer(table)
    assert chosen == {"conv_layers": 3, "optimizer": "adam"}
    assert layers["decided_by"] == "tie-break" and optimizer["decided_by"] == "tie-break"
    clear = table.assign(val_loss=np.where(table["optimizer"] == "sgd", table["val_loss"] - 0.3, table["val_loss"]))
    assert choose_depth_and_optimizer(clear)[0]["optimizer"] == "sgd"


def test_optimizer_is_compared_at_the_chosen_depth():
    # Marginally sgd looks better only because adam drew the shallow, bad trials.
    rows = [(1, "adam", 0.9, 0.55), (1, "adam", 0.88, 0.57), (3, "adam", 0.2, 0.93), (3, "adam", 0.21, 0.93),
            (3, "sgd", 0.4, 0.86), (3, "sgd", 0.41, 0.86), (5, "sgd", 0.42, 0.85)]
    table = pd.DataFrame([{"conv_layers": c, "optimizer": o, "val_loss": lo, "val_accuracy": a, "status": "COMPLETED"}
                          for c, o, lo, a in rows])
    assert compare(table, "optimizer", ["adam"])["best"] == "sgd"
    assert choose_depth_and_optimizer(table)[0] == {"conv_layers": 3, "optimizer": "adam"}


def test_no_completed_trial_is_an_error():
    table = pd.DataFrame([{"image_size": 64, "val_loss": None, "val_accuracy": None, "status": "FAILED"}])
    with pytest.raises(SearchError, match="no completed trial"):
        choose_image_size(table)


def test_epochs_follow_from_steps_and_the_data_size():
    stage = StageConfig(batch_size=32, max_trials=2, max_steps=720, min_steps=300, patience_steps=180)
    small, large = epochs_for(stage, 303), epochs_for(stage, 4500)
    # 303 images are 10 steps a pass: an epoch (between evaluations) is 50 steps, 5 passes
    assert (small.steps_per_epoch, small.epochs, small.warmup_epochs, small.patience) == (50, 15, 6, 4)
    assert (large.steps_per_epoch, large.epochs, large.warmup_epochs, large.patience) == (141, 6, 2, 2)
    # at least the steps asked for, and the warm-up stays below the epochs
    assert epochs_for(stage.model_copy(update={"max_steps": 6, "min_steps": 0}), 48).steps_per_epoch == 6
    for images in (1, 7, 303, 4500, 100_000):
        got = epochs_for(stage, images)
        assert got.epochs * got.steps_per_epoch >= 720 and got.warmup_epochs < got.epochs and got.patience >= 1
    assert epochs_for(stage, 4500, replicas=2).steps_per_epoch == 71


def test_paper_budgets_are_the_reports_epochs_on_its_training_split():
    config = build_config("paper")
    for stage, (epochs, patience) in zip((config.search.stage1, config.search.stage2, config.search.stage3),
                                         [(50, 5), (50, 10), (100, 10)]):
        budget = epochs_for(stage, 3599)
        assert (budget.epochs, budget.patience, budget.warmup_epochs) == (epochs, patience, 0)


@pytest.mark.parametrize("val, stage, folds", [(37, "stage1", 3), (299, "stage2", 3), (300, "stage1", 0),
                                               (37, "stage3", 0)])
def test_cross_validation_only_below_the_val_threshold_and_only_where_a_stage_chooses(tmp_path, val, stage,
                                                                                      folds):
    from glasses.files import write_json
    from glasses.stages import folds_for, spec_path_for
    from glasses.workdir import WorkDir

    write_json(tmp_path / "cache.json", {"key": "k", "size": 32, "counts": {"train": 8 * val, "val": val, "test": val}})
    search = build_config("quick").search
    assert folds_for(search, stage, tmp_path) == folds
    assert folds_for(search.model_copy(update={"cv_below": 0}), stage, tmp_path) == 0
    # the search's folder is keyed by it: a search scored otherwise is another search
    paths = {spec_path_for(WorkDir(tmp_path / "s"), stage, search.model_copy(update={"cv_below": below}), 32, {},
                           tmp_path) for below in (0, 10_000)}
    assert len(paths) == (1 if stage == "stage3" else 2)


def test_a_search_trained_with_other_batchnorm_statistics_is_another_search(tmp_path):
    from glasses.files import write_json
    from glasses.stages import spec_path_for
    from glasses.workdir import WorkDir

    write_json(tmp_path / "cache.json", {"key": "k", "size": 32, "counts": {"train": 800, "val": 400, "test": 100}})
    search = build_config("quick").search
    paths = {spec_path_for(WorkDir(tmp_path / "s"), "stage3", search.model_copy(update={
        "stage3": search.stage3.model_copy(update={"bn_stats_images": n})}), 32, {}, tmp_path) for n in (0, 512, 512)}
    assert len(paths) == 2


def test_only_searches_and_caches_no_stage_uses_are_removed(tmp_path):
    from glasses.files import OUTPUT_MARKER
    from glasses.inputs import unused_caches
    from glasses.stages import beyond, remove_searches, superseded_searches

    def search(stage: str, key: str) -> Path:
        folder = tmp_path / "stages" / stage / f"kt-{key}"
        (folder / "size16").mkdir(parents=True)
        (folder / "size16.json").write_text("{}")
        return folder / "size16.json"

    used, old = search("stage3", "new"), search("stage3", "old")
    mine = tmp_path / "stages" / "stage3" / "kt-users"  # no spec inside: not a search of ours
    mine.mkdir()
    assert remove_searches(beyond(superseded_searches(tmp_path, [used]), 0)) == [old.parent]
    assert used.is_file() and not old.parent.exists() and mine.is_dir()

    for size in (16, 24, 32):
        (tmp_path / "cache" / f"{size}px").mkdir(parents=True)
        (tmp_path / "cache" / f"{size}px" / "cache.json").write_text("{}")
        (tmp_path / "cache" / f"{size}px" / OUTPUT_MARKER).touch()
    (tmp_path / "cache" / "64px").mkdir()  # without our marker: left alone
    assert unused_caches(tmp_path / "cache", {16, 24}) == [tmp_path / "cache" / "32px"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["16px", "24px", "64px"]


def test_trials_stopped_early_are_counted_but_never_averaged_into_a_choice():
    table = _table("image_size", {32: [(0.50, 0.78), (0.52, 0.77)], 64: [(0.45, 0.80)]})
    # 64 px's other trial and every 48 px trial were stopped early: their losses at the stop are
    # from fewer steps and would pull the means; 48 px, never finished, cannot be chosen.
    stopped = [{"image_size": 64, "val_loss": 0.9, "val_accuracy": 0.6, "status": "STOPPED"},
               {"image_size": 48, "val_loss": 0.1, "val_accuracy": 0.95, "status": "STOPPED"}]
    chosen, [how] = choose_image_size(pd.concat([table, pd.DataFrame(stopped)], ignore_index=True))
    assert how["values"][64]["trials"] == 1 and how["values"][64]["stopped"] == 1
    assert how["values"][64]["val_loss"] == pytest.approx(0.45)
    assert how["values"][48] == {"trials": 0, "val_loss": None, "val_loss_se": None, "val_accuracy": None,
                                 "val_accuracy_se": None, "stopped": 1}
    assert chosen["image_size"] != 48 and "stopped" not in how["values"][32]


def test_a_saturated_val_split_ranks_the_tied_best_by_val_log_loss(tmp_path):
    import json

    from glasses.search import SearchSpec
    from glasses.search.records import keep_best
    from glasses.stages import tied_best

    stage = StageConfig(batch_size=8, max_trials=4, max_steps=10, patience_steps=5)
    spec = SearchSpec(search_id="s", directory=tmp_path, project_name="size16", cache_dir=tmp_path, image_size=16,
                      stage=stage, folds=0, fixed={}, seed=1, bind="127.0.0.1", address=None, port=0, workers=2,
                      worker_timeout_s=30, chief_timeout_s=60, await_workers_s=30, gpus_per_worker=1)
    trials = {"0": (1.0, 0.20), "1": (1.0, 0.05), "2": (0.9, 0.01), "3": (1.0, 0.10)}  # accuracy, loss
    for trial_id, (score, loss) in trials.items():
        folder = spec.project_dir / f"trial_{trial_id}"
        folder.mkdir(parents=True)
        (folder / "checkpoint.weights.h5").write_bytes(b"w")
        metrics = {"metrics": {"val_loss": {"observations": [{"value": [loss], "step": 0}]}}}
        (folder / "trial.json").write_text(json.dumps({"trial_id": trial_id, "status": "COMPLETED", "score": score,
                                                       "hyperparameters": {"values": {}}, "metrics": metrics}))
    assert keep_best(spec, 2) == ["1", "3"]  # of the three at 1.0, the two lowest losses
    assert sorted(p.parent.name for p in spec.project_dir.glob("trial_*/checkpoint.weights.h5")) == ["trial_1", "trial_3"]
    table = pd.DataFrame([{"trial_id": t, "val_accuracy": a, "status": "COMPLETED"} for t, (a, _) in trials.items()])
    assert tied_best(table) == {"val_accuracy": 1.0, "trials": ["0", "1", "3"], "broken_by": "val_loss"}
    assert tied_best(table[table["trial_id"] != "0"].assign(val_accuracy=[1.0, 0.9, 0.95])) is None


@pytest.mark.parametrize("stage, followed, cluster, spares", [
    ("stage1", True, "threads", 2),  # the two workers queued behind it
    ("stage1", False, "threads", 3),  # stage 2's chief and two workers
    ("stage2", False, "threads", 3),
    ("stage3", False, "threads", 0),  # nothing follows
    ("stage1", True, "tcp://10.0.0.1:8786", 0),  # on Dask the workers go to its workers, not here
    ("stage2", False, "tcp://10.0.0.1:8786", 1),  # the next chief, where this one runs
])
def test_a_search_plans_spare_processes_for_what_follows_it(tmp_path, stage, followed, cluster, spares):
    from glasses.files import write_json
    from glasses.search import SearchSpec
    from glasses.stages import plan_search
    from glasses.workdir import WorkDir

    write_json(tmp_path / "cache.json", {"key": "k", "size": 32, "counts": {"train": 800, "val": 400, "test": 100}})
    search = build_config("quick", overrides={"search.cluster": cluster}).search
    spec = SearchSpec.load(plan_search(WorkDir(tmp_path / "w"), stage, search, 32, {}, tmp_path, followed))
    assert (spec.spares, spec.followed) == (spares, followed)


def _search_with_trials(tmp_path: Path, name: str, stage: StageConfig, size: int, trials: dict,
                        fixed: dict | None = None, folds: int = 0, cache: str = "cache", start: int | None = None):
    """A search on disk whose trials (id: (conv_layers, optimizer, val accuracy, val loss)) ended."""
    import json

    from glasses.search import SearchSpec

    spec = SearchSpec(search_id=name, directory=tmp_path / name, project_name=f"size{size}",
                      cache_dir=tmp_path / cache, image_size=size, stage=stage, folds=folds, fixed=fixed or {},
                      seed=1, bind="127.0.0.1", address=None, port=0, workers=2, worker_timeout_s=30,
                      chief_timeout_s=60, await_workers_s=30, gpus_per_worker=1, start_size=start,
                      start_cache_dir=None if start is None else tmp_path / f"cache{start}")
    for trial_id, (layers, optimizer, score, loss) in trials.items():
        folder = spec.project_dir / f"trial_{trial_id}"
        folder.mkdir(parents=True)
        metrics = {"metrics": {"val_loss": {"observations": [{"value": [loss], "step": 0}]}}}
        values = {"conv_layers": layers, "optimizer": optimizer}
        (folder / "trial.json").write_text(json.dumps({"trial_id": trial_id, "status": "COMPLETED", "score": score,
                                                       "hyperparameters": {"values": values}, **metrics}))
    return spec.save(tmp_path / f"{name}.json")


def test_stage2_counts_stage1s_trials_at_its_size_when_both_trained_alike(tmp_path):
    from glasses.stages import finish_stage2

    alike = StageConfig(batch_size=8, max_trials=2, max_steps=10, patience_steps=5, min_steps=4)
    # Stage 2 drew only depths 1 and 2; stage 1 had tried 4 layers at 32 px (and at 40, which is not this size).
    stage2 = _search_with_trials(tmp_path, "s2", alike, 32, {"0": (1, "adam", 0.70, 0.60), "1": (2, "adam", 0.75, 0.55)})
    at32 = _search_with_trials(tmp_path, "s1-32", alike, 32, {"0": (4, "adam", 0.86, 0.33), "1": (4, "adam", 0.85, 0.34)})
    at40 = _search_with_trials(tmp_path, "s1-40", alike, 40, {"0": (5, "adam", 0.99, 0.01)}, cache="cache40")
    summary = finish_stage2([stage2], alike, tmp_path / "stage2", [at32, at40])
    assert summary["chosen"]["conv_layers"] == 4
    assert summary["evidence"] == {"stage": "stage1", "trials": 2, "ids": ["stage1/0", "stage1/1"]}
    assert summary["trials"] == 2 and set(summary["means"]["conv_layers"]) == {"1", "2", "4"}
    assert len(pd.read_csv(summary["table"])) == 2  # trials.csv stays the stage's own (utilization counts it)

    # Trained otherwise (another warm-up): stage 1's trials are not stage 2's evidence, and the summary says why.
    other = alike.model_copy(update={"min_steps": 2})
    stage2 = _search_with_trials(tmp_path, "s2b", other, 32, {"0": (1, "adam", 0.70, 0.60), "1": (2, "adam", 0.75, 0.55)})
    summary = finish_stage2([stage2], other, tmp_path / "stage2b", [at32, at40])
    assert summary["chosen"]["conv_layers"] == 2
    assert summary["evidence"]["trials"] == 0 and "min_steps 4 against 2" in summary["evidence"]["why"]

    # A value stage 2 holds fixed filters stage 1's trials; so does scoring by other folds.
    fixed = _search_with_trials(tmp_path, "s2c", alike, 32, {"0": (1, "sgd", 0.70, 0.60)}, fixed={"optimizer": "sgd"})
    summary = finish_stage2([fixed], alike, tmp_path / "stage2c", [at32])
    assert summary["evidence"]["trials"] == 0 and summary["fixed"] == {"optimizer": "sgd"}  # stage.json says so
    assert "fixed" not in finish_stage2([stage2], other, tmp_path / "stage2e", [at32])
    folds = _search_with_trials(tmp_path, "s2d", alike, 32, {"0": (1, "adam", 0.70, 0.60)}, folds=3)
    assert "folds 0 against 3" in finish_stage2([folds], alike, tmp_path / "stage2d", [at32])["evidence"]["why"]

    # Trained first at a smaller size (progressive resizing) against not: other training, no evidence;
    # stage.json says how the stage's own trials trained.
    started = alike.model_copy(update={"progressive": ProgressiveConfig(size=16, steps=5)})
    small_first = _search_with_trials(tmp_path, "s2f", started, 32, {"0": (1, "adam", 0.70, 0.60)}, start=16)
    summary = finish_stage2([small_first], started, tmp_path / "stage2f", [at32])
    assert "start_size None against 16, start_steps 0 against 5" in summary["evidence"]["why"]
    assert summary["progressive"] == {"32": {"size": 16, "steps": 5, "of": 10}}
    assert "progressive" not in finish_stage2([stage2], alike, tmp_path / "stage2g", [at32])


def test_each_stage_draws_from_its_own_seed_and_stage1_keeps_the_runs(tmp_path):
    from glasses.files import write_json
    from glasses.search import SearchSpec
    from glasses.stages import plan_search, stage_seed
    from glasses.workdir import WorkDir

    write_json(tmp_path / "cache.json", {"key": "k", "size": 32, "counts": {"train": 800, "val": 400, "test": 100}})
    search = build_config("quick", overrides={"search.seed": 7}).search
    seeds = {stage: SearchSpec.load(plan_search(WorkDir(tmp_path / "w"), stage, search, 32, {}, tmp_path)).seed
             for stage in ("stage1", "stage2", "stage3")}
    assert seeds["stage1"] == 7 and len(set(seeds.values())) == 3
    assert seeds["stage2"] == stage_seed(7, "stage2") != stage_seed(8, "stage2")  # derived, and stable
    assert all(0 <= seed < 2**32 for seed in seeds.values())
