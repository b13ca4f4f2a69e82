"""The run modes are decided in glasses/ and the tasks, not in the flow: what a retune run grows
(stage 3, once per run), what it keeps (the champion's stage 1-2 choices on changed data, with
retune.keep_choices), and a flow that runs the same straight line either way."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from glasses import stages
from glasses.config import build_config
from glasses.files import write_json
from glasses.workdir import WorkDir

KEPT = [{"stage": "stage1", "chosen": {"image_size": 24}, "kept_from": "run-1"},
        {"stage": "stage2", "chosen": {"conv_layers": 2, "optimizer": "sgd"}, "kept_from": "run-1"}]


def _config(tmp_path: Path, keep_choices: bool = False):
    return build_config("smoke", overrides={"work_dir": str(tmp_path / "work"), "retune.keep_choices": keep_choices})


@pytest.mark.parametrize("mode, keep_choices, kept", [("resume", True, False), ("retune", False, False),
                                                      ("retune", True, True)])
def test_only_a_retune_run_that_keeps_choices_keeps_the_champions(tmp_path, monkeypatch, mode, keep_choices, kept):
    asked = []
    monkeypatch.setattr(stages.registry, "kept_stages", lambda work, fingerprint: asked.append(fingerprint) or KEPT)
    found = stages.kept_choices(_config(tmp_path, keep_choices), mode, "f" * 16)
    assert found == ({"stage1": KEPT[0], "stage2": KEPT[1]} if kept else {})
    assert asked == (["f" * 16] if kept else [])  # the registry is not even read otherwise
    monkeypatch.setattr(stages.registry, "kept_stages", lambda work, fingerprint: None)  # no champion, same data
    assert stages.kept_choices(_config(tmp_path, keep_choices), mode, "f" * 16) == {}


def test_a_kept_stage_searches_nothing_and_caches_only_its_size():
    search = build_config("quick").search
    kept = {"stage1": KEPT[0], "stage2": KEPT[1]}
    assert stages.sizes_to_search("stage1", [32, 40], kept) == [] == stages.sizes_to_search("stage2", [24], kept)
    assert stages.sizes_to_search("stage3", [24], kept) == [24]
    assert stages.sizes_to_search("stage1", [32, 40], {}) == [40, 32]  # the longest trials first
    assert stages.sizes_to_cache(search, kept) == [24]
    assert stages.sizes_to_cache(search, {}) == search.stage1.image_sizes == [32, 64]


def test_a_retune_run_grows_stage_3_once_and_a_resume_run_not_at_all(tmp_path):
    config = _config(tmp_path)
    cache = tmp_path / "cache"
    write_json(cache / "cache.json", {"key": "k", "size": 16, "counts": {"train": 40, "val": 10, "test": 10}})
    chosen = {"conv_layers": 3, "optimizer": "adam"}
    trials, more = config.search.stage3.max_trials, config.search.stage3.retune_trials
    assert stages.retuned(config, "resume", "run-a", 16, chosen, cache) is config
    ledger = WorkDir(tmp_path / "work").stage("stage3") / stages.RETUNE_LEDGER
    assert not ledger.exists()
    first = stages.retuned(config, "retune", "run-a", 16, chosen, cache)  # a new search: its own count
    assert first.search.stage3.max_trials == trials and first.search.stage1 == config.search.stage1
    stages.plan_search(WorkDir(tmp_path / "work"), "stage3", first.search, 16, chosen, cache)  # the search exists now
    grown = stages.retuned(config, "retune", "run-b", 16, chosen, cache)
    assert grown.search.stage3.max_trials == trials + more
    assert stages.retuned(config, "retune", "run-b", 16, chosen, cache) == grown  # a retry of run-b: not twice
    assert list(json.loads(ledger.read_text()).values()) == [trials, trials + more]


def test_the_flow_has_no_if_on_the_run_mode():
    source = (Path(__file__).resolve().parents[1] / "flows" / "pipeline.py").read_text()
    tests = [ast.unparse(node.test) for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.If, ast.IfExp))]
    assert tests and not [test for test in tests if re.search(r"mode|kept|retune|run\[", test)], tests


@pytest.mark.slow
def test_a_retune_run_on_changed_data_keeps_the_champions_choices_and_searches_stage_3_only(prefect_server,
                                                                                        tmp_path):
    from flows.pipeline import pipeline
    from tests.conftest import balanced_labels, write_kaggle_dataset
    from tests.test_flow import _last_stage_runs

    work = tmp_path / "work"
    before = write_kaggle_dataset(tmp_path / "before", balanced_labels(60))
    assert pipeline(preset="smoke", data_dir=str(before), work_dir=str(work), return_state=True).is_completed()
    first = json.loads((work / "summary.json").read_text())
    size = first["stages"]["stage1"]["chosen"]["image_size"]
    after = write_kaggle_dataset(tmp_path / "after", balanced_labels(66), seed=1)  # the data changed
    state = pipeline(preset="smoke", data_dir=str(after), work_dir=str(work), mode="retune",
                     overrides={"retune": {"keep_choices": True}}, return_state=True)
    assert state.is_completed(), state.message
    runs = _last_stage_runs()
    assert not [name for name in runs if re.match(r"(plan|chief|worker)-stage[12]", name)], runs
    assert runs["finish-stage1"] == runs["finish-stage2"] == "Completed" and runs["kept-choices"] == "Completed"
    assert [name for name in runs if name.startswith("cache-")] == [f"cache-{size}px"]  # its size only
    second = json.loads((work / "summary.json").read_text())
    for stage in ("stage1", "stage2"):
        assert second["stages"][stage]["chosen"] == first["stages"][stage]["chosen"]
        assert second["stages"][stage]["kept_from"] == first["champion"]["challenger"]["run"]
    assert second["dataset"]["labelled"] == 66 and second["stages"]["stage3"]["trials"] >= 1
    stage3 = json.loads((work / "stages" / "stage3" / "stage.json").read_text())
    assert [Path(spec).name for spec in stage3["specs"]] == [f"size{size}.json"]
