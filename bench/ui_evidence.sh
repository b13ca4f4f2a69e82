#!/usr/bin/env bash
# Stage 2's choice with stage 1's trials as evidence, as the Prefect UI shows it: a real
# `prefect server start`, a smoke run against it, a screenshot of the report artifact (headless
# Chromium); the stage 2 section says which of stage 1's trials counted.
#   bench/ui_evidence.sh [OUT]      (OUT default /tmp/glasses-ui-evidence; needs chromium; port 4211 free)
set -u
cd "$(dirname "$0")/.."
R=${1:-/tmp/glasses-ui-evidence}; rm -rf "$R"; mkdir -p "$R/shots"
export PREFECT_HOME=$R/prefect-home
BIN=.venv/bin UI=http://127.0.0.1:4211 API=http://127.0.0.1:4211/api
. bench/ui_lib.sh
start_server 4211
trap 'kill -TERM $SERVER 2>/dev/null; wait' EXIT
export PREFECT_API_URL=$API
$BIN/glasses run --preset smoke --work-dir "$R/work" > "$R/run.log" 2>&1; echo "run rc $?"
REPORT=$(query artifacts/filter '{"artifacts": {"key": {"any_": ["glasses-report"]}}}' "print(rows[0]['id'])")
shot report "$UI/artifacts/artifact/$REPORT" 5200
grep -n "The choice counts\|No trial of" "$R/work/report.md"
