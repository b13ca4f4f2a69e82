#!/usr/bin/env bash
# The README's deployment commands against a real `prefect server start`, checked in a real browser:
# serve the deployment, run `smoke` with a fault injected in stage 3 (GLASSES_FAULT=stage3: it fails
# after one trial, and again on the flow's own retry), serve again without it, retry the failed run
# (`prefect flow-run retry`), then screenshot the deployment, the flow run, the retried stages'
# task runs (Cached up to stage 3), the Artifacts page and the report artifact with headless Chromium;
# then one more run (the deployment retunes: stage 3 grows) and its champion artifact (this run's
# model against the one serving) and `glasses models`.
#   bench/ui_check.sh [OUT]      (OUT default /tmp/glasses-ui; needs chromium; port 4200 free)
set -u
cd "$(dirname "$0")/.."
R=${1:-/tmp/glasses-ui}; rm -rf "$R"; mkdir -p "$R/shots"
export PREFECT_HOME=$R/prefect-home GLASSES_HOME=$R/glasses-home
BIN=.venv/bin UI=http://127.0.0.1:4200 API=http://127.0.0.1:4200/api
. bench/ui_lib.sh
start_server 4200
trap 'kill -TERM ${SERVE:-} $SERVER 2>/dev/null; wait' EXIT
export PREFECT_API_URL=$API
serve() {  # $1: log name; the environment is the served runs' environment
  $BIN/glasses serve > "$R/$1.log" 2>&1 & SERVE=$!
  for i in $(seq 1 90); do grep -q "glasses-pipeline/" "$R/$1.log" && break; sleep 1; done
  grep -m1 "serving deployment" "$R/$1.log"; }

GLASSES_FAULT=stage3 serve serve-fault
$BIN/prefect deployment run glasses-pipeline/weekly-retune -p preset=smoke --watch > "$R/run.log" 2>&1
ID=$(grep -oEm1 "[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}" "$R/run.log")
echo "flow run $ID: $(tail -1 "$R/run.log")"
kill -TERM $SERVE; wait $SERVE 2>/dev/null
serve serve
$BIN/prefect flow-run retry "$ID" | tail -1
for i in $(seq 1 300); do
  STATE=$(curl -s "$API/flow_runs/$ID" | python3 -c "import json, sys; print(json.load(sys.stdin)['state_type'])")
  case $STATE in COMPLETED|FAILED|CRASHED|CANCELLED) break;; esac; sleep 2
done
echo "after the retry: $STATE"
LAST=$(query flow_runs/filter '{"sort": "START_TIME_DESC", "limit": 5}' \
  "print(next(r['id'] for r in rows if r['parent_task_run_id']))")
echo "the retried stages' task runs:"
query task_runs/filter "{\"flow_runs\": {\"id\": {\"any_\": [\"$LAST\"]}}, \"sort\": \"EXPECTED_START_TIME_ASC\", \"limit\": 200}" \
  "[print(f\"  {r['name']:32} {r['state_name']}\") for r in rows]"
$BIN/glasses status | tail -8
DEPLOYMENT=$(query deployments/filter '{}' "print(rows[0]['id'])")
REPORT=$(query artifacts/filter '{"artifacts": {"key": {"any_": ["glasses-report"]}}}' "print(rows[0]['id'])")
shot deployment "$UI/deployments/deployment/$DEPLOYMENT"
shot flow-run "$UI/runs/flow-run/$ID"
shot retried-stages "$UI/runs/flow-run/$LAST" 1600
shot artifacts "$UI/artifacts"
shot report "$UI/artifacts/artifact/$REPORT" 1600
$BIN/prefect deployment run glasses-pipeline/weekly-retune -p preset=smoke --watch > "$R/retune.log" 2>&1
echo "a second run (retune): $(tail -1 "$R/retune.log")"
$BIN/glasses models --work-dir "$GLASSES_HOME"
CHAMPION=$(query artifacts/filter '{"artifacts": {"key": {"any_": ["champion"]}}, "sort": "CREATED_DESC"}' "print(rows[0]['id'])")
shot champion "$UI/artifacts/artifact/$CHAMPION"
