"""Data tasks: the config, the source (the user's or the built-in dataset), its fingerprint,
organise, split, cache. Each data task is Cached while its output is current (tasks/caching.py)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.runtime import task_run

from glasses import dataset, inputs, preflight, synth
from glasses.config import Config, build_config, default_home
from glasses.workdir import WorkDir
from tasks import caching
from tasks.errors import transient


@task(name="configure", cache_policy=NONE)
def configure(preset: str, data_dir: str | None, work_dir: str | None, overrides: dict[str, Any] | None) -> Config:
    """The run's config: the preset, the overrides (in the config's shape), the data dir and the
    work dir (default $GLASSES_HOME or ~/.glasses); a bad value fails here with its message."""
    config = build_config(preset, settings=overrides, overrides={
        "data.data_dir": data_dir, "work_dir": str(Path(work_dir or default_home()).expanduser().resolve())})
    get_run_logger().info("%s run in %s on %s", config.preset, config.work_dir,
                          config.data.data_dir or "the built-in dataset")
    return config


def check(config: Config) -> None:
    """What would fail however often the run is retried (the work dir, the dataset), checked
    before any task runs (glasses.preflight). Not a task: its error ends the flow in one line."""
    found = preflight.check_run(config)
    if found is not None:
        get_run_logger().info("dataset checked: %s", ", ".join(f"{n} {name}" for name, n in found.per_class.items()))


@task(name="source", cache_key_fn=caching.source_key, persist_result=True, retries=1,
      retry_condition_fn=transient)
def source(config: Config) -> str:
    """The dataset to read: the config's data dir, or the built-in one written into the work dir."""
    path = synth.source_dir(config.data, WorkDir(config.work_dir).synth)
    get_run_logger().info("dataset: %s", path)
    return str(path)


@task(name="fingerprint", cache_policy=NONE)
def fingerprint(data_dir: str) -> str:
    """A hash of train.csv and every image (size, mtime, inode): what the data stage is keyed on."""
    return dataset.fingerprint(Path(data_dir))


@task(name="organize", cache_key_fn=caching.organize_key, persist_result=True)
def organize(config: Config, data_dir: str, fingerprint: str) -> dict:
    """Validates the source and places labelled images into class folders."""
    result = dataset.organize(Path(data_dir), WorkDir(config.work_dir).organized)
    get_run_logger().info("%d labelled: %d glasses, %d no glasses (%.2f glasses per no-glasses)",
                          result.labelled, result.glasses, result.no_glasses, result.ratio)
    return _plain(asdict(result))


@task(name="split", cache_key_fn=caching.split_key, persist_result=True)
def split(config: Config, organized_dir: str, fingerprint: str) -> dict:
    """Seeded stratified train/val/test folders."""
    result = dataset.split(Path(organized_dir), WorkDir(config.work_dir).split, config.data.fractions,
                           config.data.seed)
    get_run_logger().info("split: %d train, %d val, %d test", result.train, result.val, result.test)
    return _plain(asdict(result))


def _cache_run_name() -> str:
    return "cache-" + "-".join(str(size) for size in task_run.parameters["sizes"]) + "px"


@task(name="cache", task_run_name=_cache_run_name, cache_key_fn=caching.cache_key, persist_result=True,
      retries=1, retry_condition_fn=transient)
def cache(config: Config, split_dir: str, fingerprint: str, sizes: list[int]) -> dict[int, str]:
    """Decodes the split once and caches it at every size; returns each size's cache dir."""
    built = inputs.build_caches(Path(split_dir), WorkDir(config.work_dir).cache, sizes)
    return {size: str(path) for size, path in built.items()}


def _plain(result: dict) -> dict:
    """A task result Prefect can store and show: paths as strings."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in result.items()}
