#!/usr/bin/env bash
# A run's report where people look, in headless Chromium: a `smoke` run on the built-in data against
# a real `prefect server start`, then screenshots of its report artifact (the stage sections: what
# each stage held fixed, which of stage 1's trials counted in stage 2's choice), of its `saliency`
# artifact page, and of its report.md's saliency section rendered to HTML (python-markdown, figures
# beside it as in the work dir).
#   bench/ui_report.sh [OUT] [WORK]   (OUT default /tmp/glasses-ui-report; needs chromium; port 4311 free)
#   WORK: an existing work dir whose report.md to render too (e.g. a quick run's), besides the smoke run's
set -u
cd "$(dirname "$0")/.."
R=${1:-/tmp/glasses-ui-report}; rm -rf "$R"; mkdir -p "$R/shots"
export PREFECT_HOME=$R/prefect-home
BIN=.venv/bin UI=http://127.0.0.1:4311 API=http://127.0.0.1:4311/api
. bench/ui_lib.sh
start_server 4311
trap 'kill -TERM $SERVER 2>/dev/null; wait' EXIT
export PREFECT_API_URL=$API
$BIN/glasses run --preset smoke --work-dir "$R/work" > "$R/run.log" 2>&1
echo "smoke run: rc $? ($(grep -m1 'shipped model' "$R/run.log"))"
render() {  # $1: work dir -> report-saliency.html beside its report.md (so figures/ resolve): the report's
  # saliency section, from "### Where the model looks" to the next heading of its level or above
  $BIN/python -c "import markdown, re, sys; from pathlib import Path; w = Path(sys.argv[1]); \
text = (w / 'report.md').read_text(); start = text.index('### Where the model looks'); \
end = re.search(r'^##? ', text[start + 4:], re.M); part = text[start:start + 4 + end.start()] if end else text[start:]; \
(w / 'report-saliency.html').write_text('<html><body style=\"font-family: sans-serif; max-width: 1300px\">' \
+ markdown.markdown(part, extensions=['tables']) + '</body></html>')" "$1"; }
REPORT=$(query artifacts/filter '{"artifacts": {"key": {"any_": ["glasses-report"]}}}' "print(rows[0]['id'])")
shot report-artifact "$UI/artifacts/artifact/$REPORT" 5200
grep -n "Held fixed\|The choice counts\|No trial of" "$R/work/report.md"
ARTIFACT=$(query artifacts/filter '{"artifacts": {"key": {"any_": ["saliency"]}}}' "print(rows[0]['id'])")
shot artifact "$UI/artifacts/artifact/$ARTIFACT" 2200
render "$R/work"
shot report "file://$R/work/report-saliency.html" 1400
if [ -n "${2:-}" ]; then
  mkdir -p "$R/quick" && cp -r "$2/figures" "$2/report.md" "$R/quick/"
  render "$R/quick"
  shot quick-report "file://$R/quick/report-saliency.html" 1700
fi
