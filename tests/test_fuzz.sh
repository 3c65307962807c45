#!/usr/bin/env bash
# libFuzzer targets (tests/fuzz/, built by `make fuzz`): each replays its committed corpus
# (seeds and regression inputs of past crashes), then fuzzes for $FUZZ_SECONDS (10) seconds with
# a fixed seed. They are ASan + UBSan builds independent of $MAMBA, so when tests/run.sh runs the
# suite for several binaries this runs once only.
source tests/lib.sh
if [ -f "$RESULTS" ]; then
    [ -e "$RESULTS.fuzzed" ] && { echo "(fuzz targets already run)"; exit 0; }
    touch "$RESULTS.fuzzed"                 # removed with $RESULTS by tests/run.sh
fi
ROOT=$PWD
SECONDS_EACH=${FUZZ_SECONDS:-10}
for t in $(ls tests/fuzz/corpus); do   # a corpus per target
    bin=build/fuzz/fuzz_$t
    corpus=$ROOT/tests/fuzz/corpus/$t
    if [ ! -x $bin ]; then fail "fuzz_$t" "$bin is missing: make fuzz"; continue; fi
    mkdir -p $TMP/work_$t $TMP/artifacts_$t
    check "fuzz_$t replays its corpus ($(ls $corpus | wc -l) inputs)" \
        $bin -runs=0 -artifact_prefix=$TMP/artifacts_$t/ $corpus
    check "fuzz_$t: ${SECONDS_EACH} s of fuzzing, seed 1" \
        $bin -seed=1 -max_total_time=$SECONDS_EACH -timeout=10 -rss_limit_mb=2048 -artifact_prefix=$TMP/artifacts_$t/ \
        $TMP/work_$t $corpus
done
