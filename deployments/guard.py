"""A served run ends with its `glasses serve`, and ends when cancelled, serve alive or not.

Prefect's runner starts each run of `glasses serve` as a child process of the serve process.
Nothing ends that child when serve dies (SIGKILL, out of memory): it went on unsupervised, its
tuner processes and the work dir's lock with it; and a Cancel is carried out by the runner alone,
so with serve gone the run stayed Cancelling. So each served run supervises itself from its start
(`guard_run`, an on_running hook; the process part is glasses.watchdog.supervise):

- serve gone: its processes end, then the run is reported Orphaned (a Cancelled state: the
  run was stopped on purpose, as its serve can no longer supervise it), saying why, and its process
  exits (which frees the lock): within seconds, however serve ended (SIGKILL, SIGTERM, Ctrl-C);
- cancelled (the UI's Cancel sets Cancelling; asked every few seconds): its processes end, the
  run is reported Cancelled and its process exits, whether or not serve is alive.

Why a Cancelled state and not Crashed: a Cancel (the UI's, or `prefect flow-run cancel`) that
comes after the run was reported is refused by Prefect ("already in terminal state"), so with
Crashed, a user who cancelled a run of a dead serve saw Crashed; with Orphaned the run reads
Cancelled either way. Its own name sends its own event (`prefect.flow-run.Orphaned`), which the
notifications (deployments/notify.py) count as a run that ended badly, unlike a user's Cancel; and
Retry resumes it as it does a Crashed run.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from functools import partial
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import LogCreate
from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId,
                                            FlowRunFilterState, FlowRunFilterStateType, TaskRunFilter,
                                            TaskRunFilterState, TaskRunFilterStateType)
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelled, State

from glasses.watchdog import SERVE_PID, supervise

# A client of its own, not the engine's (which the hook's context holds and closes when the flow
# ends), and one that gives up in seconds: the guard must end the run even with no server.
CLIENT = {"timeout": 5.0}
OPEN = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]
STOPPED = "its tuner processes were ended and the work dir freed"
ORPHANED = "Orphaned"  # the state's name, and so its event's: prefect.flow-run.Orphaned


def guard_run(flow: Any, flow_run: Any, state: State) -> None:
    """on_running hook of the served pipeline: supervises this run's process (once per process;
    a retry of the run in the same process keeps the same guard). Outside `glasses serve`, nothing."""
    serve_pid = os.environ.get(SERVE_PID)
    if serve_pid:
        supervise(int(serve_pid), partial(cancelling, flow_run.id), partial(report_end, flow_run.id, int(serve_pid)))


def cancelling(run_id: UUID) -> bool:
    """Whether the run was cancelled: the UI's Cancel and `prefect flow-run cancel` set Cancelling
    (or Cancelled at once, while the run waits for its retry, a Scheduled state)."""
    with get_client(sync_client=True, httpx_settings=CLIENT) as client:
        state = client.read_flow_run(run_id).state
    return bool(state and (state.is_cancelling() or state.is_cancelled()))


def report_end(run_id: UUID, serve_pid: int, serve_gone: bool) -> None:
    """Records how the run ended, on it, its subflow runs and their open task runs: Cancelled if
    it was cancelled, else Orphaned because its serve is gone. A run already Completed, Failed or
    Cancelled keeps its state; a Crashed one (Prefect's own report of the signal) gets the why."""
    with get_client(sync_client=True, httpx_settings=CLIENT) as client:
        state = client.read_flow_run(run_id).state
        if state is not None and state.is_final() and not state.is_crashed():
            return
        cancelled = not serve_gone or bool(state and state.is_cancelling())
        final = end_state(serve_pid, serve_gone, cancelled=cancelled)
        runs = [run_id, *open_subflow_runs(client, run_id)]
        for run in runs:
            client.set_flow_run_state(run, final.model_copy(), force=True)
        # The why in the run's logs too (the UI's first tab), not only in its state's message.
        client.create_logs([LogCreate(name="glasses.guard", level=logging.WARNING if cancelled else logging.ERROR,
                                      message=f"{final.name}: {final.message}", timestamp=datetime.now(timezone.utc),
                                      flow_run_id=run_id)])
        open_tasks = TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=OPEN)))
        for task in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=runs)),
                                          task_run_filter=open_tasks):
            client.set_task_run_state(task.id, final.model_copy(), force=True)


def end_state(serve_pid: int, serve_gone: bool, cancelled: bool) -> State:
    """The final state of a served run that was stopped, and why."""
    serve = f"its `glasses serve` (pid {serve_pid})"
    if cancelled:
        return Cancelled(message=f"Cancelled: {STOPPED}" + (f"; {serve} had ended" if serve_gone else ""))
    return Cancelled(name=ORPHANED,
                     message=f"{serve} ended (stopped, killed or out of memory), so the run was stopped: {STOPPED}. "
                             "Start `glasses serve` again and retry the run to resume it.")


def open_subflow_runs(client: Any, run_id: UUID) -> list[UUID]:
    """The run's subflow runs (its stages) not yet in a final state."""
    found = client.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=OPEN))))
    return [run.id for run in found]
