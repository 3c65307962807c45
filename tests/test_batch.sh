#!/usr/bin/env bash
# Batched generation (issue 6): several prompts decoded together (--batch-file, repeated -i),
# each with its own state, sampler (seed + index), stop condition and output. Prompt i of a
# batch must print exactly what `mamba run -s SEED+i` prints for it alone, whatever else shares
# the batch, however many run at once and however the prompts' lengths interleave; JSON lines,
# errors, Ctrl-C, a closed stdout, and bench --batch.
source tests/lib.sh
F=tests/fixtures
M=weights/model.bin
export MAMBA_MODEL=/nonexistent.bin    # every case names its model

# A small text model (the awkward fixture with the byte-level BPE test tokenizer, eos = 0).
cp -r $F/awkward/hf $TMP/bpe && cp tests/tokenizer/neox.json $TMP/bpe/tokenizer.json
$MAMBA convert $TMP/bpe $TMP/bpe.bin --dtype f32 2>/dev/null
B=$TMP/bpe.bin

# Prompts of different lengths (1 to ~30 tokens), a blank line and a CRLF line, a non-ASCII one.
printf '%s\n' 'Once upon a time' 'The whale, the whale!' '' 'A' \
    'It is a truth universally acknowledged, that a single man in possession of a good fortune' \
    'naïve café, 日本' 'Call me Ishmael.' >$TMP/prompts.txt
printf 'In the beginning\r\n   \r\nIt was\r\n' >$TMP/crlf.txt
# EOS (id 0) written into the prompts and a repetition "penalty" below 1, which favours what the
# history holds: with these settings four of the six sequences stop at EOS, after 7 to 23 tokens.
printf '%s<|endoftext|>\n' a 'Once upon a time' 'The whale, the whale!' 'It is a truth universally' B 'Call me' >$TMP/eos.txt
EOS_ARGS="-m $B -n 40 -t 1.5 -k 0 -p 1 --repeat-penalty 0.2"

same_as_single() { python3 tests/same_as_single.py $MAMBA "$@"; }

check "greedy: each prompt of a batch = its run alone (text blocks)" same_as_single text $TMP/prompts.txt 1 -m $B -n 25 -t 0 --ignore-eos
check "seeded sampling: prompt i = its run alone with seed + i (text blocks)" same_as_single text $TMP/prompts.txt 7 -m $B -n 25 --ignore-eos
check "seeded sampling, --json: completion i = its run alone with seed + i" same_as_single json $TMP/prompts.txt 3 -m $B -n 25 -t 1.2 -k 0 -p 0.9
check "--print-ids: ids of prompt i = its run alone" same_as_single text $TMP/prompts.txt 5 -m $B -n 20 --print-ids
check "--no-echo and --repeat-penalty: prompt i = its run alone" same_as_single text $TMP/prompts.txt 2 -m $B -n 20 --no-echo --repeat-penalty 1.3
check "CRLF lines and blank lines: prompt i = its run alone" same_as_single json $TMP/crlf.txt 4 -m $B -n 10
# Sequences end at different steps (prompts of different lengths, EOS), their slots take the
# waiting prompts: long and short prompts, prompt tokens and generated ones share the steps.
check "3 at a time, prompts of different lengths interleaving: = alone" \
    same_as_single text $TMP/prompts.txt 11 -m $B -n 30 -t 1.5 -k 0 -p 1 --batch-size 3
check "slots freed at EOS, 2 at a time: = alone" same_as_single json-eos $TMP/eos.txt 2 $EOS_ARGS --batch-size 2
printf '%s\n' 'Once upon a time' 'It is a truth universally acknowledged' 'A' >$TMP/three_prompts.txt
check "the shipped model (bf16, SentencePiece): prompt i = its run alone" same_as_single text $TMP/three_prompts.txt 9 -m $M -n 6 --batch-size 2
check "--batch-size 1, 2, 32: the same output" bash -c "
    a=\$($MAMBA -m $B --batch-file $TMP/prompts.txt -n 30 -s 1 --batch-size 1) &&
    b=\$($MAMBA -m $B --batch-file $TMP/prompts.txt -n 30 -s 1 --batch-size 2) &&
    c=\$($MAMBA -m $B --batch-file $TMP/prompts.txt -n 30 -s 1) && [ \"\$a\" = \"\$b\" ] && [ \"\$a\" = \"\$c\" ]"
check "-i given several times = --batch-file with those lines" bash -c "
    printf 'The whale\nA\nCall me\n' >$TMP/three.txt &&
    a=\$($MAMBA -m $B -n 15 -s 4 -i 'The whale' -i A -i 'Call me') && b=\$($MAMBA -m $B -n 15 -s 4 --batch-file $TMP/three.txt) &&
    [ \"\$a\" = \"\$b\" ] && [ \$(echo \"\$a\" | grep -c '^==> [0-9] <==\$') -eq 3 ]"
check "a single -i with words keeps its meaning: one prompt" same "$MAMBA -m $B -n 10 -s 2 -i 'The whale,' 'the whale'" "$MAMBA -m $B -n 10 -s 2 'The whale, the whale'"
# The JSON lines: one per prompt, each with exactly these fields.
json_lines() {
    $MAMBA --batch-file $TMP/eos.txt $EOS_ARGS -s 2 --batch-size 2 --json >$TMP/lines.jsonl &&
    python3 - $TMP/lines.jsonl $TMP/eos.txt <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1], encoding='utf-8')]
prompts = [p for p in open(sys.argv[2], encoding='utf-8').read().split('\n') if p.strip()]
assert sorted(r['index'] for r in rows) == list(range(len(prompts))), rows
for r in rows:
    assert set(r) == {'index', 'prompt', 'completion', 'tokens', 'finish'}, r
    assert r['prompt'] == prompts[r['index']], r
    assert r['finish'] in ('eos', 'length') and 0 <= r['tokens'] <= 40 and (r['finish'] == 'eos' or r['tokens'] == 40), r
assert sum(r['finish'] == 'eos' for r in rows) >= 2, rows
PY
}
check "--json: a line per prompt with index, prompt, completion, tokens, finish" json_lines
check "--json with one prompt: its line, completion = the run without --json" same "
    $MAMBA -m $B -n 12 -s 6 --json 'Call me' | python3 -c '
import json, sys; rows = [json.loads(l) for l in sys.stdin]; assert len(rows) == 1 and rows[0][\"index\"] == 0; print(rows[0][\"completion\"])'" \
    "$MAMBA -m $B -n 12 -s 6 --no-echo 'Call me'"
check "--stats: sequences, prompt and generated tokens, tokens/s" bash -c "
    $MAMBA -m $B -n 5 --ignore-eos -s 1 -i a -i b --stats >/dev/null 2>$TMP/stats &&
    grep -q '^sequences: 2' $TMP/stats && grep -q '^prompt: [0-9]* tokens' $TMP/stats && grep -q '^generated: 10 tokens in .* tokens/s' $TMP/stats"

# Ctrl-C: the step finishes, every unfinished prompt (running or waiting) gets its line.
interrupt_batch() {
    local pid
    $MAMBA -m $B -n 100000000 --ignore-eos -s 1 --batch-size 2 -i one -i two -i three --json >$TMP/int.jsonl 2>$TMP/int.err &
    pid=$!
    wait_catching_sigint $pid
    sleep 1   # some tokens; no output comes before the interruption: a batch's lines come as prompts end
    signal_and_wait INT $pid && return 1
    [ $? -eq 130 ] && python3 - $TMP/int.jsonl <<'PY'
import json, sys
rows = sorted((json.loads(l) for l in open(sys.argv[1])), key=lambda r: r['index'])
assert [r['index'] for r in rows] == [0, 1, 2] and all(r['finish'] == 'interrupted' for r in rows), rows
assert rows[0]['tokens'] > 0 and rows[2]['tokens'] == 0, rows       # prompt 2 was still waiting
PY
}
check "SIGINT: exit 130, unfinished prompts reported as interrupted" interrupt_batch
check "reader goes away (| head): exit 0, quiet" \
    quiet_when_reader_leaves $MAMBA --device cpu -m $B -n 5 -s 1 --batch-size 2 $(for i in $(seq 200); do echo "-i p$i"; done)

# ---- bench --batch: B sequences decoding together
check "bench --batch 3 --json: batch and per-sequence rate, existing fields kept" bash -c "
    $MAMBA bench -m $B --device cpu --batch 3 -n 8 --prompt-len 4 --json | python3 -c '
import json, sys; r = json.load(sys.stdin)
assert r[\"batch\"] == 3 and r[\"decode_tokens\"] == 8 and r[\"prompt_tokens\"] == 4, r
for k in (\"decode_tokens_per_s\", \"decode_tokens_per_s_per_sequence\", \"time_to_first_token_ms\", \"ms_per_token\",
          \"bytes_per_token\", \"achieved_GBps\", \"fraction_of_roofline\"): assert r[k] > 0, k'"
check "bench --batch 2 (text)" bash -c "$MAMBA bench -m $B --device cpu --batch 2 -n 4 --prompt-len 2 | grep -q '^batch: 2 sequences'"

# ---- errors: one line on stderr, non-zero exit
printf '\n  \n\r\n' >$TMP/blank.txt
printf 'a\0b\n' >$TMP/nul.txt
expect_error "--batch-file that does not exist" "cannot open .*missing.txt" $MAMBA -m $B --batch-file $TMP/missing.txt
expect_error "--batch-file with only blank lines" "has no prompt" $MAMBA -m $B --batch-file $TMP/blank.txt
expect_error "--batch-file with a NUL byte" "contains a NUL byte" $MAMBA -m $B --batch-file $TMP/nul.txt
expect_error "--batch-file line over the byte limit" "line 5 of .*prompts.txt is larger than the limit of 32 bytes" \
    $MAMBA -m $B --batch-file $TMP/prompts.txt --max-prompt-tokens 2
expect_error "--batch-size 0" "--batch-size expects an integer in \[1, 1024\]" $MAMBA -m $B -i a -i b --batch-size 0
expect_error "--batch-size 1025" "--batch-size expects an integer in \[1, 1024\]" $MAMBA -m $B -i a -i b --batch-size 1025
expect_error "--batch-file with --prompt-ids" "--prompt-ids cannot be combined with --batch-file" \
    $MAMBA -m $B --batch-file $TMP/prompts.txt --prompt-ids 1,2
expect_error "several -i with --logits-out" "--logits-out cannot be combined with several -i" \
    $MAMBA -m $B -i a -i b --logits-out $TMP/l.bin
expect_error "--json with --prompt-ids" "--prompt-ids cannot be combined with --json" $MAMBA -m $B --json --prompt-ids 1,2
expect_error "--batch-file with -i" "--batch-file gives the prompts" $MAMBA -m $B --batch-file $TMP/prompts.txt -i extra
expect_error "several -i with bare words" "give each prompt with its own -i" $MAMBA -m $B -i a -i b stray
expect_error "bench --batch 0" "--batch expects an integer in \[1, 1024\]" $MAMBA bench -m $B --device cpu --batch 0
