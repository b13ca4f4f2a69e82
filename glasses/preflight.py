"""What a run checks before it starts anything (Prefect, a process, a file): inputs that would
fail the same way however often the run is retried. `glasses run` calls it before Prefect
starts, and the pipeline flow first thing, so a bad dataset or work dir is one error line."""

from __future__ import annotations

from pathlib import Path

from glasses.config import Config
from glasses.dataset import CheckReport, check
from glasses.workdir import check_apart, check_free, check_ours, make_ours


def check_run(config: Config, adopt_work_dir: bool = False) -> CheckReport | None:
    """Checks the run's work dir (apart from the data, ours, free) and its dataset (every check
    `glasses check` makes); returns the dataset's report (None for the built-in data).

    Args:
        adopt_work_dir: Write the work dir's marker into a non-empty folder without one (a work
            dir from a glasses before the marker), instead of refusing it.

    Raises:
        OutputError: the work dir overlaps the data, is not ours, or another run holds it.
        DatasetError: the first bad input of the dataset.
    """
    check_apart(config.data.data_dir, config.work_dir)
    if adopt_work_dir:
        make_ours(config.work_dir, adopt=True)
    check_ours(config.work_dir)
    check_free(config.work_dir)
    if config.data.data_dir is None:
        return None
    return check(Path(config.data.data_dir), config.data.fractions, config.data.seed)
