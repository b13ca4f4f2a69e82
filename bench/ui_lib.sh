# Shared by bench/ui_*.sh (source it after setting R, BIN and API): start a real Prefect server,
# query its API, screenshot a page with headless Chromium.
start_server() {  # $1: port; sets SERVER (its pid) and waits for its health check
  PREFECT_UI_API_URL=http://127.0.0.1:$1/api PREFECT_SERVER_ANALYTICS_ENABLED=false \
    $BIN/prefect server start --host 127.0.0.1 --port "$1" > "$R/server.log" 2>&1 &
  SERVER=$!
  for i in $(seq 1 120); do curl -sf "http://127.0.0.1:$1/api/health" >/dev/null && break; sleep 1; done
  echo "server up after $i s"; }
query() {  # $1: endpoint, $2: JSON body, $3: python expression over `rows`
  curl -s -X POST "$API/$1" -H 'content-type: application/json' -d "$2" \
    | python3 -c "import json, sys; rows = json.load(sys.stdin); $3"; }
shot() {  # $1: name, $2: URL or file, $3: window height (default 1100), $4: width (default 1600)
  chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=${4:-1600},${3:-1100} \
    --virtual-time-budget=30000 --screenshot="$R/shots/$1.png" "$2" >/dev/null 2>&1
  echo "screenshot $R/shots/$1.png"; }
