"""Data tasks: the source (the user's or the built-in dataset), organise, split, cache."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import get_run_logger, task

from glasses import dataset, inputs, synth
from glasses.config import Config
from glasses.workdir import WorkDir


@task(name="source", retries=1)
def source(config: Config) -> str:
    """The dataset to read: the config's data dir, or the built-in one written into the work dir."""
    path = synth.source_dir(config.data, WorkDir(config.work_dir).synth)
    get_run_logger().info("dataset: %s", path)
    return str(path)


@task(name="organize")
def organize(config: Config, data_dir: str) -> dict:
    """Validates the source and places labelled images into class folders."""
    result = dataset.organize(Path(data_dir), WorkDir(config.work_dir).organized)
    get_run_logger().info("%d labelled: %d glasses, %d no glasses (%.2f glasses per no-glasses)",
                          result.labelled, result.glasses, result.no_glasses, result.ratio)
    return _plain(asdict(result))


@task(name="split")
def split(config: Config, organized_dir: str) -> dict:
    """Seeded stratified train/val/test folders."""
    result = dataset.split(Path(organized_dir), WorkDir(config.work_dir).split, config.data.fractions,
                           config.data.seed)
    get_run_logger().info("split: %d train, %d val, %d test", result.train, result.val, result.test)
    return _plain(asdict(result))


@task(name="cache", task_run_name="cache-{size}px", retries=1)
def cache(config: Config, split_dir: str, size: int) -> str:
    """Decodes, resizes and rescales the split once for an image size; returns the cache dir."""
    return str(inputs.build_cache(Path(split_dir), WorkDir(config.work_dir).cache, size))


def _plain(result: dict) -> dict:
    """A task result Prefect can store and show: paths as strings."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in result.items()}
