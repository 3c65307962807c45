#!/usr/bin/env bash
# State files (state.c, docs/FORMAT.md): a prompt split in two (--state-out, then --state-in)
# gives what the whole prompt gives, ids and logits, for each family; the state after generated
# tokens continues the sampled run exactly (RNG, repetition penalty, pending UTF-8); fingerprints
# against an independent implementation (tests/state_tool.py); foreign, truncated, corrupted and
# wrong-version files refused with one line; the prompt cache's hits, misses and partial prefixes.
source tests/lib.sh
CMP=${CMP:-tests/cmp_logits}
TOOL="python3 tests/state_tool.py"
M=weights/model.bin
run() { $MAMBA --device cpu "$@"; }
ids_csv() { tr ' ' ',' <<<"$1"; }

for shape in tiny mamba2-tiny falcon-mamba-tiny; do
    $MAMBA init --shape $shape --dtype f32 $TMP/$shape.bin 2>/dev/null
done
$MAMBA init --shape tiny --dtype f32 --seed 2 $TMP/tiny-other.bin 2>/dev/null
$MAMBA init --shape tiny --dtype bf16 $TMP/tiny-bf16.bin 2>/dev/null
P=3,14,15,92,65,35,89,79,32,38,46,26,43,38,32,79,50,28,84,19
A=3,14,15,92,65,35,89,79,32
B=38,46,26,43,38,32,79,50,28,84,19

# ---- split = whole, for each family (f32 weights, the CPU engine)
for shape in tiny mamba2-tiny falcon-mamba-tiny; do
    m=$TMP/$shape.bin
    check "$shape: greedy ids of a prompt split by a state = the whole prompt's" same \
        "run -m $m --prompt-ids $A -n 0 --print-ids --state-out $TMP/$shape-a.state >/dev/null && run -m $m --state-in $TMP/$shape-a.state --prompt-ids $B -n 30 -t 0 --ignore-eos --print-ids" \
        "run -m $m --prompt-ids $P -n 30 -t 0 --ignore-eos --print-ids"
    check "$shape: logits of the split prompt = the whole prompt's (≤ 1e-6)" bash -c "
        $(declare -f run); MAMBA=$MAMBA
        run -m $m --prompt-ids $A -n 0 --print-ids --logits-out $TMP/la --state-out $TMP/s.state >/dev/null &&
        run -m $m --state-in $TMP/s.state --prompt-ids $B -n 0 --print-ids --logits-out $TMP/lb >/dev/null &&
        run -m $m --prompt-ids $P -n 0 --print-ids --logits-out $TMP/lw >/dev/null &&
        cat $TMP/la $TMP/lb >$TMP/lab && [ \$(stat -c %s $TMP/lab) -eq \$(stat -c %s $TMP/lw) ] &&
        $CMP $TMP/lab $TMP/lw \$(( \$(stat -c %s $TMP/lw) / 4 / 20 )) 1e-6"
    check "$shape: a sampled run (seed, repetition penalty) continued from its state = one run" same \
        "echo \$(run -m $m --prompt-ids $A -n 12 -t 3 --seed 3 --repeat-penalty 1.3 --ignore-eos --print-ids --state-out $TMP/g.state) \$(run -m $m --state-in $TMP/g.state -n 12 -t 3 --repeat-penalty 1.3 --ignore-eos --print-ids </dev/null)" \
        "run -m $m --prompt-ids $A -n 24 -t 3 --seed 3 --repeat-penalty 1.3 --ignore-eos --print-ids"
    check "$shape: another seed changes that run (the test above can fail)" differ \
        "run -m $m --prompt-ids $A -n 24 -t 3 --seed 3 --repeat-penalty 1.3 --ignore-eos --print-ids" \
        "run -m $m --prompt-ids $A -n 24 -t 3 --seed 4 --repeat-penalty 1.3 --ignore-eos --print-ids"
done

# the state after generated tokens: the last one is consumed, so a prompt continues after it
gen=$(run -m $TMP/tiny.bin --prompt-ids $A -n 5 -t 0 --ignore-eos --print-ids --state-out $TMP/g5.state)
check "a prompt after generated tokens continues them (= prompt, generated, prompt in one run)" same \
    "run -m $TMP/tiny.bin --state-in $TMP/g5.state --prompt-ids $B -n 20 -t 0 --ignore-eos --print-ids" \
    "run -m $TMP/tiny.bin --prompt-ids $A,$(ids_csv "$gen"),$B -n 20 -t 0 --ignore-eos --print-ids"
check "states chain: three runs = one" same \
    "run -m $TMP/tiny.bin --prompt-ids 3,14,15 -n 0 --print-ids --state-out $TMP/c1.state >/dev/null && run -m $TMP/tiny.bin --state-in $TMP/c1.state --prompt-ids 92,65 -n 0 --print-ids --state-out $TMP/c2.state >/dev/null && run -m $TMP/tiny.bin --state-in $TMP/c2.state --prompt-ids 35,89 -n 16 -t 0 --ignore-eos --print-ids" \
    "run -m $TMP/tiny.bin --prompt-ids 3,14,15,92,65,35,89 -n 16 -t 0 --ignore-eos --print-ids"
check "info describes a state" bash -c "$MAMBA info $TMP/c2.state >$TMP/info && grep -qx 'tokens: 5' $TMP/info && grep -qx 'last_token: 65' $TMP/info && grep -qx 'arch: mamba1' $TMP/info"
$MAMBA convert $F/tiny/hf $TMP/fx.bin --dtype f32 2>/dev/null   # a model that samples its EOS (id 0) soon
check "a state after EOS holds the EOS as its last token, consumed" bash -c "
    $(declare -f run); MAMBA=$MAMBA
    out=\$(run -m $TMP/fx.bin --prompt-ids 3 -n 3000 -t 1.5 --seed 1 --print-ids --state-out $TMP/eos.state) &&
    n=\$(echo \$out | wc -w) && [ \$n -lt 3000 ] && $MAMBA info $TMP/eos.state | grep -qx 'last_token: 0' &&
    $MAMBA info $TMP/eos.state | grep -qx \"tokens: \$((n + 2))\""

# ---- text: the shipped model (SentencePiece); its tokens of the two parts are the whole's
check "the split texts tokenize to the whole text's ids (the next test's premise)" same \
    "echo \$($MAMBA tokenize -m $M --bos 'Once upon a time,') \$($MAMBA tokenize -m $M ' there was')" \
    "$MAMBA tokenize -m $M --bos 'Once upon a time, there was'"
check "text: split output = whole output (no BOS when continuing, the echo continues)" same \
    "run -m $M -n 0 --state-out $TMP/t.state 'Once upon a time,' | tr -d '\n' && run -m $M --state-in $TMP/t.state -n 24 -t 0 ' there was'" \
    "run -m $M -n 24 -t 0 'Once upon a time, there was'"
check "an incomplete UTF-8 character is carried by the state, not printed as U+FFFD" bash -c "
    $(declare -f run); MAMBA=$MAMBA
    a=\$(run -m $M --prompt-ids 1,231,135 -n 0 --state-out $TMP/u.state | od -An -tx1 | tr -d ' \n') &&
    b=\$(run -m $M --state-in $TMP/u.state --prompt-ids 177 -n 0 | od -An -tx1 | tr -d ' \n') &&
    $MAMBA info $TMP/u.state | grep -qx 'pending_text_bytes: 2' && [ \"\$a\" = 0a ] && [ \"\$b\" = e282ac0a ]"

# ---- fingerprints: stored by init and convert = an independent computation; computed for old files
check "init stores the tensors' fingerprint (= tests/state_tool.py's)" bash -c "
    [ \$($TOOL stored $TMP/tiny.bin) = \$($TOOL fingerprint $TMP/tiny.bin) ] && [ \$($TOOL stored $TMP/tiny.bin) != 0000000000000000 ] &&
    $MAMBA info $TMP/tiny.bin | grep -qx \"fingerprint: \$($TOOL fingerprint $TMP/tiny.bin)\""
check "convert stores it too; a checkpoint without one gets it computed (same value)" bash -c "
    $MAMBA convert $TMP/tiny.bin $TMP/tiny-conv.bin --dtype f32 2>/dev/null && [ \$($TOOL stored $TMP/tiny-conv.bin) = \$($TOOL fingerprint $TMP/tiny.bin) ] &&
    python3 -c 'import sys; d = bytearray(open(sys.argv[1], \"rb\").read()); d[144:152] = bytes(8); open(sys.argv[2], \"wb\").write(d)' $TMP/tiny.bin $TMP/tiny-old.bin &&
    $MAMBA info $TMP/tiny-old.bin | grep -q \"fingerprint: \$($TOOL fingerprint $TMP/tiny.bin) (computed\" &&
    $MAMBA --device cpu -m $TMP/tiny-old.bin --state-in $TMP/c2.state --prompt-ids 1 -n 1 --print-ids >/dev/null"
check "the state file's checksum = tests/state_tool.py's" $TOOL check $TMP/c2.state

# ---- refusals: one line, non-zero exit, no crash
s=$TMP/c2.state
size=$(stat -c %s $s)
expect_error "a state of other weights of the same shape" "belongs to other weights" run -m $TMP/tiny-other.bin --state-in $s -n 1 --print-ids
expect_error "a state of the same weights in another dtype" "belongs to other weights" run -m $TMP/tiny-bf16.bin --state-in $s -n 1 --print-ids
expect_error "a state of another shape" "is of another model: mamba1, 2 layers" run -m $TMP/mamba2-tiny.bin --state-in $s -n 1 --print-ids
expect_error "a checkpoint given as a state" "not a mamba state file" run -m $TMP/tiny.bin --state-in $TMP/tiny.bin -n 1 --print-ids
expect_error "a missing state" "cannot open the state" run -m $TMP/tiny.bin --state-in $TMP/none.state -n 1 --print-ids
for cut in 0 7 64 127 128 129 1000 $((size / 2)) $((size - 4)) $((size - 1)); do
    head -c $cut $s >$TMP/cut.state
    expect_error "a state truncated to $cut of $size bytes" "truncated|bad magic|size does not match" run -m $TMP/tiny.bin --state-in $TMP/cut.state -n 1 --print-ids
done
{ cat $s; printf 'xxxx'; } >$TMP/long.state
expect_error "a state with bytes appended" "truncated or padded" run -m $TMP/tiny.bin --state-in $TMP/long.state -n 1 --print-ids
for at in 9 20 30 60 70 90 125 130 $((size / 2)) $((size - 2)); do
    python3 -c 'import sys; d = bytearray(open(sys.argv[1], "rb").read()); d[int(sys.argv[3])] ^= 0x10; open(sys.argv[2], "wb").write(d)' $s $TMP/flip.state $at
    expect_error "a state with a flipped bit at byte $at" "corrupted|version|header size|truncated|size does not match" run -m $TMP/tiny.bin --state-in $TMP/flip.state -n 1 --print-ids
done
# the same damage with a right checksum (tests/state_tool.py): the field checks behind it
refused_edit() {
    local name=$1 pattern=$2; shift 2
    $TOOL edit $s $TMP/edit.state "$@"
    expect_error "$name" "$pattern" run -m $TMP/tiny.bin --state-in $TMP/edit.state -n 1 --print-ids
}
refused_edit "version 2" "has version 2; this mamba reads version 1" version=2
refused_edit "a NaN in the conv state" "conv state has a non-finite value" float:3=nan
refused_edit "an infinity in the SSM state" "SSM state has a non-finite value" float:$((2 * 128 * 4 + 5))=inf
refused_edit "a token id beyond the vocabulary" "outside the vocabulary" id:0=512
refused_edit "a negative token id" "outside the vocabulary" id:1=-1
refused_edit "ids that do not end with the last token" "do not end with its last token" last_token=7
refused_edit "more pending bytes than a state holds" "pending bytes of text, more than 32" n_pending=33
refused_edit "more ids than tokens" "token ids of 4 tokens" n_tokens=4
refused_edit "another magic" "not a mamba state file" magic=MAMBAbin
check "no temporary file is left beside the states" bash -c "! ls $TMP | grep -q partial"

# ---- what a state cannot be combined with
expect_error "--state-out with several prompts" "cannot be combined with several -i/-f" run -m $TMP/tiny.bin --state-out $TMP/x.state -i a -i b --print-ids
expect_error "--state-in with --json" "--state-in cannot be combined with --json" run -m $TMP/tiny.bin --state-in $s --json --print-ids
expect_error "--prompt-cache with --state-in" "cannot be combined with --state-in" run -m $TMP/tiny.bin --prompt-cache $TMP/pc --state-in $s --print-ids
expect_error "--prompt-cache with --logits-out" "cannot be combined with --prompt-cache" run -m $TMP/tiny.bin --prompt-cache $TMP/pc --logits-out $TMP/l --print-ids

# ---- the prompt cache: a miss writes it, a hit of the whole prompt runs one token, a longer
# prompt runs only its new tokens; each run prints what the same run without a cache prints
stats_line() { grep -o 'prompt cache: .*' "$1"; }
cached_run() {   # cached_run MODEL IDS: the ids generated, and the --stats line into $TMP/pc.err
    run -m "$1" --prompt-cache $TMP/pc.cache --prompt-ids "$2" -n 12 -t 0 --ignore-eos --print-ids --stats 2>$TMP/pc.err
}
for shape in tiny mamba2-tiny; do
    m=$TMP/$shape.bin
    rm -f $TMP/pc.cache
    check "$shape: cache miss: the whole prompt runs, the ids are the uncached run's" bash -c "
        $(declare -f run cached_run); MAMBA=$MAMBA TMP=$TMP
        [ \"\$(cached_run $m $A)\" = \"\$(run -m $m --prompt-ids $A -n 12 -t 0 --ignore-eos --print-ids)\" ] &&
        grep -q 'prompt cache: miss, 0 of 9 prompt tokens reused' $TMP/pc.err && grep -q '^prompt: 9 tokens' $TMP/pc.err &&
        $MAMBA info $TMP/pc.cache | grep -qx 'tokens: 9' && $MAMBA info $TMP/pc.cache | grep -q 'ids_stored: 9 (all'"
    sum=$(cksum <$TMP/pc.cache)
    check "$shape: cache hit of the whole prompt: one token runs, same ids, the cache is left as it was" bash -c "
        $(declare -f run cached_run); MAMBA=$MAMBA TMP=$TMP
        [ \"\$(cached_run $m $A)\" = \"\$(run -m $m --prompt-ids $A -n 12 -t 0 --ignore-eos --print-ids)\" ] &&
        grep -q 'prompt cache: hit, 8 of 9 prompt tokens reused' $TMP/pc.err && grep -q '^prompt: 1 tokens' $TMP/pc.err &&
        [ \"\$(cksum <$TMP/pc.cache)\" = '$sum' ]"
    check "$shape: cache hit of a prefix: only the new tokens run, same ids, the cache becomes the longer prompt" bash -c "
        $(declare -f run cached_run); MAMBA=$MAMBA TMP=$TMP
        [ \"\$(cached_run $m $P)\" = \"\$(run -m $m --prompt-ids $P -n 12 -t 0 --ignore-eos --print-ids)\" ] &&
        grep -q 'prompt cache: hit, 8 of 20 prompt tokens reused' $TMP/pc.err && grep -q '^prompt: 12 tokens' $TMP/pc.err &&
        $MAMBA info $TMP/pc.cache | grep -qx 'tokens: 20'"
    check "$shape: a prompt the cache is not a prefix of (shorter, or other ids): a miss, rewritten" bash -c "
        $(declare -f run cached_run); MAMBA=$MAMBA TMP=$TMP
        [ \"\$(cached_run $m $A)\" = \"\$(run -m $m --prompt-ids $A -n 12 -t 0 --ignore-eos --print-ids)\" ] &&
        grep -q 'prompt cache: miss, 0 of 9' $TMP/pc.err && $MAMBA info $TMP/pc.cache | grep -qx 'tokens: 9' &&
        [ \"\$(cached_run $m 4,$B)\" = \"\$(run -m $m --prompt-ids 4,$B -n 12 -t 0 --ignore-eos --print-ids)\" ] &&
        grep -q 'prompt cache: miss, 0 of 12' $TMP/pc.err && $MAMBA info $TMP/pc.cache | grep -qx 'last_token: 19'"
done
expect_error "a prompt cache of another model" "is of another model" run -m $TMP/tiny.bin --prompt-cache $TMP/pc.cache --prompt-ids 1 -n 1 --print-ids
check "a document cached once, then questions (--prompt-cache-ro): each pays for its own tokens, prints the uncached text" bash -c "
    $(declare -f run); MAMBA=$MAMBA; rm -f $TMP/doc.cache
    doc='It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.'
    run -m $M --prompt-cache $TMP/doc.cache -n 0 \"\$doc\" >/dev/null 2>&1 && sum=\$(cksum <$TMP/doc.cache) &&
    for q in ' Who is in want of a wife?' ' What is universally acknowledged?'; do
        a=\$(run -m $M --prompt-cache $TMP/doc.cache --prompt-cache-ro -n 16 -t 0 --stats \"\$doc\$q\" 2>$TMP/doc.err) &&
        b=\$(run -m $M -n 16 -t 0 \"\$doc\$q\") && [ \"\$a\" = \"\$b\" ] &&
        n_q=\$($MAMBA tokenize -m $M \"\$q\" | wc -w) && grep -q \"^prompt: \$((n_q + 1)) tokens\" $TMP/doc.err &&
        [ \"\$(cksum <$TMP/doc.cache)\" = \"\$sum\" ] || exit 1
    done"
check "unechoed, a cached prompt is not decoded again: the decoder takes up where it was (a leading space, an unfinished character's bytes)" bash -c "
    $(declare -f run); MAMBA=$MAMBA; rm -f $TMP/doc.cache
    ids=\$($MAMBA tokenize -m $M 'The dragon 龘' | tr ' ' ,) && cut=\${ids%,*} &&
    run -m $M --prompt-cache $TMP/doc.cache -n 0 --prompt-ids \$cut >/dev/null 2>&1 &&
    $MAMBA info $TMP/doc.cache | grep -qx 'pending_text_bytes: 2' &&
    a=\$(run -m $M --prompt-cache $TMP/doc.cache -n 12 -t 0 --no-echo --prompt-ids \$cut 2>/dev/null) &&
    b=\$(run -m $M -n 12 -t 0 --no-echo --prompt-ids \$cut 2>/dev/null) && [ \"\$a\" = \"\$b\" ] && [[ \$a == $'\xef\xbf\xbd'* ]] &&
    run -m $M --prompt-cache $TMP/doc.cache -n 0 'Call me Ishmael.' >/dev/null 2>&1 &&
    a=\$(run -m $M --prompt-cache $TMP/doc.cache -n 12 -t 0 --no-echo 'Call me Ishmael. Some years ago' 2>/dev/null) &&
    b=\$(run -m $M -n 12 -t 0 --no-echo 'Call me Ishmael. Some years ago' 2>/dev/null) && [ \"\$a\" = \"\$b\" ] && [[ \$a == ' '* ]]"
expect_error "--prompt-cache-ro alone" "needs --prompt-cache FILE" run -m $TMP/tiny.bin --prompt-cache-ro --prompt-ids 1 --print-ids

# ---- interactive (mamba chat, run --interactive): from a pipe, a turn a line; turn i prints what
# one run of the whole sequence so far prints: BOS, line 1, turn 1's tokens, line 2, ... (each
# line tokenized on its own, no BOS after the first; an empty line continues the generation)
tok_ids() { $MAMBA tokenize -m $M "$@" | tr ' ' ','; }
check "chat from a pipe: each turn's ids = a one-shot run of the sequence so far" bash -c "
    $(declare -f run tok_ids); MAMBA=$MAMBA M=$M
    printf 'The whale\n and the sea\n\n' | $MAMBA chat -m $M --device cpu -n 8 -t 0 --ignore-eos --print-ids >$TMP/turns &&
    [ \$(wc -l <$TMP/turns) -eq 3 ] &&
    seq=\$(tok_ids --bos 'The whale') && t1=\$(run -m $M --prompt-ids \$seq -n 8 -t 0 --ignore-eos --print-ids) &&
    seq=\$seq,\$(echo \$t1 | tr ' ' ,),\$(tok_ids ' and the sea') && t2=\$(run -m $M --prompt-ids \$seq -n 8 -t 0 --ignore-eos --print-ids) &&
    seq=\$seq,\$(echo \$t2 | tr ' ' ,) && t3=\$(run -m $M --prompt-ids \$seq -n 8 -t 0 --ignore-eos --print-ids) &&
    printf '%s\n' \"\$t1\" \"\$t2\" \"\$t3\" | diff - $TMP/turns"
check "chat: --in-prefix and --in-suffix wrap each line; a prompt given is the first turn" bash -c "
    $(declare -f run tok_ids); MAMBA=$MAMBA M=$M
    printf 'The whale\n' | $MAMBA chat -m $M --device cpu -n 6 -t 0 --ignore-eos --print-ids --in-prefix 'Q: ' --in-suffix ' A:' 'Call me Ishmael.' >$TMP/turns &&
    seq=\$(tok_ids --bos 'Call me Ishmael.') && t1=\$(run -m $M --prompt-ids \$seq -n 6 -t 0 --ignore-eos --print-ids) &&
    seq=\$seq,\$(echo \$t1 | tr ' ' ,),\$(tok_ids 'Q: The whale A:') && t2=\$(run -m $M --prompt-ids \$seq -n 6 -t 0 --ignore-eos --print-ids) &&
    printf '%s\n' \"\$t1\" \"\$t2\" | diff - $TMP/turns"
check "chat: text turns, one output line a turn, flushed; --state-out saves the session at the end" bash -c "
    printf 'The whale\nIn the beginning\n' | $MAMBA chat -m $M --device cpu -n 8 -t 0 --ignore-eos --state-out $TMP/chat.state >$TMP/turns &&
    [ \$(wc -l <$TMP/turns) -eq 2 ] && $MAMBA info $TMP/chat.state | grep -qx \"tokens: \$((3 + 8 + \$($MAMBA tokenize -m $M 'In the beginning' | wc -w) + 8))\""
check "--stop ends a generation at its string (printed), a prefix of the run without it" bash -c "
    $(declare -f run); MAMBA=$MAMBA
    full=\$(run -m $M -n 60 -t 0 --ignore-eos --no-echo 'The whale') && cut=\$(run -m $M -n 60 -t 0 --ignore-eos --no-echo --stop sea --stop nomatch 'The whale') &&
    [ \"\${cut%sea}\" != \"\$cut\" ] && [ \"\${full#\"\$cut\"}\" != \"\$full\" ] && [ \${#cut} -lt \${#full} ]"
expect_error "--interactive with several prompts" "--interactive cannot be combined" run -m $M --interactive -i a -i b
expect_error "--interactive with --json" "--interactive cannot be combined" run -m $M --interactive --json
expect_error "chat with --prompt-cache" "--prompt-cache cannot be combined with --interactive" $MAMBA chat -m $M --prompt-cache $TMP/x
expect_error "--in-prefix without --interactive" "go with --interactive" run -m $M --in-prefix 'Q:' -n 1 hello

# on a terminal (tmux): the input prompt shows, Ctrl-C while generating returns to it, Ctrl-D
# and Ctrl-C at it exit 0, and --state-out saves what was consumed
pane() { tmux capture-pane -p -t "$1" | grep -v '^$'; }
wait_pane() {   # wait_pane SESSION REGEX: up to 30 s for the pane's last line to match
    local i
    for i in $(seq 300); do pane "$1" | tail -n 1 | grep -Eq -- "$2" && return 0; sleep 0.1; done
    echo "pane:"; pane "$1" | tail -n 5; return 1
}
# the probe session stays, so that the server lives on between the sessions below (a probe
# that ended at once took the server down with it, racing the next session's start under load)
if tmux -L mamba-test new-session -d -s probe "sleep 600" 2>/dev/null; then
    T="tmux -L mamba-test"
    tmux() { command tmux -L mamba-test "$@"; }
    for key in C-d C-c; do
        s=chat_$key
        tmux new-session -d -s $s -x 150 -y 40 "$MAMBA chat -m $M --device cpu -n 1000000 --ignore-eos -t 0 --state-out $TMP/tty.state; echo EXIT=\$?; sleep 60"
        check "terminal ($key): the input prompt shows" wait_pane $s '^> ?$'
        tmux send-keys -t $s "The whale" Enter
        check "terminal ($key): the line is generated from" wait_pane $s ', and the'
        tmux send-keys -t $s C-c
        check "terminal ($key): Ctrl-C while generating returns to the prompt" wait_pane $s '\^C$|^> ?$'
        check "terminal ($key): ... which shows on its own line" wait_pane $s '^> ?$'
        tmux send-keys -t $s $key
        check "terminal ($key) at the prompt: exits 0" wait_pane $s 'EXIT=0$'
        check "terminal ($key): --state-out saved the session" bash -c "$MAMBA info $TMP/tty.state | grep -Eq '^tokens: ([4-9]|[0-9]{2,})$'"
        tmux kill-session -t $s 2>/dev/null
        rm -f $TMP/tty.state
    done
    tmux kill-server 2>/dev/null || true
else
    echo "SKIP terminal chat tests: tmux cannot start a session here"
fi
