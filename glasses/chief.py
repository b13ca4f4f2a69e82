"""The chief's gRPC oracle service, with liveness: keras-tuner's servicer plus worker heartbeats.

Imported only inside the chief process (it imports keras-tuner's generated protos).
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
from keras_tuner.src.distribute import oracle_chief
from keras_tuner.src.engine import trial as trial_module
from keras_tuner.src.protos import get_service, get_service_grpc

from glasses.search import ENDED, EXIT_INCOMPLETE


class LivenessServicer(oracle_chief.OracleServicer):
    """Serialises all calls, notes when each worker was last heard from, and hands the trial of
    a silent worker to the next worker that asks."""

    def __init__(self, oracle, worker_timeout_s: float):
        super().__init__(oracle)
        self.lock = threading.RLock()
        self.worker_timeout_s = worker_timeout_s
        self.last_seen: dict[str, float] = {}
        self.started = time.monotonic()

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
                    if trial is not None:
                        self.oracle._retry_queue.append(trial.trial_id)
                        self.oracle.save()
                    self.oracle.tuner_ids.discard(tuner_id)
                    dropped.append(f"{tuner_id} (trial {trial.trial_id if trial else '-'} requeued)")
        return dropped

    def _all_handed_out(self) -> bool:
        oracle = self.oracle
        return len(oracle.trials) >= oracle.max_trials and not oracle._retry_queue

    def CreateTrial(self, request, context):
        with self.lock:
            self._seen(request.tuner_id)
            others_running = any(t != request.tuner_id for t in self.oracle.ongoing_trials)
            if (request.tuner_id not in self.oracle.ongoing_trials and self._all_handed_out()
                    and others_running):
                # Keep this worker around: a running trial may still need a new home.
                self.oracle.tuner_ids.add(request.tuner_id)
                idle = trial_module.Trial(self.oracle.get_space(), trial_id="idle",
                                          status=trial_module.TrialStatus.IDLE)
                return get_service().CreateTrialResponse(trial=idle.to_proto())
            return super().CreateTrial(request, context)

    def GetTrial(self, request, context):
        with self.lock:
            self._seen(self._owner(request.trial_id))
            return super().GetTrial(request, context)

    def UpdateTrial(self, request, context):
        with self.lock:
            self._seen(self._owner(request.trial_id))
            return super().UpdateTrial(request, context)

    def EndTrial(self, request, context):
        with self.lock:
            owner = self._owner(request.trial.trial_id)
            self._seen(owner)
            if owner is None and self.oracle.trials[request.trial.trial_id].status in ENDED:
                # A worker we had given up on finished after all; the trial was redone elsewhere.
                return get_service().EndTrialResponse()
            return super().EndTrial(request, context)

    def GetSpace(self, request, context):
        with self.lock:
            return super().GetSpace(request, context)

    def UpdateSpace(self, request, context):
        with self.lock:
            return super().UpdateSpace(request, context)

    def GetBestTrials(self, request, context):
        with self.lock:
            return super().GetBestTrials(request, context)


def _ended(oracle) -> int:
    return sum(1 for t in oracle.trials.values() if t.status in ENDED)


def _finished(servicer: LivenessServicer) -> bool:
    oracle = servicer.oracle
    with servicer.lock:
        # Every worker we know of has been told to stop (or was given up on): none still asks.
        return _ended(oracle) >= oracle.max_trials and not oracle.ongoing_trials and not oracle.tuner_ids


def _nobody_left(servicer: LivenessServicer, grace_s: float) -> bool:
    with servicer.lock:
        waited = time.monotonic() - servicer.started > grace_s
        return waited and not servicer.oracle.tuner_ids and not servicer.oracle.ongoing_trials


def serve(oracle, spec) -> int:
    """Serves `oracle` on spec.host:spec.port until the search ends, nobody is left, or timeout."""
    servicer = LivenessServicer(oracle, spec.worker_timeout_s)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    get_service_grpc().add_OracleServicer_to_server(servicer, server)
    address = f"{spec.host}:{spec.port}"
    if server.add_insecure_port(address) == 0:
        print(f"chief: cannot bind {address}", flush=True)
        return EXIT_INCOMPLETE
    server.start()
    print(f"chief: oracle serving at {address}, {_ended(oracle)}/{oracle.max_trials} trials ended", flush=True)
    deadline = time.monotonic() + spec.chief_timeout_s
    reason = None
    while reason is None:
        time.sleep(0.5)
        for dropped in servicer.drop_silent():
            print(f"chief: worker {dropped}: silent for over {spec.worker_timeout_s:.0f}s", flush=True)
        if _finished(servicer):
            reason = "complete"
        elif _nobody_left(servicer, spec.worker_timeout_s):
            reason = "no worker left"
        elif time.monotonic() > deadline:
            reason = f"timeout after {spec.chief_timeout_s:.0f}s"
    server.stop(grace=2).wait()
    with servicer.lock:
        oracle.save()
    ended = _ended(oracle)
    print(f"chief: {reason}; {ended}/{oracle.max_trials} trials ended", flush=True)
    return 0 if ended >= oracle.max_trials else EXIT_INCOMPLETE
