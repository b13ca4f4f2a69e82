"""Analysis tasks: the figures, where the shipped model looks, the latent baseline, and the
run's summary and report.

The summary task puts the run on the Prefect UI's pages: the report with its figures, the
ensembles compared, the test metrics, the alarm when nothing was learned, and a link to the
model file.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from glasses import dataset, figures, latent, report, saliency
from glasses.config import Config
from glasses.files import read_json
from glasses.workdir import WorkDir
from tasks import caching
from tasks.errors import transient


@task(name="figures", cache_key_fn=caching.figures_key, persist_result=True, retries=1,
      retry_condition_fn=transient)
def draw_figures(config: Config, shipped: dict, stage_summaries: list[dict]) -> dict[str, str]:
    """Augmentation samples, misclassified test images, confusion matrix, stage plots (PNG)."""
    work = WorkDir(config.work_dir)
    return figures.render_figures(work.figures, work.predictions, shipped, stage_summaries, seed=config.search.seed)


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
def summary(config: Config, organized: dict, split: dict, stage_summaries: list[dict], shipped: dict, drawn: dict,
            baseline: dict, durations: dict, plan: dict | None = None, decision: dict | None = None,
            windows: dict | None = None, explained: dict | None = None) -> str:
    """Writes summary.json and report.md, and publishes them as artifacts."""
    work = WorkDir(config.work_dir)
    path = report.write_summary(config, dataset=organized, split=split, stages=stage_summaries, shipped=shipped,
                                figures=drawn, latent=baseline, durations=durations, plan=plan, decision=decision,
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
