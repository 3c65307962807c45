/* libFuzzer target: byte-level BPE encoding of arbitrary bytes with the GPT-NeoX-shaped fixture
 * tests/tokenizer/neox.json (found relative to the working folder, or through $MAMBA_FUZZ_ROOT).
 * Every id must be in range, and plain ASCII text must decode back to itself. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../tokenizer.h"

static Tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    char path[4096], err[256];
    const char *root = getenv("MAMBA_FUZZ_ROOT");
    snprintf(path, sizeof path, "%s/tests/tokenizer/neox.json", root ? root : ".");
    if (!(tok = tokenizer_load_file(path, err, sizeof err))) {
        fprintf(stderr, "fuzz_bpe_encode: %s\n", err);
        exit(1);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    int *ids;
    size_t n;
    if (tokenizer_encode(tok, (const char *)data, size, 0, &ids, &n, err, sizeof err)) return 0;
    int vocab = tokenizer_vocab_size(tok), plain = 1;
    for (size_t i = 0; i < size; i++) plain &= data[i] >= 0x20 && data[i] < 0x7f && data[i] != '<';
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab) __builtin_trap();
    TokenDecoder *d = decoder_new(tok);
    char *out = malloc(4 * size + 16);
    size_t len = 0;
    for (size_t i = 0; i <= n; i++) {
        const char *s = i < n ? decoder_push(d, ids[i]) : decoder_finish(d);
        size_t k = decoder_len(d);
        if (len + k > 4 * size + 16) __builtin_trap();
        memcpy(out + len, s, k);
        len += k;
    }
    if (plain && (len != size || memcmp(out, data, size))) {
        fprintf(stderr, "round trip: %zu bytes in, %zu out\n", size, len);
        __builtin_trap();
    }
    free(out);
    decoder_free(d);
    free(ids);
    return 0;
}
