"""Data tasks: the built-in dataset, organise, split, cache."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import get_run_logger, task

from glasses import dataset, pipeline, synth
from glasses.config import Config
from glasses.workdir import WorkDir


@task(name="synthesize", retries=1)
def synthesize_data(config: Config) -> str:
    """Writes the built-in dataset into the work dir (once) and returns its path."""
    out = WorkDir(config.work_dir).synth
    result = synth.synthesize(out, n=config.data.synth_n, resolution=config.data.synth_resolution,
                              seed=config.data.seed)
    get_run_logger().info("built-in dataset: %d labelled images at %dpx in %s",
                          result.train, config.data.synth_resolution, out)
    return str(out)


@task(name="organize")
def organize(data_dir: str, out_dir: str) -> dict:
    """Validates the source and places labelled images into class folders."""
    result = dataset.organize(Path(data_dir), Path(out_dir))
    get_run_logger().info("%d labelled: %d glasses, %d no glasses (%.2f glasses per no-glasses)",
                          result.labelled, result.glasses, result.no_glasses, result.ratio)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}


@task(name="split")
def split(organized_dir: str, out_dir: str, fractions: tuple[float, float, float], seed: int) -> dict:
    """Seeded stratified train/val/test folders."""
    result = dataset.split(Path(organized_dir), Path(out_dir), fractions, seed)
    get_run_logger().info("split: %d train, %d val, %d test", result.train, result.val, result.test)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}


@task(name="cache", task_run_name="cache-{size}px", retries=1)
def cache(split_dir: str, cache_root: str, size: int) -> str:
    """Decodes, resizes and rescales the split once for an image size; returns the cache dir."""
    return str(pipeline.build_cache(Path(split_dir), Path(cache_root), size))
