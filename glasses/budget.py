"""A trial's budget in optimizer steps, turned into the epochs Keras trains.

A stage states how many steps a trial may train (`max_steps`), how many before early stopping
may act (`min_steps`) and how many without progress stop it (`patience_steps`). The epochs
follow from the training images and the global batch, so 300 images and 4,500 images both get
trials that can learn: a small dataset trains more passes over its images.

An "epoch" here is the period between two evaluations on the val split (what early stopping
counts): one pass over the training images, but at least `MIN_STEPS_PER_EPOCH` steps (several
passes over a small dataset), so evaluation and callbacks do not dominate a small dataset's time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from glasses.config import StageConfig

MIN_STEPS_PER_EPOCH = 50


@dataclass(frozen=True)
class Epochs:
    """What Keras is told: steps per epoch (the training data repeats), epochs, the warm-up
    before early stopping, its patience."""

    steps_per_epoch: int
    epochs: int
    warmup_epochs: int
    patience: int
    # Progressive resizing: the steps trained first on smaller images (as one pass, unvalidated),
    # and the epoch the rest begins at (Keras' initial_epoch), so that the epochs at the search's
    # size keep their numbers and their steps: the same evaluations as every trial of the stage.
    start_steps: int = 0
    first_epoch: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def epochs_for(stage: StageConfig, train_images: int, replicas: int = 1, start_steps: int = 0) -> Epochs:
    """The epochs that give a trial of `stage` its steps on `train_images` images.

    Args:
        stage: The stage's step budget and per-replica batch.
        train_images: Images a trial trains on (the train split, or a fold's share of train+val).
        replicas: Devices the batch is split over (the global batch is batch_size x replicas).
        start_steps: Steps the trial trains first on smaller images (`StageConfig.progressive`,
            where it applies); the rest of `max_steps` are epochs at the search's size, from
            `first_epoch` on, and early stopping waits for them.

    Every count rounds so that a trial gets at least its steps: epochs up, the warm-up down (it
    is a minimum before stopping may act, and stays below the epochs), patience up, at least 1.
    """
    if train_images < 1:
        raise ValueError(f"a trial needs training images, got {train_images}")
    one_pass = math.ceil(train_images / (stage.batch_size * max(1, replicas)))
    steps_per_epoch = max(one_pass, min(MIN_STEPS_PER_EPOCH, stage.max_steps))
    epochs = max(1, math.ceil(stage.max_steps / steps_per_epoch))
    warmup = min(stage.min_steps // steps_per_epoch, epochs - 1)
    patience = max(1, math.ceil(stage.patience_steps / steps_per_epoch))
    if not start_steps:
        return Epochs(steps_per_epoch, epochs, warmup, patience)
    if not 0 < start_steps < stage.max_steps:
        raise ValueError(f"start_steps {start_steps} must be between 0 and max_steps {stage.max_steps}")
    first = epochs - math.ceil((stage.max_steps - start_steps) / steps_per_epoch)
    return Epochs(steps_per_epoch, epochs, max(warmup, first), patience, start_steps, first)
