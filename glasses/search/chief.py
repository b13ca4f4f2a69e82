"""The chief process: serves the oracle until every trial has ended, no worker is left, or
its timeout; the oracle's state is on disk, so a re-run continues the search."""

from __future__ import annotations

import os
import time

from glasses.search.early_stop import MedianStop
from glasses.search.keras_tuner_private import (LivenessServicer, settle_ended_trials, settle_stopped_trials,
                                                start_server)
from glasses.search.records import (ENDED, EXIT_INCOMPLETE, EXIT_PORT_IN_USE, LAST_ROUND, RELEASE_ENV,
                                    dial_address, last_error_line, publish_chief, released)
from glasses.search.spec import SearchSpec
from glasses.search.tuner import build_tuner, node, set_role


def serve(spec: SearchSpec) -> int:
    """Serves the search's oracle on spec.bind (port spec.port, or a free one when 0) until it
    ends; publishes the address and the port workers dial once it listens.

    Returns 0 when every trial has ended, EXIT_PORT_IN_USE when it cannot bind its port, and
    EXIT_INCOMPLETE otherwise (timeout, no worker left), after saying why on stdout.
    """
    set_role("chief", spec.bind, spec.port)
    tuner = build_tuner(spec)
    tuner.save()
    oracle = tuner.oracle
    for trial_id in settle_ended_trials(oracle):
        print(f"chief: trial {trial_id} had ended before the last chief stopped: not run again", flush=True)
    stopper = MedianStop(spec.project_dir, spec.stage.early_stop, spec.stage.min_steps)
    for trial_id in settle_stopped_trials(oracle, stopper):
        print(f"chief: trial {trial_id} had been stopped early before the last chief stopped: ended there", flush=True)
    servicer, server, port = start_server(oracle, spec.bind, spec.port, spec.worker_timeout_s, stopper,
                                          hold_idle=not spec.followed)
    if server is None:
        print(f"chief: cannot bind {spec.bind}:{spec.port}: the port is in use", flush=True)
        return EXIT_PORT_IN_USE
    servicer.on_all_handed_out = lambda: print(f"{LAST_ROUND} ({oracle.max_trials}): the last round", flush=True)
    address = dial_address(spec)
    publish_chief(spec, address, port, node())
    print(f"chief: oracle serving at {address}:{port} (bound to {spec.bind}), "
          f"{_ended(oracle)}/{oracle.max_trials} trials ended", flush=True)
    reason = _wait(servicer, spec)
    server.stop(grace=2).wait()
    with servicer.lock:
        oracle.save()
    ended = _ended(oracle)
    print(f"chief: {reason}; {ended}/{oracle.max_trials} trials ended", flush=True)
    injected = reason.startswith("fault injected")
    return 0 if ended >= oracle.max_trials and not injected else EXIT_INCOMPLETE


FAULT_ENV = "GLASSES_FAULT"  # for tests and demos only: GLASSES_FAULT=stage3 fails stage 3's chief


def _fault(servicer: LivenessServicer, spec: SearchSpec, ended_at_start: int) -> str | None:
    """Why this chief must fail now: $GLASSES_FAULT names its stage (`stages/<stage>/kt-...`) and
    a trial has ended since it started. A real failure mid-search, to show that a retry resumes."""
    if os.environ.get(FAULT_ENV) != spec.directory.parent.name:
        return None
    with servicer.lock:
        if _ended(servicer.oracle) > ended_at_start:
            return f"fault injected by {FAULT_ENV}={spec.directory.parent.name} (for tests)"
    return None


def _wait(servicer: LivenessServicer, spec: SearchSpec) -> str:
    """Watches the search until it ends; returns why it did."""
    deadline = time.monotonic() + spec.chief_timeout_s
    ended_at_start = _ended(servicer.oracle)
    while True:
        time.sleep(0.5)
        for dropped in servicer.drop_silent():
            print(f"chief: worker {dropped}: silent for over {spec.worker_timeout_s:.0f}s", flush=True)
        fault = _fault(servicer, spec, ended_at_start)
        if fault:
            return fault
        if servicer.fatal:
            return _failures_in_a_row(servicer, spec)
        if _finished(servicer):
            return "complete"
        if _nobody_left(servicer, spec):
            if released(spec, os.environ.get(RELEASE_ENV)):
                return "every worker started for it has ended" + ("" if servicer.last_seen else ", none came")
            return "no worker left" if servicer.last_seen else f"no worker came within {spec.await_workers_s:.0f}s"
        if time.monotonic() > deadline:
            return f"timeout after {spec.chief_timeout_s:.0f}s"


def _failures_in_a_row(servicer: LivenessServicer, spec: SearchSpec) -> str:
    """The trials that failed in a row, each with the last line of its error."""
    oracle = servicer.oracle
    with servicer.lock:
        failed = [t for t in oracle.end_order if oracle.trials[t].status == "FAILED"]
        last = failed[-oracle.max_consecutive_failed_trials:]
        lines = [f"trial {t}: {last_error_line(spec, t) or oracle.trials[t].message or 'no error recorded'}"
                 for t in last]
    return f"{len(last)} trials failed in a row ({'; '.join(lines)}); fix the cause, then re-run"


def _ended(oracle) -> int:
    return sum(1 for t in oracle.trials.values() if t.status in ENDED)


def _finished(servicer: LivenessServicer) -> bool:
    oracle = servicer.oracle
    with servicer.lock:
        # Every worker we know of has been told to stop (or was given up on): none still asks.
        return _ended(oracle) >= oracle.max_trials and not oracle.ongoing_trials and not oracle.tuner_ids


def _nobody_left(servicer: LivenessServicer, spec: SearchSpec) -> bool:
    """No worker is in the search, and none will come: every worker started for it has ended
    (`released`: its workers may queue behind another search's), or none has asked for
    `worker_timeout_s` (`await_workers_s` while none has come yet)."""
    with servicer.lock:
        if servicer.oracle.tuner_ids or servicer.oracle.ongoing_trials:
            return False
        grace_s = spec.worker_timeout_s if servicer.last_seen else spec.await_workers_s
    return released(spec, os.environ.get(RELEASE_ENV)) or time.monotonic() - servicer.started > grace_s
