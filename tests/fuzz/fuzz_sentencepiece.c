/* libFuzzer target: loading a SentencePiece model from arbitrary bytes; one that loads encodes
 * a fixed text and decodes its first ids. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    Tokenizer *t = tokenizer_load_bytes(TOKENIZER_SENTENCEPIECE, data, size, err, sizeof err);
    if (!t) return 0;
    static const char text[] = "Hello, world! ünïcödé 123 \n\t \xff\xfe";
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
        decoder_push(d, id);
    }
    decoder_finish(d);
    decoder_free(d);
    tokenizer_free(t);
    return 0;
}
