/* libFuzzer target: streaming decode of arbitrary id sequences with both tokenizer kinds
 * (tests/tokenizer/sp_bytes.model and neox.json). The first byte picks the tokenizer; each
 * following pair of bytes is one id, some of them out of range (below 0 or past the vocab). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../tokenizer.h"

static Tokenizer *toks[2];
volatile uint8_t fuzz_sink;   /* reads that must not be optimized away */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    static const char *const files[2] = {"tests/tokenizer/sp_bytes.model", "tests/tokenizer/neox.json"};
    const char *root = getenv("MAMBA_FUZZ_ROOT");
    for (int i = 0; i < 2; i++) {
        char path[4096], err[256];
        snprintf(path, sizeof path, "%s/%s", root ? root : ".", files[i]);
        if (!(toks[i] = tokenizer_load_file(path, err, sizeof err))) {
            fprintf(stderr, "fuzz_decode: %s\n", err);
            exit(1);
        }
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    Tokenizer *t = toks[data[0] & 1];
    int vocab = tokenizer_vocab_size(t);
    TokenDecoder *d = decoder_new(t);
    for (size_t i = 1; i + 1 < size; i += 2) {
        int id = (data[i] | data[i + 1] << 8) % (vocab + 8) - 4;
        const char *s = decoder_push(d, id);
        size_t k = decoder_len(d);
        if (!s) __builtin_trap();
        for (size_t j = 0; j < k; j++) fuzz_sink ^= (uint8_t)s[j];
        if (s[k] != '\0') __builtin_trap();
        tokenizer_id_to_piece(t, id);
    }
    const char *s = decoder_finish(d);
    for (size_t j = 0; j < decoder_len(d); j++) fuzz_sink ^= (uint8_t)s[j];
    decoder_free(d);
    return 0;
}
