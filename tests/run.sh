#!/usr/bin/env bash
# tests/run.sh: runs every tests/test_*.sh (or those named) and ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
export MAMBA=${MAMBA:-./mamba}
export RESULTS; RESULTS=$(mktemp)
scripts=("$@"); [ ${#scripts[@]} -eq 0 ] && scripts=(tests/test_*.sh)
for t in "${scripts[@]}"; do
    echo "== $t"
    TMP=$(mktemp -d) bash "$t" || echo "fail" >>"$RESULTS"
done
passed=$(grep -c '^pass$' "$RESULTS"); failed=$(grep -c '^fail$' "$RESULTS")
rm -f "$RESULTS"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
