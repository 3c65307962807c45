/* libFuzzer target: BPE encoding of arbitrary bytes with each kind of tokenizer.json fixture:
 * GPT-NeoX-shaped byte-level BPE, Falcon's pre-tokenizer Sequence, Mistral's byte-fallback BPE
 * in its two forms and Metaspace (tests/tokenizer/, found relative to the working folder, or
 * through $MAMBA_FUZZ_ROOT). Every id must be in range, and where decoding gives back every text
 * (not Metaspace's, which drops a leading space) plain ASCII text must decode back to itself. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../tokenizer.h"

static const struct { const char *file; int round_trip; } kinds[] = {
    {"neox.json", 1}, {"falcon.json", 1}, {"mistral_a.json", 1}, {"mistral_b.json", 0}, {"metaspace.json", 0}};
#define N_KINDS (sizeof kinds / sizeof kinds[0])
static Tokenizer *tok[N_KINDS];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    char path[4096], err[256];
    const char *root = getenv("MAMBA_FUZZ_ROOT");
    for (size_t k = 0; k < N_KINDS; k++) {
        snprintf(path, sizeof path, "%s/tests/tokenizer/%s", root ? root : ".", kinds[k].file);
        if (!(tok[k] = tokenizer_load_file(path, err, sizeof err))) {
            fprintf(stderr, "fuzz_bpe_encode: %s\n", err);
            exit(1);
        }
    }
    return 0;
}

static void encode_decode(Tokenizer *t, int round_trip, const uint8_t *data, size_t size) {
    char err[256];
    int *ids;
    size_t n;
    if (tokenizer_encode(t, (const char *)data, size, 0, &ids, &n, err, sizeof err)) return;
    int vocab = tokenizer_vocab_size(t), plain = round_trip;
    for (size_t i = 0; i < size; i++) plain &= data[i] >= 0x20 && data[i] < 0x7f && data[i] != '<' && data[i] != '[';
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab) __builtin_trap();
    TokenDecoder *d = decoder_new(t);
    char *out = malloc(8 * size + 16);   /* Metaspace shows a byte as its piece <0xXX> */
    size_t len = 0;
    for (size_t i = 0; i <= n; i++) {
        const char *s = i < n ? decoder_push(d, ids[i]) : decoder_finish(d);
        size_t k = decoder_len(d);
        if (len + k > 8 * size + 16) __builtin_trap();
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
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    for (size_t k = 0; k < N_KINDS; k++) encode_decode(tok[k], kinds[k].round_trip, data, size);
    return 0;
}
