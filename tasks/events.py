"""Prefect events for what a person acts on (glasses.notices): a champion promoted, a challenger
kept out, nothing learned, nothing changed, a search stage failed. Each names the pipeline's
flow run (first, so that an automation's `flow_run` is that run), its deployment, the work dir
and the models as related resources; the numbers are in the payload. They show in the UI's event
feed, and deployments/notify.py's automations turn some into notifications.

Also: a run's tags follow its own parameters (`tag_run`).
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext, TaskRunContext
from prefect.events import emit_event
from prefect.runtime import flow_run

from glasses import notices
from glasses.notices import Notice


def emit(notice: Notice | None, work_root: Path | None) -> None:
    """Sends `notice` as an event about its model (or its stage), with the run's resources;
    nothing for None (nothing to tell). Never raises: an event lost must not fail the run."""
    if notice is None:
        return
    try:
        related = _run_resources() + _glasses_resources(notice, work_root)
    except Exception as error:  # the API unreachable: the run goes on, the event is lost (said so)
        get_run_logger().warning("could not send event %s: %s", notice.event, error)
        return
    if notice.model:
        resource = {"prefect.resource.id": f"{notices.PREFIX}.model.{notice.model}",
                    "prefect.resource.name": notice.model}
    else:
        stage = notice.payload.get("stage", "run")
        resource = {"prefect.resource.id": f"{notices.PREFIX}.stage.{stage}", "prefect.resource.name": stage}
    emit_event(notice.event, resource=resource, related=related, payload=notice.payload)


def _glasses_resources(notice: Notice, work_root: Path | None) -> list[dict[str, str]]:
    """The work dir and the model the notice's model displaced or was kept out by."""
    related = []
    if work_root is not None:
        related.append({"prefect.resource.id": notices.work_dir_id(work_root), "prefect.resource.role": "work-dir",
                        "prefect.resource.name": str(Path(work_root).resolve())})
    if notice.previous:
        related.append({"prefect.resource.id": f"{notices.PREFIX}.model.{notice.previous}",
                        "prefect.resource.role": "champion", "prefect.resource.name": notice.previous})
    return related


def _run_resources() -> list[dict[str, str]]:
    """The pipeline's flow run (the root of this one: the stages run as a subflow) and, when it
    came from one, its deployment."""
    root = flow_run.get_root_flow_run_id()
    if not root:
        return []
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(root)
        deployment = client.read_deployment(run.deployment_id) if run.deployment_id else None
    related = [{"prefect.resource.id": f"prefect.flow-run.{run.id}", "prefect.resource.role": "flow-run",
                "prefect.resource.name": run.name}]
    if deployment is not None:
        related.append({"prefect.resource.id": f"prefect.deployment.{deployment.id}",
                        "prefect.resource.role": "deployment", "prefect.resource.name": deployment.name})
    return related


def stage_failed(task, task_run, state) -> None:
    """An `on_failure` hook of a stage's tasks (its chief, its finish): emits which stage failed
    and why. Never raises: a failed notice must not hide the failure itself."""
    try:
        context = TaskRunContext.get()
        root = _work_root(context.parameters if context else {})
    except Exception as error:  # the hook's own trouble is logged, never raised
        get_run_logger().warning("could not tell the work dir of %s: %s", task_run.name, error)
        root = None
    emit(notices.stage_failure_notice(task_run.name, state.message or str(state.name), root), root)


def _work_root(parameters: dict) -> Path | None:
    """The work dir of a stage task's run: its config's, or its search spec's
    (`<work>/stages/<stage>/kt-<key>/size<px>.json`)."""
    if parameters.get("config") is not None:
        return Path(parameters["config"].work_dir)
    spec = parameters.get("spec_path")
    return Path(spec).parents[3] if spec else None


def tag_run(*tags: str) -> None:
    """Adds `tags` (the run's own preset and mode) to this flow run's tags: a run started from a
    deployment otherwise carries only the deployment's tags, whatever its parameters."""
    context = FlowRunContext.get()
    if context is None or not context.flow_run:
        return
    wanted = sorted(set(context.flow_run.tags) | {t for t in tags if t})
    if wanted != sorted(context.flow_run.tags):
        with get_client(sync_client=True) as client:
            client.update_flow_run(context.flow_run.id, tags=wanted)
        context.flow_run.tags = wanted
