"""`glasses serve`: the pipeline as a deployment served from this process, on a schedule, one
run at a time; runs started from the UI or the API run here, each in its own process, which ends
with this one and when cancelled (deployments/guard.py)."""

from __future__ import annotations

import os
from typing import Any

from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

from deployments import notify as notifications
from deployments.guard import guard_run
from flows.pipeline import pipeline
from glasses.watchdog import SERVE_PID


def ui_url() -> str | None:
    """The UI of the Prefect server this process talks to, if any."""
    return PREFECT_UI_URL.value() or (PREFECT_API_URL.value() or "").removesuffix("/api") or None


def serve(name: str, cron: str, parameters: dict[str, Any], tags: list[str], notify: str | None = None) -> None:
    """Registers the deployment `glasses-pipeline/<name>` with its schedule and serves its runs;
    with `notify` (a URL or a saved notification block), its automations notify it first."""
    print(f"serving deployment glasses-pipeline/{name} (cron '{cron}' UTC, one run at a time) with "
          f"{parameters}; UI: {ui_url() or 'set PREFECT_API_URL to a server'}/deployments", flush=True)
    if notify:
        notify_on(name, cron, parameters, tags, notify)
    else:
        print(notifications.hint(name), flush=True)
    os.environ[SERVE_PID] = str(os.getpid())  # what each run's guard watches (its runs inherit it)
    pipeline.with_options(on_running=[guard_run]).serve(
        name=name, cron=cron, parameters=parameters, tags=tags, limit=1, global_limit=1,
        print_starting_message=False)


def notify_on(name: str, cron: str, parameters: dict[str, Any], tags: list[str], target: str) -> dict:
    """Registers the deployment now, as `serve` will (the automations match its id), and creates
    or updates its automations (deployments/notify.py); returns their ids by kind."""
    deployment_id = pipeline.to_deployment(name=name, cron=cron, parameters=parameters, tags=tags,
                                           concurrency_limit=1).apply()
    ids = notifications.configure(name, target, deployment_id)
    sent_to = target if "://" not in target else f"custom-webhook/{notifications.block_name(name)}"
    for kind, automation_id in ids.items():
        print(f"automation {notifications.automation_names(name)[kind]!r} ({automation_id}) notifies {sent_to}",
              flush=True)
    return ids
