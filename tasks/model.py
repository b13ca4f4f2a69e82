"""Model tasks: ship the ensemble, write the summary."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from glasses import evaluate, report
from glasses.config import Config
from glasses.workdir import WorkDir


@task(name="ensemble", cache_policy=NONE)
def ensemble(config: Config, spec_paths: list[str], cache_dir: str, split_dir: str) -> dict:
    """Average ensemble of the kept models above the threshold, saved and scored."""
    result = evaluate.ship_ensemble([Path(p) for p in spec_paths], Path(cache_dir), Path(split_dir),
                                    WorkDir(config.work_dir).model, config.ensemble)
    logger = get_run_logger()
    if result["ensemble"]["warning"]:
        logger.warning(result["ensemble"]["warning"])
    logger.info("ensemble of %d: val %.4f, test %.4f", result["ensemble"]["members"],
                result["ensemble"]["val_accuracy"], result["ensemble"]["test_accuracy"])
    return result


@task(name="summary", cache_policy=NONE)
def summary(config: Config, parts: dict) -> str:
    """Writes summary.json and publishes it as a markdown artifact; returns its path."""
    path = report.write_summary(config, parts)
    create_markdown_artifact(report.summary_markdown(path), key="glasses-summary",
                             description="glasses run summary")
    return str(path)
