"""Every use of keras-tuner's private API, in one place. Checked against keras-tuner 1.4.8
(`pyproject.toml` pins >=1.4.8,<1.5: re-check this module before widening that pin).

Why we need it: keras-tuner's gRPC chief has no notion of a worker that dies. Its servicer
(`keras_tuner.src.distribute.oracle_chief.OracleServicer`) hands a trial to a worker and waits
for it forever, and its client (`keras_tuner.src.distribute.oracle_client`) waits an hour for an
answer. So the chief here subclasses the servicer to note when each worker was last heard from
and to put the trial of a silent worker back on the oracle's private retry queue
(`Oracle._retry_queue`), answers an idle worker with an IDLE trial (`keras_tuner.src.engine.
trial.Trial`) so that it stays to take such a trial over, and builds its responses with the
generated protos (`keras_tuner.src.protos`). Workers shorten the client's module-level
`TIMEOUT`. Both roles replace `keras_tuner.src.utils.save_json` (which writes `oracle.json` and
each `trial.json` in place: a process killed mid-write leaves a truncated file the next run
cannot read) with an atomic write. For early stopping across trials (`glasses.search.early_stop`),
the servicer answers a worker's mid-trial evaluation (an UpdateTrial whose metrics carry the
`glasses_progress/` names) with the trial's status, STOPPED when the rule stops it, without
scoring it, and ends a stopped trial whose worker or chief died before ending it (off the retry
queue, and through Keras Tuner's display, `Oracle._display`). Nothing outside this module imports
`keras_tuner.src` or touches `_retry_queue`.

Imported only inside the role processes (it imports keras-tuner's generated protos).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from concurrent import futures
from datetime import datetime

import grpc
from keras_tuner.src.distribute import oracle_chief, oracle_client
from keras_tuner.src.engine import trial as trial_module
from keras_tuner.src.protos import get_service, get_service_grpc

from glasses.search.early_stop import Evaluation, MedianStop
from glasses.search.records import ENDED


def make_json_writes_atomic() -> None:
    """Keras Tuner's state files (oracle.json, trial.json, tuner0.json) written to a temporary
    name and renamed, so a kill mid-write never leaves half a file."""
    import json

    from keras_tuner.src import utils

    from glasses.files import write_text

    def save_json(path, obj):
        text = json.dumps(obj)
        write_text(path, text)
        return text

    utils.save_json = save_json


def settle_ended_trials(oracle) -> list[str]:
    """Takes trials that ended (their trial.json says so) off the retry queue; returns their ids.

    Keras Tuner's `Oracle.end_trial` writes trial.json, then oracle.json. A chief killed between
    the two leaves the trial 'ongoing' in oracle.json, and `Oracle.reload` puts every ongoing
    trial on the retry queue: the next run would train an ended trial again.
    """
    settled = [t for t in oracle._retry_queue if oracle.trials[t].status in ENDED]
    for trial_id in settled:
        oracle._retry_queue.remove(trial_id)
        if trial_id not in oracle.end_order:
            oracle.end_order.append(trial_id)
    if settled:
        oracle.save()
    return settled


def end_stopped(oracle, trial_id: str, stop: dict) -> None:
    """Ends a trial the chief had stopped but no worker ended (the worker or the chief died in
    between): COMPLETED with its scores at the stop, so it is neither run again nor lost. Its
    best checkpoint so far is on disk (Keras Tuner saves each better epoch)."""
    if trial_id in oracle._retry_queue:
        oracle._retry_queue.remove(trial_id)
    oracle.update_trial(trial_id, {"val_accuracy": stop["val_accuracy"], "val_loss": stop["val_loss"]},
                        step=stop["epoch"])
    trial = oracle.trials[trial_id]
    trial.status = trial_module.TrialStatus.COMPLETED
    # Keras Tuner's display numbers and times a trial from its start in this process; this one
    # began before it (it keeps both in oracle.json only since its last save).
    display = oracle._display
    display.trial_start.setdefault(trial_id, datetime.now())
    display.trial_number.setdefault(trial_id, len(display.trial_number) + 1)
    oracle.end_trial(trial)


def settle_stopped_trials(oracle, stopper: MedianStop) -> list[str]:
    """Ends the trials waiting on the retry queue that the chief had stopped; returns their ids."""
    settled = [t for t in list(oracle._retry_queue) if stopper.stop_of(t)]
    for trial_id in settled:
        end_stopped(oracle, trial_id, stopper.stop_of(trial_id))
    return settled


def set_client_timeout(seconds: float) -> None:
    """How long a worker's oracle client waits for the chief's answer (keras-tuner: 1 hour)."""
    oracle_client.TIMEOUT = seconds


def is_remote(oracle) -> bool:
    """Whether `oracle` is a worker's client of a chief (keras-tuner's OracleClient has a stub)."""
    return hasattr(oracle, "stub")


def pending_retries(oracle) -> int:
    """Trials waiting to be handed out again."""
    return len(oracle._retry_queue)


DEATHS_BEFORE_FAILED = 2  # a trial whose worker died this often (OOM-killed, say) is FAILED


class LivenessServicer(oracle_chief.OracleServicer):
    """Serialises all calls, notes when each worker was last heard from, and hands the trial of
    a silent worker to the next worker that asks. A trial whose worker died on it twice is
    recorded FAILED instead of handed out again forever; too many failures in a row (Keras
    Tuner's `max_consecutive_failed_trials`) set `fatal`, and the chief ends the search. With
    `hold_idle` False (another search waits for its workers), a worker with no trial left is let go."""

    def __init__(self, oracle, worker_timeout_s: float, stopper: MedianStop, hold_idle: bool = True):
        super().__init__(oracle)
        self.stopper = stopper
        self.hold_idle = hold_idle  # keep a worker with no trial left, to take over a silent one's
        self.on_all_handed_out: Callable[[], None] | None = None  # called once, when the last trial is handed out
        self.lock = threading.RLock()
        self.worker_timeout_s = worker_timeout_s
        self.last_seen: dict[str, float] = {}
        self.started = time.monotonic()
        self.deaths: dict[str, int] = {}
        self.fatal: str | None = None

    def _died_on(self, trial) -> bool:
        """Counts a worker's death while running `trial`; True once the trial should fail."""
        self.deaths[trial.trial_id] = self.deaths.get(trial.trial_id, 0) + 1
        return self.deaths[trial.trial_id] >= DEATHS_BEFORE_FAILED

    def _fail(self, trial, why: str) -> None:
        trial.status = trial_module.TrialStatus.FAILED
        trial.message = why
        self._end(trial)

    def _end(self, trial) -> None:
        try:
            self.oracle.end_trial(trial)
        except RuntimeError as error:  # "Number of consecutive failures exceeded the limit"
            # raised before end_trial saved the trial and the oracle: finish its bookkeeping
            self.fatal = str(error).splitlines()[0]
            self.oracle._save_trial(self.oracle.trials[trial.trial_id])
            self.oracle.save()
            owner = self._owner(trial.trial_id)
            if owner is not None:
                self.oracle.ongoing_trials.pop(owner)

    def _seen(self, tuner_id: str | None) -> None:
        if tuner_id:
            self.last_seen[tuner_id] = time.monotonic()

    def _owner(self, trial_id: str) -> str | None:
        for tuner_id, trial in self.oracle.ongoing_trials.items():
            if trial.trial_id == trial_id:
                return tuner_id
        return None

    def drop_silent(self) -> list[str]:
        """Forgets workers silent for too long; their running trials go back to the queue."""
        now, dropped = time.monotonic(), []
        with self.lock:
            known = set(self.oracle.tuner_ids) | set(self.oracle.ongoing_trials)
            for tuner_id in known:
                if now - self.last_seen.get(tuner_id, self.started) > self.worker_timeout_s:
                    trial = self.oracle.ongoing_trials.pop(tuner_id, None)
                    fate = self._after_death(trial, tuner_id) if trial is not None else "-"
                    self.oracle.tuner_ids.discard(tuner_id)
                    dropped.append(f"{tuner_id} (trial {trial.trial_id if trial else '-'} {fate})")
        return dropped

    def _after_death(self, trial, tuner_id: str) -> str:
        """A worker died running `trial`: the trial goes back to the queue, or fails; one the
        chief had stopped ends with its scores at the stop."""
        stop = self.stopper.stop_of(trial.trial_id)
        if stop:
            end_stopped(self.oracle, trial.trial_id, stop)
            return "ended at its early stop"
        if self._died_on(trial):
            self._fail(trial, f"its worker died {DEATHS_BEFORE_FAILED} times running it "
                              f"(last {tuner_id}; killed by the OOM killer?)")
            return "failed"
        self.oracle._retry_queue.append(trial.trial_id)
        self.oracle.save()
        return "requeued"

    def _all_handed_out(self) -> bool:
        return len(self.oracle.trials) >= self.oracle.max_trials and not pending_retries(self.oracle)

    def CreateTrial(self, request, context):
        with self.lock:
            self._seen(request.tuner_id)
            if self.fatal:  # the search is over: tell the worker to stop, start no trial
                stop = trial_module.Trial(self.oracle.get_space(), status=trial_module.TrialStatus.STOPPED)
                return get_service().CreateTrialResponse(trial=stop.to_proto())
            ongoing = self.oracle.ongoing_trials.get(request.tuner_id)
            if ongoing is not None and self.stopper.stop_of(ongoing.trial_id):  # restarted after its stop
                end_stopped(self.oracle, ongoing.trial_id, self.stopper.stop_of(ongoing.trial_id))
                ongoing = None
            if ongoing is not None and self._died_on(ongoing):  # it asks again: it restarted mid-trial
                self._fail(ongoing, f"its worker died {DEATHS_BEFORE_FAILED} times running it "
                                    f"(last {request.tuner_id}; killed by the OOM killer?)")
            others_running = any(t != request.tuner_id for t in self.oracle.ongoing_trials)
            if (self.hold_idle and request.tuner_id not in self.oracle.ongoing_trials and self._all_handed_out()
                    and others_running):
                # Keep this worker around: a running trial may still need a new home.
                self.oracle.tuner_ids.add(request.tuner_id)
                idle = trial_module.Trial(self.oracle.get_space(), trial_id="idle",
                                          status=trial_module.TrialStatus.IDLE)
                return get_service().CreateTrialResponse(trial=idle.to_proto())
            response = super().CreateTrial(request, context)
            if self.on_all_handed_out and self._all_handed_out():
                self.on_all_handed_out()
                self.on_all_handed_out = None
            return response

    def GetTrial(self, request, context):
        with self.lock:
            self._seen(self._owner(request.trial_id))
            return super().GetTrial(request, context)

    def UpdateTrial(self, request, context):
        with self.lock:
            self._seen(self._owner(request.trial_id))
            evaluation = Evaluation.from_metrics(dict(request.metrics))
            if evaluation is None:  # Keras Tuner's own report of the trial's result
                return super().UpdateTrial(request, context)
            # An evaluation mid-trial: recorded by the stopping rule, not scored; the answer's
            # status STOPPED tells the worker to stop the trial.
            trial = copy.copy(self.oracle.trials[request.trial_id])
            if self.stopper.report(request.trial_id, evaluation):
                trial.status = trial_module.TrialStatus.STOPPED
            return get_service().UpdateTrialResponse(trial=trial.to_proto())

    def EndTrial(self, request, context):
        with self.lock:
            owner = self._owner(request.trial.trial_id)
            self._seen(owner)
            if owner is None and self.oracle.trials[request.trial.trial_id].status in ENDED:
                # A worker we had given up on finished after all; the trial was redone elsewhere.
                return get_service().EndTrialResponse()
            self._end(trial_module.Trial.from_proto(request.trial))
            return get_service().EndTrialResponse()

    def GetSpace(self, request, context):
        with self.lock:
            return super().GetSpace(request, context)

    def UpdateSpace(self, request, context):
        with self.lock:
            return super().UpdateSpace(request, context)

    def GetBestTrials(self, request, context):
        with self.lock:
            return super().GetBestTrials(request, context)


def start_server(oracle, bind: str, port: int, worker_timeout_s: float, stopper: MedianStop,
                 hold_idle: bool = True) -> tuple[LivenessServicer, grpc.Server | None, int]:
    """Serves `oracle` on `bind`, at `port` or, when it is 0, a free port, with `stopper` deciding
    on the trials' evaluations; returns the servicer, the server (None if it cannot bind) and the
    port it bound. `hold_idle`: a worker that finds no trial left while others run stays (IDLE
    answers) to take over a silent worker's trial; else it is told to stop (STOPPED).

    The port is bound exclusively: gRPC sets SO_REUSEPORT by default, which would let a
    second chief bind the same port and take half of the workers' calls.
    """
    address = f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"
    servicer = LivenessServicer(oracle, worker_timeout_s, stopper, hold_idle)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)])
    get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:  # grpcio >= 1.60 raises "Failed to bind" where older ones returned 0
        bound = 0
    if bound == 0:
        return servicer, None, port
    server.start()
    return servicer, server, bound
