"""When a stage task is Cached: its cache key is a hash of what defines its output (the config
section it uses, the data's fingerprint, the searches it reads), and a cached result whose
output is no longer on disk (or whose search is not complete) is forgotten before Prefect looks
it up. So a Cached task always stands for real files: a retry of a failed run shows the
finished stages Cached and runs the rest; a changed config section changes the keys of its
stage and of those after it, never of those before.

The results themselves are persisted in the work dir (`flows/pipeline.py` sets the storage).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NONE
from prefect.filesystems import LocalFileSystem

from glasses import dataset, figures, inputs, saliency, stages, synth
from glasses.config import Config, SearchConfig, fingerprint
from glasses.search import SearchSpec, is_complete
from glasses.workdir import WorkDir


@task(name="result-storage", cache_policy=NONE)
def result_storage(config: Config) -> str:
    """A storage block for the run's task results, in its work dir (saved: Prefect requires a
    result storage it can name on the server); returns its slug."""
    root = WorkDir(Path(config.work_dir).resolve())
    name = f"glasses-results-{fingerprint([str(root.root)], length=12)}"
    LocalFileSystem(basepath=str(root.results)).save(name, overwrite=True)
    return f"local-file-system/{name}"


def _key(work: WorkDir, present: bool, *parts: Any) -> str:
    """The hash of `parts`; when the output it stands for is not `present`, its record goes first."""
    key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]
    if not present:
        (work.results / key).unlink(missing_ok=True)
    return key


def _work(parameters: dict) -> WorkDir:
    return WorkDir(Path(parameters["config"].work_dir).resolve())


def source_key(context, parameters: dict) -> str:
    config: Config = parameters["config"]
    work = _work(parameters)
    # the built-in data is current with its glasses' boxes (synthesize adds them to an older one)
    present = config.data.data_dir is not None or all((work.synth / name).is_file()
                                                      for name in (synth.MANIFEST, dataset.BOXES))
    return _key(work, present, "source", config.data.model_dump(mode="json"), work.root)


def organize_key(context, parameters: dict) -> str:
    work = _work(parameters)
    return _key(work, (work.organized / dataset.ORGANIZED_MANIFEST).is_file(), "organize", parameters["fingerprint"],
                work.root)


def split_key(context, parameters: dict) -> str:
    data, work = parameters["config"].data, _work(parameters)
    return _key(work, (work.split / dataset.SPLIT_MANIFEST).is_file(), "split", parameters["fingerprint"],
                data.fractions, data.seed, work.root)


def budget_key(context, parameters: dict) -> str:
    """The plan of a budget: Cached (a retry keeps its sized config, so the stages it finished
    stay Cached) while its plan.json is there; not keyed by the time already gone."""
    config: Config = parameters["config"]
    work, budget = _work(parameters), parameters["budget_s"]
    present = budget is None or work.plan.is_file()
    return _key(work, present, "budget", config.model_dump(mode="json"), budget, parameters["split"], work.root)


def cache_key(context, parameters: dict) -> str:
    work, sizes, split = _work(parameters), parameters["sizes"], dataset.split_id(Path(parameters["split_dir"]))
    present = all(inputs.is_current(inputs.cache_dir_for(work.cache, size), split) for size in sizes)
    return _key(work, present, "cache", inputs.CACHE_FORMAT, split, sorted(set(sizes)), work.root)


def _complete(spec_path: Path) -> bool:
    return spec_path.is_file() and is_complete(SearchSpec.load(spec_path))


def plan_key(context, parameters: dict) -> str:
    """Cached once its search is complete; until then, planned anew (a fresh port) every time."""
    search: SearchConfig = parameters["config"].search
    work, stage = _work(parameters), parameters["stage"]
    path = stages.spec_path_for(work, stage, search, parameters["image_size"], parameters["chosen"],
                                Path(parameters["cache_dir"]))
    return _key(work, _complete(path), "plan", path, search.stage(stage).max_trials)


def search_key(context, parameters: dict) -> str:
    """Chief, worker and release: Cached once their search is complete."""
    spec_path = Path(parameters["spec_path"])
    work = WorkDir(spec_path.resolve().parents[3])  # <work>/stages/<stage>/kt-<key>/size<px>.json
    return _key(work, _complete(spec_path), context.task.name, spec_path, parameters.get("index"))


def _rule(config: Config, stage: str) -> float | str:
    """The one setting of a stage's choice rule (or plot) beyond its own section."""
    return {"stage1": stages.CHOICE_RULE, "stage2": stages.CHOICE_RULE, "stage3": config.ensemble.threshold}[stage]


def finish_key(context, parameters: dict) -> str:
    """Cached while the stage's summary and searches are on disk, or, for a summary the run keeps
    (retune.keep_choices), for that summary."""
    config: Config = parameters["config"]
    work, stage = _work(parameters), context.task.name.removeprefix("finish-")
    paths = [Path(p) for p in parameters["spec_paths"]]
    kept = (parameters.get("kept") or {}).get(stage)
    present = kept is not None or (work.stage_summary(stage).is_file() and all(map(_complete, paths)))
    section = config.search.stage(stage).model_dump(mode="json")
    earlier = [str(p) for p in parameters.get("earlier") or []]  # stage 2: stage 1's searches, whose trials count
    # (the kept summary and earlier searches only when there are some: a stage's key stays what it was)
    return _key(work, present, "finish", stage, paths, section, _rule(config, stage),
                *filter(None, [kept, earlier]))


def ensemble_key(context, parameters: dict) -> str:
    config: Config = parameters["config"]
    work = _work(parameters)
    present = work.latest.is_file() and work.predictions.is_file()
    return _key(work, present, "ensemble", parameters["spec_paths"], config.ensemble.model_dump(mode="json"),
                config.search.stage3.max_trials, work.root)  # (a retune adds stage-3 trials to the same search)


def figures_key(context, parameters: dict) -> str:
    work = _work(parameters)
    return _key(work, (work.figures / figures.CONFUSION).is_file(), "figures", parameters["shipped"],
                parameters["stage_summaries"], parameters["config"].search.seed)


def latent_key(context, parameters: dict) -> str:
    data = parameters["config"].data
    return _key(_work(parameters), True, "latent", parameters["fingerprint"], data.fractions, data.seed,
                dataset.split_id(Path(parameters["split_dir"])))


def saliency_key(context, parameters: dict) -> str:
    """The saliency analyses: Cached while their gallery is there, for the same shipped model, data
    and rule for the maps' layer."""
    work, data_dir = _work(parameters), Path(parameters["data_dir"])
    boxes = data_dir / dataset.BOXES
    return _key(work, work.saliency.is_file(), "saliency", parameters["shipped"], str(data_dir),
                boxes.stat().st_mtime_ns if boxes.is_file() else None, saliency.MIN_GRID)
