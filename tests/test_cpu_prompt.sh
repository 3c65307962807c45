#!/usr/bin/env bash
# The CPU's prompt pass (cpu.c, engine.c's cpu_prefill): a prompt goes through the layers in
# chunks of up to 64 tokens, each weight read once a chunk, and must give the bits of the same
# prompt one step at a time (--prompt-batch 1): every family, float and quantized weights,
# chunks cut anywhere (--prompt-batch 7), a prompt of several chunks, batched runs and --state-in.
source tests/lib.sh
export MAMBA_MODEL=/nonexistent.bin    # every case names its model

# logits_and_ids MODEL IDS OUT [FLAGS...]: a greedy run's --logits-out rows and its ids in OUT.*
logits_and_ids() {
    local model=$1 ids=$2 out=$3; shift 3
    $MAMBA run --device cpu -m "$model" --prompt-ids "$ids" -n 6 -t 0 --ignore-eos --print-ids --logits-out "$out.logits" "$@" >"$out.ids"
}
# same_bits MODEL IDS: the prompt pass at its default and at 7-token chunks = one step at a time
same_bits() {
    logits_and_ids "$1" "$2" $TMP/steps --prompt-batch 1 && logits_and_ids "$1" "$2" $TMP/pass &&
        logits_and_ids "$1" "$2" $TMP/pass7 --prompt-batch 7 &&
        cmp $TMP/steps.logits $TMP/pass.logits && cmp $TMP/steps.logits $TMP/pass7.logits &&
        cmp $TMP/steps.ids $TMP/pass.ids && cmp $TMP/steps.ids $TMP/pass7.ids
}

for fx in awkward falcon_awkward mamba2_awkward mamba2_odd; do
    for d in f32 bf16 q8 q4; do
        $MAMBA convert "$F/$fx/hf" "$TMP/$fx-$d.bin" --dtype $d 2>/dev/null
        check "$fx $d: the prompt pass = the steps, bit for bit" same_bits $TMP/$fx-$d.bin "$(cat $F/$fx/prompt_ids.txt)"
    done
done

# 200 ids: three whole chunks and a part
long=$(python3 -c 'print(",".join(str((i * 37 + 11) % 290) for i in range(200)))')
check "a prompt of 200 tokens (4 chunks): the pass = the steps (Mamba-1)" same_bits $TMP/awkward-bf16.bin "$long"
check "a prompt of 200 tokens (4 chunks): the pass = the steps (Mamba-2, q8)" same_bits $TMP/mamba2_odd-q8.bin "$long"

# a state carried in: the pass starts from it
check "--state-in then a prompt pass = the steps" bash -c "
    $MAMBA run --device cpu -m $TMP/awkward-f32.bin --prompt-ids 5,6,7 -n 1 -t 0 --print-ids --state-out $TMP/a.state >/dev/null &&
    a=\$($MAMBA run --device cpu -m $TMP/awkward-f32.bin --state-in $TMP/a.state --prompt-ids $long -n 8 -t 0 --ignore-eos --print-ids) &&
    b=\$($MAMBA run --device cpu -m $TMP/awkward-f32.bin --state-in $TMP/a.state --prompt-ids $long -n 8 -t 0 --ignore-eos --print-ids --prompt-batch 1) &&
    [ -n \"\$a\" ] && [ \"\$a\" = \"\$b\" ]"

# batched runs start each sequence with the pass (the shipped model, and it in q8)
$MAMBA convert weights/model.bin $TMP/model-q8.bin --dtype q8 2>/dev/null
{ echo "Once upon a time"; echo "The"; python3 -c 'print(" ".join(["the old man walked down to the river, and"] * 20))'; } >$TMP/prompts.txt
for m in weights/model.bin $TMP/model-q8.bin; do
    check "batched ($(basename $m)): the prompt pass = the steps" bash -c "
        a=\$($MAMBA -m $m --device cpu --batch-file $TMP/prompts.txt -n 8 -t 0 --ignore-eos) &&
        b=\$($MAMBA -m $m --device cpu --batch-file $TMP/prompts.txt -n 8 -t 0 --ignore-eos --prompt-batch 1) &&
        [ -n \"\$a\" ] && [ \"\$a\" = \"\$b\" ]"
done
exit 0
