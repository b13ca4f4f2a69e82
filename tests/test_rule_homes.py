"""Each rule the tasks rely on has one home in glasses/, and the tasks read it there: the
stage lookup, the cross-validation rule, the choice rule's name in the cache keys (which must
change when the rule does), and the files that say a step is done."""

from __future__ import annotations

import ast
import hashlib
import inspect
import re
from pathlib import Path

import pytest

from glasses import stages
from glasses.config import CHOOSING_STAGES, STAGES, build_config
from glasses.errors import ConfigError

# The code of stages 1-2's choice rule, as `rule_code` reads it, per CHOICE_RULE: when the rule's
# code changes, this test fails. If the change chooses differently, give stages.CHOICE_RULE a new
# name (finished stages then choose again on a resumed run) and record it here; if it is only a
# refactor, record the new code under the same name.
RULE_CODE = {"val-log-loss-beyond-standard-error": "57fc00eaae903ae1",
             "val-log-loss-beyond-standard-error-with-stage1-evidence": "48040ee7bf90c4d6",
             "val-log-loss-beyond-standard-error-paired-with-stage1-evidence": "b4fcf2dff796eed8"}
RULE_PARTS = ("compare", "_paired", "_plain", "_mean", "_pooled_sd", "_completed", "choose_image_size",
              "choose_depth_and_optimizer", "_compared_at", "REPORT_OPTIMIZER", "REPORT_CONV_LAYERS",
              "earlier_evidence", "TRAINED_ALIKE", "stage_seed")


def rule_code(source: str) -> str:
    """A hash of the rule's definitions in `source` (glasses/stages.py), docstrings, comments
    and layout left out."""
    found = {}
    for node in ast.parse(source).body:
        names = [node.name] if hasattr(node, "name") else [t.id for t in getattr(node, "targets", [])
                                                             if isinstance(t, ast.Name)]
        for name in set(names) & set(RULE_PARTS):
            if isinstance(node, ast.FunctionDef) and ast.get_docstring(node) is not None:
                node.body = node.body[1:]
            found[name] = ast.unparse(node)
    assert set(found) == set(RULE_PARTS), f"not in glasses/stages.py: {set(RULE_PARTS) - set(found)}"
    return hashlib.sha256("\n".join(found[name] for name in RULE_PARTS).encode()).hexdigest()[:16]


def test_the_choice_rule_is_renamed_when_its_code_changes():
    code = rule_code(inspect.getsource(stages))
    assert stages.CHOICE_RULE in RULE_CODE, f"record stages.CHOICE_RULE {stages.CHOICE_RULE!r} in RULE_CODE"
    assert code == RULE_CODE[stages.CHOICE_RULE], (
        f"the choice rule's code changed ({code}): if it chooses differently, rename stages.CHOICE_RULE; "
        f"either way record {code} under its name in RULE_CODE")


def test_a_renamed_rule_changes_the_finish_keys_of_the_stages_that_choose(tmp_path, monkeypatch):
    from tasks import caching

    config = build_config("smoke", overrides={"work_dir": str(tmp_path)})

    def keys() -> dict[str, str]:
        task = type("Task", (), {"name": ""})()
        found = {}
        for stage in STAGES:
            task.name = f"finish-{stage}"
            found[stage] = caching.finish_key(type("Context", (), {"task": task})(),
                                              {"config": config, "spec_paths": []})
        return found

    before = keys()
    monkeypatch.setattr(stages, "CHOICE_RULE", "another-rule")
    after = keys()
    assert [stage for stage in STAGES if before[stage] != after[stage]] == list(CHOOSING_STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_section_is_looked_up_by_name(stage):
    search = build_config("quick").search
    assert search.stage(stage) is getattr(search, stage)


def test_an_unknown_stage_is_named():
    with pytest.raises(ConfigError, match="'stage4' is not a search stage: stage1, stage2, stage3"):
        build_config("quick").search.stage("stage4")


@pytest.mark.parametrize("stage, val, folds", [("stage1", 299, 3), ("stage2", 0, 3), ("stage1", 300, 0),
                                               ("stage3", 10, 0)])
def test_only_a_choosing_stage_on_a_small_val_split_cross_validates(stage, val, folds):
    search = build_config("quick").search  # cv_below 300, cv_folds 3
    assert search.folds(stage, val) == folds
    assert search.model_copy(update={"cv_below": 0}).folds(stage, val) == 0


def test_the_rules_are_defined_once_and_the_tasks_import_them():
    root = Path(__file__).resolve().parents[1]
    code = {path: path.read_text() for folder in ("glasses", "tasks", "flows")
            for path in (root / folder).rglob("*.py")}
    rules = {"cv_folds if": "glasses/config.py", "def folds(": "glasses/config.py",
             "def stage(self, name: str) -> StageConfig": "glasses/config.py",
             "CHOICE_RULE = ": "glasses/stages.py", '"stage.json"': "glasses/workdir.py",
             '"split.json"': "glasses/dataset.py", '"organized.json"': "glasses/dataset.py",
             '"cache.json"': "glasses/inputs.py", '"synth.json"': "glasses/synth.py",
             '"confusion.png"': "glasses/figures.py", '"saliency.png"': "glasses/workdir.py",
             '".chief-down"': "glasses/search/records.py", "EXIT_PORT_IN_USE = ": "glasses/search/records.py"}
    for text, home in rules.items():
        assert [str(p.relative_to(root)) for p, source in code.items() if text in source] == [home], text
    tasks = "".join(source for path, source in code.items() if path.parts[-2] in ("tasks", "flows"))
    assert "getattr(" not in tasks and "cv_" not in tasks


def test_every_cache_key_reads_parameters_its_task_has():
    import importlib

    from prefect import Task
    from prefect.cache_policies import CacheKeyFnPolicy

    checked = 0
    for name in ("analyses", "data", "planning", "search", "shipping"):
        module = importlib.import_module(f"tasks.{name}")
        for task in [value for value in vars(module).values() if isinstance(value, Task)]:
            if not isinstance(task.cache_policy, CacheKeyFnPolicy):
                continue
            read = set(re.findall(r'parameters\["(\w+)"\]', inspect.getsource(task.cache_policy.cache_key_fn)))
            assert read <= set(inspect.signature(task.fn).parameters), (task.name, read)
            checked += 1
    assert checked >= 10
