/* tokenizer.h: one C API over two tokenizers: SentencePiece (through the C++ library, see
 * sp_wrapper.cc) and Hugging Face BPE read from tokenizer.json (byte-level, or on "▁" pieces
 * with byte fallback). */
#ifndef MAMBA_TOKENIZER_H
#define MAMBA_TOKENIZER_H

#include <stddef.h>

#include "model.h"

#define MAX_TOKENIZER_BYTES (256u << 20)   /* a tokenizer file is read whole (convert embeds it) */

typedef struct Tokenizer Tokenizer;
typedef struct TokenDecoder TokenDecoder;

/* Load from a file; the kind is detected from the contents (JSON object or protobuf).
 * On failure returns NULL and writes a one-line reason into err. */
Tokenizer *tokenizer_load_file(const char *path, char *err, size_t err_len);
/* Load from bytes of a known kind, e.g. the blob embedded in a checkpoint. */
Tokenizer *tokenizer_load_bytes(TokenizerKind kind, const void *data, size_t n, char *err, size_t err_len);
void tokenizer_free(Tokenizer *t);

/* The deepest nesting of arrays and objects in JSON text (strings skipped), to tell a parse that
 * failed on cJSON's nesting limit (CJSON_NESTING_LIMIT) apart from malformed text. */
size_t json_nesting_depth(const char *text, size_t n);

/* UTF-8: the length of the longest prefix of s[0..n) made of whole, valid characters; and of
 * the ill-formed part that starts s (a maximal subpart, or a character cut off by the end: one
 * U+FFFD when shown), 0 when s starts with a valid character. */
size_t utf8_valid_prefix(const char *s, size_t n);
size_t utf8_ill_formed_length(const char *s, size_t n);

TokenizerKind tokenizer_kind(const Tokenizer *t);
int tokenizer_vocab_size(const Tokenizer *t);   /* largest id + 1, added tokens included */
int tokenizer_bos_id(const Tokenizer *t);       /* -1 when absent */
int tokenizer_eos_id(const Tokenizer *t);
int tokenizer_pad_id(const Tokenizer *t);
int tokenizer_wants_bos(const Tokenizer *t);    /* whether prompts should start with BOS */

/* Encode len bytes of text. On success returns 0 and a malloc'd array in *ids (caller frees)
 * of *n_ids ids; BOS is prepended when add_bos and the tokenizer has one. On failure returns
 * -1 with a one-line reason in err. Text that is not valid UTF-8: tokenizer.json BPE tokenizes
 * each ill-formed byte as the token of that byte (its byte-level symbol, or its <0xXX> piece);
 * SentencePiece reads it as U+FFFD (tokenizer.c). */
int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int add_bos,
                     int **ids, size_t *n_ids, char *err, size_t err_len);

/* The vocabulary entry of an id (NULL when out of range), and the id of a piece (-1). */
const char *tokenizer_id_to_piece(const Tokenizer *t, int id);
int tokenizer_piece_to_id(const Tokenizer *t, const char *piece);

/* Streaming decode: push ids one at a time; each push returns the bytes that became complete
 * (NUL-terminated, valid until the next call, possibly ""), never a partial UTF-8 character.
 * decoder_finish returns what is left (incomplete bytes as U+FFFD). */
TokenDecoder *decoder_new(const Tokenizer *t);
const char *decoder_push(TokenDecoder *d, int id);
const char *decoder_finish(TokenDecoder *d);
/* Length in bytes of what the last push or finish returned: its strlen() unless the text holds
 * NUL bytes, which a model can emit (byte-level BPE has a piece for the byte 0, byte fallback
 * <0x00>). After decoder_finish the decoder starts a new text. */
size_t decoder_len(const TokenDecoder *d);
void decoder_free(TokenDecoder *d);
/* To carry a text on in another run: the bytes of an incomplete character the decoder holds
 * back (at most cap; -1 when there are more), and a new decoder that continues a text already
 * begun with those bytes pending (0, or -1 when they cannot be held). */
int decoder_pending(const TokenDecoder *d, char *out, size_t cap);
int decoder_resume(TokenDecoder *d, const char *bytes, size_t n);

#endif
