/* libFuzzer target: loading a SentencePiece model from arbitrary bytes; one that loads encodes
 * a fixed text and decodes its first ids. */
#include <stdint.h>

#include "exercise_tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    Tokenizer *t = tokenizer_load_bytes(TOKENIZER_SENTENCEPIECE, data, size, err, sizeof err);
    static const char text[] = "Hello, world! ünïcödé 123 \n\t \xff\xfe";
    if (t) exercise_tokenizer(t, text, sizeof text - 1);
    return 0;
}
