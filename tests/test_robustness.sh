#!/usr/bin/env bash
# Robustness (issue 7): untrusted sizes in checkpoints, safetensors, config.json and
# tokenizer.json; no half-written output when a convert or init fails or is interrupted (ulimit
# -f, SIGINT, SIGTERM, a bad tensor halfway); signals and pipes during generation (SIGINT, a
# reader that goes away, a closed or huge stdin, invalid UTF-8). Each case checks the exit
# status, the stderr message and the files left behind.
source tests/lib.sh
F=tests/fixtures
export MAMBA_MODEL=/nonexistent.bin    # every case names its model

# Small models with embedded tokenizers (the awkward fixture's vocab fits both test tokenizers).
cp -r $F/awkward/hf $TMP/bpe && cp tests/tokenizer/neox.json $TMP/bpe/tokenizer.json
cp -r $F/awkward/hf $TMP/sp && cp tests/tokenizer/sp_bytes.model $TMP/sp/tokenizer.model
$MAMBA convert $TMP/bpe $TMP/bpe.bin --dtype f32 2>/dev/null
$MAMBA convert $TMP/sp $TMP/sp.bin --dtype bf16 2>/dev/null
$MAMBA convert $F/tiny/hf $TMP/tiny.bin --dtype f32 2>/dev/null

# no_output DIR NAME: neither NAME nor a temporary NAME.partial-* is in DIR
no_output() { ! ls "$1/$2" "$1/$2".partial-* >/dev/null 2>&1; }

# ---------------------------------------------------------------- 2. untrusted sizes
hf_with() {   # hf_with NAME PYTHON: a copy of the tiny fixture, then PYTHON run in it
    cp -r $F/tiny/hf $TMP/$1 && (cd $TMP/$1 && python3 -c "$2")
}
# convert_refuses NAME CHECK PATTERN PYTHON: converting the tiny fixture edited by PYTHON fails
# with one line matching PATTERN
convert_refuses() {
    hf_with "$1" "$4"
    expect_error "$2" "$3" $MAMBA convert $TMP/$1 $TMP/x.bin
}
convert_refuses expand "config: expand × hidden_size beyond int (fuzz regression)" "d_inner must be in" \
    'import json; c = json.load(open("config.json")); c["expand"] = 885746554; del c["intermediate_size"]; json.dump(c, open("config.json", "w"))'
convert_refuses deepconfig "config: nesting beyond cJSON's limit" "deeper than 1000 levels \(the limit\)" \
    'open("config.json", "w").write("{\"a\":" + "[" * 1500 + "]" * 1500 + "}")'
convert_refuses deepheader "safetensors: header nesting beyond cJSON's limit" "header nests deeper than 1000 levels \(the limit\)" \
    'import struct; h = b"{\"a\":" + b"[" * 1500 + b"]" * 1500 + b"}"; open("model.safetensors", "wb").write(struct.pack("<Q", len(h)) + h)'
convert_refuses manytensors "safetensors: more tensors than the limit" "more than 32768 tensors in the checkpoint \(the limit\)" \
    'import struct, json; h = json.dumps({f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(32769)}).encode(); open("model.safetensors", "wb").write(struct.pack("<Q", len(h)) + h)'
convert_refuses bigindex "safetensors index: more tensors than the limit" "weight_map lists more than 32768 tensors \(the limit\)" \
    'import json, os; os.remove("model.safetensors"); json.dump({"weight_map": {f"t{i}": "a.safetensors" for i in range(32769)}}, open("model.safetensors.index.json", "w"))'
convert_refuses hugelen "safetensors: header length 2^64-1" "header length .* exceeds the file" \
    'import struct; open("model.safetensors", "wb").write(struct.pack("<Q", 2**64 - 1) + b"{}")'
convert_refuses hugeshape "safetensors: shape whose product wraps to 0 (2^32 × 2^32)" "implausibly large \(over 2\^40 elements\)" \
    'import struct, json; h = json.dumps({"backbone.embeddings.weight": {"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [0, 0]}}).encode(); open("model.safetensors", "wb").write(struct.pack("<Q", len(h)) + h)'
python3 -c 'print("{\"model\":" + "{\"a\":" * 1200 + "1" + "}" * 1201)' >$TMP/deep.json
expect_error "tokenizer.json: nesting beyond cJSON's limit" "deeper than 1000 levels \(the limit\)" $MAMBA tokenize --tokenizer $TMP/deep.json hi
expect_error "--tokenizer /dev/zero: refused at the size limit" "larger than the limit of 268435456 bytes for a tokenizer" \
    $MAMBA tokenize --tokenizer /dev/zero hi
python3 -c 'import json; d = json.load(open("tests/tokenizer/neox.json")); d["model"]["vocab"]["zz"] = 2**31 - 1; json.dump(d, open("'$TMP'/bigid.json", "w"))'
expect_error "tokenizer.json: vocab id beyond the limit" "no id in \[0, 16777216\)" $MAMBA tokenize --tokenizer $TMP/bigid.json hi

# Checkpoint headers with sizes and offsets near 2^64 (fields at their offsets in FileHeader).
patch_header() {  # patch_header IN OUT STRUCT-FORMAT OFFSET VALUE...
    python3 -c 'import struct, sys; b = bytearray(open(sys.argv[1], "rb").read()); fmt, at = sys.argv[3], int(sys.argv[4]); struct.pack_into(fmt, b, at, *[int(v) for v in sys.argv[5:]]); open(sys.argv[2], "wb").write(b)' "$@"
}
patch_header $TMP/tiny.bin $TMP/h_layers.bin "<I" 16 4294967295
expect_error "checkpoint: n_layer 2^32-1" "config out of range" $MAMBA info $TMP/h_layers.bin
patch_header $TMP/tiny.bin $TMP/h_table.bin "<Q" 80 18446744073709551608
expect_error "checkpoint: tensor table offset 2^64-8" "tensor table lies outside the file" $MAMBA info $TMP/h_table.bin
patch_header $TMP/tiny.bin $TMP/h_kind.bin "<I" 60 2      # tokenizer_kind: tokenizer.json
patch_header $TMP/h_kind.bin $TMP/h_tok.bin "<QQ" 88 18446744073709551615 2
expect_error "checkpoint: tokenizer offset 2^64-1" "embedded tokenizer lies outside the file" $MAMBA info $TMP/h_tok.bin
patch_header $TMP/h_kind.bin $TMP/h_toklen.bin "<QQ" 88 256 18446744073709551615
expect_error "checkpoint: tokenizer length 2^64-1" "embedded tokenizer lies outside the file" $MAMBA info $TMP/h_toklen.bin
patch_header $TMP/tiny.bin $TMP/h_tensor.bin "<Q" $((256 + 80)) 18446744073709551360       # first entry's offset
expect_error "checkpoint: tensor offset near 2^64" "lies outside the file" $MAMBA info $TMP/h_tensor.bin

# Prompts: a token limit, and a byte limit derived from it that refuses text before reading it all.
expect_error "prompt over --max-prompt-tokens" "the prompt is [0-9]+ tokens, over the limit of 3 \(--max-prompt-tokens\)" \
    $MAMBA -m $TMP/bpe.bin --device cpu -n 1 --max-prompt-tokens 3 "one two three four five six"
expect_error "--prompt-ids over --max-prompt-tokens" "the prompt is 4 tokens, over the limit of 3" \
    $MAMBA -m $TMP/bpe.bin --device cpu -n 1 --print-ids --max-prompt-tokens 3 --prompt-ids 1,2,3,4
expect_error "argument prompt over the byte limit" "larger than the limit of 32 bytes \(16 per token of --max-prompt-tokens 2\)" \
    $MAMBA -m $TMP/bpe.bin --device cpu -n 1 --max-prompt-tokens 2 "$(printf 'x%.0s' $(seq 40))"
huge_stdin() {
    local start=$SECONDS rc
    head -c 100000000 /dev/zero | tr '\0' a | timeout 60 $MAMBA -m $TMP/bpe.bin --device cpu -n 1 >$TMP/out 2>$TMP/err
    rc=${PIPESTATUS[2]}
    [ "$rc" -eq 1 ] && [ ! -s $TMP/out ] && [ "$(wc -l <$TMP/err)" -eq 1 ] &&
        grep -q "standard input is larger than the limit of 16777216 bytes (16 per token of --max-prompt-tokens 1048576)" $TMP/err &&
        [ $((SECONDS - start)) -lt 30 ]
}
check "100 MB prompt on stdin: refused early, one line" huge_stdin
check "20 kB prompt on stdin within the limits is processed" bash -c \
    "python3 -c 'print(\"the whale \" * 2000)' | $MAMBA -m $TMP/bpe.bin --device cpu -n 1 --no-echo --print-ids >/dev/null"

# ---------------------------------------------------------------- 3. nothing half-written
mkdir -p $TMP/w
xfsz() {
    (ulimit -f 64; exec $MAMBA convert $F/tiny/hf $TMP/w/out.bin --dtype f32) 2>$TMP/err
    local rc=$?
    [ $rc -eq 153 ] && grep -q "file size limit (ulimit -f) was reached; no output was written" $TMP/err && no_output $TMP/w out.bin
}
check "convert past ulimit -f: exit 153, message, no output or temp file" xfsz
keep_old() {
    echo old >$TMP/w/keep.bin
    (ulimit -f 64; exec $MAMBA convert $F/tiny/hf $TMP/w/keep.bin --dtype f32) 2>/dev/null
    [ "$(cat $TMP/w/keep.bin)" = old ] && ! ls $TMP/w/keep.bin.partial-* >/dev/null 2>&1
}
check "convert past ulimit -f keeps the previous file intact" keep_old
# interrupt SIGNAL RC: init of a 130m f32 model (~0.5 GB) interrupted once its temp file grows
interrupt_init() {
    local sig=$1 want=$2 pid i
    $MAMBA init --shape 130m --dtype f32 $TMP/w/big.bin 2>$TMP/err &
    pid=$!
    for i in $(seq 600); do
        [ "$(stat -c %s $TMP/w/big.bin.partial-* 2>/dev/null | head -1)" -gt 1000000 ] 2>/dev/null && break
        sleep 0.05
    done
    signal_and_wait $sig $pid && return 1
    [ $? -eq $want ] && grep -q "interrupted; no output was written" $TMP/err && no_output $TMP/w big.bin
}
check "init interrupted by SIGINT: exit 130, no output or temp file" interrupt_init INT 130
check "init interrupted by SIGTERM: exit 143, no output or temp file" interrupt_init TERM 143
hf_with nan 'import struct, json
b = bytearray(open("model.safetensors", "rb").read()); n = struct.unpack_from("<Q", b)[0]
h = json.loads(b[8:8 + n]); o = h["backbone.layers.1.mixer.out_proj.weight"]["data_offsets"][0]
struct.pack_into("<f", b, 8 + n + o + 40, float("nan")); open("model.safetensors", "wb").write(b)'
expect_error "convert: NaN in the last layer" "contains NaN or infinity" $MAMBA convert $TMP/nan $TMP/w/nan.bin
check "convert: a bad tensor halfway leaves no output or temp file" no_output $TMP/w nan.bin
expect_error "convert into a missing folder" "cannot create a file beside" $MAMBA convert $F/tiny/hf $TMP/nowhere/x.bin

# ---------------------------------------------------------------- 4. signals and pipes
# interrupt_run NAME ARGS...: SIGINT once some output came; exit 130, the output ends with a
# newline, and --stats still prints, saying it was interrupted.
interrupt_run() {
    interrupted_after_output $TMP/out $TMP/err $MAMBA --device cpu -n 1000000 --seed 1 --ignore-eos --stats "$@" &&
        grep -q '^generated: [0-9]* tokens' $TMP/err && grep -q '^interrupted$' $TMP/err
}
check "SIGINT during generation (text): exit 130, output flushed, stats" interrupt_run -m $TMP/bpe.bin "Once upon a time"
check "SIGINT during generation (--print-ids): exit 130, output flushed, stats" interrupt_run -m $TMP/sp.bin --print-ids "Once"
check "reader goes away (| head), text: exit 0, quiet" \
    quiet_when_reader_leaves $MAMBA --device cpu -n 100000 --seed 1 --ignore-eos -m $TMP/bpe.bin "Once upon a time"
check "reader goes away (| head), --print-ids: exit 0, quiet" \
    quiet_when_reader_leaves $MAMBA --device cpu -n 100000 --seed 1 --ignore-eos -m $TMP/sp.bin --print-ids "Once"
check "closed stdin: no prompt, generation from BOS" bash -c "$MAMBA -m $TMP/sp.bin --device cpu -n 5 --seed 1 <&- >$TMP/out 2>$TMP/err && [ -s $TMP/out ]"
closed_stdin_tokenize() {
    $MAMBA tokenize -m $TMP/sp.bin <&- >$TMP/out 2>$TMP/err
    [ $? -eq 1 ] && [ ! -s $TMP/out ] && grep -q "cannot read standard input" $TMP/err
}
check "closed stdin for tokenize: one clear error" closed_stdin_tokenize
bad_utf8=$'caf\xc3 \xff\xfe na\xe2\x82ve \xed\xa0\x80 \xf4\x90\x80\x80'
# Byte-level BPE tokenizes ill-formed bytes as raw bytes; SentencePiece reads each as U+FFFD (as
# spm_encode does). Generation says which on stderr.
gen_bad() {   # gen_bad MODEL NOTE
    $MAMBA -m $TMP/$1.bin --device cpu -n 5 --seed 1 "$bad_utf8" >$TMP/out 2>$TMP/err &&
        grep -qF "note: the prompt is not valid UTF-8 (byte 3); $2" $TMP/err &&
        [ "$(head -c 3 $TMP/out)" = caf ]
}
check "invalid UTF-8 prompt, byte-level BPE: reported as raw bytes, generates" \
    gen_bad bpe "its ill-formed bytes are tokenized as raw bytes (byte-level BPE)"
check "invalid UTF-8 prompt, SentencePiece: reported as U+FFFD, generates" \
    gen_bad sp "each ill-formed byte is read as U+FFFD (SentencePiece)"
# The byte-level reference, independent of tokenizer.c: GPT-2's bytes_to_unicode and the vocab
# of neox.json (the tokenizer embedded in bpe.bin).
BYTE_LEVEL='import json, sys
same = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
sym = {b: chr(b) if b in same else chr(256 + sum(c not in same for c in range(b))) for b in range(256)}
vocab = json.load(open(sys.argv[1]))["model"]["vocab"]
'
byte_ids() {   # byte_ids HEX: the id of each byte's byte-level symbol
    python3 -c "$BYTE_LEVEL"'print(" ".join(str(vocab[sym[b]]) for b in bytes.fromhex(sys.argv[2])))' tests/tokenizer/neox.json "$1"
}
ids_to_bytes() {   # ids_to_bytes ID...: the bytes their pieces stand for
    python3 -c "$BYTE_LEVEL"'piece = {i: p for p, i in vocab.items()}; byte = {c: b for b, c in sym.items()}
sys.stdout.buffer.write(bytes(byte[c] for i in sys.argv[2:] for c in piece[int(i)]))' tests/tokenizer/neox.json "$@"
}
raw_ids() { [ "$($MAMBA tokenize -m $TMP/bpe.bin "$1")" = "$(byte_ids "$2")" ]; }
check "invalid UTF-8, byte-level BPE: \\xff\\xfeA\\xe2\\x82 is the ids of bytes ff fe 41 e2 82" \
    raw_ids $'\xff\xfeA\xe2\x82' fffe41e282
added_then_byte() { [ "$($MAMBA tokenize -m $TMP/bpe.bin $'<|endoftext|>\x80')" = "0 $(byte_ids 80)" ]; }
check "invalid UTF-8, byte-level BPE: <|endoftext|> then \\x80 is 0 and the id of byte 80" added_then_byte
roundtrip() {
    ids_to_bytes $($MAMBA tokenize -m $TMP/bpe.bin "$bad_utf8") >$TMP/back &&
        cmp $TMP/back <(printf '%s' "$bad_utf8")
}
check "invalid UTF-8, byte-level BPE: the ids stand for exactly the input bytes" roundtrip
valid_unchanged() {   # the first 40 plain rows of neox_cases.tsv: ids of Hugging Face tokenizers
    local text ids rest n=0
    while IFS=$'\t' read -r text ids rest; do
        case "$text" in ''|-*|*\\*) continue ;; esac
        [ "$($MAMBA tokenize -m $TMP/bpe.bin "$text")" = "$ids" ] || { echo "differs: $text"; return 1; }
        n=$((n + 1)); [ $n -eq 40 ] && return 0
    done <tests/tokenizer/neox_cases.tsv
    return 1
}
check "valid UTF-8, byte-level BPE: ids unchanged (40 texts, id for id with tokenizers)" valid_unchanged
python3 -c "$BYTE_LEVEL"'d = json.load(open(sys.argv[1])); del d["model"]["vocab"][sym[0xFF]]
d["model"]["merges"] = [m for m in d["model"]["merges"] if sym[0xFF] not in m]
json.dump(d, open(sys.argv[2], "w"), ensure_ascii=False)' tests/tokenizer/neox.json $TMP/noff.json
expect_error "invalid UTF-8, byte-level BPE without the symbol of byte ff: one clear line" \
    "cannot tokenize: .*ill-formed UTF-8 byte 0xFF and the vocabulary has no byte-level piece 'ÿ' for it" \
    $MAMBA tokenize --tokenizer $TMP/noff.json $'a\xffb'
check "byte-level BPE without the symbol of byte ff: valid text still tokenizes" \
    same "$MAMBA tokenize --tokenizer $TMP/noff.json 'a b'" "$MAMBA tokenize -m $TMP/bpe.bin 'a b'"
# Decoding for display: each maximal ill-formed sequence of the bytes shows as one U+FFFD
# (bytes.decode("utf-8", "replace")); SentencePiece already read each bad byte as U+FFFD.
# U+FFFD is spelled as its UTF-8 bytes: bash encodes $'\u...' in the locale's charset.
fffd() { [ "$($MAMBA tokenize -m $TMP/$1.bin --decode $($MAMBA tokenize -m $TMP/$1.bin $'\xff\xfeA\xe2\x82'))" = "$2" ]; }
check "invalid UTF-8, byte-level BPE: decoded for display, each maximal bad sequence is one U+FFFD" fffd bpe $'\xef\xbf\xbd\xef\xbf\xbdA\xef\xbf\xbd'
check "invalid UTF-8, SentencePiece: each bad byte is U+FFFD (as spm_encode)" fffd sp $'\xef\xbf\xbd\xef\xbf\xbdA\xef\xbf\xbd\xef\xbf\xbd'
stdin_bad() { printf '%s' "$bad_utf8" | $MAMBA -m $TMP/$1.bin --device cpu -n 3 2>$TMP/err >/dev/null && grep -q 'not valid UTF-8' $TMP/err; }
check "invalid UTF-8 on stdin, byte-level BPE" stdin_bad bpe
check "invalid UTF-8 on stdin, SentencePiece" stdin_bad sp

# ---------------------------------------------------------------- regressions from fuzzing
# (under mamba-asan, LeakSanitizer fails this one if sp_load leaks again)
expect_error "SentencePiece model that throws while loading (fuzz regression)" "SentencePiece model .*zero-length key" \
    $MAMBA tokenize --tokenizer tests/fuzz/corpus/sentencepiece/regress-exception-leak hi
for f in use-after-free segv root; do
    expect_error "SentencePiece model with out-of-bounds normalization rules: refused (fuzz regression, $f)" \
        "not a valid SentencePiece model \(malformed protobuf or normalization rules\)" \
        $MAMBA tokenize --tokenizer tests/fuzz/corpus/sentencepiece/regress-charsmap-$f hi
done
