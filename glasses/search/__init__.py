"""Distributed random search: one Keras Tuner chief (the gRPC oracle) and N worker processes.

    spec.py                 SearchSpec: what both roles of one search read
    records.py              the trials on disk: records, table, completeness, pruning, markers; the chief's exit codes
    launch.py               run_chief / run_worker: a role as a process, errors as SearchError
    spares.py               role processes started ahead, TensorFlow imported, each waiting for its role
    tuner.py                the RandomSearch both roles build, the role's environment
    chief.py                inside the chief process: serve the oracle until the search ends
    worker.py               inside a worker process: run trials until the chief says stop
    early_stop.py           the chief's median stopping rule over the trials' evaluations
    keras_tuner_private.py  every use of keras-tuner's private API (liveness, requeue, timeout)
    __main__.py             `python -m glasses.search chief|worker|spare`

The chief tracks when it last heard from each worker (heartbeats every few seconds) and hands
the trial of a worker silent for `worker_timeout_s` to another; it gives up after
`chief_timeout_s`, once no worker is left, or once its run says every worker it started for the
search has ended (`mark_released`: the workers may queue behind another search's). The oracle's state is on disk, so a re-run
continues a search (no trial run twice).
"""

from glasses.search.launch import run_chief, run_worker
from glasses.search.records import is_complete, keep_best, mark_released, trial_records, trials_table
from glasses.search.spec import SearchSpec, free_port

__all__ = ["SearchSpec", "free_port", "is_complete", "keep_best", "mark_released", "run_chief", "run_worker",
           "trial_records", "trials_table"]
