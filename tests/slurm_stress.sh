#!/usr/bin/env bash
# The Slurm tests, ROUNDS times in a row (default 5), with every core saturated by stress-ng:
# what a busy CI machine does to job start times, requeues and the controller's answers.
# Not run by CI (it takes half an hour on 2 cores); its summary is appended to
# docs/slurm_stress.log, which is kept in the repository.
#
#   tests/slurm_stress.sh                       # as root, from anywhere in the checkout
#   ROUNDS=2 TESTS="tests/test_slurm_cluster.py" tests/slurm_stress.sh
#
# Needs root (the test cluster's daemons), stress-ng (apt-get install stress-ng) and the venv.
set -uo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
PY=${PY:-.venv/bin/python}
LOG=${LOG:-docs/slurm_stress.log}
TESTS=${TESTS:-tests/test_slurm_cluster.py tests/test_slurm_submit.py}
CPUS=$(nproc)
command -v stress-ng >/dev/null || { echo "stress-ng missing: apt-get install stress-ng" >&2; exit 2; }
work=$(mktemp -d)
stress-ng --cpu "$CPUS" --timeout 0 --quiet &
stress=$!
trap 'kill "$stress" 2>/dev/null; wait "$stress" 2>/dev/null; rm -rf "$work"' EXIT
sleep 2
commit="$(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')"  # before the log grows
{
  echo
  echo "## $(date -u +%Y-%m-%dT%H:%MZ)  commit $commit"
  echo "stress-ng --cpu $CPUS on $CPUS cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
  echo "tests: $TESTS"
} >> "$LOG"
failed=0
for i in $(seq 1 "$ROUNDS"); do
  start=$(date +%s)
  OMP_NUM_THREADS=1 $PY -m pytest $TESTS -q -p no:cacheprovider --durations=5 \
    > "$work/round$i.log" 2>&1
  rc=$?
  [ "$rc" = 0 ] || failed=$((failed + 1))
  {
    echo "round $i/$ROUNDS: exit $rc in $(( $(date +%s) - start )) s, load $(cut -d' ' -f1-3 /proc/loadavg): $(tail -n 1 "$work/round$i.log")"
    grep -E '^[0-9.]+s (call|setup) ' "$work/round$i.log" | head -n 3 | sed 's/^/    /'
    grep -E '^(FAILED|ERROR) ' "$work/round$i.log" | sed 's/^/    /'
  } >> "$LOG"
  if [ "$rc" != 0 ]; then cp "$work/round$i.log" "${LOG%.log}_round$i.failed.log"; fi
done
echo "rounds failed: $failed of $ROUNDS" >> "$LOG"
tail -n $((ROUNDS * 5 + 5)) "$LOG"
exit $(( failed > 0 ))
