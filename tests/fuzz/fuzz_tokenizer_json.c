/* libFuzzer target: loading a tokenizer.json from arbitrary bytes; one that loads encodes a
 * fixed text and decodes its first ids. */
#include <stdint.h>
#include <string.h>

#include "exercise_tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    memset(err, 'x', sizeof err);   /* so that a reason never written shows */
    Tokenizer *t = tokenizer_load_bytes(TOKENIZER_HF_JSON, data, size, err, sizeof err);
    if (!t) {
        /* the reason must be written, and be a string */
        if (err[0] == 'x' || !memchr(err, '\0', sizeof err)) __builtin_trap();
        return 0;
    }
    static const char text[] = "Hello, world! ünïcödé 123 \n\t  <|endoftext|> \xff\xfe";
    exercise_tokenizer(t, text, sizeof text - 1);
    return 0;
}
