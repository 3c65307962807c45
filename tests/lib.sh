# tests/lib.sh: sourced by every tests/test_*.sh. Each check prints one PASS/FAIL line and
# appends its verdict to $RESULTS, which tests/run.sh counts.
: "${MAMBA:=./mamba}" "${RESULTS:=/dev/null}"
TMP=${TMP:-$(mktemp -d)}
LOG="$TMP/check.log"

pass() { echo "PASS $1"; echo pass >>"$RESULTS"; }
fail() { echo "FAIL $1${2:+: $2}"; echo fail >>"$RESULTS"; }

# check NAME CMD...: passes when CMD exits 0; shows the tail of its output otherwise.
check() {
    local name=$1; shift
    if "$@" >"$LOG" 2>&1; then pass "$name"; else fail "$name"; tail -n 20 "$LOG" | sed 's/^/    /'; fi
}

# expect_error NAME PATTERN CMD...: CMD must exit non-zero without a signal, print nothing on
# stdout, and print exactly one stderr line matching the extended regex PATTERN.
expect_error() {
    local name=$1 pattern=$2; shift 2
    local rc
    "$@" >"$TMP/out" 2>"$TMP/err" </dev/null; rc=$?
    if [ "$rc" -eq 0 ]; then fail "$name" "exit status 0"; return; fi
    if [ "$rc" -ge 128 ]; then fail "$name" "killed by signal $((rc - 128))"; return; fi
    if [ -s "$TMP/out" ]; then fail "$name" "wrote to stdout"; return; fi
    if [ "$(wc -l <"$TMP/err")" -ne 1 ]; then fail "$name" "stderr has $(wc -l <"$TMP/err") lines: $(head -c 300 "$TMP/err")"; return; fi
    if ! grep -Eq -- "$pattern" "$TMP/err"; then fail "$name" "stderr '$(cat "$TMP/err")' lacks /$pattern/"; return; fi
    pass "$name"
}

# same A B / differ A B: run the shell commands A and B (a pipeline fails as a whole); pass when
# both succeed with some output, and the outputs are equal (same) or not (differ). Two runs that
# both fail never compare equal.
outputs_of() {
    OUT_A= OUT_B=
    OUT_A=$(set -o pipefail; eval "$1") && OUT_B=$(set -o pipefail; eval "$2") && [ -n "$OUT_A" ] && [ -n "$OUT_B" ]
}
same() {
    outputs_of "$1" "$2" && [ "$OUT_A" = "$OUT_B" ] && return 0
    echo "A: ${OUT_A:0:300}"; echo "B: ${OUT_B:0:300}"; return 1
}
differ() {
    outputs_of "$1" "$2" && [ "$OUT_A" != "$OUT_B" ] && return 0
    echo "A: ${OUT_A:0:300}"; echo "B: ${OUT_B:0:300}"; return 1
}

# quiet_when_reader_leaves CMD...: the reader of CMD's output goes away after 20 bytes (| head);
# CMD must exit 0 and say nothing.
quiet_when_reader_leaves() {
    "$@" 2>"$TMP/pipe.err" | head -c 20 >/dev/null
    [ "${PIPESTATUS[0]}" -eq 0 ] && [ ! -s "$TMP/pipe.err" ] && return 0
    head -c 300 "$TMP/pipe.err"; return 1
}

# wait_catching_sigint PID: waits (60 s at most) until PID catches SIGINT. A background job
# starts with SIGINT ignored, so one sent before mamba sets its handler would be lost.
wait_catching_sigint() {
    local i mask
    for i in $(seq 1200); do
        mask=$(awk '/^SigCgt:/ {print $2}' /proc/$1/status 2>/dev/null) || return
        [ -n "$mask" ] && (( (16#$mask >> 1) & 1 )) && return
        sleep 0.05
    done
}

# signal_and_wait SIG PID: sends SIG to PID and returns its exit status; a PID still running
# 60 s later is killed (status 137), so a lost signal fails the test instead of hanging it.
signal_and_wait() {
    local i
    kill -$1 $2
    for i in $(seq 1200); do
        kill -0 $2 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL $2 2>/dev/null
    wait $2
}

# interrupted_after_output OUT ERR CMD...: runs CMD (stdout into OUT, stderr into ERR), sends it
# SIGINT once OUT has some output and CMD catches it, and checks that it exits with 130 and OUT
# ends with a newline (what was generated is flushed).
interrupted_after_output() {
    local out=$1 err=$2 pid i; shift 2
    : >"$out"   # no stale output from an earlier run
    "$@" >"$out" 2>"$err" &
    pid=$!
    for i in $(seq 1200); do
        [ "$(stat -c %s "$out")" -gt 40 ] && break
        sleep 0.05
    done
    wait_catching_sigint $pid
    signal_and_wait INT $pid && return 1   # it must exit with 130
    [ $? -eq 130 ] && [ "$(tail -c 1 "$out" | od -An -c | tr -d ' ')" = '\n' ]
}

# ---- the transformers fixtures (tests/fixtures/: tools/make_fixtures.py, tools/make_ssm_fixtures.py)
: "${F:=tests/fixtures}"
: "${CMP:=tests/cmp_logits}"

# random_ids N VOCAB SEED: N ids below VOCAB, comma-separated, the same on every machine: the
# Park-Miller generator (four draws discarded), exact in awk's doubles (mawk's srand(SEED) does
# not repeat its sequence from run to run, which made the GPU tests' inputs differ every run)
random_ids() {
    awk -v n="$1" -v v="$2" -v x="$3" 'BEGIN { for (i = -4; i < n; i++) { x = (x * 48271) % 2147483647; if (i < 0) continue; printf "%s%d", i ? "," : "", int(x / 2147483647 * v) } }'
}

# vocab_of FX: the columns of FX's reference logits (64 rows)
vocab_of() { echo $(($(stat -c %s "$F/$1/ref_logits.bin") / 4 / $(tr ',' '\n' <"$F/$1/prompt_ids.txt" | wc -l))); }

# logits_of FX MODEL OUT: the logits of FX's prompt through MODEL, into OUT
logits_of() { $MAMBA -m "$2" --prompt-ids "$(cat "$F/$1/prompt_ids.txt")" -n 0 --print-ids --logits-out "$3" >/dev/null; }

# logits_match FX MODEL REF: FX's prompt through MODEL gives REF's logits (≤ 1e-4 of each row's largest)
logits_match() { logits_of "$1" "$2" "$TMP/$1.logits" && $CMP "$TMP/$1.logits" "$3" "$(vocab_of "$1")" 1e-4; }

# greedy_matches FX MODEL: the greedy continuation equals transformers' generate()
greedy_matches() {
    local got
    got=$($MAMBA -m "$2" --prompt-ids "$(cat "$F/$1/greedy_prompt.txt")" -n 40 -t 0 --ignore-eos --print-ids) || return 1
    [ "$(echo "$got" | tr ' ' ',')" = "$(cat "$F/$1/greedy_ids.txt")" ] || { echo "got:  $got"; echo "want: $(cat "$F/$1/greedy_ids.txt")"; return 1; }
}
