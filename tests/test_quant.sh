#!/usr/bin/env bash
# Quantized weights (q8, q4; docs/FORMAT.md) on the CPU: the codes and scales against an
# independent reference, the shipped model's perplexity against bf16's, each family's fixtures
# against transformers, re-quantizing refused, hostile scales refused.
source tests/lib.sh
F=tests/fixtures
CMP=${CMP:-tests/cmp_logits}
M=weights/model.bin
VALID=../shared/data/classics/valid.txt
[ -r "$VALID" ] || VALID=$(dirname "$0")/../../shared/data/classics/valid.txt
vocab_of() { $MAMBA info "$1" | sed -n 's/^vocab_size: //p'; }

# ---- the quantizer: codes and scales = tests/quant_ref.py's, on rows shorter than a group
# (dt_proj: 4 columns), whole groups (in_proj: 64) and a padded last group (awkward: 40)
for d in q8 q4; do
    $MAMBA convert $F/tiny/hf $TMP/tiny-$d.bin --dtype $d 2>/dev/null
    $MAMBA convert $F/awkward/hf $TMP/awkward-$d.bin --dtype $d 2>/dev/null
    check "$d: dt_proj codes and scales = the reference" python3 tests/quant_ref.py $TMP/tiny-$d.bin $F/tiny/hf/model.safetensors backbone.layers.0.mixer.dt_proj.weight layers.0.dt_proj
    check "$d: in_proj codes and scales = the reference" python3 tests/quant_ref.py $TMP/tiny-$d.bin $F/tiny/hf/model.safetensors backbone.layers.1.mixer.in_proj.weight layers.1.in_proj
    check "$d: a padded embedding's codes and scales = the reference" python3 tests/quant_ref.py $TMP/awkward-$d.bin $F/awkward/hf/model-00001-of-00003.safetensors backbone.embeddings.weight embedding
done

# ---- the shipped model re-quantized: bits per byte on the validation slice against bf16's
# (measured on these 512 tokens: bf16 1.39728, q8 1.39690, q4 1.39597; on 1,500: -0.02%, +0.21%)
ppl() { $MAMBA perplexity -m "$1" --device cpu --ctx 512 --max-tokens 512 --json "$VALID" | python3 -c 'import json, sys; print(json.load(sys.stdin)["bits_per_byte"])'; }
for d in q8 q4; do $MAMBA convert $M $TMP/model-$d.bin --dtype $d 2>/dev/null; done
base=$(ppl $M)
check "q8: the shipped model's bits per byte within 0.5% of bf16's ($base)" bash -c "
    got=\$($(declare -f ppl); MAMBA=$MAMBA VALID=$VALID ppl $TMP/model-q8.bin) && echo \$got && python3 -c \"import sys; sys.exit(0 if \$got <= $base * 1.005 else 1)\""
check "q4: the shipped model's bits per byte within 5% of bf16's ($base)" bash -c "
    got=\$($(declare -f ppl); MAMBA=$MAMBA VALID=$VALID ppl $TMP/model-q4.bin) && echo \$got && python3 -c \"import sys; sys.exit(0 if \$got <= $base * 1.05 else 1)\""
check "q8: info shows the format and its bytes per weight" bash -c "
    $MAMBA info $TMP/model-q8.bin >$TMP/info && grep -qx 'dtype: q8' $TMP/info && grep -q '^quantization: 8-bit codes in groups of 32' $TMP/info &&
    python3 -c \"import sys; b = float(open('$TMP/info').read().split('bytes_per_weight: ')[1].split()[0]); sys.exit(0 if 1.0 < b < 1.3 else 1)\""
check "q4: the shipped model still writes English" bash -c "
    out=\$($MAMBA -m $TMP/model-q4.bin --device cpu -n 40 -t 0 'Once upon a time') && echo \"\$out\" &&
    [ \$(echo \"\$out\" | grep -oiwE 'the|and|of|to|a|was|he|she|it|that|in' | wc -l) -ge 3 ]"

# ---- every family's fixtures against transformers (f32 weights there). These random models'
# logits are flat, and the CPU quantizes each product's input to int8 too (cpu_quant.c): q8
# measured 3.9-9.5% (bf16 weights alone: 0.9-2.5%) with top-1 93-100%, q4 51-85% with top-1
# 37-71%; top-1 counted away from near ties (the winner within 1% of the largest logit)
for fx in tiny awkward falcon_tiny falcon_awkward mamba2_tiny mamba2_awkward mamba2_odd; do
    for d in q8 q4; do
        [ -e $TMP/$fx-$d.bin ] || $MAMBA convert $F/$fx/hf $TMP/$fx-$d.bin --dtype $d 2>/dev/null
        tol=1.2e-1 top=0.9; [ $d = q4 ] && tol=1.0 top=0.3
        check "$fx $d: logits vs transformers (≤ $tol, top-1 ≥ $top)" bash -c "
            $MAMBA run --device cpu -m $TMP/$fx-$d.bin --prompt-ids $(cat $F/$fx/prompt_ids.txt) -n 0 --print-ids --logits-out $TMP/$fx-$d.logits >/dev/null &&
            $CMP $TMP/$fx-$d.logits $F/$fx/ref_logits.bin $(vocab_of $TMP/$fx-$d.bin) $tol $top 1e-2"
    done
done
# ---- the integer products are exact and their float steps fixed: this build's vector kernels
# (AVX2, AVX-512 VNNI where the CPU has them) give the bits of the portable C of ./mamba-asan
if [ "$MAMBA" = ./mamba ] && [ -x ./mamba-asan ]; then
    for fx in awkward falcon_awkward mamba2_odd; do
        for d in q8 q4; do
            check "$fx $d: the vector kernels = the portable ones, bit for bit" bash -c "
                for b in ./mamba ./mamba-asan; do
                    \$b run --device cpu -m $TMP/$fx-$d.bin --prompt-ids $(cat $F/$fx/prompt_ids.txt) -n 8 -t 0 --ignore-eos --print-ids --logits-out $TMP/\${b#./}.logits >/dev/null || exit 1
                done
                cmp $TMP/mamba.logits $TMP/mamba-asan.logits"
        done
    done
fi

$MAMBA convert $F/mamba2_awkward/hf $TMP/m2text-q8.bin --dtype q8 --tokenizer tests/tokenizer/neox.json 2>/dev/null
printf '%s\n' "Once upon a time" "The" "In the beginning" "A" >$TMP/prompts.txt
check "q8: batched greedy = each prompt alone (Mamba-2)" python3 tests/same_as_single.py $MAMBA text $TMP/prompts.txt 1 --device cpu -m $TMP/m2text-q8.bin -n 12 -t 0 --ignore-eos

# ---- refusals: one line each
expect_error "a quantized checkpoint is not quantized again" 'already quantized \(q8\)' $MAMBA convert $TMP/model-q8.bin $TMP/again.bin --dtype q4
expect_error "an unknown --dtype" 'must be f32, f16, bf16, q8 or q4' $MAMBA convert $M $TMP/x.bin --dtype q3
# a NaN scale: the first scale of the embedding (its scales plane follows its codes)
python3 - "$TMP/model-q8.bin" "$TMP/nan.bin" <<'PY'
import struct, sys
d = bytearray(open(sys.argv[1], 'rb').read())
table = struct.unpack_from('<Q', d, 80)[0]
_, _, rows, cols, off, _ = struct.unpack_from('<IIIIQQ', d, table + 64)
struct.pack_into('<f', d, off + rows * ((cols + 31) // 32 * 32), float('nan'))
open(sys.argv[2], 'wb').write(d)
PY
expect_error "a NaN scale is refused at load" 'embedding has a non-finite scale \(row 0, group 0\)' $MAMBA run -m $TMP/nan.bin --device cpu --prompt-ids 1 -n 1
cut=$(( $(stat -c %s $TMP/model-q4.bin) - 1000 ))
head -c $cut $TMP/model-q4.bin >$TMP/short.bin
expect_error "a truncated q4 checkpoint is refused" 'truncated|outside the file' $MAMBA run -m $TMP/short.bin --device cpu --prompt-ids 1 -n 1
