"""Notifications of a served deployment, against a real `prefect server start` on loopback (its
triggers and actions services run by default) and a small HTTP receiver on loopback standing in
for the webhook: events of the runs, automations created once, one notification per thing that
happened (a failed run naming the stage, a run that learned nothing, a promotion with both
models' scores), re-tuning an unchanged week all Cached and saying so."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId, FlowRunFilterId
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.settings import PREFECT_API_URL, temporary_settings

from conftest import KAGGLE_SUBDIR, write_kaggle_dataset
from deployments import notify

ROOT = Path(__file__).resolve().parents[1]
NAME = "weekly-test"
DEPLOYMENT = f"glasses-pipeline/{NAME}"
IMAGES = 200  # 20 test images: a model that learned is told from the majority class (Wilson)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(what: str, check, timeout_s: float = 120, every_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(every_s)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real `prefect server start` on a free loopback port, its own PREFECT_HOME; this process
    talks to it. Yields its API URL."""
    home, port = tmp_path_factory.mktemp("prefect-server"), _free_port()
    api, ui = f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PREFECT_UI_API_URL=api, PREFECT_UI_URL=ui,
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    log = (home / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        _wait("the Prefect server answers", lambda: process.poll() is None and _healthy(api), timeout_s=180)
        with temporary_settings(updates={PREFECT_API_URL: api}):
            yield api
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def receiver():
    """A webhook on loopback: yields (its URL, the JSON bodies POSTed to it so far)."""
    _Receiver.received = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", _Receiver.received
    finally:
        httpd.shutdown()


@pytest.mark.slow
def test_a_served_deployment_notifies_failure_nothing_learned_and_promotion_once_each(server, receiver, tmp_path,
                                                                                       monkeypatch):
    url, received = receiver
    _serve_without_notify_creates_nothing_and_says_how(monkeypatch)
    data, work = tmp_path / "data", tmp_path / "work"
    write_kaggle_dataset(data, [i % 2 for i in range(IMAGES)], size=(16, 16))  # glasses: a dark bar
    faces = {path: path.read_bytes() for path in (data / KAGGLE_SUBDIR).glob("face-*.png")}
    for path in faces:  # first, images that say nothing of their labels: every one face-1's (no bar)
        path.write_bytes(faces[data / KAGGLE_SUBDIR / "face-1.png"])
    small = tmp_path / "small.yaml"
    settings = {"search": {"workers": 1, "stage1": {"image_sizes": [16], "max_trials": 1},
                           "stage2": {"max_trials": 1}, "stage3": {"max_trials": 1, "keep": 1, "retune_trials": 0}},
                "ensemble": {"fallback": 1}}
    small.write_text(yaml.safe_dump(settings))
    serve = [sys.executable, "-m", "glasses", "serve", "--preset", "quick", "--data-dir", str(data),
             "--work-dir", str(work), "--config", str(small), "--name", NAME, "--notify", url]

    first = _serve(serve, tmp_path / "serve1.log")
    try:
        ids = _automation_ids()
        # Run 1, labels the images do not tell: learns nothing; its model is the first champion.
        run1 = _run({"preset": "smoke"})
        assert run1.state.name == "Nothing learned", run1.state
        assert {"glasses", "smoke", "retune"} <= set(run1.tags) and "quick" not in run1.tags  # its own preset
        # Run 2, images that tell (changed data, every stage anew): a better model replaces the champion.
        for path, image in faces.items():
            path.write_bytes(image)
        run2 = _run({"preset": "smoke"})
        assert run2.state.is_completed() and run2.state.name == "Completed", run2.state
        decision = json.loads((work / "summary.json").read_text())["champion"]
        assert decision["promoted"] and decision["champion"] is not None
        # Run 3, the same week again (retune_trials 0): every stage Cached, and it says so.
        run3 = _run({"preset": "smoke"})
        assert run3.state.name == "Completed", run3.state
        assert _not_cached(run3) == {}
        assert _events("glasses.run.unchanged", run3)
        assert not _events("glasses.champion.promoted", run3, wait_s=0)
        # A test notification, from the block the first serve saved.
        test = subprocess.run([sys.executable, "-m", "glasses", "serve", "--name", NAME, "--notify-test"], cwd=ROOT,
                              env=_env(), capture_output=True, text=True, timeout=300)
        assert test.returncode == 0, test.stderr
    finally:
        _stop(first)

    second = _serve(serve, tmp_path / "serve2.log", GLASSES_FAULT="stage3")
    try:
        assert _automation_ids() == ids  # served again: the same three automations, updated in place
        notify.main([url, "--deployment", DEPLOYMENT])  # what follows `prefect deploy`: the same again
        assert _automation_ids() == ids
        # Run 4, stage 3 asked for two more trials and made to fail after the first (the test-only switch).
        stage3 = {**settings["search"]["stage3"], "max_trials": 3}
        more = {**settings, "search": {**settings["search"], "stage3": stage3}}
        run4 = _run({"preset": "smoke", "overrides": more})
        assert run4.state.is_failed(), run4.state
        assert _events("glasses.stage.failed", run4)
    finally:
        _stop(second)

    _wait("the failure notification", lambda: _kinds(received).get("failed"))
    time.sleep(5)  # (a duplicate would come from an event processed before the last)
    kinds = _kinds(received)
    assert {kind: len(bodies) for kind, bodies in kinds.items()} == {
        "failed": 1, "nothing learned": 1, "now serves": 2, "test": 1}, received
    failed = kinds["failed"][0]
    assert run4.name in failed["subject"] and str(run4.id) in failed["body"] and "stage3" in failed["body"]
    learned_nothing = kinds["nothing learned"][0]
    assert run1.name in learned_nothing["subject"] and str(run1.id) in learned_nothing["body"]
    assert "nothing learned: " in learned_nothing["body"] and "try a bigger budget" in learned_nothing["body"]
    first_promotion, promotion = kinds["now serves"]
    assert str(run1.id) in first_promotion["body"] and "replacing none" in first_promotion["body"]
    champion, challenger = decision["champion"], decision["challenger"]
    assert str(run2.id) in promotion["body"]
    assert f"(val {challenger['val']:.4f}, test {challenger['test']:.4f})" in promotion["body"]
    assert f"replacing {champion['run']} (val {champion['val']:.4f}, test {champion['test']:.4f})" in promotion["body"]
    (tmp_path / "received.json").write_text(json.dumps(received, indent=1))  # (to look at)


def test_notices_say_promoted_kept_out_unchanged_nothing_learned_and_which_stage_failed(tmp_path):
    from glasses import notices
    from glasses.workdir import WorkDir
    from tasks import events

    work = WorkDir(tmp_path)
    (tmp_path / "models" / "b").mkdir(parents=True)
    (tmp_path / "models" / "b" / "entry.json").write_text(json.dumps({"data_fingerprint": "f" * 16}))
    old, new = {"run": "a", "val": 0.5, "test": 0.45}, {"run": "b", "val": 0.9, "test": 0.85}
    decision = {"challenger": new, "champion": old, "promoted": True, "reason": "better", "margin": 0.02,
                "serving": "b"}
    promoted = notices.champion_notice(work, decision, "f" * 16)
    assert promoted.event == "glasses.champion.promoted" and (promoted.model, promoted.previous) == ("b", "a")
    assert promoted.message == "b (val 0.9000, test 0.8500) now serves, replacing a (val 0.5000, test 0.4500): better"
    assert promoted.payload["champion"] == old and promoted.payload["challenger"] == new
    first = notices.champion_notice(work, {**decision, "champion": None, "reason": "no champion yet"}, "f" * 16)
    assert first.message.endswith("replacing none: no champion yet") and first.previous is None
    kept = notices.champion_notice(work, {**decision, "promoted": False, "reason": "val is below", "serving": "a"}, "")
    assert kept.event == "glasses.challenger.kept-out" and "a (val 0.5000, test 0.4500) still serves" in kept.message
    same = {**decision, "champion": new, "promoted": False, "reason": "it is the champion already"}
    assert notices.champion_notice(work, same, "f" * 16).event == "glasses.run.unchanged"
    assert notices.champion_notice(work, same, "e" * 16).event == "glasses.challenger.kept-out"  # other data

    alarm = {"raised": True, "too_few": False, "verdict": "nothing learned", "reason": "ROC-AUC 0.5",
             "advice": "try more", "message": "nothing learned: ROC-AUC 0.5; try more", "test_accuracy": 0.5}
    said = notices.alarm_notice({"alarm": alarm, "champion": {"challenger": new}})
    assert (said.event, said.model, said.payload["advice"]) == ("glasses.run.nothing-learned", "b", "try more")
    assert notices.alarm_notice({"alarm": {**alarm, "too_few": True}}).event == "glasses.run.not-clearly-learned"
    assert notices.alarm_notice({"alarm": {**alarm, "raised": False}}) is None
    assert notices.alarm_notice({"alarm": alarm, "champion": same}) is None  # told when it first shipped
    events.emit(None, tmp_path)  # (what outcome() then sends: nothing, and no error)
    failed = notices.stage_failure_notice("chief-stage3-size16", "fault", tmp_path)
    assert failed.payload["stage"] == "stage3" and failed.message == "stage3 failed (chief-stage3-size16): fault"
    assert notices.work_dir_id(tmp_path) == notices.work_dir_id(tmp_path / ".." / tmp_path.name)


def test_the_automations_match_the_deployment_and_the_run_form_hides_internal_parameters():
    from uuid import uuid4

    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import pipeline

    deployment, block = uuid4(), uuid4()
    made = notify.automations("weekly", deployment, block)
    assert {kind: a.name for kind, a in made.items()} == {
        "failed": "glasses-pipeline/weekly: run failed", "nothing-learned": "glasses-pipeline/weekly: nothing learned",
        "promoted": "glasses-pipeline/weekly: champion promoted"}
    assert made["failed"].trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed",
                                             "prefect.flow-run.TimedOut", "prefect.flow-run.Orphaned"}
    assert made["nothing-learned"].trigger.expect == {"glasses.run.nothing-learned", "glasses.run.not-clearly-learned"}
    for automation in made.values():
        assert automation.trigger.match_related.root == {"prefect.resource.id": f"prefect.deployment.{deployment}",
                                                         "prefect.resource.role": "deployment"}
        assert automation.actions[0].block_document_id == block and automation.owner_resource is None
    assert notify.block_name("Weekly Retune") == "glasses-pipeline-weekly-retune"
    with pytest.raises(ValueError, match="neither a URL nor a saved block"):
        notify.notification_block("not-a-url", "weekly")

    form = parameter_schema(pipeline).model_dump()["properties"]
    assert "budget_started_at" not in form  # internal: `glasses run` sets it
    assert all(field.get("description") for field in form.values()), form
    assert pipeline.validate_parameters({"budget_started_at": 1.0})["budget_started_at"] == 1.0  # still taken


def test_tidy_after_changed_data_reads_sizes_past_the_chiefs_cards(tmp_path):
    from glasses import stages

    search = tmp_path / "stages" / "stage1" / "kt-old"
    search.mkdir(parents=True)
    for name in ("size16.json", "size16.chief.json", "size24.json"):
        (search / name).write_text("{}")
    assert stages._sizes([search]) == {16, 24}


# ---------------------------------------------------------------------------------------------


def _serve_without_notify_creates_nothing_and_says_how(monkeypatch) -> None:
    """`glasses serve` without --notify (its serving loop left out): no automation, and a hint."""
    from prefect.flows import Flow

    from deployments import serve

    out = io.StringIO()
    with monkeypatch.context() as patch, contextlib.redirect_stdout(out):
        patch.setattr(Flow, "serve", lambda *args, **kwargs: None)
        serve.serve("no-notify", "0 3 * * 1", {"preset": "smoke"}, tags=["glasses"])
    said = out.getvalue()
    assert "no notifications for glasses-pipeline/no-notify: add `--notify URL`" in said and "--notify-test" in said
    with get_client(sync_client=True) as client:
        assert [a.name for a in client.read_automations() if "no-notify" in a.name] == []


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), **extra}


def _serve(command: list[str], log: Path, **extra: str) -> subprocess.Popen:
    """`glasses serve ...` in its own process group, once it has set up its automations."""
    process = subprocess.Popen(command, cwd=ROOT, env=_env(**extra), stdout=log.open("w"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    _wait("glasses serve set up its automations",
          lambda: process.poll() is None and log.read_text().count("automation ") == 3 or process.poll() is not None,
          timeout_s=240)
    assert process.poll() is None, log.read_text()[-3000:]
    return process


def _stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=120)


def _automation_ids() -> dict[str, str]:
    with get_client(sync_client=True) as client:
        mine = [a for a in client.read_automations() if a.name.startswith(f"{DEPLOYMENT}: ")]
    names = [a.name for a in mine]
    assert len(names) == len(set(names)) == 3, names
    return {a.name: str(a.id) for a in mine}


def _run(parameters: dict):
    from prefect.deployments import run_deployment

    return run_deployment(DEPLOYMENT, parameters=parameters, timeout=600, poll_interval=2)


def _not_cached(run) -> dict[str, str]:
    """The task runs of the run's stages that were not Cached (those that always run left out)."""
    always = {"fingerprint", "summary", "champion", "tidy", "kept-choices", "retune-trials", "source", "check-storage"}
    with get_client(sync_client=True) as client:
        stages = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])))
        tasks = _wait("the stages' task runs are final", lambda: [
            t for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[stages[0].id])))
            if t.state and t.state.is_final()] or None)
    return {t.name: t.state.name for t in tasks
            if t.state.name != "Cached" and t.name.rsplit("-", 1)[0] not in always}


def _events(name: str, run, wait_s: float = 60) -> list:
    """The events `name` that relate to the flow run `run`, waited for up to `wait_s`."""
    def found():
        with get_client(sync_client=True) as client:
            page = client.read_events(EventFilter(
                event=EventNameFilter(name=[name]),
                related=EventRelatedFilter(resources_in_roles=[(f"prefect.flow-run.{run.id}", "flow-run")])), limit=50)
        return page.events
    return _wait(f"event {name} of {run.name}", found, timeout_s=wait_s) if wait_s else found()


def _kinds(received: list[dict]) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for body in received:
        subject = body.get("subject", "")
        kind = next((k for k in ("failed", "Failed", "Crashed", "nothing learned", "not clearly learned",
                                 "now serves", "test") if k in subject), subject)
        kinds.setdefault("failed" if kind in ("Failed", "Crashed") else kind, []).append(body)
    return kinds
