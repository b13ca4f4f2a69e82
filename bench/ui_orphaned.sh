#!/usr/bin/env bash
# A served run whose `glasses serve` is killed (SIGKILL) mid-stage-1, against a real `prefect server
# start`, looked at in a real browser, then retried as the UI's Retry does: `glasses serve --preset
# smoke` with a slow stage 1 (one size, 6 trials of 200 steps), a run started, serve killed once two
# trials of stage 1 have ended; the seconds until no process of the run is left and the work dir's
# lock is free, and until the run reads Orphaned; screenshots of the run's page (and its Details tab,
# where the State Message is) and of the runs list;
# serve started again and the run proposed AwaitingRetry (not forced); its final state, whether
# stage 1's ended trials were trained again (their trial.json and checkpoints before and after, the
# chief's log), and a screenshot of the run's page once it ended.
#   bench/ui_orphaned.sh [OUT]      (OUT default /tmp/glasses-orphaned; needs chromium)
set -u
cd "$(dirname "$0")/.."
R=${1:-/tmp/glasses-orphaned}; rm -rf "$R"; mkdir -p "$R/shots"
export PREFECT_HOME=$R/prefect-home GLASSES_HOME=$R/glasses-home
BIN=.venv/bin W=$R/glasses-home  # serve's runs use $GLASSES_HOME as their work dir
PORT=$($BIN/python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
UI=http://127.0.0.1:$PORT API=http://127.0.0.1:$PORT/api
. bench/ui_lib.sh
start_server "$PORT"
stop_serve() {  # serve's session (setsid: its pid is its group's), then any role of the work dir's searches
  [ -n "${SERVE:-}" ] && kill -KILL -- "-$SERVE" 2>/dev/null
  for pid in $(pgrep -f "$W/stages"); do kill -KILL "$pid" 2>/dev/null; done; }
trap 'stop_serve; kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
export PREFECT_API_URL=$API PREFECT_UI_URL=$UI PREFECT_RUNNER_POLL_FREQUENCY=2
cat > "$R/slow.yaml" <<'EOF'
search: {workers: 1, stage1: {image_sizes: [16], max_trials: 6, max_steps: 200, patience_steps: 200},
         stage2: {max_trials: 1}, stage3: {max_trials: 1, keep: 1, retune_trials: 0}}
ensemble: {fallback: 1}
EOF
serve() {  # $1: log name; serve in a session of its own (setsid), so that SIGKILL reaches it alone
  setsid $BIN/glasses serve --preset smoke --config "$R/slow.yaml" --name orphan > "$R/$1.log" 2>&1 & SERVE=$!
  for i in $(seq 1 180); do
    curl -sf "$API/deployments/name/glasses-pipeline/orphan" >/dev/null && break; sleep 1; done
  echo "$1: glasses-pipeline/orphan registered after $i s (serve pid $SERVE)"; }
state() {  # the run's state: TYPE name (run count): message
  curl -s "$API/flow_runs/$RUN" | python3 -c "import json, sys; r = json.load(sys.stdin); s = r['state']; \
print(s['type'], s['name'], f'(run count {r[\"run_count\"]}):', s['message'])"; }
ended_trials() {  # stage 1's trials that have ended (KerasTuner's trial.json status), with their files' digest
  $BIN/python -c "
import hashlib, json, sys
from pathlib import Path
for trial in sorted(Path(sys.argv[1]).glob('stages/stage1/**/trial_*/trial.json')):
    status = json.loads(trial.read_text()).get('status')
    if status in ('COMPLETED', 'INVALID', 'FAILED', 'STOPPED'):
        files = sorted(p for p in trial.parent.rglob('*') if p.is_file() and p.name != 'trial.json')
        digest = hashlib.sha1(b''.join(p.read_bytes() for p in files)).hexdigest()[:10]
        print(trial.parent.name, status, len(files), 'files', digest)" "$W"; }

serve serve1
RUN=$($BIN/prefect deployment run glasses-pipeline/orphan 2>&1 | sed -n 's/.*UUID: *\([0-9a-f-]\{36\}\).*/\1/p' | head -1)
[ -n "$RUN" ] || { echo "no run was started"; exit 1; }
echo "run $RUN: $UI/runs/flow-run/$RUN"
for i in $(seq 1 600); do [ "$(ended_trials | wc -l)" -ge 2 ] && break; sleep 1; done
echo "stage 1 at the kill ($i s after the run was asked for): $(find "$W/stages/stage1" -type d -name 'trial_*' | wc -l) trial dirs"
ended_trials | tee "$R/ended-before.txt"
# Every process of the run: below serve (the run's process, its resource tracker) and the roles (own sessions)
RUNPIDS="$($BIN/python -c "import psutil, sys; print(' '.join(str(p.pid) for p in psutil.Process(int(sys.argv[1])).children(recursive=True)))" "$SERVE") $(pgrep -f "$W/stages")"
RUNPIDS=$(echo $RUNPIDS | tr ' ' '\n' | sort -un | tr '\n' ' ')
echo "processes of the run before the kill: $RUNPIDS"
KILLED=$(date +%s.%N); kill -KILL "$SERVE"; wait "$SERVE" 2>/dev/null; KILLED_PID=$SERVE; SERVE=
$BIN/python - "$W" "$KILLED" "$API/flow_runs/$RUN" $RUNPIDS <<'EOF' | tee "$R/after-kill.txt"
import json, sys, time, urllib.request
import psutil
from glasses.workdir import status
work, killed, url, pids = sys.argv[1], float(sys.argv[2]), sys.argv[3], [int(p) for p in sys.argv[4:]]
def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
def roles():
    return [p.pid for p in psutil.process_iter(["cmdline"]) if f"{work}/stages" in " ".join(p.info["cmdline"] or [])]
gone = orphaned = None
while time.time() - killed < 120 and (gone is None or orphaned is None):
    if gone is None and not any(alive(p) for p in pids) and not roles() and status(work)["held by"] == "nobody":
        gone = time.time() - killed
        print(f"SIGKILL of serve -> no process of the run left, lock free: {gone:.1f} s", flush=True)
    state = json.load(urllib.request.urlopen(url))["state"]
    if orphaned is None and state["name"] == "Orphaned":
        orphaned = time.time() - killed
        print(f"SIGKILL of serve -> run {state['type']} {state['name']}: {orphaned:.1f} s", flush=True)
    time.sleep(0.2)
if gone is None:
    print(f"after 120 s: left {[p for p in pids if alive(p)] + roles()}, lock held by {status(work)['held by']}")
if orphaned is None:
    print(f"after 120 s the run is still {state['type']} {state['name']}")
EOF
echo "run state: $(state)"
$BIN/glasses status --work-dir "$W" 2>&1 | sed 's/^/  status: /'
shot run-orphaned "$UI/runs/flow-run/$RUN" 1000
shot run-orphaned-details "$UI/runs/flow-run/$RUN?tab=Details" 1000  # its State Message
shot runs-orphaned "$UI/runs" 1000

serve serve2
echo "retry as the UI does (AwaitingRetry, not forced):"
curl -s -X POST "$API/flow_runs/$RUN/set_state" -H 'content-type: application/json' \
  -d '{"state": {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"}, "force": false}' \
  | python3 -c "import json, sys; r = json.load(sys.stdin); print('  ', r['status'], r['details'], (r.get('state') or {}).get('name'))"
RETRIED=$(date +%s)
for i in $(seq 1 900); do
  case "$(state)" in COMPLETED*|FAILED*|CRASHED*|CANCELLED*) break;; esac; sleep 1; done
echo "retried run ended $(( $(date +%s) - RETRIED )) s after the retry: $(state | cut -c1-200)"
ended_trials > "$R/ended-after.txt"
echo "stage 1's trials that had ended before the kill, after the retry (same digest: not trained again):"
while read -r trial rest; do
  after=$(grep "^$trial " "$R/ended-after.txt" | cut -d' ' -f2-)
  [ "$after" = "$rest" ] && echo "   $trial unchanged ($rest)" || echo "   $trial CHANGED: before $rest, after $after"
done < "$R/ended-before.txt"
echo "   stage 1 trials ended in all: $(wc -l < "$R/ended-after.txt")"
echo "stage 1's chief, first served then served again:"
grep -h "chief: oracle serving\|had ended before the last chief\|trials ended" "$R/serve1.log" "$R/serve2.log" \
  | grep -v "stage[23]" | sed 's/^/   /' | cut -c1-200 | head -10
$BIN/glasses status --work-dir "$W" 2>&1 | sed 's/^/  status: /'
shot run-retried "$UI/runs/flow-run/$RUN" 1000
echo "killed serve pid $KILLED_PID; logs and screenshots in $R"
