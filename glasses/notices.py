"""What a person is told about a run: the notices a run gives (a champion promoted, a challenger
kept out, nothing learned, nothing changed, a stage failed), each an event name under `glasses.`,
one human line, and the numbers behind it.

The names and words live here; `tasks/events.py` sends them as Prefect events and
`deployments/notify.py` turns some of them into notifications.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from glasses.files import read_json
from glasses.workdir import WorkDir

PREFIX = "glasses"
PROMOTED = "glasses.champion.promoted"
KEPT_OUT = "glasses.challenger.kept-out"
UNCHANGED = "glasses.run.unchanged"
NOTHING_LEARNED = "glasses.run.nothing-learned"
NOT_CLEARLY_LEARNED = "glasses.run.not-clearly-learned"
STAGE_FAILED = "glasses.stage.failed"
ALL = (PROMOTED, KEPT_OUT, UNCHANGED, NOTHING_LEARNED, NOT_CLEARLY_LEARNED, STAGE_FAILED)


@dataclass(frozen=True)
class Notice:
    """One thing a person acts on.

    Attributes:
        event: Its event name, e.g. `glasses.champion.promoted`.
        message: One human line: what happened and why.
        payload: The numbers behind it (JSON types only); `message` is in it too.
        model: The registry entry it is about (None: none).
        previous: The entry it displaced or that kept it out (None: none).
    """

    event: str
    message: str
    payload: dict = field(default_factory=dict)
    model: str | None = None
    previous: str | None = None


def work_dir_id(root: Path) -> str:
    """A work dir as an event resource id: `glasses.work-dir.<its absolute path>` (the UI's
    event feed shows the ids of resources it does not know)."""
    return f"{PREFIX}.work-dir.{Path(root).resolve()}"


def _scores(side: dict | None) -> str:
    return "none" if side is None else f"{side['run']} (val {side['val']:.4f}, test {side['test']:.4f})"


def champion_notice(work: WorkDir, decision: dict, fingerprint: str) -> Notice:
    """The registry's decision on this run's model (glasses.registry.challenge) as a notice:
    promoted, kept out, or, when the same model serves already and was trained on this very data
    (`fingerprint`), nothing changed."""
    new, old = decision["challenger"], decision["champion"]
    payload = {"challenger": new, "champion": old, "reason": decision["reason"], "margin": decision["margin"],
               "serving": decision["serving"], "data_fingerprint": fingerprint, "work_dir": str(work.root)}
    if decision["promoted"]:
        message = f"{_scores(new)} now serves, replacing {_scores(old)}: {decision['reason']}"
        return Notice(PROMOTED, message, {**payload, "message": message}, new["run"], old and old["run"])
    if old is not None and old["run"] == new["run"] and _trained_on(work, new["run"]) == fingerprint:
        message = (f"nothing changed: the same data ({fingerprint[:16]}) and the same model as the one "
                   f"serving, {_scores(new)}")
        return Notice(UNCHANGED, message, {**payload, "message": message}, new["run"])
    message = f"{_scores(new)} kept out; {_scores(old)} still serves: {decision['reason']}"
    return Notice(KEPT_OUT, message, {**payload, "message": message}, new["run"], old and old["run"])


def _trained_on(work: WorkDir, entry: str) -> str | None:
    path = work.models / entry / "entry.json"
    return read_json(path).get("data_fingerprint") if path.is_file() else None


def alarm_notice(summary: dict) -> Notice | None:
    """The alarm of a run's summary (glasses.evaluate.Alarm) as a notice: its verdict, why and
    what to try. None when the model learned, and when it is the very model serving already (a
    week that changed nothing): its alarm was told when it first shipped."""
    alarm, decision = summary["alarm"], summary.get("champion") or {}
    model = decision.get("challenger", {}).get("run")
    if not alarm["raised"] or (decision.get("champion") or {}).get("run", "") == model:
        return None
    payload = {key: alarm.get(key) for key in ("verdict", "reason", "advice", "message", "test_accuracy",
                                               "accuracy_ci95", "majority_class", "majority_rate", "test_roc_auc",
                                               "min_roc_auc")}
    event = NOT_CLEARLY_LEARNED if alarm.get("too_few") else NOTHING_LEARNED
    return Notice(event, alarm["message"], {**payload, "model": model}, model)


def stage_of(task_run_name: str) -> str:
    """The stage a task run belongs to, from its name (`chief-stage3-size16` -> stage3);
    the name itself when it names none."""
    found = re.search(r"stage\d", task_run_name)
    return found.group(0) if found else task_run_name


def stage_failure_notice(task_run_name: str, why: str, work_root: Path | None) -> Notice:
    """A search stage's task failed (its chief, or the stage's finish): which stage and why."""
    stage = stage_of(task_run_name)
    message = f"{stage} failed ({task_run_name}): {why}"
    return Notice(STAGE_FAILED, message, {"stage": stage, "task_run": task_run_name, "reason": why,
                                          "work_dir": str(work_root) if work_root else None, "message": message})
