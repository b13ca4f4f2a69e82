"""The one typed configuration of a run, its named presets, and how to load and override it.

A pydantic model so that a bad value fails when the config is loaded (not mid-run), so that
Prefect validates flow parameters, and so that its UI can edit a run's settings.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import math
import os
import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from glasses.errors import ConfigError
from glasses.space import check_fixed

PresetName = Literal["quick", "paper", "smoke"]

# numpy's default_rng takes no negative seed, and 32 bits is what every seeded library accepts.
Seed = Annotated[int, Field(ge=0, lt=2**32, description="A non-negative 32-bit random seed.")]
ImageSize = Annotated[int, Field(ge=8, le=1024)]
Fraction = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
_HOUR = 3600.0


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Where the images come from and how they are split."""

    data_dir: Path | None = Field(None, description="A dataset in the Kaggle layout; None synthesizes one.")
    synth_n: int = Field(1500, ge=20, description="Labelled images in the built-in dataset.")
    synth_resolution: int = Field(128, ge=16, le=1024, description="Side of the built-in images, px.")
    fractions: tuple[Fraction, Fraction, Fraction] = Field((0.8, 0.1, 0.1), description="Train, val, test.")
    seed: Seed = 1337

    @field_validator("fractions")
    @classmethod
    def _fractions_sum_to_one(cls, fractions: tuple[float, float, float]) -> tuple[float, float, float]:
        if abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"must be three positive numbers summing to 1, got {fractions}")
        return fractions


class EarlyStopConfig(_Section):
    """Early stopping across trials, decided by the chief's oracle (glasses.search.early_stop)."""

    rule: Literal["off", "median"] = Field("off", description="off: every trial trains its whole budget (the "
                                           "report's plain random search); median: the chief stops a trial whose "
                                           "best val log loss so far is worse than the median of the other trials "
                                           "at the same evaluation.")
    after_steps: int = Field(0, ge=0, description="Steps a trial trains before the rule may stop it; 0: the "
                             "stage's min_steps (BatchNorm's statistics and the first epochs are noise).")
    peers: int = Field(2, ge=1, le=1000, description="Other trials that must have reached the same evaluation "
                       "before the rule compares against their median.")


class ProgressiveConfig(_Section):
    """Progressive resizing: a trial trains its first steps on smaller images, then the rest at
    the search's size. The network ends in global pooling, so its weights fit any size; the
    early steps cost a fraction of the full size's, and the last ones adapt it to the detail
    of the full size (Howard's progressive resizing; Touvron et al. 2019, FixRes)."""

    size: ImageSize | None = Field(None, description="Side of the images of the first steps; None (or a size "
                                   "not below the search's): every step at the search's size.")
    steps: int = Field(0, ge=0, description="Steps at `size`, below the stage's max_steps; validation, "
                       "checkpoints and early stopping begin after them, at the search's size.")
    with_cv: bool = Field(True, description="Also where the stage's trials are scored by cross-validation "
                          "(a val split under search.cv_below: small data); false: there every step trains at "
                          "the search's size, so a comparison of sizes sees each size's whole gain.")

    @model_validator(mode="after")
    def _both_or_neither(self) -> ProgressiveConfig:
        if (self.size is None) != (self.steps == 0):
            raise ValueError(f"size {self.size} and steps {self.steps}: set both (the first `steps` train at "
                             "`size` px) or neither")
        return self

    @property
    def on(self) -> bool:
        return self.size is not None

    def applies(self, image_size: int, folds: int = 0) -> bool:
        """Whether a search at `image_size` whose trials are scored by `folds`-fold
        cross-validation (0: on the val split) trains its first steps smaller."""
        return self.on and self.size < image_size and (self.with_cv or not folds)


class StageConfig(_Section):
    """One random search stage (a row of the report's table)."""

    image_sizes: list[ImageSize] = Field(default_factory=list, description="Stage 1 only: one search per "
                                         "size, 8 to 1024 px; later stages use stage 1's choice.")
    batch_size: int = Field(ge=1, le=4096, description="Per replica; multiplied by the GPUs a worker uses.")
    max_trials: int = Field(ge=1, le=10_000, description="Per image size in stage 1, in total otherwise.")
    max_steps: int = Field(ge=1, le=10_000_000, description="Most optimizer steps a trial trains; its epochs "
                           "follow from the training images and the batch (see glasses.budget).")
    min_steps: int = Field(0, ge=0, description="Steps before early stopping may stop a trial (BatchNorm "
                           "statistics settle first on small data); below max_steps.")
    patience_steps: int = Field(ge=1, description="Steps without a better val accuracy that stop a trial.")
    bn_stats_images: int = Field(512, ge=0, le=100_000, description="Before each validation, set BatchNorm's "
                                 "statistics to their values on this many clean (unaugmented) training images "
                                 "(glasses.model.set_batchnorm_statistics); 0: Keras' moving averages over "
                                 "augmented batches, as the report trained.")
    fixed: dict[str, int | str] = Field(default_factory=dict, description="Hyperparameters held fixed, "
                                        "by their names in glasses.space.SPACE.")
    keep: int | None = Field(None, ge=1, description="Keep only the checkpoints of the K best trials.")
    retune_trials: int = Field(4, ge=0, le=10_000, description="Stage 3 only: the trials a retune run adds to "
                               "the search (glasses retune, the scheduled deployment), when its data is unchanged.")
    early_stop: EarlyStopConfig = Field(default_factory=EarlyStopConfig, description="Stop trials that are "
                                        "behind the others at the same evaluation (off: the report's search).")
    progressive: ProgressiveConfig = Field(default_factory=ProgressiveConfig, description="Train the first "
                                           "steps of each trial on smaller images (off: the report's search).")

    @field_validator("image_sizes")
    @classmethod
    def _sizes_differ(cls, sizes: list[int]) -> list[int]:
        repeated = sorted({size for size in sizes if sizes.count(size) > 1})
        if repeated:
            raise ValueError(f"lists {repeated} more than once in {sizes}; each size is one search")
        return sizes

    @field_validator("fixed")
    @classmethod
    def _fixed_in_space(cls, fixed: dict[str, int | str]) -> dict[str, int | str]:
        check_fixed(fixed)
        return fixed

    @model_validator(mode="after")
    def _budget_adds_up(self) -> StageConfig:
        if self.min_steps >= self.max_steps:
            raise ValueError(f"min_steps {self.min_steps} must be below max_steps {self.max_steps}, "
                             "or early stopping can never act")
        if self.early_stop.after_steps >= self.max_steps:
            raise ValueError(f"early_stop.after_steps {self.early_stop.after_steps} must be below max_steps "
                             f"{self.max_steps}, or the rule can never act")
        if self.progressive.steps >= self.max_steps:
            raise ValueError(f"progressive.steps {self.progressive.steps} must be below max_steps {self.max_steps}, "
                             "or no step trains at the search's size")
        if self.keep is not None and self.keep > self.max_trials:
            raise ValueError(f"keep {self.keep} must be at most max_trials {self.max_trials}")
        return self


class SearchConfig(_Section):
    """The distributed random search: roles, resources, faults and the choice rules."""

    workers: int = Field(2, ge=1, le=64, description="Tuner worker processes per search.")
    cluster: str = Field("threads", description="Where tuner workers run: threads (processes on this "
                         "machine), local (a Dask LocalCluster started for the run) or the address of an "
                         "existing Dask scheduler, tcp://host:8786 (also search.dask_address, --dask-address).")
    dask_address: str | None = Field(None, description="An existing Dask scheduler; sets cluster to it.")
    chief_on: Literal["cluster", "flow"] = Field("cluster", description="On a Dask cluster, where each "
                                                 "search's chief runs: cluster (on a Dask worker, next to its "
                                                 "tuner workers) or flow (in the flow's process, on its host).")
    oracle_bind: str = Field("127.0.0.1", description="Address the chief binds (0.0.0.0: every interface); "
                             "loopback unless allow_remote_oracle.")
    oracle_address: str | None = Field(None, description="Address workers dial; None: what the chief "
                                       "publishes (127.0.0.1 on loopback, else its host's address).")
    oracle_port: int | None = Field(None, description="1024 to 65535; None: the chief binds a free one "
                                    "and publishes it.")
    allow_remote_oracle: bool = Field(False, description="Let oracle_bind be a non-loopback address. The "
                                      "oracle is unauthenticated gRPC: only on a trusted network.")
    seed: Seed = 1337
    precision: Literal["float32", "bfloat16", "auto"] = Field("float32", description="What tuner workers train "
                                                              "in: float32, bfloat16 mixed precision (keras' "
                                                              "mixed_bfloat16: variables and the output in float32), or "
                                                              "auto: bfloat16 on a CPU that computes it natively (AVX-512 "
                                                              "BF16, AMX) without a GPU, else float32; each worker decides "
                                                              "for its host. Saved models are float32 either way.")
    gpus_per_worker: int | Literal["all"] = Field(1, description="GPUs per worker on a GPU host: 0 to 64, "
                                                  "or all.")
    worker_retries: int = Field(2, ge=0, le=10, description="Retries of a worker task, same tuner id.")
    keep_superseded: int = Field(3, ge=0, le=1000, description="Searches a run no longer uses (its settings or data "
                                 "changed) kept per stage, the newest; older ones are removed at the end of a "
                                 "run. `glasses prune` removes them when asked.")
    worker_timeout_s: float = Field(120, gt=0, le=24 * _HOUR, allow_inf_nan=False,
                                    description="Silence after which a worker is gone; below chief_timeout_s.")
    chief_timeout_s: float = Field(6 * _HOUR, gt=0, le=7 * 24 * _HOUR, allow_inf_nan=False,
                                   description="Hard limit on one search, at most 7 days.")
    cv_below: int = Field(300, ge=0, description="Score stage 1-2 trials by k-fold cross-validation over "
                          "train+val when the val split has fewer images than this; 0 never.")
    cv_folds: int = Field(3, ge=2, le=20, description="k of that cross-validation. It multiplies "
                          "stages 1-2's training by k: with 5, stage-1 trials of a 380-image quick run took "
                          "4-10 min each on 2 cores.")
    stage1: StageConfig
    stage2: StageConfig
    stage3: StageConfig

    @field_validator("oracle_port")
    @classmethod
    def _unprivileged_port(cls, port: int | None) -> int | None:
        if port is not None and not 1024 <= port <= 65535:
            raise ValueError(f"{port} is not a port from 1024 to 65535 (lower ones need root; "
                             "leave it unset to pick a free one)")
        return port

    @field_validator("cluster")
    @classmethod
    def _cluster_kind(cls, cluster: str) -> str:
        if cluster not in ("threads", "local") and not re.fullmatch(r"(tcp|tls)://[^\s/:]+:\d{1,5}", cluster):
            raise ValueError(f"{cluster!r} is not threads, local or a Dask scheduler's address "
                             "(tcp://host:8786)")
        return cluster

    @model_validator(mode="before")
    @classmethod
    def _address_sets_cluster(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("dask_address"):
            values = {**values, "cluster": values["dask_address"]}
        return values

    @field_validator("gpus_per_worker")
    @classmethod
    def _gpu_count(cls, gpus: int | str) -> int | str:
        if gpus != "all" and not 0 <= gpus <= 64:
            raise ValueError(f"{gpus} is not a number of GPUs from 0 to 64, or 'all'")
        return gpus

    @model_validator(mode="after")
    def _stage1_has_sizes(self) -> SearchConfig:
        if not self.stage1.image_sizes:
            raise ValueError("stage1.image_sizes must list at least one size: stage 1 searches each one")
        return self

    @model_validator(mode="after")
    def _worker_timeout_within_chief(self) -> SearchConfig:
        if self.worker_timeout_s >= self.chief_timeout_s:
            raise ValueError(f"worker_timeout_s {self.worker_timeout_s:g} must be below chief_timeout_s "
                             f"{self.chief_timeout_s:g}, or a silent worker outlives the search")
        return self

    @model_validator(mode="after")
    def _oracle_on_loopback(self) -> SearchConfig:
        if not self.allow_remote_oracle and not is_loopback(self.oracle_bind):
            raise ValueError(
                f"oracle_bind {self.oracle_bind!r} is not loopback; the oracle is unauthenticated gRPC, so anyone "
                "who can reach its port can read and change the search. Set search.allow_remote_oracle: true "
                "only on a trusted network")
        return self

    def stage(self, name: str) -> StageConfig:
        """The section of search stage `name` (one of STAGES).

        Raises:
            ConfigError: naming `name` when it is no stage.
        """
        if name not in STAGES:
            raise ConfigError(f"{name!r} is not a search stage: {', '.join(STAGES)}")
        return getattr(self, name)

    def start_sizes(self, sizes: list[int]) -> list[int]:
        """The smaller sizes the stages' searches at `sizes` train their first steps at
        (`StageConfig.progressive`), each once: their images are cached and measured too."""
        found = [self.stage(name).progressive.size for name in STAGES
                 if any(self.stage(name).progressive.applies(size) for size in sizes)]
        return [size for size in dict.fromkeys(found) if size not in sizes]

    def folds(self, stage: str, val_images: int) -> int:
        """How stage `stage` scores its trials, the one home of that rule: k-fold cross-validation
        over train+val (k = cv_folds) when the stage chooses hyperparameters (CHOOSING_STAGES)
        and the val split has fewer than cv_below images (a choice on 37 val images is noise);
        else on the val split (0)."""
        self.stage(stage)
        return self.cv_folds if stage in CHOOSING_STAGES and val_images < self.cv_below else 0


STAGES = ("stage1", "stage2", "stage3")  # the search stages, in the order a run takes them
CHOOSING_STAGES = ("stage1", "stage2")  # the stages whose winner is a hyperparameter choice (glasses.stages)


def is_loopback(host: str) -> bool:
    """Whether `host` is "localhost" or a loopback address (127.0.0.0/8, ::1); other names are remote."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


class EnsembleConfig(_Section):
    """Which kept models are members, and what ships: the best single model or an ensemble of them."""

    threshold: float = Field(0.89, ge=0, le=1, description="Minimum validation accuracy of a member.")
    fallback: int = Field(3, ge=1, description="Fewest members: if fewer pass, the best this many are taken.")
    method: Literal["auto", "best_single", "average", "greedy", "majority"] = Field(
        "auto", description="What ships: auto, the one `selection` picks on validation (never test); "
        "a named one ships as named, and `selection` then only reports what it would have picked.")
    selection: Literal["val_log_loss", "val_accuracy"] = Field(
        "val_log_loss", description="The one criterion that picks what ships among the best single model "
        "and every ensemble method (auto), on validation only; ties go to the other metric, then to "
        "the simpler (best_single, average, majority, greedy). A majority vote has no log loss.")


class RegistryConfig(_Section):
    """Every run's shipped model, kept in <work>/models; the champion serves (<work>/model)."""

    keep: int = Field(10, ge=1, le=10_000, description="Registry entries kept (the newest, and always the champion).")
    margin: float = Field(0.02, ge=0, le=1, description="A challenger at least as good on val is promoted unless "
                          "its test accuracy is below the champion's by more than this.")


class RetuneConfig(_Section):
    """What a retune run does when the data changed."""

    keep_choices: bool = Field(False, description="Keep the champion's stage 1-2 choices (image size, conv "
                               "layers, optimizer) instead of searching them again on the new data.")


class Config(_Section):
    """Everything a run needs; `preset` names the defaults it started from."""

    preset: PresetName = "quick"
    work_dir: Path = Path("work")
    data: DataConfig = DataConfig()
    search: SearchConfig
    ensemble: EnsembleConfig = EnsembleConfig()
    registry: RegistryConfig = RegistryConfig()
    retune: RetuneConfig = RetuneConfig()


def _stage(sizes: list[int], batch: int, trials: int, steps: int, patience: int, warmup: int = 0,
           **kw: Any) -> dict:
    return dict(image_sizes=sizes, batch_size=batch, max_trials=trials, max_steps=steps,
                patience_steps=patience, min_steps=warmup, **kw)


def _report_epochs(sizes: list[int], batch: int, trials: int, epochs: int, patience: int, **kw: Any) -> dict:
    """A stage of the report, its epochs turned into steps on its 3,599 training images (so that a
    run on the report's data trains exactly the report's epochs), BatchNorm as the report had it."""
    steps_per_epoch = math.ceil(PAPER_TRAIN_IMAGES / batch)
    kw.setdefault("bn_stats_images", 0)
    return _stage(sizes, batch, trials, epochs * steps_per_epoch, patience * steps_per_epoch, **kw)


PAPER_TRAIN_IMAGES = 3599  # the report's training split of its 4,500 images
_LATER = []  # stages 2 and 3 search at stage 1's chosen size (64 in the report)

_STAGE3_FIXED = {"conv_layers": 3, "optimizer": "adam"}

PRESETS: dict[str, dict[str, Any]] = {
    # The report's exact settings (its tables of the three stages and the ensemble rule); for real hardware.
    "paper": {
        "data": {"synth_n": 4500, "synth_resolution": 256},
        "search": {
            "worker_timeout_s": 600,
            "stage1": _report_epochs([64, 128, 256], 16, 5, 50, 5),
            "stage2": _report_epochs(_LATER, 64, 100, 50, 10),
            "stage3": _report_epochs(_LATER, 64, 150, 100, 10, fixed=_STAGE3_FIXED, keep=100, retune_trials=30),
        },
        "ensemble": {"threshold": 0.89, "fallback": 3},
    },
    # The default: the whole pipeline on the built-in data in 3-8 minutes on 2 fast cores. Budgets
    # are in steps, so a dataset of 300 images trains as long as one of 3,000 (more epochs).
    "quick": {
        # 3,020 images: a val split of 301 (each class rounds down; 3,000 gave 299), so stages 1-2
        # score on it; below search.cv_below (300) they would cross-validate, k times the training.
        "data": {"synth_n": 3020, "synth_resolution": 128},
        "search": {
            "worker_timeout_s": 120,
            "chief_timeout_s": 3600,
            "precision": "auto",  # bfloat16 where the CPU has it: 1.17-1.26x, same accuracy (bench/RESULTS.md)
            # 32 and 64 px (the report's smallest), compared in pairs on the report's final network
            # (3 conv layers, adam; filters and pooling drawn): 2-layer draws could not tell 64 from
            # 32 px, and an sgd trial that learned nothing at 64 px tied them. Where 64 px wins,
            # stages 2-3 train at it, ~2x the flow's time, and ship more on held-out images (0.92
            # against 0.86-0.91 built-in; 0.83-0.88 against 0.78-0.80 on 380 small grey photos:
            # bench/RESULTS.md, 2026-12-03, fourth session). Stage 2 (which only chooses) 4 trials
            # of 720 steps, stage 3 6 of 1,080 (2026-11-29: fewer stage-3 trials made weak ensembles).
            # Trials at 64 px train their first 5/6 at 32 px (progressive): about half of 64 px's
            # held-out gain for about 40% of its cost; flows 0.92x 32338cb's on an AVX2 machine
            # (bench/RESULTS.md, fifth session). Not in stage 1 where it cross-validates (small
            # data): there, on 380 small grey photos, it tied 64 with 32 px and shipped 0.79, where
            # every step at full size chose 64 px and shipped 0.81-0.86; on the built-in data (no
            # cross-validation) full size shipped 0.84 in 1.26x the flow (bench/RESULTS.md, sixth
            # and seventh sessions).
            "stage1": _stage([32, 64], 32, 2, 720, 180, warmup=300, fixed=_STAGE3_FIXED,
                             progressive={"size": 32, "steps": 600, "with_cv": False}),
            # No early stopping across trials (search.stageN.early_stop): with 4 and 6 trials on 2
            # workers it saved 8 s of stage 2's 40 and left its choice to the tie-break, the stopped
            # trials being no evidence of spread (bench/RESULTS.md, 2026-12-02).
            # Trained as stage 1's trials are, so those at the chosen size count in stage 2's choice
            # too (glasses.stages.earlier_evidence): 6 trials' evidence for the depth, not 4.
            "stage2": _stage(_LATER, 32, 4, 720, 180, warmup=300, progressive={"size": 32, "steps": 600}),
            "stage3": _stage(_LATER, 32, 6, 1080, 300, warmup=360, keep=5, progressive={"size": 32, "steps": 900}),
        },
        "ensemble": {"threshold": 0.85, "fallback": 3},
    },
    # For tests: tiny images, one short epoch, two trials, no cross-validation.
    "smoke": {
        "data": {"synth_n": 60, "synth_resolution": 32},
        "search": {
            "worker_retries": 1,
            "worker_timeout_s": 60,
            "chief_timeout_s": 600,
            "cv_below": 0,
            "stage1": _stage([16, 24], 8, 2, 6, 6),
            "stage2": _stage(_LATER, 8, 2, 6, 6),
            "stage3": _stage(_LATER, 8, 2, 6, 6, fixed=_STAGE3_FIXED, keep=2, retune_trials=2),
        },
        "ensemble": {"threshold": 0.99, "fallback": 2},
    },
}


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "fixed":
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def build_config(preset: str = "quick", file: Path | None = None, overrides: dict[str, Any] | None = None,
                 settings: dict[str, Any] | None = None) -> Config:
    """Builds a config: a preset, then a YAML/JSON file, then `settings`, then dotted overrides.

    Args:
        preset: One of `PRESETS`; a file's (or the settings') own `preset` key wins over this.
        file: Optional YAML or JSON file with any subset of the config's fields.
        overrides: Dotted keys to values, e.g. `{"search.workers": 1}`; None values are ignored.
        settings: Any subset of the config's fields, nested in its shape (a flow parameter).

    Raises:
        ConfigError: naming the preset, the file or the field at fault.
    """
    if settings is not None and not isinstance(settings, dict):
        raise ConfigError(f"overrides must be a mapping in the config's shape, got {type(settings).__name__}")
    layer = _merge(read_config_file(file) if file else {}, settings or {})
    name = layer.get("preset", preset)
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    tree = _merge(copy.deepcopy({"preset": name, **PRESETS[name]}), layer)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, dotted, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        where = f" (from {file})" if file else ""
        problems = [_describe(problem) for problem in error.errors()]
        listed = f" {problems[0]}" if len(problems) == 1 else "".join(f"\n  {p}" for p in problems)
        raise ConfigError(f"invalid config{where}:{listed}") from error


def _describe(problem: dict) -> str:
    """One pydantic error as one line: `search.workers: Input should be ... (got 1000)`."""
    where = ".".join(str(part) for part in problem["loc"]) or "config"
    message = problem["msg"].removeprefix("Value error, ")
    value = problem.get("input")
    # Our own messages state the value already; a whole section would swamp the line.
    if problem["type"] in ("value_error", "missing") or isinstance(value, dict):
        return f"{where}: {message}"
    shown = repr(value)
    return f"{where}: {message} (got {shown if len(shown) <= 80 else shown[:77] + '...'})"


def read_config_file(path: Path) -> dict[str, Any]:
    """Reads a YAML or JSON mapping, with an error that names the file."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from error
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, got {type(loaded).__name__}")
    return loaded


def fingerprint(section: BaseModel | dict | list, length: int = 10) -> str:
    """A short stable hash of a config piece, used to key stage outputs on disk."""
    data = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:length]


RETUNE_CRON = "0 3 * * 1"  # the deployment's schedule: weekly, Mondays 03:00 UTC


def default_home() -> Path:
    """Where runs keep their state unless told otherwise: $GLASSES_HOME, else ~/.glasses (absolute,
    so that every run of a deployment, started from any folder, shares it)."""
    return Path(os.environ.get("GLASSES_HOME") or "~/.glasses").expanduser().resolve()


def run_name(preset: str, data_dir: str | Path | None, day: date) -> str:
    """A flow run's name: preset, data and day, e.g. `quick-builtin-2026-11-29`."""
    data = Path(data_dir).name if data_dir else "builtin"
    return f"{preset}-{data}-{day.isoformat()}"
