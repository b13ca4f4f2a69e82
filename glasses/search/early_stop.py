"""Early stopping across trials: the chief stops a trial that is behind the others.

Workers report every evaluation of a trial (its fold, epoch, steps, val loss and accuracy) to
the chief, whose oracle answers whether the trial goes on. The rule is the median stopping rule
(Golovin et al., "Google Vizier", KDD 2017), on the best val log loss so far (finer than the
accuracy of a small val split, and what stages 1-2 choose by): once a trial has trained
`after_steps`, it is stopped at an evaluation where its best loss is worse than the median of
the best losses of the other trials at that same evaluation (same fold, same epoch), when at
least `peers` of them got there. A trial stopped earlier does not get there, so later
evaluations compare with the trials that went on: the bar rises as a search goes on.

The chief keeps each trial's evaluations in `trial_<id>/progress.json`, with the stop when there
was one: a restarted chief reads them back, so a stopped trial stays stopped and the evaluations
of the others still count. Only the chief writes them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from glasses.config import EarlyStopConfig
from glasses.files import read_json, write_json

PROGRESS = "progress.json"  # in a trial's folder
PREFIX = "glasses_progress/"  # the metric names of an evaluation sent to the chief (not scored)
FIELDS = ("fold", "epoch", "steps", "val_loss", "val_accuracy")


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a trial on its val data: fold (0 without cross-validation), epoch in
    that fold (from 0), steps trained in that fold by then, val loss and accuracy."""

    fold: int
    epoch: int
    steps: int
    val_loss: float
    val_accuracy: float

    def to_metrics(self) -> dict[str, float]:
        """As the metrics of keras-tuner's UpdateTrial call (a map of names to doubles)."""
        return {PREFIX + name: float(value) for name, value in asdict(self).items()}

    @classmethod
    def from_metrics(cls, metrics: dict[str, float]) -> Evaluation | None:
        """The evaluation in a worker's UpdateTrial metrics; None for Keras Tuner's own report."""
        if not all(PREFIX + name in metrics for name in FIELDS):
            return None
        values = {name: metrics[PREFIX + name] for name in FIELDS}
        return cls(fold=int(values["fold"]), epoch=int(values["epoch"]), steps=int(values["steps"]),
                   val_loss=float(values["val_loss"]), val_accuracy=float(values["val_accuracy"]))


def _finite(loss: float) -> float:
    """A NaN loss counts as the worst (the trial fails anyway: TerminateOnNaN)."""
    return math.inf if math.isnan(loss) else float(loss)


def best_loss(evaluations: list[dict], fold: int, epoch: int) -> float | None:
    """The lowest val loss of `fold` up to `epoch`, or None when the trial did not get there."""
    seen = [e["val_loss"] for e in evaluations if e["fold"] == fold and e["epoch"] <= epoch]
    reached = any(e["fold"] == fold and e["epoch"] == epoch for e in evaluations)
    return min(seen) if reached else None


class MedianStop:
    """The chief's record of every trial's evaluations and its median stopping rule."""

    def __init__(self, project_dir: Path, rule: EarlyStopConfig, min_steps: int):
        self.project_dir = Path(project_dir)
        self.enabled = rule.rule == "median"
        self.after_steps = rule.after_steps or min_steps
        self.peers = rule.peers
        self.trials: dict[str, dict[str, Any]] = load_progress(self.project_dir)

    def stop_of(self, trial_id: str) -> dict[str, Any] | None:
        """The stop of a trial (where, its best scores then, the median it was behind), or None."""
        return self.trials.get(trial_id, {}).get("stopped")

    def report(self, trial_id: str, evaluation: Evaluation) -> bool:
        """Records an evaluation of a trial; returns whether the trial must stop now."""
        record = self.trials.setdefault(trial_id, {"evaluations": [], "stopped": None})
        if record["stopped"]:
            return True
        evaluation = replace(evaluation, val_loss=_finite(evaluation.val_loss))
        key = (evaluation.fold, evaluation.epoch)
        # A trial run again (its worker died) reports from its start again: keep what came before.
        record["evaluations"] = [e for e in record["evaluations"] if (e["fold"], e["epoch"]) < key]
        record["evaluations"].append(asdict(evaluation))
        record["stopped"] = self._verdict(trial_id, evaluation)
        write_json(self.project_dir / f"trial_{trial_id}" / PROGRESS, record)
        return record["stopped"] is not None

    def _verdict(self, trial_id: str, evaluation: Evaluation) -> dict[str, Any] | None:
        """The stop record when the rule stops the trial at this evaluation, else None."""
        if not self.enabled or evaluation.steps < self.after_steps:
            return None
        fold, epoch = evaluation.fold, evaluation.epoch
        others = [best_loss(r["evaluations"], fold, epoch) for t, r in self.trials.items() if t != trial_id]
        others = [loss for loss in others if loss is not None]
        if len(others) < self.peers:
            return None
        mine, median = best_loss(self.trials[trial_id]["evaluations"], fold, epoch), statistics.median(others)
        if mine <= median:
            return None
        accuracy = max(e["val_accuracy"] for e in self.trials[trial_id]["evaluations"]
                       if e["fold"] == fold)
        return {"fold": fold, "epoch": epoch, "steps": evaluation.steps, "val_loss": mine,
                "val_accuracy": accuracy, "median_val_loss": median, "peers": len(others)}


def load_progress(project_dir: Path) -> dict[str, dict[str, Any]]:
    """Every trial's recorded evaluations and stop, by trial id."""
    found = {}
    for path in sorted(Path(project_dir).glob(f"trial_*/{PROGRESS}")):
        found[path.parent.name.removeprefix("trial_")] = read_json(path)
    return found


def stop_record(trial_dir: Path) -> dict[str, Any] | None:
    """The chief's stop of the trial in `trial_dir`, or None when it was not stopped."""
    path = Path(trial_dir) / PROGRESS
    return read_json(path).get("stopped") if path.is_file() else None
