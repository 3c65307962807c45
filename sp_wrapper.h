/* sp_wrapper.h: a C view of the SentencePiece C++ library (sp_wrapper.cc), just what
 * tokenizer.c needs. Nothing here re-implements SentencePiece. */
#ifndef MAMBA_SP_WRAPPER_H
#define MAMBA_SP_WRAPPER_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct SpModel SpModel;

typedef enum { SP_NORMAL, SP_UNKNOWN, SP_CONTROL, SP_UNUSED, SP_BYTE } SpPieceType;

/* Parse a serialized ModelProto; NULL with a one-line reason in err on failure. */
SpModel *sp_load(const void *data, size_t n, char *err, size_t err_len);
void sp_free(SpModel *m);

int sp_piece_count(const SpModel *m);
int sp_bos_id(const SpModel *m);        /* -1 when the model has none */
int sp_eos_id(const SpModel *m);
int sp_pad_id(const SpModel *m);
const char *sp_id_to_piece(const SpModel *m, int id);        /* id must be in range */
int sp_piece_to_id(const SpModel *m, const char *piece);      /* -1 when not a piece */
SpPieceType sp_piece_type(const SpModel *m, int id);          /* id must be in range */

/* Encode into a malloc'd array, led by bos when bos >= 0; 0 on success, -1 with a reason. */
int sp_encode(const SpModel *m, const char *text, size_t len, int bos, int **ids,
              size_t *n_ids, char *err, size_t err_len);
/* Decode in-range ids as SentencePiece does for the whole sequence; returns a malloc'd
 * NUL-terminated string (its length in *len) or NULL on failure. */
char *sp_decode(const SpModel *m, const int *ids, size_t n, size_t *len);

#ifdef __cplusplus
}
#endif

#endif
