#!/usr/bin/env bash
# Mamba-2 (transformers' layout and the original state-spaces one) and Falcon-Mamba (issue 13):
# convert + the CPU engine against transformers in float64 (fixtures from
# tools/make_ssm_fixtures.py), reduced precision, info, what else works for Mamba-1 (batching,
# --json, bench, perplexity, init), the GPU's one-line refusal, and configs that are refused.
source tests/lib.sh
export MAMBA_MODEL=/nonexistent.bin    # every case names its model

for fx in mamba2_tiny mamba2_awkward mamba2_odd mamba2_statespaces falcon_tiny falcon_awkward statespaces_bin; do
    check "convert $fx (f32)" $MAMBA convert "$F/$fx/hf" "$TMP/$fx.bin" --dtype f32
    check "$fx: logits = transformers float64 (≤ 1e-4)" logits_match $fx $TMP/$fx.bin $F/$fx/ref_logits.bin
    check "$fx: greedy tokens = transformers' greedy decoding (40)" greedy_matches $fx $TMP/$fx.bin
done
check "convert statespaces_bin from 2 pytorch_model shards and their index" $MAMBA convert "$F/statespaces_bin/sharded" "$TMP/sharded.bin" --dtype f32
check "statespaces_bin from shards: logits = transformers (≤ 1e-4)" logits_match statespaces_bin $TMP/sharded.bin $F/statespaces_bin/ref_logits.bin
for dt in bf16 f16; do
    for fx in mamba2_tiny mamba2_awkward falcon_tiny; do
        check "convert $fx ($dt)" $MAMBA convert "$F/$fx/hf" "$TMP/$fx-$dt.bin" --dtype $dt
        check "$fx $dt: logits = transformers on $dt-rounded weights (≤ 1e-4)" logits_match $fx $TMP/$fx-$dt.bin $F/$fx/ref_logits_$dt.bin
    done
done

has_lines() {   # MODEL LINE...: `mamba info MODEL` has each LINE
    local out; out=$($MAMBA info "$1") || return 1; shift; for l in "$@"; do grep -qxF -- "$l" <<<"$out" || { echo "no line '$l' in:"; echo "$out"; return 1; }; done; }
check "info: Mamba-2's heads, groups and Δ limit" has_lines $TMP/mamba2_awkward.bin 'arch: mamba2' 'd_inner: 96' \
    'n_heads: 12' 'head_dim: 8' 'n_groups: 3' 'd_conv: 3' 'tied_head: no' 'dt_limit: [0, 0.05]'
check "info: the state-spaces Mamba-2 (padded vocab, mamba_ssm defaults)" has_lines $TMP/mamba2_statespaces.bin \
    'arch: mamba2' 'vocab_size: 509' 'padded_vocab: 512' 'n_groups: 2' 'dt_limit: [0, inf]' 'tied_head: yes'
check "info: Falcon-Mamba's mixer eps" has_lines $TMP/falcon_tiny.bin 'arch: falcon-mamba' 'mixer_eps: 1e-06' 'tied_head: no'

# ---- without a GPU (here; tests/test_gpu.sh runs Mamba-2 on one): --device cuda fails in one
# line, auto = the CPU
expect_error "--device cuda without a GPU: Mamba-2 refused in one line" "no usable CUDA device|built without CUDA" $MAMBA -m $TMP/mamba2_tiny.bin --device cuda --prompt-ids 1,2 -n 2 --print-ids
check "--device auto runs Mamba-2 (on the CPU): = --device cpu" same \
    "$MAMBA -m $TMP/mamba2_tiny.bin --device auto --prompt-ids 1,2,3 -n 20 -t 0 --ignore-eos --print-ids 2>/dev/null" \
    "$MAMBA -m $TMP/mamba2_tiny.bin --device cpu --prompt-ids 1,2,3 -n 20 -t 0 --ignore-eos --print-ids"

# ---- everything else that works for Mamba-1: batching, --json, bench, perplexity
check "convert --tokenizer embeds a tokenizer (Mamba-2 + byte-level BPE)" \
    $MAMBA convert $F/mamba2_awkward/hf $TMP/m2text.bin --dtype f32 --tokenizer tests/tokenizer/neox.json
check "convert --tokenizer (Falcon-Mamba)" $MAMBA convert $F/falcon_awkward/hf $TMP/fmtext.bin --tokenizer tests/tokenizer/neox.json
printf '%s\n' 'Once upon a time' 'The whale, the whale!' 'A' 'It is a truth universally acknowledged, that a single man' >$TMP/prompts.txt
for m in m2text fmtext; do
    check "$m: greedy, each prompt of a batch = its run alone" python3 tests/same_as_single.py $MAMBA text $TMP/prompts.txt 1 -m $TMP/$m.bin -n 20 -t 0 --ignore-eos
    check "$m: seeded sampling, --json, 2 at a time = alone" python3 tests/same_as_single.py $MAMBA json $TMP/prompts.txt 3 -m $TMP/$m.bin -n 20 -t 1.2 --batch-size 2
    check "$m: bench (CPU) reports decode tokens/s and the roofline" bash -c "$MAMBA bench -m $TMP/$m.bin --device cpu --prompt-len 8 -n 16 | grep -q 'roofline'"
    check "$m: perplexity of a text" bash -c "head -c 3000 tests/tokenizer/neox_cases.tsv | $MAMBA perplexity -m $TMP/$m.bin --device cpu --ctx 64 - | grep -q 'bits per byte'"
done
check "bench --json (Mamba-2): a step reads the weights once and the state" python3 - "$MAMBA" "$TMP/mamba2_awkward.bin" <<'PY'
import json, subprocess, sys
mamba, model = sys.argv[1:3]
info = dict(l.split(': ', 1) for l in subprocess.run([mamba, 'info', model], capture_output=True, text=True, check=True).stdout.splitlines())
r = json.loads(subprocess.run([mamba, 'bench', '-m', model, '--device', 'cpu', '--prompt-len', '4', '-n', '8', '--json'],
                              capture_output=True, check=True).stdout)
# untied f32: all weights but the embedding, one embedding row, and the state of 3 layers of
# (conv_dim 96 + 2·3·12 = 168 channels × d_conv 3 + d_inner 96 × d_state 12) floats
want = int(info['weight_bytes']) - 1003 * 48 * 4 + 48 * 4 + 3 * (168 * 3 + 96 * 12) * 4
assert r['bytes_per_token'] == want, (r['bytes_per_token'], want)
PY

# ---- init: the published shapes
$MAMBA init --shape mamba2-tiny $TMP/i2.bin 2>/dev/null
check "init mamba2-tiny: the shape's heads and groups" has_lines $TMP/i2.bin 'arch: mamba2' 'n_heads: 8' 'n_groups: 2' \
    'dt_limit: [0, inf]' 'parameters: 93552'
check "init mamba2-tiny and falcon-mamba-tiny run" bash -c "
    $MAMBA init --shape mamba2-tiny $TMP/i2.bin && $MAMBA init --shape falcon-mamba-tiny $TMP/if.bin &&
    [ \$($MAMBA -m $TMP/i2.bin --prompt-ids 1 -n 5 --ignore-eos --print-ids | wc -w) -eq 5 ] &&
    [ \$($MAMBA -m $TMP/if.bin --prompt-ids 1 -n 5 --ignore-eos --print-ids | wc -w) -eq 5 ]"
expect_error "init: an unknown shape lists the known ones" "codestral-7b.*falcon-mamba-7b" $MAMBA init --shape mamba3-1b $TMP/x.bin

# ---- refused configs: one line, no output file
refuse() {   # refuse NAME PATTERN FIXTURE PYTHON-EDIT-OF-c: convert of FIXTURE with config c edited must fail
    local name=$1 pattern=$2 fx=$3 edit=$4
    rm -rf "$TMP/r_$name"; cp -r "$F/$fx/hf" "$TMP/r_$name"
    python3 -c "import json,sys; p=sys.argv[1]; c=json.load(open(p)); $edit; json.dump(c, open(p,'w'))" "$TMP/r_$name/config.json"
    expect_error "convert refuses: $name" "$pattern" $MAMBA convert "$TMP/r_$name" "$TMP/r_$name.bin"
    if [ -e "$TMP/r_$name.bin" ]; then fail "$name: an output was left behind"; fi
}
expect_error "convert refuses a hybrid with attention layers" "attn_layer_idx.*hybrid models are not supported" \
    $MAMBA convert $F/refuse/mamba2_attn $TMP/x.bin
expect_error "convert refuses a hybrid with MLPs" "d_intermediate.*hybrid models are not supported" \
    $MAMBA convert $F/refuse/mamba2_mlp $TMP/x.bin
refuse "unknown model_type" 'model_type "jamba" is not supported \(known: mamba, mamba2, falcon_mamba\)' mamba2_tiny "c['model_type']='jamba'"
refuse "heads × head_dim ≠ d_inner" "num_heads 7 × head_dim 16" mamba2_tiny "c['num_heads']=7"
refuse "groups not dividing the heads" "n_groups must divide n_heads" mamba2_tiny "c['n_groups']=3"
refuse "a Δ limit upside down" "time_step_limit.*0 ≤ lo < hi" mamba2_tiny "c['time_step_limit']=[0.1, 0.01]"
refuse "a Δ limit that is not a pair" "time_step_limit.*not a pair of numbers" mamba2_tiny "c['time_step_limit']='wide'"
refuse "NaN in a config" "NaN" mamba2_tiny "c['layer_norm_epsilon']=float('nan')"
refuse "an eos id beyond the vocabulary (config.json)" "eos token id 99999 is outside the vocabulary" mamba2_tiny \
    "c['eos_token_id']=99999; import os; os.remove(os.path.dirname(p) + '/generation_config.json')"
refuse "a pad id beyond the vocabulary (generation_config.json)" "pad token id 4096 is outside the vocabulary" mamba2_tiny \
    "import os; open(os.path.dirname(p) + '/generation_config.json', 'w').write('{\"pad_token_id\": 4096}')"
refuse "Falcon-Mamba's mixer eps out of range" "mixer_eps must be in" falcon_tiny "c['mixer_rms_eps']=2.0"
refuse "state-spaces Mamba2 with an MLP beside the SSM" "d_ssm" mamba2_statespaces "c['ssm_cfg']['d_ssm']=32"
refuse "state-spaces headdim not dividing d_inner" "head_dim 48 does not divide d_inner 128" mamba2_statespaces "c['ssm_cfg']['headdim']=48"
refuse "an unknown ssm_cfg.layer" 'ssm_cfg.layer "Mamba3" is not supported' mamba2_statespaces "c['ssm_cfg']['layer']='Mamba3'"
check "transformers 4's bare Infinity in time_step_limit is read" bash -c "
    cp -r $F/mamba2_tiny/hf $TMP/inf && python3 -c \"import json,sys; p=sys.argv[1]; c=json.load(open(p)); c['time_step_limit']=[0.0, float('inf')]; open(p,'w').write(json.dumps(c))\" $TMP/inf/config.json &&
    grep -q Infinity $TMP/inf/config.json && $MAMBA convert $TMP/inf $TMP/inf.bin && $MAMBA info $TMP/inf.bin | grep -qxF 'dt_limit: [0, inf]'"

# ---- pytorch_model.bin that lies or would run code: convert refuses in one line (torch_archive.c;
# tests/test_torch_archive.sh has the reader's own cases)
bad_bin() {   # bad_bin NAME PATTERN SOURCE: statespaces_bin's folder with pytorch_model.bin from SOURCE
    rm -rf "$TMP/b_$1"; cp -r "$F/statespaces_bin/hf" "$TMP/b_$1"; cp "$3" "$TMP/b_$1/pytorch_model.bin"
    expect_error "convert refuses pytorch_model.bin: $1" "$2" $MAMBA convert "$TMP/b_$1" "$TMP/b_$1.bin"
}
head -c 20000 $F/statespaces_bin/hf/pytorch_model.bin >$TMP/truncated_torch.bin
bad_bin truncated "pytorch_model.bin" $TMP/truncated_torch.bin
bad_bin "a pickle calling os.system" "os.system|not allowed" tests/torch/bad_system.bin
bad_bin "a legacy torch file" "legacy" tests/torch/bad_legacy.bin
bad_bin "another model's tensors" "missing tensor backbone" tests/torch/basic.bin

# ---- each family's tokenizer, found in the folder (or given) and embedded by convert; the ids
# of its test cases (tests/tokenizer/, from tokenizers and sentencepiece) through the checkpoint
tokenizes_as_cases() {   # MODEL CASES: the first 40 valid-UTF-8 rows of CASES through `mamba tokenize`
    python3 - "$MAMBA" "$1" "$2" <<'PY'
import subprocess, sys
mamba, model, cases = sys.argv[1:4]
def unescape(s):
    out, i = bytearray(), 0
    while i < len(s):
        if s[i] == '\\':
            c = s[i + 1]
            if c == 'x': out += bytes([int(s[i + 2:i + 4], 16)]); i += 4; continue
            out += {'n': b'\n', 'r': b'\r', 't': b'\t', '\\': b'\\'}[c]; i += 2; continue
        out += s[i].encode(); i += 1
    return bytes(out)
n = 0
for line in open(cases, encoding='utf-8'):
    text, ids = line.rstrip('\n').split('\t')[:2]
    raw = unescape(text)
    try: raw.decode('utf-8')
    except UnicodeDecodeError: continue
    if not raw.strip() or raw.startswith(b'-'): continue
    got = subprocess.run([mamba, 'tokenize', '-m', model, '--', raw.decode()], capture_output=True, check=True).stdout.split()
    if [int(x) for x in got] != [int(x) for x in ids.split()]: sys.exit(f"{text!r}: got {got}, want {ids}")
    n += 1
    if n == 40: break
print(n, "rows agree")
PY
}
python3 tests/make_zero_hf.py $TMP/z_falcon falcon_mamba 16 1 1042 && cp tests/tokenizer/falcon.json $TMP/z_falcon/tokenizer.json
python3 tests/make_zero_hf.py $TMP/z_codestral mamba2 16 1 1039 && cp tests/tokenizer/mistral_a.json $TMP/z_codestral/tokenizer.json
python3 tests/make_zero_hf.py $TMP/z_sp mamba2 16 1 700 && cp tests/tokenizer/sp_mistral.model $TMP/z_sp/tokenizer.model.v3
check "convert embeds Falcon's tokenizer.json" $MAMBA convert $TMP/z_falcon $TMP/z_falcon.bin
check "convert embeds Mistral's tokenizer.json" $MAMBA convert $TMP/z_codestral $TMP/z_codestral.bin
check "convert finds Mistral's tokenizer.model.v3 (SentencePiece)" bash -c "$MAMBA convert $TMP/z_sp $TMP/z_sp.bin && $MAMBA info $TMP/z_sp.bin | grep -q '^tokenizer: sentencepiece'"
check "Falcon's tokenizer through the checkpoint = tokenizers" tokenizes_as_cases $TMP/z_falcon.bin tests/tokenizer/falcon_cases.tsv
check "Mistral's tokenizer.json through the checkpoint = tokenizers" tokenizes_as_cases $TMP/z_codestral.bin tests/tokenizer/mistral_a_cases.tsv
check "Mistral's SentencePiece model through the checkpoint = sentencepiece" tokenizes_as_cases $TMP/z_sp.bin tests/tokenizer/sp_mistral_cases.tsv
expect_error "convert refuses a tokenizer with more ids than the model's rows" "has 1042 ids but the model only 1039" \
    $MAMBA convert $TMP/z_codestral $TMP/x.bin --tokenizer tests/tokenizer/falcon.json

# ---- special ids: generation_config.json, then the tokenizer, then config.json (Codestral-Mamba's
# config.json says 0, its <unk>, for bos, eos and pad)
python3 tests/make_zero_hf.py $TMP/z_ids mamba2 16 1 1039 && cp tests/tokenizer/mistral_a.json $TMP/z_ids/tokenizer.json
python3 -c "import json,sys; p=sys.argv[1]; c=json.load(open(p)); c.update(bos_token_id=0, eos_token_id=0, pad_token_id=0, norm_before_gate=True); json.dump(c, open(p,'w'))" $TMP/z_ids/config.json
$MAMBA convert $TMP/z_ids $TMP/z_ids.bin 2>/dev/null
check "the tokenizer's special ids win over config.json's" has_lines $TMP/z_ids.bin 'bos_id: 1' 'eos_id: 2'
echo '{"bos_token_id": 1, "eos_token_id": [7, 2], "pad_token_id": null}' >$TMP/z_ids/generation_config.json
$MAMBA convert $TMP/z_ids $TMP/z_ids2.bin 2>/dev/null
check "generation_config.json's ids win over the tokenizer's" has_lines $TMP/z_ids2.bin 'bos_id: 1' 'eos_id: 7'
refuse "an activation other than SiLU" 'hidden_act "gelu" is not supported' mamba2_tiny "c['hidden_act']='gelu'"
