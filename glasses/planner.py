"""A time budget turned into a run: how many trials, how many steps, which image sizes.

`plan_run` sizes a config's three search stages so that the whole run, as estimated from the
dataset's size and the training speed measured on this machine (glasses.throughput), ends
within the budget. One scale `x` drives every knob, each never decreasing in `x`: trials grow
as `x` (in multiples of the workers, who run trials in parallel), steps shrink as sqrt(x) below
the preset's and never grow above them, and stage 1's sizes go largest first below
`SIZES_FULL_AT`. The largest `x` whose estimate fits is planned, so a larger budget never
plans less. The estimate is a ceiling: every trial trains its `max_steps` (early stopping
ends most sooner) and stages 2-3 run at the largest size stage 1 may choose.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from glasses.budget import epochs_for
from glasses.config import Config, ProgressiveConfig, SearchConfig, StageConfig
from glasses.errors import ConfigError, GlassesError
from glasses.files import write_json
from glasses.throughput import Throughput, measure

# Costs the start-up measurement does not see, set from the task and trial times (the logs,
# stages/*/trial_*/worker.json) of budgeted smoke and quick runs on 2 cores (bench/RESULTS.md).
PER_EPOCH_S = 0.3  # callbacks at each epoch's end: checkpoint, TensorBoard, early stopping
# Setting BatchNorm statistics before each validation (stage.bn_stats_images) costs this many
# inference passes over its images: 0.8-1.4 for quick's networks at 32/40 px, one thread.
BN_STATS_PASSES = 1.5
PER_TRIAL_S = 1.5  # the oracle's round trips, the trial's folder and files
SEARCH_TASKS_S = 4.0  # a search's Prefect tasks (cache, plan, chief, workers) and the chief's wait
FINISH_STAGE_S = 3.0  # a stage's table and plots
ENSEMBLE_S = 6.0  # combining, choosing on val, saving the shipped model, its test evaluation
MEMBER_S = 1.0  # loading one kept model
ANALYSES_S = 15.0  # figures, the latent baseline, summary and report
EXIT_S = 10.0  # after the summary: the flow ends, the embedded Prefect server stops (8 s measured)
CACHE_PER_IMAGE = 1.5  # a cache's cost per image, in decodes (resize and save on top)
SAFETY = 0.92  # the share of what is left that the searches may plan to take
# The space's models are larger than the report's CNN that is measured (filters 8 to 64, mean 36
# against 32: about 1.27x in the inner convolutions), and a round of trials waits for its slowest.
SPACE_FACTOR = 1.2

SIZES_FULL_AT = 0.5  # below this scale, stage 1 keeps fewer sizes (the largest go first)
MIN_STEPS = 60  # fewest steps a trial is planned (unless its preset has fewer): enough to learn
MIN_STEP_SHARE = 0.25  # nor under this share of the preset's steps
MAX_SCALE = 16.0
_SCALES = [MAX_SCALE * 2 ** (-k / 16) for k in range(16 * 12)]  # 16 down to 1/256, 16 steps a doubling
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_duration(text: str | None) -> float | None:
    """Seconds in a duration such as 90s, 15m, 1h or 1h30m; None for None or "".

    Raises:
        ConfigError: naming the text when it is no such duration or is zero.
    """
    if text is None or not str(text).strip():
        return None
    match = _DURATION.fullmatch(str(text).strip().lower())
    if not match or not any(match.groups()):
        raise ConfigError(f"time budget {text!r} is not a duration: write it as 90s, 15m, 1h or 1h30m")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if total <= 0:
        raise ConfigError(f"time budget {text!r} is zero: give a positive duration such as 15m")
    return float(total)


@dataclass(frozen=True)
class Counts:
    """Images in the split, and what cross-validation makes of them."""

    train: int
    val: int
    test: int

    def fit_and_score(self, folds: int) -> tuple[int, int]:
        """Images a model trains on and is scored on: the split's, or one fold's of train+val."""
        if not folds:
            return self.train, self.val
        pool = self.train + self.val
        return pool - pool // folds, math.ceil(pool / folds)


@dataclass(frozen=True)
class Plan:
    """What a budget was turned into: seconds per step of the run, and the scale that fits."""

    budget_s: float
    spent_s: float  # before the plan: start-up, data, the measurement
    scale: float
    stages: dict[str, float]  # planned seconds: stage1, stage2, stage3, ensemble, analyses
    throughput: dict

    @property
    def total_s(self) -> float:
        """The run's planned end: what went before, the steps planned, the exit."""
        return self.spent_s + sum(self.stages.values()) + EXIT_S

    @property
    def needed_s(self) -> float:
        """The budget this plan asks for: its planned steps take at most SAFETY of what is left."""
        return self.spent_s + sum(self.stages.values()) / SAFETY + EXIT_S

    def to_dict(self) -> dict:
        return {**asdict(self), "total_s": round(self.total_s, 1)}


def plan_run(config: Config, counts: Counts, throughput: Throughput, budget_s: float, spent_s: float,
             cpus: int) -> tuple[Config, Plan]:
    """The config sized to end within `budget_s` seconds, and its plan.

    Args:
        config: The run's config; its presets' stages are the scale-1 plan.
        counts: The split's images.
        throughput: This machine's speed, measured at every stage-1 size and stage batch.
        budget_s: The whole run's time, from its start.
        spent_s: Seconds already gone (start-up, data, the measurement).
        cpus: CPU cores the workers share (they contend beyond them).

    Raises:
        GlassesError: even the smallest useful run does not fit; naming the least budget that would.
    """
    for x in _SCALES:  # the largest scale first
        sized = config.model_copy(update={"search": scale_search(config.search, x, config.ensemble.fallback)})
        stages = estimate(sized, counts, throughput, cpus)
        plan = Plan(budget_s, spent_s, round(x, 4), stages, throughput.to_dict())
        if plan.needed_s <= budget_s:
            return _with_timeout(sized, stages), plan
    least = _clock(plan.needed_s)
    raise GlassesError(f"time budget {_clock(budget_s)} is too small for this data on this machine: "
                       f"{_clock(spent_s)} went before the plan, and even the smallest useful run (one image "
                       f"size, a trial per worker, the fewest steps) needs {least} in all; give at least {least}")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _with_timeout(config: Config, stages: dict[str, float]) -> Config:
    """A longer plan than the preset's must not meet the chief's time limit (a search that hits
    it fails the run); never shortened, for the same reason."""
    longest = max(stages.values())
    search = config.search
    timeout = min(7 * 24 * 3600.0, max(search.chief_timeout_s, 2 * longest + 300))
    sized = config.model_copy(update={"search": search.model_copy(update={"chief_timeout_s": timeout})})
    return Config.model_validate(sized.model_dump())  # model_copy does not validate: the rules still hold


def scale_search(search: SearchConfig, x: float, fewest_members: int) -> SearchConfig:
    """The search at scale `x` (1: the preset's): trials, steps and stage 1's sizes."""
    workers = search.workers
    sizes = sorted(search.stage1.image_sizes)
    kept = sizes[:max(1, min(len(sizes), math.ceil(len(sizes) * x / SIZES_FULL_AT - 1e-9)))]
    stage1 = _scale_stage(search.stage1, x, workers, workers)
    stage1 = stage1.model_copy(update={"image_sizes": [s for s in search.stage1.image_sizes if s in kept]})
    stage3 = _scale_stage(search.stage3, x, workers, fewest_members)
    return search.model_copy(update={"stage1": stage1, "stage2": _scale_stage(search.stage2, x, workers, workers),
                                     "stage3": stage3})


def _scale_stage(stage: StageConfig, x: float, workers: int, fewest: int) -> StageConfig:
    """Trials as `x`, in whole rounds of the workers and at least `fewest`; steps as sqrt(x)
    below the preset's, never under what a trial needs to learn, warm-up and patience alike."""
    rounds = max(math.ceil(fewest / workers), math.ceil(stage.max_trials * x / workers - 1e-9))
    trials = min(10_000, rounds * workers)
    least = min(stage.max_steps, max(MIN_STEPS, math.ceil(stage.max_steps * MIN_STEP_SHARE)))
    steps = max(least, round(stage.max_steps * min(1.0, math.sqrt(x))))
    share = steps / stage.max_steps
    keep = None if stage.keep is None else min(trials, max(stage.keep, fewest))
    start = min(steps - 1, round(stage.progressive.steps * share))  # the same share of fewer steps at the start size
    progressive = stage.progressive.model_copy(update={"steps": start}) if start > 0 else ProgressiveConfig()
    return stage.model_copy(update={
        "max_trials": trials, "max_steps": steps, "min_steps": min(steps - 1, math.floor(stage.min_steps * share)),
        "patience_steps": max(1, round(stage.patience_steps * share)), "keep": keep, "progressive": progressive})


def estimate(config: Config, counts: Counts, throughput: Throughput, cpus: int) -> dict[str, float]:
    """Planned seconds of each step after the plan, each at its most (every trial its max_steps,
    stages 2-3 at stage 1's largest size)."""
    search = config.search
    sizes = search.stage1.image_sizes
    largest = max(sizes)
    images = counts.train + counts.val + counts.test
    cached = [*sizes, *search.start_sizes(sizes)]
    caches = throughput.startup_s + sum(images * throughput.decode_s * CACHE_PER_IMAGE for _ in cached)
    stage1 = caches + sum(_search_s(search, "stage1", s, counts, throughput, cpus) for s in sizes)
    stages = {"stage1": stage1 + FINISH_STAGE_S}
    for name in ("stage2", "stage3"):
        stages[name] = _search_s(search, name, largest, counts, throughput, cpus) + FINISH_STAGE_S
    stage3 = search.stage3
    members = stage3.keep or stage3.max_trials
    predict = (counts.val + counts.test) / throughput.evaluate_rate(largest, stage3.batch_size)
    stages["ensemble"] = ENSEMBLE_S + members * (MEMBER_S + predict)
    stages["analyses"] = ANALYSES_S
    return {name: round(seconds, 1) for name, seconds in stages.items()}


def _search_s(search: SearchConfig, name: str, size: int, counts: Counts, throughput: Throughput,
              cpus: int) -> float:
    """One search: its roles' start (all at once on the shared cores), then rounds of trials."""
    stage = search.stage(name)
    workers = search.workers
    start = throughput.startup_s * max(1.0, (workers + 1) / cpus) + SEARCH_TASKS_S
    rounds = math.ceil(stage.max_trials / workers)
    # More worker threads than cores: each worker trains slower than it did alone.
    contention = max(1.0, workers * max(1, throughput.threads) / cpus) if throughput.threads else 1.0
    return start + rounds * (PER_TRIAL_S + contention * _trial_s(stage, size, search.folds(name, counts.val),
                                                                 counts, throughput))


def _trial_s(stage: StageConfig, size: int, folds: int, counts: Counts, throughput: Throughput) -> float:
    """One trial on one worker alone: each of its models (k with cross-validation) trains all
    its steps and scores its validation images every epoch, its BatchNorm statistics set first;
    under progressive resizing its first steps at the start size, unscored."""
    fit, score = counts.fit_and_score(folds)
    start = stage.progressive.steps if stage.progressive.applies(size, folds) else 0
    epochs = epochs_for(stage, fit, start_steps=start)
    batch, scored = stage.batch_size, epochs.epochs - epochs.first_epoch
    train = scored * epochs.steps_per_epoch * batch / throughput.train_rate(size, batch)
    if start:
        train += start * batch / throughput.train_rate(stage.progressive.size, batch)
    inferred = score + BN_STATS_PASSES * min(stage.bn_stats_images, fit)
    evaluate = scored * inferred / throughput.evaluate_rate(size, batch)
    return max(1, folds) * (throughput.model_s + SPACE_FACTOR * train + evaluate + scored * PER_EPOCH_S)


SAMPLE_IMAGES = 24  # decoded to time a cache's build


def size_to_budget(config: Config, split_dir: Path, counts: Counts, budget_s: float | None, started_at: float,
                   out: Path) -> tuple[Config, Plan | None]:
    """Measures this machine (glasses.throughput) and plans the run (`plan_run`) for what is left
    of `budget_s` since `started_at` (Unix time); writes the plan and the sized search to `out`.
    Without a budget, the config as it is and no plan (and an earlier run's plan at `out` goes).

    Raises:
        GlassesError: the measurement failed, or even the smallest useful run does not fit.
    """
    from glasses.dataset import read_manifest

    if budget_s is None:
        Path(out).unlink(missing_ok=True)
        return config, None
    search = config.search
    batches = sorted({search.stage1.batch_size, search.stage2.batch_size, search.stage3.batch_size})
    images = read_manifest(split_dir, "train")[0][:SAMPLE_IMAGES]
    sizes = search.stage1.image_sizes
    throughput = measure([*sizes, *search.start_sizes(sizes)], batches, search, images)
    sized, plan = plan_run(config, counts, throughput, budget_s, time.time() - started_at, os.cpu_count() or 1)
    write_json(out, {**plan.to_dict(), "search": sized.search.model_dump(mode="json")})
    return sized, plan
