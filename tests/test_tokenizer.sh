#!/usr/bin/env bash
# tests/test_tokenizer.sh: both tokenizers against their reference libraries (issue 3).
# SentencePiece: ids and decoded text equal to spm_encode / spm_decode (Debian `sentencepiece`)
# for two committed models. Byte-level BPE: ids and decoded text equal to Hugging Face
# `tokenizers`, recorded in the fixtures by tools/make_bpe_fixture.py (for texts that are not
# valid UTF-8: `tokenizers` on each valid run, the ids of the raw bytes between them). Every decode streams one id at a time and each piece must
# be valid UTF-8. Then malformed files, corrupted copies, and the encode speed on a 10 MB text.
# tests/tokenizer/README.md describes the fixtures.
source tests/lib.sh
D=tests/tokenizer

# The driver matching $MAMBA: tests/tok_check for ./mamba, tests/tok_check-asan for
# ./mamba-asan (the Makefile builds both, and here when missing).
VARIANT=${MAMBA##*/mamba}
TOK=tests/tok_check$VARIANT
[ -x "$TOK" ] || check "build $TOK" make -s "$TOK"

# check_out NAME EXPECTED CMD...: CMD must succeed and print exactly EXPECTED.
check_out() {
    local name=$1 want=$2 got; shift 2
    if got=$("$@" 2>&1) && [ "$got" = "$want" ]; then pass "$name"; else fail "$name" "got '$got', want '$want'"; fi
}

# --- SentencePiece: sp_bytes is Llama-style (BPE, byte fallback, no normalization), so every
# valid UTF-8 line must come back unchanged; sp_unigram has nmt_nfkc and an unk piece.
check_out "sentencepiece: sp_bytes.model ids" "kind=1 vocab=800 bos=1 eos=2 pad=3 wants_bos=1" $TOK info $D/sp_bytes.model
check_out "sentencepiece: sp_unigram.model ids" "kind=1 vocab=500 bos=1 eos=2 pad=-1 wants_bos=1" $TOK info $D/sp_unigram.model
check_out "sentencepiece: load from bytes" "kind=1 vocab=800" $TOK bytes sp $D/sp_bytes.model
for m in sp_bytes sp_unigram; do
    spm_encode --model=$D/$m.model --output_format=id <$D/sp_lines.txt >$TMP/$m.ids
    spm_decode --model=$D/$m.model --input_format=id <$TMP/$m.ids >$TMP/$m.dec
    check "sentencepiece $m: ids (with and without BOS) and decode equal spm_encode / spm_decode" \
        $TOK lines $D/$m.model $D/sp_lines.txt $TMP/$m.ids $TMP/$m.dec $([ $m = sp_bytes ] && echo --roundtrip)
    $TOK random $D/$m.model 1000 1 >$TMP/$m.rnd
    spm_decode --model=$D/$m.model --input_format=id <$TMP/$m.rnd >$TMP/$m.rdec
    check "sentencepiece $m: streaming decode of 1000 random id sequences equals spm_decode" \
        $TOK lines $D/$m.model - $TMP/$m.rnd $TMP/$m.rdec
done

# --- Byte-level BPE: neox.json is shaped like GPT-NeoX-20B's; variant.json and noregex.json have
# the other options.
check_out "bpe: neox.json ids" "kind=2 vocab=933 bos=0 eos=0 pad=1 wants_bos=0" $TOK info $D/neox.json
check_out "bpe: variant.json ids" "kind=2 vocab=941 bos=933 eos=934 pad=1 wants_bos=1" $TOK info $D/variant.json
check_out "bpe: load from bytes" "kind=2 vocab=933" $TOK bytes json $D/neox.json
check "bpe neox: $(wc -l <$D/neox_cases.tsv) strings id for id with tokenizers, streaming decode" \
    $TOK cases $D/neox.json $D/neox_cases.tsv
check "bpe neox: streaming decode of 300 random id sequences equals tokenizers" \
    $TOK decode $D/neox.json $D/neox_decode.tsv
check "bpe variant: $(wc -l <$D/variant_cases.tsv) strings id for id with tokenizers, BOS, streaming decode" \
    $TOK cases $D/variant.json $D/variant_cases.tsv
check "bpe noregex: $(wc -l <$D/noregex_cases.tsv) strings id for id with tokenizers (use_regex off)" \
    $TOK cases $D/noregex.json $D/noregex_cases.tsv

# --- Malformed files: one clear line, non-zero exit, no crash.
head -c 5000 $D/neox.json >$TMP/truncated.json
echo "plain text, not a tokenizer" >$TMP/text.txt
: >$TMP/empty
sed '0,/"type": "BPE"/s//"type": "WordPiece"/' $D/neox.json >$TMP/wordpiece.json
sed '0,/"type": "NFC"/s//"type": "Lowercase"/' $D/neox.json >$TMP/lowercase.json
sed '/"pre_tokenizer"/,/"type"/s/"ByteLevel"/"Metaspace"/' $D/neox.json >$TMP/metaspace.json
sed '0,/"merges": \[/s//"merges": [ "zzq zzr",/' $D/neox.json >$TMP/badmerge.json
sed 's/<|padding|>/<|pad'$'\xff''ding|>/' $D/neox.json >$TMP/badadded.json
head -c 3000 $D/sp_bytes.model >$TMP/truncated.model
printf '\n\377\377\377\377\377\001garbage' >$TMP/garbage.model
expect_error "malformed: truncated tokenizer.json" 'truncated.json: tokenizer.json: invalid JSON' $TOK info $TMP/truncated.json
expect_error "malformed: non-JSON bytes as tokenizer.json" 'tokenizer.json: invalid JSON at byte 0' $TOK bytes json $TMP/text.txt
expect_error "malformed: a text file" 'no JSON object, and not a valid SentencePiece model' $TOK info $TMP/text.txt
expect_error "malformed: empty file" 'empty file' $TOK info $TMP/empty
expect_error "malformed: missing file" 'cannot open' $TOK info $TMP/missing
expect_error "malformed: unknown model type" "model type 'WordPiece' is not supported" $TOK info $TMP/wordpiece.json
expect_error "malformed: unknown normalizer" "normalizer 'Lowercase' is not supported" $TOK info $TMP/lowercase.json
expect_error "malformed: unknown pre_tokenizer" "pre_tokenizer 'Metaspace' is not supported" $TOK info $TMP/metaspace.json
expect_error "malformed: merge of unknown pieces" 'merge 0 .* not in the vocabulary' $TOK info $TMP/badmerge.json
expect_error "malformed: added token that is not valid UTF-8" 'added token 1 is not valid UTF-8' $TOK info $TMP/badadded.json
expect_error "malformed: truncated SentencePiece model" 'not a valid SentencePiece model' $TOK info $TMP/truncated.model
expect_error "malformed: garbage SentencePiece model" 'not a valid SentencePiece model' $TOK bytes sp $TMP/garbage.model
check "malformed: 1000 corrupted copies of neox.json load or fail cleanly" $TOK mutate $D/neox.json 1000 1
check "malformed: 1000 corrupted copies of sp_bytes.model load or fail cleanly" $TOK mutate $D/sp_bytes.model 1000 1

# --- Speed: a 10 MB text, when shared/ is beside the checkout; plain builds only.
BENCH=${TOKENIZER_BENCH_TEXT:-../shared/data/classics/train.txt}
if [ -f "$BENCH" ] && [ -z "$VARIANT" ]; then
    for m in neox.json sp_bytes.model sp_unigram.model; do
        check "speed: $m encodes $(($(wc -c <"$BENCH") / 1000000)) MB in under a minute" \
            timeout 60 $TOK bench $D/$m "$BENCH"
        sed 's/^/    /' "$LOG"
    done
fi
