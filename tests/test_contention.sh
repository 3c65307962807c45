#!/usr/bin/env bash
# tests/test_contention.sh: the CPU engine beside one busy process (issue 12). mamba and a busy
# loop share two CPUs (the first two this shell may use: all of a 2-core machine), so the checks
# mean the same on any machine. With the default thread count, the prompt and the decode must
# each keep at least half the speed of --threads 1, both measured here, now (medians of
# alternating runs: ratios, never times), and the outputs must not change. mamba-asan checks
# the outputs alone: the sanitizers' overhead makes its speeds mean nothing.
cd "$(dirname "$0")/.." || exit 1
source tests/lib.sh
M=weights/model.bin
RUNS=7   # of each setting, alternating

CPUS=$(python3 -c 'import os; print(",".join(map(str, sorted(os.sched_getaffinity(0))[:2])))')
case $CPUS in
*,*) ;;
*) echo "note: one CPU here: no contention to measure"; exit 0 ;;
esac
PIN=(taskset -c "$CPUS")
"${PIN[@]}" sh -c 'while :; do :; done' &
BUSY=$!
trap 'kill $BUSY 2>/dev/null; wait $BUSY 2>/dev/null' EXIT

# rates ARGS...: "PROMPT DECODE" tokens/s of a 200-token prompt then 200 greedy tokens (0 for a
# phase not reported). A run still going after 6 s gets Ctrl-C; it reports what it did by then.
rates() {
    local p d
    timeout -s INT -k 5 6 "${PIN[@]}" $MAMBA run -m $M --prompt-ids "$(seq -s, 100 299)" -n 200 -t 0 \
        --ignore-eos --print-ids --stats "$@" >/dev/null 2>"$TMP/stats"
    p=$(sed -n 's/^prompt: .*(\([0-9.]*\) tokens\/s)$/\1/p' "$TMP/stats")
    d=$(sed -n 's/^generated: .*(\([0-9.]*\) tokens\/s)$/\1/p' "$TMP/stats")
    echo "${p:-0} ${d:-0}"
}

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

# at_least_half PHASE "DEFAULT RATES" "SINGLE RATES": the check on the medians of one phase
at_least_half() {
    local name="beside a busy process, the default threads keep at least half the $1 speed of one"
    local d s ratio
    d=$(median $2) s=$(median $3)
    ratio=$(awk -v d="$d" -v s="$s" 'BEGIN {r = s > 0 ? d / s : 0; printf "%.2f", r}')
    echo "    $1 tokens/s on CPUs $CPUS: default ${2% } (median $d); --threads 1 ${3% } (median $s): $ratio"
    if awk -v d="$d" -v s="$s" 'BEGIN {exit !(s > 0 && d >= 0.5 * s)}'; then pass "$name"; else fail "$name" "$ratio of it"; fi
}

if [ "${MAMBA##*/mamba}" = -asan ]; then
    echo "note: the speed ratios are checked on the optimized binary only"
else
    rates >/dev/null   # the model into the page cache
    dp= dd= sp= sd=
    for i in $(seq $RUNS); do
        read -r p d < <(rates); dp+="$p " dd+="$d "
        read -r p d < <(rates --threads 1); sp+="$p " sd+="$d "
    done
    at_least_half prompt "$dp" "$sp"
    at_least_half decode "$dd" "$sd"
fi

# the outputs, while the busy process makes the engine's threads drop out and come back
run="${PIN[*]} $MAMBA run -m $M -n 30 -t 0 --ignore-eos"
check "beside a busy process, the default threads print what --threads 1 prints" \
    same "$run 'Once upon a time'" "$run --threads 1 'Once upon a time'"
check "beside a busy process, a batch prints the same with both" \
    same "$run -i 'The whale' -i 'In the beginning' -i 'Call me'" \
    "$run --threads 1 -i 'The whale' -i 'In the beginning' -i 'Call me'"
