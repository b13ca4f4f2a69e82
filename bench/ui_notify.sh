#!/usr/bin/env bash
# Notifications against a real `prefect server start`, looked at in a real browser: a webhook
# receiver on loopback (it prints what it is sent), `glasses serve --notify URL`, a smoke run on the
# built-in data (its first champion; on 60 images it learns nothing), the same week again (every
# stage Cached: `glasses.run.unchanged`), `--notify-test`, then served again with stage 3 made to
# fail (GLASSES_FAULT=stage3) and one more trial asked of it; the notifications received, the
# automations (the same three ids after serving twice), and screenshots of the Automations page and
# of the event feed filtered to `glasses.*` with headless Chromium.
#   bench/ui_notify.sh [OUT]      (OUT default /tmp/glasses-notify; needs chromium)
set -u
cd "$(dirname "$0")/.."
R=${1:-/tmp/glasses-notify}; rm -rf "$R"; mkdir -p "$R/shots"
export PREFECT_HOME=$R/prefect-home GLASSES_HOME=$R/glasses-home
BIN=.venv/bin
PORT=$($BIN/python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
HOOK_PORT=$($BIN/python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
UI=http://127.0.0.1:$PORT API=http://127.0.0.1:$PORT/api HOOK=http://127.0.0.1:$HOOK_PORT/hook
PREFECT_UI_API_URL=$API PREFECT_UI_URL=$UI PREFECT_SERVER_ANALYTICS_ENABLED=false \
  $BIN/prefect server start --host 127.0.0.1 --port "$PORT" > "$R/server.log" 2>&1 &
SERVER=$!
$BIN/python - "$HOOK_PORT" "$R/received.jsonl" > "$R/hook.log" 2>&1 <<'EOF' &
import http.server, sys
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(sys.argv[2], "ab") as out:
            out.write(body + b"\n")
        self.send_response(200); self.end_headers()
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Hook).serve_forever()
EOF
HOOKD=$!
trap 'kill -TERM ${SERVE:-} $HOOKD $SERVER 2>/dev/null; wait' EXIT
for i in $(seq 1 120); do curl -sf $API/health >/dev/null && break; sleep 1; done
echo "server up after $i s: $UI"
export PREFECT_API_URL=$API
cat > "$R/small.yaml" <<'EOF'
search: {workers: 1, stage1: {image_sizes: [16], max_trials: 1}, stage2: {max_trials: 1},
         stage3: {max_trials: 1, keep: 1, retune_trials: 0}}
ensemble: {fallback: 1}
EOF
serve() {  # $1: log name; the environment is the served runs' environment
  $BIN/glasses serve --preset smoke --config "$R/small.yaml" --notify "$HOOK" > "$R/$1.log" 2>&1 & SERVE=$!
  for i in $(seq 1 120); do [ "$(grep -c '^automation ' "$R/$1.log" 2>/dev/null)" = 3 ] && break; sleep 1; done
  grep -E "^(serving|automation)" "$R/$1.log" | cut -c1-160; }
run() {  # $1: log name, then `prefect deployment run` options
  local log=$1; shift
  $BIN/prefect deployment run glasses-pipeline/weekly-retune "$@" --watch > "$R/$log.log" 2>&1
  echo "$log: $(tail -1 "$R/$log.log")"; }

serve serve
run run1
START=$(date +%s); run run2; echo "the same week again took $(( $(date +%s) - START )) s, request to end"
$BIN/glasses serve --notify-test | cut -c1-160
kill -TERM $SERVE; wait $SERVE 2>/dev/null
GLASSES_FAULT=stage3 serve serve-fault
run run3 -p 'overrides={"search": {"workers": 1, "stage1": {"image_sizes": [16], "max_trials": 1}, "stage2": {"max_trials": 1}, "stage3": {"max_trials": 3, "keep": 1, "retune_trials": 0}}, "ensemble": {"fallback": 1}}'
sleep 10  # the last notification is sent a moment after the run ends
# Slack through its block: saved, then named as --notify would take it (nothing sent: no network here)
$BIN/python -c "
from prefect.blocks.notifications import SlackWebhook
from deployments.notify import notification_block
SlackWebhook(url='https://hooks.slack.com/services/T0/B0/X').save('team', overwrite=True)
block, block_id = notification_block('slack-webhook/team', 'weekly-retune')
print('--notify slack-webhook/team sends through', type(block).__name__, block_id)"
echo "notifications received (subject | body):"
$BIN/python -c "
import json, sys
for line in open('$R/received.jsonl'):
    sent = json.loads(line); print(' ', sent['subject'], '|', sent['body'].replace(chr(10), ' ')[:300])"
echo "automations:"
curl -s -X POST $API/automations/filter -H 'content-type: application/json' -d '{}' \
  | $BIN/python -c "import json, sys; [print('  ', a['id'], a['name']) for a in json.load(sys.stdin)]"
echo "glasses.* events:"
curl -s -X POST $API/events/filter -H 'content-type: application/json' \
  -d '{"filter": {"event": {"prefix": ["glasses."]}}, "limit": 50}' \
  | $BIN/python -c "import json, sys; [print('  ', e['occurred'][:19], e['event'], e['resource']['prefect.resource.name']) for e in json.load(sys.stdin)['events']]"
. bench/ui_lib.sh
shot automations "$UI/automations" 1000 1400
shot events "$UI/events?events=glasses.*" 1700 1400
