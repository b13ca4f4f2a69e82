"""Shipping tasks: the ensemble built and scored, set against the champion, the disk tidied after
the run; `outcome` gives the run's final state (named "Nothing learned", or "Not clearly
learned", under the alarm).
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.states import Completed, Failed, State

from glasses import notices, registry, report, stages
from glasses import ensemble as ensembles
from glasses.config import Config
from glasses.files import read_json
from glasses.workdir import WorkDir
from tasks import caching, events
from tasks.errors import no_retry


@task(name="ensemble", cache_key_fn=caching.ensemble_key, persist_result=True)
def ensemble(config: Config, spec_paths: list[str], split_dir: str) -> dict:
    """Ensembles of the kept models above the threshold compared, the best on val shipped and scored."""
    work = WorkDir(config.work_dir)
    result = ensembles.ship_ensemble([Path(p) for p in spec_paths], Path(split_dir), work.latest,
                                     config.ensemble, predictions_csv=work.predictions)
    logger, shipped, best = get_run_logger(), result["ensemble"], result["best_single"]
    if shipped["warning"]:
        logger.warning(shipped["warning"])
    logger.info("shipped %s (of %d members, by %s): val %.4f, test %.4f (best single: val %.4f, test %.4f)",
                shipped["method"], shipped["members"], shipped["selection"], shipped["val_accuracy"],
                shipped["test_accuracy"], best["val_accuracy"], best["test_accuracy"])
    if result["alarm"]["raised"]:
        logger.warning(result["alarm"]["message"])
    return result


@task(name="champion", cache_policy=NONE)
def champion(config: Config, shipped: dict, split_dir: str, fingerprint: str, run: dict) -> dict:
    """This run's model registered (as `run["entry"]`, unless the same model is there already)
    and set against the champion on the current val and test images; promoted only if better
    (glasses.registry). `run`: entry, flow_run (its name) and mode."""
    work = WorkDir(config.work_dir)
    name = registry.register(work, work.latest, run["entry"], shipped=shipped["ensemble"],
                             config=config.model_dump(mode="json"), fingerprint=fingerprint,
                             flow_run=run["flow_run"], mode=run["mode"])
    decision = registry.challenge(work, name, Path(split_dir), config.registry.margin)
    get_run_logger().info("challenger %s %s: %s; serving %s", name,
                          "promoted" if decision["promoted"] else "not promoted", decision["reason"],
                          decision["serving"])
    create_markdown_artifact(report.champion_markdown(decision), key="champion",
                             description="this run's model against the champion, and which one serves")
    events.emit(notices.champion_notice(work, decision, fingerprint), work.root)
    return decision


@task(name="tidy", cache_policy=NONE)
def tidy(config: Config, spec_paths: list[str], summary_path: str, decision: dict) -> dict[str, list[str]]:
    """Bounded disk: the summary kept with the run's registry entry, registry entries beyond
    `registry.keep` removed (never the champion), searches no stage of this run uses beyond the
    `search.keep_superseded` newest per stage, and caches none of the kept searches uses."""
    removed = stages.tidy(WorkDir(config.work_dir), decision["challenger"]["run"], Path(summary_path),
                          [Path(p) for p in spec_paths], config.registry.keep, config.search.keep_superseded)
    if any(removed.values()):
        get_run_logger().info("removed what no stage uses any more: %s", removed)
    return removed


NOTHING_LEARNED = "Nothing learned"  # the name of a run's final state when the alarm was raised
NOT_CLEARLY_LEARNED = "Not clearly learned"  # ... when only because its test images are too few to tell


def outcome(summary_path: str, strict: bool = False) -> State | str:
    """The pipeline flow's return value: the summary path, in a Completed state named
    NOTHING_LEARNED when the alarm was raised (NOT_CLEARLY_LEARNED when only because its test images
    are too few to tell), or with `strict` a Failed one (not retried: the
    retry would only meet the same models).

    Not a task: a task returning a State would take that state itself, not the flow.
    """
    summary = read_json(summary_path)
    alarm = summary["alarm"]
    if not alarm["raised"]:
        return summary_path
    events.emit(notices.alarm_notice(summary), Path(summary_path).parent)
    message = f"{alarm['message']} (summary: {summary_path})"
    get_run_logger().warning(message)
    name = NOT_CLEARLY_LEARNED if alarm.get("too_few") else NOTHING_LEARNED
    if not strict:
        return Completed(message=message, name=name, data=summary_path)
    no_retry()
    return Failed(message=message, name=name)


