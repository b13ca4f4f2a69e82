#!/usr/bin/env bash
# Two commits' quick runs on the built-in data (or DATA), alternating A B B A, alone on this machine: each
# run's flow and stage seconds, the workers' utilization (summary.json) and the test accuracy.
# Machines of one kind differ up to 3x: compare only within one call of this script.
#   bench/ab_quick.sh BASE_REV [NEW_REV] [OUT]    (NEW_REV default HEAD, OUT default /tmp/ab-quick;
#   PRESET=smoke to try the script itself in a few minutes; DATA=D to run on the dataset in D)
set -u
cd "$(dirname "$0")/.."
BASE=${1:?a base revision}; NEW=${2:-HEAD}; R=${3:-/tmp/ab-quick}
PY=$PWD/.venv/bin/python PRESET=${PRESET:-quick}
rm -rf "$R"; mkdir -p "$R"
for side in base new; do
  rev=$([ $side = base ] && echo "$BASE" || echo "$NEW")
  git worktree add -f --detach "$R/$side" "$rev" -q || exit 1
done
trap 'git worktree remove --force "$R/base"; git worktree remove --force "$R/new"' EXIT
run() {  # $1: base or new, $2: its run number
  local code=$R/$1 work=$R/w-$1$2
  (cd "$code" && PYTHONPATH=$code $PY -m glasses run --preset $PRESET --work-dir "$work" ${DATA:+--data-dir "$DATA"} \
     > "$R/$1$2.log" 2>&1)
  echo "$1$2 rc=$?"
  $PY - "$work/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
d, u = s["durations_s"], s["utilization"]
print(f"  flow {d['total']:.1f} s; stages " + ", ".join(f"{k} {d[k]:.1f}" for k in ("stage1", "stage2", "stage3"))
      + "; utilization " + ", ".join(f"{k} {v['utilization']:.3f}" for k, v in u.items())
      + f"; test {s['ensemble']['test_accuracy']:.4f}")
PY
}
run base 1; run new 1; run new 2; run base 2
