#!/usr/bin/env bash
# Core engine: convert + CPU engine against transformers (fixtures from tools/make_fixtures.py),
# reduced-precision conversions, the CLI's contracts, and clear errors on bad input.
source tests/lib.sh
for fx in tiny awkward statespaces bf16src f16src; do
    check "convert $fx (f32)" $MAMBA convert "$F/$fx/hf" "$TMP/$fx.bin" --dtype f32
    check "$fx: logits = transformers (≤ 1e-4)" logits_match $fx $TMP/$fx.bin $F/$fx/ref_logits.bin
    check "$fx: greedy tokens = transformers generate" greedy_matches $fx $TMP/$fx.bin
done

# bf16/f16: the reference is transformers on the same rounded matrices, so 1e-4 still holds;
# against the unrounded reference the error is that of the rounding.
for dt in bf16 f16; do
    for fx in tiny awkward; do
        check "convert $fx ($dt)" $MAMBA convert "$F/$fx/hf" "$TMP/$fx-$dt.bin" --dtype $dt
        check "$fx $dt: logits = transformers on $dt-rounded weights (≤ 1e-4)" logits_match $fx $TMP/$fx-$dt.bin $F/$fx/ref_logits_$dt.bin
    done
done
check "bf16 file is half the f32 weights" bash -c "[ \$(stat -c %s $TMP/tiny-bf16.bin) -lt \$(( \$(stat -c %s $TMP/tiny.bin) * 6 / 10 )) ]"

check "info prints the config" bash -c "$MAMBA info $TMP/awkward.bin | grep -qx 'dt_rank: 5' && $MAMBA info $TMP/awkward.bin | grep -qx 'tied_head: no' && $MAMBA info $TMP/statespaces.bin | grep -qx 'padded_vocab: 512'"
check "sampling with a seed is reproducible" bash -c "a=\$($MAMBA -m $TMP/tiny.bin --prompt-ids 1,2,3 -n 50 --seed 7 --ignore-eos --print-ids) && b=\$($MAMBA -m $TMP/tiny.bin --prompt-ids 1,2,3 -n 50 --seed 7 --ignore-eos --print-ids) && [ \"\$a\" = \"\$b\" ] && c=\$($MAMBA -m $TMP/tiny.bin --prompt-ids 1,2,3 -n 50 --seed 8 --ignore-eos --print-ids) && [ \"\$a\" != \"\$c\" ]"
check "top-k 1 equals greedy" same "$MAMBA -m $TMP/tiny.bin --prompt-ids 5,6 -n 30 -k 1 -t 1.5 --seed 3 --ignore-eos --print-ids" "$MAMBA -m $TMP/tiny.bin --prompt-ids 5,6 -n 30 -t 0 --ignore-eos --print-ids"
check "repetition penalty changes a greedy run" differ "$MAMBA -m $TMP/tiny.bin --prompt-ids 351,11 -n 40 -t 0 --repeat-penalty 3 --ignore-eos --print-ids" "$MAMBA -m $TMP/tiny.bin --prompt-ids 351,11 -n 40 -t 0 --ignore-eos --print-ids"
check "-n N generates N tokens" bash -c "[ \$($MAMBA -m $TMP/tiny.bin --prompt-ids 1 -n 17 --ignore-eos --print-ids | wc -w) -eq 17 ]"
check "logits rows = prompt + generated - 1" bash -c "$MAMBA -m $TMP/awkward.bin --prompt-ids 1,2,3 -n 5 --ignore-eos --print-ids --logits-out $TMP/rows.bin >/dev/null && [ \$(stat -c %s $TMP/rows.bin) -eq \$(( 7 * 1003 * 4 )) ]"
check "--stats goes to stderr only" bash -c "out=\$($MAMBA -m $TMP/tiny.bin --prompt-ids 1,2 -n 5 --ignore-eos --print-ids --stats 2>$TMP/stats) && [ \$(echo \"\$out\" | wc -w) -eq 5 ] && grep -q 'tokens/s' $TMP/stats && grep -q 'time to first token' $TMP/stats"
check "closed stdout (| head) exits 0 quietly" quiet_when_reader_leaves $MAMBA -m $TMP/tiny.bin --device cpu --prompt-ids 1 -n 100000 --ignore-eos --print-ids
check "stops at EOS unless --ignore-eos" bash -c "
    n_eos=\$($MAMBA -m $TMP/tiny.bin --prompt-ids 3 -n 3000 -t 1.5 --seed 1 --print-ids | wc -w)
    n_all=\$($MAMBA -m $TMP/tiny.bin --prompt-ids 3 -n 3000 -t 1.5 --seed 1 --print-ids --ignore-eos | wc -w)
    [ \$n_eos -lt 3000 ] && [ \$n_all -eq 3000 ]"

# ---- bad input: one clear line on stderr, non-zero exit, no crash
good=$TMP/tiny.bin
size=$(stat -c %s $good)
head -c $((size - 100)) $good >$TMP/truncated.bin
{ printf 'NOTMAMBA'; tail -c +9 $good; } >$TMP/magic.bin
python3 - "$good" "$TMP" <<'PY'
import struct, sys
data = bytearray(open(sys.argv[1], 'rb').read())
def save(name, b): open(f"{sys.argv[2]}/{name}", 'wb').write(b)
v = bytearray(data); struct.pack_into('<I', v, 8, 99); save('version.bin', v)
save('padded.bin', data + b'\0' * 512)
t = bytearray(data); struct.pack_into('<I', t, 16, 1000); save('layers.bin', t)              # n_layer
o = bytearray(data); struct.pack_into('<Q', o, 256 + 80, 1 << 40); save('offset.bin', o)   # first tensor's offset
PY
expect_error "truncated checkpoint" "truncated|header says" $MAMBA -m $TMP/truncated.bin --prompt-ids 1 -n 1
expect_error "wrong magic" "not a mamba checkpoint" $MAMBA -m $TMP/magic.bin --prompt-ids 1 -n 1
expect_error "unknown format version" "format version 99" $MAMBA info $TMP/version.bin
expect_error "header length disagrees with file" "header says .* bytes" $MAMBA info $TMP/padded.bin
expect_error "config disagrees with tensor table" "tensors in the table|outside|out of range" $MAMBA info $TMP/layers.bin
expect_error "tensor offset outside the file" "outside the file|aligned" $MAMBA info $TMP/offset.bin
expect_error "unreadable model path" "cannot open model" $MAMBA -m $TMP/nonexistent.bin --prompt-ids 1
expect_error "token id ≥ vocab" "token id 512 is out of range" $MAMBA -m $good --prompt-ids 1,512 -n 1 --print-ids
expect_error "non-numeric token id" "token ids must be integers" $MAMBA -m $good --prompt-ids 1,x -n 1 --print-ids
expect_error "-n not a number" "-n expects an integer" $MAMBA -m $good --prompt-ids 1 -n abc
expect_error "negative temperature" "-t expects a number" $MAMBA -m $good --prompt-ids 1 -t -1
expect_error "top-p above 1" "-p expects a number" $MAMBA -m $good --prompt-ids 1 -p 1.5
expect_error "unknown option" "unknown option --frobnicate" $MAMBA -m $good --frobnicate
expect_error "unknown dtype" "--dtype must be f32, f16, bf16, q8 or q4" $MAMBA convert $F/tiny/hf $TMP/x.bin --dtype f8
expect_error "model without tokenizer and a text prompt" "no tokenizer" $MAMBA -m $good "hello"

# ---- bad Hugging Face directories: convert must fail cleanly and leave no output behind
bad_dir() { rm -rf "$TMP/$1"; cp -r $F/tiny/hf "$TMP/$1"; }
bad_dir noconfig; rm $TMP/noconfig/config.json
bad_dir badjson; echo '{"hidden_size": 64,' >$TMP/badjson/config.json
bad_dir nolayers; python3 -c "import json,sys; p=sys.argv[1]; c=json.load(open(p)); del c['num_hidden_layers']; json.dump(c, open(p,'w'))" $TMP/nolayers/config.json
bad_dir shape; python3 -c "import json,sys; p=sys.argv[1]; c=json.load(open(p)); c['state_size']=8; json.dump(c, open(p,'w'))" $TMP/shape/config.json
bad_dir vocab; python3 -c "import json,sys; p=sys.argv[1]; c=json.load(open(p)); c['vocab_size']=500; json.dump(c, open(p,'w'))" $TMP/vocab/config.json
python3 - "$TMP" <<'PY'
import json, struct, sys
d = sys.argv[1]
def rewrite(name, edit):
    path = f"{d}/{name}/model.safetensors"
    raw = open(path, 'rb').read()
    n = struct.unpack('<Q', raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    body = raw[8 + n:]
    edit(header)
    h = json.dumps(header).encode()
    open(path, 'wb').write(struct.pack('<Q', len(h)) + h + body)
def lie(h): h['backbone.norm_f.weight']['data_offsets'] = [0, 10 ** 9]
def drop(h): del h['backbone.layers.1.mixer.D']
def dtype(h): h['backbone.layers.0.mixer.D']['dtype'] = 'I64'
for name, edit in [('lying', lie), ('missing', drop), ('intdtype', dtype)]:
    import shutil
    shutil.copytree(f"tests/fixtures/tiny/hf", f"{d}/{name}", dirs_exist_ok=True)
    rewrite(name, edit)
path = f"{d}/hugeheader"
shutil.copytree("tests/fixtures/tiny/hf", path, dirs_exist_ok=True)
raw = open(f"{path}/model.safetensors", 'rb').read()
open(f"{path}/model.safetensors", 'wb').write(struct.pack('<Q', 1 << 62) + raw[8:])
PY
expect_error "missing config.json" "config.json" $MAMBA convert $TMP/noconfig $TMP/out.bin
expect_error "malformed config.json" "not valid JSON" $MAMBA convert $TMP/badjson $TMP/out.bin
expect_error "config.json without num_hidden_layers" "lacks \"num_hidden_layers\"" $MAMBA convert $TMP/nolayers $TMP/out.bin
expect_error "shape disagrees with config" "has shape .* but the config implies" $MAMBA convert $TMP/shape $TMP/out.bin
expect_error "vocab disagrees with embedding" "rows but the config implies" $MAMBA convert $TMP/vocab $TMP/out.bin
expect_error "safetensors offsets outside the file" "offsets outside the file" $MAMBA convert $TMP/lying $TMP/out.bin
expect_error "missing tensor" "missing tensor backbone.layers.1.mixer.D" $MAMBA convert $TMP/missing $TMP/out.bin
expect_error "unsupported tensor dtype" "unsupported dtype" $MAMBA convert $TMP/intdtype $TMP/out.bin
expect_error "safetensors header length beyond the file" "header length" $MAMBA convert $TMP/hugeheader $TMP/out.bin
expect_error "not a directory" "not a readable directory" $MAMBA convert $TMP/nowhere $TMP/out.bin
check "failed converts left no output or temporary file" bash -c "! ls $TMP | grep -q '^out\.bin'"
