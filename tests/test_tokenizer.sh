#!/usr/bin/env bash
# tests/test_tokenizer.sh: both tokenizers against their reference libraries (issue 3).
# SentencePiece: ids and decoded text equal to spm_encode / spm_decode (Debian `sentencepiece`)
# for three committed models, and to Python sentencepiece for sp_mistral.model. tokenizer.json:
# ids and decoded text equal to Hugging Face `tokenizers`, recorded in the fixtures by
# tools/make_bpe_fixture.py (GPT-NeoX's byte-level BPE) and tools/make_tokenizer_fixtures.py
# (Falcon's, Mistral's in both forms, Metaspace, the other pre-tokenizer components); for texts
# that are not valid UTF-8: `tokenizers` on each valid run, the ids of the raw bytes between them.
# Every decode streams one id at a time and each piece must be valid UTF-8. Then malformed
# files, corrupted copies, and the encode speed on a 10 MB text.
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
check_out "sentencepiece: sp_mistral.model ids" "kind=1 vocab=700 bos=1 eos=2 pad=-1 wants_bos=1" $TOK info $D/sp_mistral.model
for m in sp_bytes sp_unigram sp_mistral; do
    spm_encode --model=$D/$m.model --output_format=id <$D/sp_lines.txt >$TMP/$m.ids
    spm_decode --model=$D/$m.model --input_format=id <$TMP/$m.ids >$TMP/$m.dec
    check "sentencepiece $m: ids (with and without BOS) and decode equal spm_encode / spm_decode" \
        $TOK lines $D/$m.model $D/sp_lines.txt $TMP/$m.ids $TMP/$m.dec $([ $m != sp_unigram ] && echo --roundtrip)
    $TOK random $D/$m.model 1000 1 >$TMP/$m.rnd
    spm_decode --model=$D/$m.model --input_format=id <$TMP/$m.rnd >$TMP/$m.rdec
    check "sentencepiece $m: streaming decode of 1000 random id sequences equals spm_decode" \
        $TOK lines $D/$m.model - $TMP/$m.rnd $TMP/$m.rdec
done

# sp_mistral is BPE with byte fallback like Mistral's tokenizer.model, with user-defined [INST]
# [/INST] and control [TOOL_CALLS]; its references are Python sentencepiece's.
check "sentencepiece sp_mistral: $(wc -l <$D/sp_mistral_cases.tsv) strings id for id with Python sentencepiece, streaming decode" \
    $TOK cases $D/sp_mistral.model $D/sp_mistral_cases.tsv

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

# --- tokenizer.json beyond GPT-2 (tools/make_tokenizer_fixtures.py): Falcon's pre-tokenizer
# Sequence; Mistral's BPE with byte fallback, in its older form (Prepend and Replace normalizers)
# and its newer one (Metaspace), with their decoder chain; Metaspace as pre-tokenizer and decoder
# (ignore_merges); the other pre-tokenizer components and split behaviors.
check_out "falcon.json ids" "kind=2 vocab=1042 bos=11 eos=11 pad=-1 wants_bos=0" $TOK info $D/falcon.json
for m in mistral_a mistral_b metaspace; do
    check_out "$m.json ids" "kind=2 vocab=$([ $m = metaspace ] && echo 1041 || echo 1039) bos=1 eos=2 pad=-1 wants_bos=1" $TOK info $D/$m.json
done
for m in falcon mistral_a mistral_b metaspace pretok_ws pretok_split pretok_invert pretok_meta bytegaps bytegaps_unfused; do
    check "$m: $(wc -l <$D/${m}_cases.tsv) strings id for id with tokenizers, BOS as it wants, streaming decode" \
        $TOK cases $D/$m.json $D/${m}_cases.tsv
done
check "mistral_a: streaming decode (ByteFallback across pieces) of 300 random id sequences equals tokenizers" \
    $TOK decode $D/mistral_a.json $D/mistral_a_decode.tsv
check "metaspace: streaming decode (Metaspace decoder) of 300 random id sequences equals tokenizers" \
    $TOK decode $D/metaspace.json $D/metaspace_decode.tsv

# --- Malformed files: one clear line, non-zero exit, no crash.
head -c 5000 $D/neox.json >$TMP/truncated.json
echo "plain text, not a tokenizer" >$TMP/text.txt
: >$TMP/empty
sed '0,/"type": "BPE"/s//"type": "WordPiece"/' $D/neox.json >$TMP/wordpiece.json
sed '0,/"type": "NFC"/s//"type": "Lowercase"/' $D/neox.json >$TMP/lowercase.json
sed '/"pre_tokenizer"/,/"type"/s/"ByteLevel"/"BertPreTokenizer"/' $D/neox.json >$TMP/bert.json
sed 's/"type": "Digits"/"type": "UnicodeScripts"/' $D/falcon.json >$TMP/scripts.json
sed 's/"Regex": "\[0-9\]\[0-9\]\[0-9\]"/"Regex": "[0-9"/' $D/falcon.json >$TMP/badregex.json
sed 's/"behavior": "Contiguous"/"behavior": "Sideways"/' $D/falcon.json >$TMP/badbehavior.json
sed 's/"replacement": "▁"/"replacement": "▁▁"/' $D/mistral_b.json >$TMP/badmetaspace.json
sed 's/"type": "ByteFallback"/"type": "CTC"/' $D/mistral_a.json >$TMP/ctc.json
sed '/"decoder"/,$s/"type": "Replace"/"type": "Fuse"/; s/"type": "ByteFallback"/"type": "Replace", "pattern": {"String": "ab"}, "content": "x"/' \
    $D/mistral_a.json >$TMP/fusedreplace.json
sed '/"decoder"/,$s/"type": "Replace",/"type": "Fuse",/' $D/mistral_a.json >$TMP/fusedfallback.json
sed '/"decoder"/,$s/"type": "Replace",/"type": "ByteFallback",/' $D/mistral_a.json >$TMP/twofallbacks.json
sed 's/"replacement": "▁",/"replacement": 9,/' $D/mistral_b.json >$TMP/numberreplacement.json
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
expect_error "malformed: unknown pre_tokenizer" "pre_tokenizer 'BertPreTokenizer' is not supported" $TOK info $TMP/bert.json
expect_error "malformed: unknown pre_tokenizer in a Sequence" "pre_tokenizer Sequence component 'UnicodeScripts' is not supported" $TOK info $TMP/scripts.json
expect_error "malformed: Split pattern that does not compile" "pre_tokenizer Split pattern does not compile" $TOK info $TMP/badregex.json
expect_error "malformed: unknown split behavior" "Punctuation needs a behavior" $TOK info $TMP/badbehavior.json
expect_error "malformed: Metaspace replacement of two characters" "Metaspace needs a one-character 'replacement'" $TOK info $TMP/badmetaspace.json
expect_error "malformed: unknown decoder" "decoder 'CTC' is not supported" $TOK info $TMP/ctc.json
expect_error "malformed: ByteFallback after Fuse" "decoder 'ByteFallback' after Fuse or twice is not supported" $TOK info $TMP/fusedfallback.json
expect_error "malformed: ByteFallback twice (one run of bytes)" "decoder 'ByteFallback' after Fuse or twice is not supported" $TOK info $TMP/twofallbacks.json
expect_error "malformed: a Metaspace replacement that is not text" "Metaspace needs a one-character 'replacement'" $TOK info $TMP/numberreplacement.json
expect_error "malformed: Replace of two characters after Fuse" "decoder Replace after Fuse is supported for a one-character" $TOK info $TMP/fusedreplace.json
expect_error "malformed: merge of unknown pieces" 'merge 0 .* not in the vocabulary' $TOK info $TMP/badmerge.json
expect_error "malformed: added token that is not valid UTF-8" 'added token 1 is not valid UTF-8' $TOK info $TMP/badadded.json
expect_error "malformed: truncated SentencePiece model" 'not a valid SentencePiece model' $TOK info $TMP/truncated.model
expect_error "malformed: garbage SentencePiece model" 'not a valid SentencePiece model' $TOK bytes sp $TMP/garbage.model
check "malformed: 1000 corrupted copies of neox.json load or fail cleanly" $TOK mutate $D/neox.json 1000 1
check "malformed: 1000 corrupted copies of sp_bytes.model load or fail cleanly" $TOK mutate $D/sp_bytes.model 1000 1
check "malformed: 1000 corrupted copies of falcon.json load or fail cleanly" $TOK mutate $D/falcon.json 1000 2
check "malformed: 1000 corrupted copies of mistral_a.json load or fail cleanly" $TOK mutate $D/mistral_a.json 1000 3

# --- Speed: a 10 MB text, when shared/ is beside the checkout; plain builds only.
BENCH=${TOKENIZER_BENCH_TEXT:-../shared/data/classics/train.txt}
if [ -f "$BENCH" ] && [ -z "$VARIANT" ]; then
    for m in neox.json falcon.json mistral_b.json sp_bytes.model sp_unigram.model; do
        check "speed: $m encodes $(($(wc -c <"$BENCH") / 1000000)) MB in under a minute" \
            timeout 60 $TOK bench $D/$m "$BENCH"
        sed 's/^/    /' "$LOG"
    done
fi
