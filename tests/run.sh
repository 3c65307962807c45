#!/usr/bin/env bash
# tests/run.sh [SCRIPT...]: runs every tests/test_*.sh (or those named) against each binary in
# $MAMBA_BINARIES (default ./mamba) and ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
export RESULTS; RESULTS=$(mktemp)
scripts=("$@"); [ ${#scripts[@]} -eq 0 ] && scripts=(tests/test_*.sh)
for binary in ${MAMBA_BINARIES:-${MAMBA:-./mamba}}; do
    for t in "${scripts[@]}"; do
        echo "== $t ($binary)"
        work=$(mktemp -d)
        MAMBA=$binary TMP=$work bash "$t" || echo fail >>"$RESULTS"
        rm -rf "$work"
    done
done
passed=$(grep -c '^pass$' "$RESULTS"); failed=$(grep -c '^fail$' "$RESULTS")
rm -f "$RESULTS" "$RESULTS".*
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
