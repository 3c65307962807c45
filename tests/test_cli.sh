#!/usr/bin/env bash
# The CLI with text: checkpoints with an embedded tokenizer (the awkward fixture's weights with
# the byte-level BPE and the SentencePiece test tokenizers), prompts from arguments and stdin,
# streamed UTF-8, and the tokenize command.
source tests/lib.sh
F=tests/fixtures
cp -r $F/awkward/hf $TMP/bpe && cp tests/tokenizer/neox.json $TMP/bpe/tokenizer.json
cp -r $F/awkward/hf $TMP/sp && cp tests/tokenizer/sp_bytes.model $TMP/sp/tokenizer.model
check "convert embeds tokenizer.json" bash -c "$MAMBA convert $TMP/bpe $TMP/bpe.bin --dtype f32 && $MAMBA info $TMP/bpe.bin | grep -q '^tokenizer: tokenizer.json'"
check "convert embeds tokenizer.model" bash -c "$MAMBA convert $TMP/sp $TMP/sp.bin --dtype bf16 && $MAMBA info $TMP/sp.bin | grep -q '^tokenizer: sentencepiece'"

valid_utf8() { python3 -c "import sys; sys.stdin.buffer.read().decode('utf-8')"; }
for kind in bpe sp; do
    m=$TMP/$kind.bin
    check "$kind: text prompt is echoed, then the continuation" bash -c "out=\$($MAMBA -m $m -n 20 --seed 1 --ignore-eos 'Hello, world') && [ \"\${out#Hello, world}\" != \"\$out\" ]"
    check "$kind: stdin prompt = argument prompt" bash -c "a=\$(printf 'Call me Ishmael.\n' | $MAMBA -m $m -n 30 -t 0 --ignore-eos --no-echo) && b=\$($MAMBA -m $m -n 30 -t 0 --ignore-eos --no-echo 'Call me Ishmael.') && [ \"\$a\" = \"\$b\" ] && [ -n \"\$a\" ]"
    check "$kind: text output = decode of --print-ids" bash -c "ids=\$($MAMBA -m $m -n 40 --seed 5 --ignore-eos --print-ids 'Once upon') && txt=\$($MAMBA -m $m -n 40 --seed 5 --ignore-eos --no-echo 'Once upon') && [ \"\$txt\" = \"\$($MAMBA tokenize -m $m --decode \$ids)\" ]"
    check "$kind: streamed output is valid UTF-8 (10 hot samples)" bash -c "$(declare -f valid_utf8); for s in 1 2 3 4 5 6 7 8 9 10; do $MAMBA -m $m -n 200 -t 3 -k 0 -p 1 --seed \$s --ignore-eos 'naïve 日本 🎉' | valid_utf8 || exit 1; done"
    check "$kind: tokenize -m = tokenize --tokenizer" same "$MAMBA tokenize -m $m 'Ünïcödé and 日本語, 12345!'" "$MAMBA tokenize --tokenizer $(ls $TMP/$kind/tokenizer.*) 'Ünïcödé and 日本語, 12345!'"
    check "$kind: tokenize --decode round-trips" bash -c "[ \"\$($MAMBA tokenize -m $m --decode \$($MAMBA tokenize -m $m 'The whale, the whale!'))\" = 'The whale, the whale!' ]"
done
check "--tokenizer overrides the embedded one" same "$MAMBA tokenize -m $TMP/bpe.bin --tokenizer tests/tokenizer/sp_bytes.model 'abc'" "$MAMBA tokenize -m $TMP/sp.bin 'abc'"
expect_error "corrupt --tokenizer file" "tokenizer|sentencepiece|JSON" $MAMBA -m $TMP/bpe.bin --tokenizer $F/tiny/prompt_ids.txt "hi"
expect_error "prompt on stdin with a NUL byte" "NUL byte" bash -c "printf 'a\0b' | $MAMBA -m $TMP/bpe.bin -n 1"
