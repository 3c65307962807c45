/* libFuzzer target: loading a tokenizer.json from arbitrary bytes; one that loads encodes a
 * fixed text and decodes its first ids. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../tokenizer.h"

volatile char fuzz_sink;   /* reads that must not be optimized away */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    Tokenizer *t = tokenizer_load_bytes(TOKENIZER_HF_JSON, data, size, err, sizeof err);
    if (!t) {
        if (!memchr(err, '\0', sizeof err)) __builtin_trap();
        return 0;
    }
    static const char text[] = "Hello, world! ünïcödé 123 \n\t  <|endoftext|> \xff\xfe";
    int *ids;
    size_t n;
    if (tokenizer_encode(t, text, sizeof text - 1, 1, &ids, &n, err, sizeof err) == 0) {
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= tokenizer_vocab_size(t)) __builtin_trap();
        free(ids);
    }
    TokenDecoder *d = decoder_new(t);
    int vocab = tokenizer_vocab_size(t);
    for (int id = -1; id <= vocab && id < 300; id++) {
        tokenizer_id_to_piece(t, id);
        const char *s = decoder_push(d, id);
        for (size_t j = 0; j < decoder_len(d); j++) fuzz_sink ^= s[j];
    }
    decoder_finish(d);
    decoder_free(d);
    tokenizer_free(t);
    return 0;
}
