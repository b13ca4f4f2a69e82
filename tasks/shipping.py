"""Model tasks: ship the ensemble, draw the figures, the latent baseline, the summary and report.

The summary task puts the run on the Prefect UI's pages: the report with its figures, the
ensembles compared, the test metrics, the alarm when nothing was learned, and a link to the
model file; `outcome` gives the run's final state (named "Nothing learned", or "Not clearly
learned", under the alarm).
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.states import Completed, Failed, State

from glasses import dataset, figures, latent, saliency, notices, registry, report, stages
from glasses import ensemble as ensembles
from glasses.config import Config
from glasses.files import read_json
from glasses.workdir import WorkDir
from tasks import caching, events
from tasks.errors import no_retry, transient


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


@task(name="figures", cache_key_fn=caching.figures_key, persist_result=True, retries=1,
      retry_condition_fn=transient)
def draw_figures(config: Config, shipped: dict, stages: list[dict]) -> dict[str, str]:
    """Augmentation samples, misclassified test images, confusion matrix, stage plots (PNG)."""
    work = WorkDir(config.work_dir)
    return figures.render_figures(work.figures, work.predictions, shipped, stages, seed=config.search.seed)


@task(name="saliency", cache_key_fn=caching.saliency_key, persist_result=True, retries=1)
def explain_model(config: Config, shipped: dict, data_dir: str) -> dict:
    """Where the shipped model looks: the saliency gallery of the test images and, where the data
    has the glasses' boxes (boxes.csv), the share of its maps on them, per member and in all."""
    work = WorkDir(config.work_dir)
    result = saliency.analyse(Path(shipped["ensemble"]["path"]), work.predictions, Path(data_dir), work.saliency)
    glasses, logger = result["glasses"], get_run_logger()
    if glasses["available"] and glasses["model"]["ratio"] is not None:
        logger.info("saliency on the glasses: %.4f of the mass inside their boxes, %.2fx the %.4f they cover "
                    "(%d test images)", glasses["model"]["share"], glasses["model"]["ratio"],
                    glasses["model"]["uniform_share"], glasses["images"])
    else:
        logger.info("saliency: %s", glasses.get("reason") or "every map empty")
    return result


@task(name="latent-baseline", cache_key_fn=caching.latent_key, persist_result=True)
def latent_baseline(config: Config, data_dir: str, fingerprint: str, split_dir: str) -> dict:
    """The report's Dense 128-16-1 on the 512-d latents, split as the images were; skipped with
    one line without them."""
    result = latent.latent_baseline(dataset.find_layout(Path(data_dir)).csv, fractions=config.data.fractions,
                                    seed=config.data.seed, split_dir=Path(split_dir))
    logger = get_run_logger()
    if result.skipped:
        logger.info(result.reason)
    else:
        logger.info("latent baseline: test accuracy %.4f", result.test_accuracy)
    return result.to_dict()


@task(name="summary", cache_policy=NONE)
def summary(config: Config, dataset: dict, split: dict, stages: list[dict], shipped: dict, drawn: dict,
            latent: dict, durations: dict, plan: dict | None = None, decision: dict | None = None,
            windows: dict | None = None, explained: dict | None = None) -> str:
    """Writes summary.json and report.md, and publishes them as artifacts."""
    work = WorkDir(config.work_dir)
    path = report.write_summary(config, dataset=dataset, split=split, stages=stages, shipped=shipped,
                                figures=drawn, latent=latent, durations=durations, plan=plan, decision=decision,
                                windows=windows, saliency=explained)
    report.write_report(config)
    _publish(read_json(path), work)
    return str(path)


def _publish(run: dict, work: WorkDir) -> None:
    """The run's artifacts, under stable keys (each run adds a version)."""
    create_markdown_artifact(report.summary_markdown(work.summary), key="glasses-summary",
                             description="glasses run summary")
    create_markdown_artifact(report.embed_figures(work.report.read_text(), work.root), key="glasses-report",
                             description="the run's report, figures included")
    create_table_artifact(report.ensembles_rows(run), key="ensembles",
                          description="best single model and each ensemble: val and test accuracy")
    create_table_artifact(report.metrics_rows(run), key="test-metrics",
                          description="the shipped model on the test images")
    if run.get("plan"):
        create_table_artifact(report.planned_vs_actual(run), key="time-budget",
                              description="a time-budgeted run: seconds planned and taken per step")
    create_link_artifact(work.model.resolve().as_uri(), link_text=str(work.model.resolve()), key="model",
                         description="the champion, the model serving: keras.models.load_model(path)")
    if run.get("saliency"):
        create_markdown_artifact(report.embed_figures(report.saliency_markdown(run), work.root), key="saliency",
                                 description="where the model looks: saliency maps of the test images")
    create_markdown_artifact(report.alarm_markdown(run), key="glasses-alarm",
                             description="did the shipped model beat always answering the majority class?")


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


