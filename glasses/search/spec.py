"""The spec of one search: everything its chief and workers need, in a JSON file both read."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from glasses.config import StageConfig
from glasses.files import read_json, write_json


class SearchSpec(BaseModel):
    """One search: where it lives, what it trains on, its stage's budget and its roles.

    Every field is required: the values come from the config (`glasses.stages.plan_search`),
    which is the one place that holds their defaults.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    search_id: str  # this attempt's id: workers talk only to a chief that publishes it
    directory: Path
    project_name: str
    cache_dir: Path
    image_size: int
    stage: StageConfig  # batch size, trials, steps, patience, warm-up
    folds: int  # k of the k-fold cross-validation that scores each trial; 0: train on train, score on val
    fixed: dict[str, int | str]  # what the search holds fixed: earlier stages' choices and stage.fixed
    seed: int
    bind: str  # the address the chief binds
    address: str | None  # the address workers dial; None: the one the chief publishes
    port: int  # 0: the chief binds a free port and publishes it (records.chief_card)
    workers: int
    worker_timeout_s: float
    chief_timeout_s: float
    # How long the chief waits for its first worker. Workers may queue (behind another search's
    # on this machine, behind other tasks on a Dask cluster), so a run sets chief_timeout_s and
    # releases the chief once every worker it started has ended (records.mark_released).
    await_workers_s: float
    gpus_per_worker: int | Literal["all"]
    precision: Literal["float32", "bfloat16", "auto"] = "float32"  # what workers train in (search.precision)
    # Another search of the stage queues behind this one's workers (stage 1's sizes): a worker
    # that finds no trial left leaves at once for it, instead of staying to take over the trial of
    # a worker gone silent (which a retry of that worker then resumes).
    followed: bool = False
    # Role processes to start ahead once this search has handed out its last trial, for what
    # follows it (glasses.search.spares, glasses.stages.spares_after); 0: none.
    spares: int = 0
    # Progressive resizing (stage.progressive): the cache of the smaller images of each trial's first
    # stage.progressive.steps steps, its side in start_size; None: every step at image_size.
    start_cache_dir: Path | None = None
    start_size: int | None = None

    @property
    def start_steps(self) -> int:
        """The steps each trial trains at `start_size` before `image_size` (0: none)."""
        return self.stage.progressive.steps if self.start_cache_dir is not None else 0

    def sizes(self) -> set[int]:
        """The image sizes whose caches this search reads."""
        return {self.image_size} | ({self.start_size} if self.start_size is not None else set())

    @property
    def project_dir(self) -> Path:
        return self.directory / self.project_name

    def save(self, path: Path) -> Path:
        return write_json(path, self.model_dump(mode="json"))

    @classmethod
    def load(cls, path: Path) -> SearchSpec:
        return cls.model_validate(read_json(path))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for tests: a search binds its own, `port` 0)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
