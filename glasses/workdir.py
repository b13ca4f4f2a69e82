"""Where each stage's outputs live under the work dir (one place that knows the layout)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WorkDir:
    """The layout of a run's work dir; every output of a run lives below `root`."""

    root: Path

    @property
    def synth(self) -> Path:
        return self.root / "data"

    @property
    def organized(self) -> Path:
        return self.root / "organized"

    @property
    def split(self) -> Path:
        return self.root / "split"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def stage(self, name: str) -> Path:
        return self.root / "stages" / name

    @property
    def model(self) -> Path:
        return self.root / "model" / "ensemble.keras"

    @property
    def predictions(self) -> Path:
        return self.root / "evaluation" / "test_predictions.csv"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"
