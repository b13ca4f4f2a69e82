"""The Keras Tuner both roles build: the report's space as a hypermodel, a random search that
records who ran each trial, and the process-wide role settings Keras Tuner reads."""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
from pathlib import Path

from glasses.files import write_json, write_text
from glasses.search.records import error_file
from glasses.search.spec import SearchSpec

HEARTBEAT_S = 3.0


def set_role(tuner_id: str, address: str, port: int) -> None:
    """Makes this process the chief (`tuner_id` "chief") or a worker of the oracle at
    address:port (Keras Tuner reads these when a tuner is built; the chief binds its own)."""
    os.environ["KERASTUNER_TUNER_ID"] = tuner_id
    os.environ["KERASTUNER_ORACLE_IP"] = address
    os.environ["KERASTUNER_ORACLE_PORT"] = str(port)


NODE_ENV = "GLASSES_NODE"  # set by the launcher on a Dask worker: that worker's name


def node() -> str:
    """Where this process runs: its Dask worker's name, else the host name."""
    return os.environ.get(NODE_ENV) or socket.gethostname()


def _hypermodel(spec: SearchSpec, augment: bool):
    """The report's space as a hypermodel. Under progressive resizing (`spec.start_steps`) its
    models take images of any side, and each trial's fit, given the smaller images (`start`),
    first trains `spec.start_steps` steps on them, as one unvalidated pass, then the rest as
    told, from epoch `first_epoch` on: validation, checkpoints and early stopping only see the
    model at the search's size."""
    import keras
    import keras_tuner as kt

    from glasses.model import build_model
    from glasses.space import model_spec

    class Hypermodel(kt.HyperModel):
        def build(self, hp):
            return build_model(model_spec(hp, spec.image_size, spec.fixed), augment=augment,
                               any_size=bool(spec.start_steps))

        def fit(self, hp, model, *args, start=None, first_epoch: int = 0, **kwargs):
            if start is not None:
                first = model.fit(start, steps_per_epoch=spec.start_steps, epochs=1, verbose=kwargs.get("verbose", "auto"),
                                  callbacks=[keras.callbacks.TerminateOnNaN()])
                _fail_on_nan([first])
                kwargs["initial_epoch"] = first_epoch
            return model.fit(*args, **kwargs)

    return Hypermodel()


def build_tuner(spec: SearchSpec, strategy=None):
    """The search's RandomSearch, continuing its project on disk (never overwriting it). Its
    models augment inside (`augments_in_model`) when trained under a (GPU) distribution strategy."""
    import keras
    import keras_tuner as kt

    from glasses.search.keras_tuner_private import make_json_writes_atomic

    make_json_writes_atomic()

    class GlassesTuner(kt.RandomSearch):
        """RandomSearch that records who ran each trial, for how long and for how many epochs,
        and fails a trial whose loss became NaN (instead of scoring its last good epoch)."""

        folds: list[tuple] = []  # (train, val, images) per fold under cross-validation, else empty
        clean: list = []  # each fold's training batches (or the split's) without augmentation
        train_images: int | None = None  # in the training split (a repeated dataset does not say)
        start: list = []  # progressive resizing: each fold's (or the split's) smaller training images
        first_epoch: int = 0  # and the epoch training goes on from at the search's size

        def run_trial(self, trial, *args, **kwargs):
            started = time.monotonic()
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), keras.callbacks.TerminateOnNaN()]
            bn_images = spec.stage.bn_stats_images
            try:
                with Heartbeat(self.oracle, trial.trial_id):
                    if self.folds:  # one fit per fold; Keras Tuner averages their best epochs
                        histories = []
                        for fold, (train, val, images) in enumerate(self.folds):
                            fit, used = _clean_batchnorm(kwargs, self.clean[fold], min(bn_images, images))
                            fit, report = self._reporting(self._starting(fit, fold), trial, fold)
                            histories += super().run_trial(trial, train, validation_data=val, **fit)
                            if report.stopped:  # the chief stopped the trial: no further folds
                                break
                    else:
                        images = min(bn_images, self.train_images or bn_images)
                        fit, used = _clean_batchnorm(kwargs, self.clean[0] if self.clean else None, images)
                        fit, report = self._reporting(self._starting(fit, 0), trial, 0)
                        histories = super().run_trial(trial, *args, **fit)
                _fail_on_nan(histories)
            except Exception:  # the chief names it if trials keep failing; Keras Tuner records it
                write_text(error_file(spec, trial.trial_id), traceback.format_exc(limit=3))
                raise
            epochs = self.first_epoch * bool(self.start) + max(len(h.history.get("loss", [])) for h in histories)
            write_json(Path(self.get_trial_dir(trial.trial_id)) / "worker.json",
                       {"tuner_id": self.tuner_id, "node": node(), "ended_at": round(time.time(), 2),
                        "seconds": round(time.monotonic() - started, 2),
                        "epochs": epochs, "folds": [_best_epoch(h) for h in histories] if self.folds else None,
                        "bn_images": used})
            return histories

        def _starting(self, fit: dict, fold: int) -> dict:
            """`fit`'s kwargs with the fold's smaller images to train on first, under progressive resizing."""
            return {**fit, "start": self.start[fold], "first_epoch": self.first_epoch} if self.start else fit

        def _reporting(self, fit: dict, trial, fold: int) -> tuple[dict, ReportEvaluations]:
            """`fit`'s kwargs with a callback that reports each evaluation to the chief."""
            report = ReportEvaluations(self.oracle, trial.trial_id, fold, fit.get("steps_per_epoch") or 1)
            return {**fit, "callbacks": [*fit["callbacks"], report]}, report

    class ReportEvaluations(keras.callbacks.Callback):
        """Sends the chief each evaluation of a trial (`glasses.search.early_stop`) and stops
        training when the chief answers that the trial is stopped. Only a distributed worker
        reports: a tuner with its own oracle has no other trials running to compare with."""

        def __init__(self, oracle, trial_id: str, fold: int, steps_per_epoch: int):
            super().__init__()
            self.oracle, self.trial_id, self.fold, self.steps_per_epoch = oracle, trial_id, fold, steps_per_epoch
            self.stopped = False

        def __deepcopy__(self, memo):  # Keras Tuner copies a trial's callbacks; the oracle's stub does not copy
            return self

        def on_epoch_end(self, epoch, logs=None):
            from glasses.search.early_stop import Evaluation
            from glasses.search.keras_tuner_private import is_remote

            logs = logs or {}
            if not is_remote(self.oracle) or "val_loss" not in logs:
                return
            evaluation = Evaluation(fold=self.fold, epoch=epoch, steps=(epoch + 1) * self.steps_per_epoch,
                                    val_loss=float(logs["val_loss"]),
                                    val_accuracy=float(logs.get("val_accuracy", float("nan"))))
            try:
                answer = self.oracle.update_trial(self.trial_id, evaluation.to_metrics(), step=epoch)
            except Exception:  # a lost report only loses this evaluation's say; the trial goes on
                return
            if answer.status == "STOPPED":
                print(f"trial {self.trial_id}: stopped by the chief at epoch {epoch + 1}: behind the other trials",
                      flush=True)
                self.stopped = True
                self.model.stop_training = True

    return GlassesTuner(
        _hypermodel(spec, augments_in_model(strategy)), objective="val_accuracy", max_trials=spec.stage.max_trials,
        seed=spec.seed, max_retries_per_trial=1, max_consecutive_failed_trials=3, directory=str(spec.directory),
        project_name=spec.project_name, overwrite=False, distribution_strategy=strategy)


def augments_in_model(strategy) -> bool:
    """Where a worker augments its training images: under a distribution strategy (the workers
    use one on GPUs) in the model, as the report did, so the GPU computes it; else in the input
    pipeline (`glasses.inputs.augment`), which on a CPU takes less time than the layers."""
    return strategy is not None


def _clean_batchnorm(kwargs: dict, train, images: int) -> tuple[dict, int]:
    """`fit`'s kwargs with a callback that sets BatchNorm statistics from clean images of
    `train` (batches without augmentation: `worker.training_data`) before each validation
    (`glasses.model.batchnorm_callback`): `images` of them (the stage's bn_stats_images, at
    most all there are), none when 0 or without clean batches; and how many it took. They
    are taken here, as an array: Keras Tuner deep-copies the callbacks of each trial, and a
    dataset does not copy."""
    if not images or train is None:
        return kwargs, 0
    from glasses.model import batchnorm_callback, clean_sample

    sample = clean_sample(train, images)
    return {**kwargs, "callbacks": [batchnorm_callback(sample), *kwargs["callbacks"]]}, len(sample)


def _best_epoch(history) -> dict[str, float]:
    """Val accuracy and loss at the epoch of the best val accuracy (what Keras Tuner scores)."""
    accuracy = history.history["val_accuracy"]
    best = max(range(len(accuracy)), key=accuracy.__getitem__)
    return {"val_accuracy": float(accuracy[best]), "val_loss": float(history.history["val_loss"][best])}


class Heartbeat:
    """Tells the chief every few seconds, during a trial, that this worker is alive."""

    def __init__(self, oracle, trial_id: str):
        self.oracle, self.trial_id = oracle, trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                self.oracle.get_trial(self.trial_id)
            except Exception:  # a missed beat is not fatal; the chief decides on silence
                pass

    def __enter__(self) -> Heartbeat:
        from glasses.search.keras_tuner_private import is_remote

        if is_remote(self.oracle):  # only a distributed worker has a chief to tell
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()


def _fail_on_nan(histories) -> None:
    """Raises keras-tuner's FailedTrialError (the trial is recorded FAILED, not retried) when a
    loss became NaN or infinite: TerminateOnNaN stopped training there."""
    import math

    import keras_tuner as kt

    for history in histories:
        losses = history.history.get("loss", [])
        bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
        if bad is not None:
            raise kt.errors.FailedTrialError(f"loss became {losses[bad]} at epoch {bad + 1}: "
                                             "training diverged (lower the learning rate)")
