"""Errors that recur (a bad dataset, config or work dir, a full disk: RECURRING) end a run once,
with one clear line: never retried (not the task, not the flow). Every error of glasses' own
types is logged without a traceback: its message says it all. Anything else (a crash, a failed
search, a lost worker) keeps Prefect's retries: a retry resumes the run."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.states import Failed, State

from glasses.errors import ConfigError, DatasetError, GlassesError, OutputError

RECURRING = (ConfigError, DatasetError, OutputError)  # the same inputs fail the same way on a retry

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class _NoTracebackForOurErrors(logging.Filter):
    """Drops the traceback of a record about a GlassesError: its message says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], GlassesError):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_our_errors() -> None:
    """Installs the filter on Prefect's run loggers (once per process)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTracebackForOurErrors) for f in logger.filters):
            logger.addFilter(_NoTracebackForOurErrors())


def transient(task, task_run, state: State) -> bool:
    """A task's `retry_condition_fn`: retry unless it failed with an error that would recur."""
    return not isinstance(state.data, RECURRING)


def fail_once_on_our_errors(flow_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps a flow function (under `@flow`): a RECURRING error ends the flow run Failed with the
    error's message as one log line, and the run's retries are set to 0 (it would fail the same)."""

    @functools.wraps(flow_fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        quiet_our_errors()
        try:
            return flow_fn(*args, **kwargs)
        except RECURRING as error:
            if FlowRunContext.get() is None:  # called as a plain function (`pipeline.fn`): raise as one
                raise
            get_run_logger().error("error: %s", error)
            no_retry()
            return Failed(message=f"{type(error).__name__}: {error}", data=error)

    return run


def no_retry() -> None:
    """Sets this flow run's retries to 0 (the server retries a Failed run while retries remain)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    run = context.flow_run
    policy = run.empirical_policy.model_copy(update={"retries": 0})
    with get_client(sync_client=True) as client:
        client.update_flow_run(run.id, empirical_policy=policy)
