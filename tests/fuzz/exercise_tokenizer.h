/* exercise_tokenizer.h: what the tokenizer-loading fuzz targets do with a tokenizer that
 * loaded: encode a fixed text (every id must be in range), stream-decode the first ids (and a
 * few out of range), then free it. */
#include <stdlib.h>

#include "../../tokenizer.h"

static volatile char fuzz_sink;   /* reads that must not be optimized away */

static void exercise_tokenizer(Tokenizer *t, const char *text, size_t len) {
    char err[256];
    int *ids;
    size_t n;
    int vocab = tokenizer_vocab_size(t);
    if (tokenizer_encode(t, text, len, 1, &ids, &n, err, sizeof err) == 0) {
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= vocab) __builtin_trap();
        free(ids);
    }
    TokenDecoder *d = decoder_new(t);
    for (int id = -1; id <= vocab && id < 300; id++) {
        tokenizer_id_to_piece(t, id);
        const char *s = decoder_push(d, id);
        for (size_t j = 0; j < decoder_len(d); j++) fuzz_sink ^= s[j];
    }
    decoder_finish(d);
    decoder_free(d);
    tokenizer_free(t);
}
