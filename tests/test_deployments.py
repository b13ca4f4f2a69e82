"""The deployment from deployments/prefect.yaml and `glasses serve`, against the session's
Prefect test server; `glasses status` on a work dir."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from prefect.client.orchestration import get_client
from typer.testing import CliRunner

from glasses.cli import app
from glasses.config import RETUNE_CRON
from glasses.workdir import claim, make_ours, status

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(tmp_path / "home")}


def _prefect(tmp_path: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args], cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_prefect_yaml_deploys_the_pipeline_weekly_on_a_process_pool(prefect_server, tmp_path):
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["deployments"][0]
    assert spec["schedules"][0]["cron"] == RETUNE_CRON
    _prefect(tmp_path, "work-pool", "create", "glasses", "--type", "process")
    _prefect(tmp_path, "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("glasses-pipeline/weekly-retune")
    assert deployment.entrypoint == "flows/pipeline.py:pipeline"
    assert deployment.work_pool_name == "glasses"
    assert [s.schedule.cron for s in deployment.schedules] == [RETUNE_CRON]
    assert deployment.parameters == {"preset": "quick", "mode": "retune"}
    assert deployment.global_concurrency_limit.limit == 1


@pytest.mark.slow
def test_glasses_serve_registers_the_deployment_and_a_triggered_run_completes(prefect_server, tmp_path):
    from prefect.deployments import run_deployment

    work, small = tmp_path / "work", tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump({"search": {  # the smallest whole run: one size, one trial a search
        "workers": 1, "stage1": {"image_sizes": [16], "max_trials": 1}, "stage2": {"max_trials": 1},
        "stage3": {"max_trials": 1, "keep": 1}}, "ensemble": {"fallback": 1}}))
    serve = subprocess.Popen([sys.executable, "-m", "glasses", "serve", "--preset", "smoke", "--work-dir", str(work),
                              "--config", str(small), "--name", "served"], cwd=ROOT, env=_env(tmp_path),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert "serving deployment glasses-pipeline/served" in serve.stdout.readline()
        deployment = _wait_for_deployment("glasses-pipeline/served")
        assert [s.schedule.cron for s in deployment.schedules] == [RETUNE_CRON]
        assert deployment.parameters["preset"] == "smoke" and deployment.parameters["mode"] == "retune"
        run = run_deployment("glasses-pipeline/served", timeout=600, poll_interval=5)
        assert run.state.is_completed(), run.state.message
        assert run.name.startswith("smoke-builtin-")
        assert (work / "model" / "ensemble.keras").is_file()
        assert pd.read_csv(work / "models" / "registry.csv")["mode"].tolist() == ["retune"]
    finally:
        os.killpg(serve.pid, 15)
        serve.wait(timeout=60)


def _wait_for_deployment(name: str, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            try:
                return client.read_deployment_by_name(name)
            except Exception:
                assert time.monotonic() < deadline, f"{name} was never registered"
                time.sleep(1)


def test_status_tells_done_running_failed_and_not_started(tmp_path):
    work = tmp_path / "w"
    make_ours(work)  # as a run's claim does
    (work / "split").mkdir(parents=True)
    (work / "split" / "split.json").write_text("{}")
    (work / "stages" / "stage1").mkdir(parents=True)
    (work / "stages" / "stage1" / "stage.json").write_text("{}")
    (work / "stages" / "stage2" / "kt-1").mkdir(parents=True)
    (work / "stages" / "stage2" / "kt-1" / "size16.chief-down").write_text("{}")
    found = status(work)
    assert [found[s] for s in ("data", "stage1", "stage2", "stage3", "ensemble")] == [
        "done", "done", "failed", "not started", "not started"]
    assert found["held by"] == "nobody"
    with claim(work):
        held = status(work)
        assert held["stage2"] == "running" and str(os.getpid()) in held["held by"]
    result = CliRunner().invoke(app, ["status", "--work-dir", str(work)])
    assert result.exit_code == 0 and "stage2    failed" in result.stdout
