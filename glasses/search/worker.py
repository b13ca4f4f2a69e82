"""A worker process: runs the trials the chief hands out until it says the search is over.

Beyond keras-tuner's own worker loop, it waits for its chief (and stops waiting when the chief
is marked down), sends a heartbeat during each trial, and, told 'idle' while other trials still
run, waits a moment and asks again, so it is there to take over the trial of a worker gone
silent.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

from glasses.errors import SearchError
from glasses.search.records import chief_address, chief_card, chief_down_reason, is_complete
from glasses.search.spec import SearchSpec
from glasses.search.tuner import augments_in_model, build_tuner, set_role

IDLE_POLL_S = 0.5  # an idle worker asks again this often: it ends this soon after its search
CHIEF_WATCH_S = 2.0


def work(spec: SearchSpec, tuner_id: str) -> int:
    """Runs trials handed out by the chief until it says the search is over; returns 0."""
    if is_complete(spec):
        print(f"{tuner_id}: search {spec.project_dir} already complete", flush=True)
        return 0
    limit_threads()
    import keras

    if resolve_precision(spec.precision) == "bfloat16":  # variables stay float32, and so do the checkpoints
        keras.mixed_precision.set_global_policy("mixed_bfloat16")

    from glasses.budget import epochs_for
    from glasses.search.keras_tuner_private import set_client_timeout

    # A chief that is gone should fail this worker's calls soon (the task retries), not in an hour.
    set_client_timeout(max(10.0, spec.worker_timeout_s))
    strategy, replicas = _strategy()
    set_role(tuner_id, *wait_for_chief(spec))
    _stop_when_chief_down(spec, tuner_id)
    tuner = build_tuner(spec, strategy)
    tuner.oracle = _PatientClient(tuner.oracle)
    stage, batch = spec.stage, spec.stage.batch_size * replicas
    augment = not augments_in_model(strategy)
    data, tuner.folds, tuner.clean, train_images = training_data(spec, batch, augment)
    tuner.train_images = train_images
    tuner.start = start_data(spec, batch, augment)
    budget = epochs_for(stage, train_images, replicas, spec.start_steps)
    tuner.first_epoch = budget.first_epoch
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=budget.patience,
                                         restore_best_weights=True, start_from_epoch=budget.warmup_epochs)
    # Keras Tuner gives each trial its own folder below this and adds its hyperparameters:
    # `tensorboard --logdir <work>/stages` shows the HParams dashboard.
    board = keras.callbacks.TensorBoard(log_dir=str(spec.directory / "tensorboard" / spec.project_name),
                                        write_graph=False, profile_batch=0)
    scored = f"{spec.folds}-fold cross-validation" if spec.folds else "the val split"
    if spec.start_steps:
        scored += (f"; the first {spec.start_steps} steps at {spec.start_size}px, then epochs {budget.first_epoch + 1}-"
                   f"{budget.epochs} at {spec.image_size}px")
    print(f"{tuner_id}: {replicas} replica(s), batch {batch}, {os.environ.get('GLASSES_THREADS')} threads, "
          f"{keras.mixed_precision.global_policy().name}; "
          f"{train_images} training images, {budget.steps_per_epoch} steps an epoch: up to {budget.epochs} "
          f"epochs, warm-up {budget.warmup_epochs}, patience {budget.patience}; scored by {scored}", flush=True)
    tuner.search(**data, epochs=budget.epochs, steps_per_epoch=budget.steps_per_epoch, callbacks=[stop, board],
                 verbose=2)
    return 0


def training_data(spec: SearchSpec, batch: int, augment: bool) -> tuple[dict, list, list, int]:
    """What a worker's trials train and score on: `fit`'s data (the split's, or none under
    cross-validation), the folds (train, val, images) under it, each training set once more
    without augmentation (the clean images of the BatchNorm statistics: `tuner._clean_batchnorm`),
    and the fewest images a trial trains on. Training batches are augmented when `augment`."""
    from glasses.inputs import cache_manifest, cross_validation_folds, load_subset

    if spec.folds:
        folds = cross_validation_folds(spec.cache_dir, spec.folds, batch, spec.seed, augment)
        clean = [train for train, _, _ in cross_validation_folds(spec.cache_dir, spec.folds, batch, spec.seed)]
        return {}, folds, clean, min(size for _, _, size in folds)
    data = {"x": load_subset(spec.cache_dir, "train", batch, shuffle_seed=spec.seed, repeat=True, augment=augment),
            "validation_data": load_subset(spec.cache_dir, "val", batch)}
    clean = [load_subset(spec.cache_dir, "train", batch, shuffle_seed=spec.seed)]
    return data, [], clean, cache_manifest(spec.cache_dir)["counts"]["train"]


def start_data(spec: SearchSpec, batch: int, augment: bool) -> list:
    """Under progressive resizing, the training images of each trial's first steps, at the
    spec's start size: the split's, or each fold's (the folds of `training_data`: the same seed
    and labels, so the same images); else an empty list."""
    from glasses.inputs import cross_validation_folds, load_subset

    if not spec.start_steps:
        return []
    if spec.folds:
        return [train for train, _, _ in cross_validation_folds(spec.start_cache_dir, spec.folds, batch, spec.seed,
                                                                  augment)]
    return [load_subset(spec.start_cache_dir, "train", batch, shuffle_seed=spec.seed, repeat=True, augment=augment)]


def resolve_precision(precision: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """What this host trains in: `precision`, or for "auto" bfloat16 where the CPU computes it
    natively (AVX-512 BF16 or AMX: 1.17-1.26x the images/s of float32 at 32-64 px at the same
    accuracy, bench/RESULTS.md) and no GPU is visible, else float32 (emulated bfloat16 is slower).
    Decided by each worker, so hosts of a cluster may differ."""
    if precision != "auto":
        return precision
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "float32"
    try:
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:  # not Linux, or no /proc
        return "float32"
    return "bfloat16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "float32"


def wait_for_chief(spec: SearchSpec) -> tuple[str, int]:
    """Returns the address and port of this search's own chief once it listens: it has published
    them with the spec's search id (so a stranger listening on that port is never taken for it,
    and no port is chosen before the chief has bound it) and accepts a connection there.

    Raises:
        SearchError: the chief is marked down, or has not come within `worker_timeout_s`.
    """
    deadline = time.monotonic() + spec.worker_timeout_s
    while True:
        reason = chief_down_reason(spec)
        if reason:
            raise SearchError(f"the chief of search {spec.search_id} is down: {reason}")
        found, problem = _reach(spec)
        if found:
            return found
        if time.monotonic() > deadline:
            raise SearchError(f"no chief of search {spec.search_id} after {spec.worker_timeout_s:.0f}s ({problem})")
        time.sleep(0.5)


def _reach(spec: SearchSpec) -> tuple[tuple[str, int] | None, str]:
    """The chief's published address when it is up and reachable there, else None and what is wrong."""
    found = chief_address(spec)
    if found is None:
        return None, f"it has not published this search's id in {chief_card(spec).name}"
    try:
        with socket.create_connection(found, timeout=2):
            return found, ""
    except OSError as error:
        return None, f"{found[0]}:{found[1]}: {error}"


def _stop_when_chief_down(spec: SearchSpec, tuner_id: str) -> None:
    """Ends this worker as soon as its chief is marked down, instead of after its calls to the
    dead chief time out (`worker_timeout_s` each, and keras-tuner retries them)."""

    def watch() -> None:
        while True:
            time.sleep(CHIEF_WATCH_S)
            reason = chief_down_reason(spec)
            if reason:
                print(f"{tuner_id}: error: the chief is down: {reason}", flush=True)
                os._exit(1)

    threading.Thread(target=watch, name="chief-down", daemon=True).start()


def limit_threads() -> None:
    """The thread settings of a tuner worker ($GLASSES_THREADS intra-op threads, at most 2 inter-op)."""
    import tensorflow as tf

    threads = int(os.environ.get("GLASSES_THREADS", "0"))
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))


def _strategy():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return (tf.distribute.MirroredStrategy() if gpus else None), max(1, len(gpus))


class _PatientClient:
    """The worker's oracle client, waiting a moment between asks while the chief says 'idle'."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client, name)

    def create_trial(self, tuner_id):
        trial = self._client.create_trial(tuner_id)
        if trial.status == "IDLE":
            time.sleep(IDLE_POLL_S)
        return trial
