#!/usr/bin/env bash
# bench/prompt_cache_ttft.sh [DEVICE] [TOKENS]: what resuming from a prompt cache costs. A
# document of TOKENS tokens (default 100,000; a text repeated as needed) is cached
# once on the 130m shape (random bf16 weights, the shipped tokenizer); then a 20-token question
# after it is answered from the cache, and the question alone is run without one. Prints the
# time to first token of each (medians of 5, from --stats) and their ratio: the cached one pays
# for the state's load and the question's tokens, not for the document. The prompt is not
# echoed (as a script asking questions would run it): printing a 100k-token document would be
# the most of either time.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${1:-cpu}
TOKENS=${2:-100000}
MAMBA=${MAMBA:-./mamba}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# the text: the validation slice of the default model's corpus, else (a machine without
# ../shared) this repository's own documentation
VALID=../shared/data/classics/valid.txt
[ -r "$VALID" ] || { VALID=$WORK/text.txt; cat README.md docs/*.md >"$VALID"; }

$MAMBA init --shape 130m --dtype bf16 "$WORK/m.bin" >/dev/null 2>&1
run() { $MAMBA run -m "$WORK/m.bin" --tokenizer weights/tokenizer.model --device "$DEVICE" -n 1 -t 0 --no-echo --stats "$@" 2>&1 >/dev/null; }
ttft() { sed -n 's/^time to first token: \([0-9.]*\) ms.*/\1/p'; }

# the document: whole lines of the validation text, repeated, until it holds TOKENS tokens
python3 - "$VALID" "$WORK/doc.txt" "$TOKENS" "$MAMBA" <<'PY'
import subprocess, sys
lines, want = open(sys.argv[1], encoding="utf-8").read().splitlines(keepends=True), int(sys.argv[3])
count = lambda s: len(subprocess.run([sys.argv[4], "tokenize", "--tokenizer", "weights/tokenizer.model"], input=s.encode(),
                                     capture_output=True, check=True).stdout.split())
doc = lambda n: "".join(lines[i % len(lines)] for i in range(n))
hi = len(lines)
while count(doc(hi)) < want:
    hi *= 2
lo = 0   # the most lines within want tokens: count(doc(lo)) <= want < count(doc(hi))
while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if count(doc(mid)) <= want else (lo, mid)
open(sys.argv[2], "w", encoding="utf-8").write(doc(lo))
PY
QUESTION="Question: who was the old man who went down to the river at night, and why? Answer:"
{ cat "$WORK/doc.txt"; printf '%s' "$QUESTION"; } >"$WORK/doc_question.txt"
printf '%s' "$QUESTION" >"$WORK/question.txt"
n_doc=$($MAMBA tokenize --tokenizer weights/tokenizer.model <"$WORK/doc.txt" | wc -w)
n_q=$($MAMBA tokenize --tokenizer weights/tokenizer.model <"$WORK/question.txt" | wc -w)

t0=$(date +%s.%N)
run -f "$WORK/doc.txt" --prompt-cache "$WORK/doc.cache" >"$WORK/cache.err"
t1=$(date +%s.%N)
cached=() alone=()
for i in 1 2 3 4 5; do
    run -f "$WORK/doc_question.txt" --prompt-cache "$WORK/doc.cache" --prompt-cache-ro >"$WORK/q.err"
    grep -q '^prompt cache: hit' "$WORK/q.err" || { echo "the cache missed:"; cat "$WORK/q.err"; exit 1; }
    cached+=("$(ttft <"$WORK/q.err")")
    alone+=("$(run -f "$WORK/question.txt" | ttft)")
done
median() { printf '%s\n' "$@" | sort -g | sed -n 3p; }
c=$(median "${cached[@]}") a=$(median "${alone[@]}")
echo "device $DEVICE, 130m shape (bf16), document $n_doc tokens, question $n_q tokens"
echo "caching the document: $(python3 -c "print(round($t1 - $t0, 2))") s (whole process); $(grep '^prompt cache' "$WORK/cache.err")"
echo "state file: $(stat -c %s "$WORK/doc.cache") bytes"
echo "time to first token, question after the cached document: $c ms (median of 5)"
echo "time to first token, question alone: $a ms (median of 5)"
echo "ratio: $(python3 -c "print(round($c / $a, 2))")"
grep '^prompt cache' "$WORK/q.err"
