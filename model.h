/* model.h: the mamba checkpoint format, the model config, weights and per-sequence state.
 *
 * File layout (all integers little-endian, see docs/FORMAT.md):
 *   [FileHeader, MAMBA_HEADER_BYTES]
 *   [TensorEntry × n_tensors]            the tensor table, in the fixed order of model_tensor_specs()
 *   [tensor data, each at a MAMBA_ALIGN-aligned offset]
 *   [optional tokenizer blob]            SentencePiece model or tokenizer.json bytes
 * Large matrices (embedding, in_proj, x_proj, dt_proj, out_proj, lm_head) are stored in the
 * header's dtype (a float type, or quantized: see DType); the small per-channel tensors (norms, conv, biases, A_log, D) are always f32,
 * because rounding A_log or D to 16 bits visibly changes the recurrence. */
#ifndef MAMBA_MODEL_H
#define MAMBA_MODEL_H

#include <stddef.h>
#include <stdint.h>

#define MAMBA_MAGIC "MAMBAbin"          /* 8 bytes, no terminator in the file */
#define MAMBA_FORMAT_VERSION 2         /* version 1 files (no arch field: Mamba-1) are read too */
#define MAMBA_HEADER_BYTES 256
#define MAMBA_ALIGN 256                 /* tensor offsets: fine for mmap, SIMD and cudaMemcpy */
#define MAMBA_NAME_BYTES 64

/* The large matrices' storage. q8 and q4 are quantized in groups of QUANT_GROUP consecutive
 * weights of a row (the row padded with zeros to whole groups), one f32 scale a group:
 *   q8: int8 q, w = q · scale                     q4: 4-bit q in [0, 15], w = (q - 8) · scale
 * A quantized [rows, cols] tensor is two planes: the codes, row r at r · code_row_bytes (q4: two
 * a byte, the even column in the low nibble), then the scales [rows, groups] (quant_layout). */
typedef enum { DTYPE_F32 = 0, DTYPE_F16 = 1, DTYPE_BF16 = 2, DTYPE_Q8 = 3, DTYPE_Q4 = 4 } DType;
#define QUANT_GROUP 32
#define MAX_D_STATE 1024                /* a model's d_state at most (the CPU scan keeps a step's decays on the stack) */

typedef enum {
    TOKENIZER_NONE = 0,
    TOKENIZER_SENTENCEPIECE = 1,        /* serialized sentencepiece ModelProto */
    TOKENIZER_HF_JSON = 2,              /* Hugging Face tokenizer.json */
} TokenizerKind;

/* The block a model is built of. Each engine dispatches on it in one place (model.c's layouts,
 * cpu.c's and kernels.cu's architecture tables); a new one is new functions there.
 *   Mamba-1       the selective SSM: per channel a d_state state, Δ from a low-rank projection
 *   Falcon-Mamba  Mamba-1 with a weightless RMS normalisation of Δ (low rank), B and C
 *   Mamba-2       the SSD block: heads of head_dim channels share a scalar decay, B and C per
 *                 group of heads, a gated RMSNorm before out_proj */
typedef enum { ARCH_MAMBA1 = 1, ARCH_MAMBA2 = 2, ARCH_FALCON_MAMBA = 3 } Arch;

/* The hyperparameters. Fields an architecture does not use are zero. */
typedef struct {
    Arch arch;
    int n_layer;
    int d_model;
    int d_inner;       /* expand * d_model */
    int d_state;       /* N, the SSM state size per channel */
    int d_conv;        /* causal conv1d kernel width */
    int dt_rank;       /* Mamba-1, Falcon-Mamba: rank of the Δ projection */
    int vocab_size;    /* ids a tokenizer may produce and the sampler may pick */
    int padded_vocab;  /* rows of the embedding and LM head (≥ vocab_size) */
    float norm_eps;    /* the RMSNorms' (Mamba-2: also the gated norm's) */
    DType dtype;       /* dtype of the large matrices */
    int tied_head;     /* 1: LM head is the embedding matrix */
    int n_heads;       /* Mamba-2: SSM heads, n_heads * head_dim == d_inner */
    int head_dim;      /* Mamba-2 */
    int n_groups;      /* Mamba-2: groups of heads that share B and C (and a gated-norm group) */
    float dt_limit_lo, dt_limit_hi;  /* Mamba-2: Δ is clamped to [lo, hi] (time_step_limit; hi may be +inf) */
    float mixer_eps;   /* Falcon-Mamba: eps of the normalisation of Δ, B and C */
} Config;

/* On-disk header, exactly MAMBA_HEADER_BYTES long. */
typedef struct {
    char magic[8];
    uint32_t version;
    uint32_t header_bytes;
    uint32_t n_layer, d_model, d_inner, d_state, d_conv, dt_rank;
    uint32_t vocab_size, padded_vocab;
    float norm_eps;
    uint32_t dtype;
    uint32_t tied_head;
    uint32_t tokenizer_kind;
    int32_t bos_id, eos_id, pad_id;     /* -1 when the model has none */
    uint32_t n_tensors;
    uint64_t table_offset;
    uint64_t tokenizer_offset, tokenizer_bytes;
    uint64_t file_bytes;                /* total length; a shorter file is truncated */
    uint32_t arch;                      /* version 2 on: an Arch (version 1: zero, read as Mamba-1) */
    uint32_t n_heads, head_dim, n_groups;   /* Mamba-2; zero otherwise */
    float dt_limit_lo, dt_limit_hi;     /* Mamba-2; zero otherwise */
    float mixer_eps;                    /* Falcon-Mamba; zero otherwise */
    uint32_t reserved0;
    uint64_t fingerprint;               /* fingerprint_bytes of the tensors (convert, init); 0: not stored */
    uint8_t reserved[MAMBA_HEADER_BYTES - 152];
} FileHeader;

/* One row of the tensor table. */
typedef struct {
    char name[MAMBA_NAME_BYTES];        /* NUL-terminated, e.g. "layers.3.in_proj" */
    uint32_t dtype;
    uint32_t ndim;
    uint32_t shape[2];                  /* ndim 1: shape[1] == 1 */
    uint64_t offset;                    /* from the start of the file, MAMBA_ALIGN-aligned */
    uint64_t bytes;
} TensorEntry;

#ifdef __cplusplus
#define MAMBA_STATIC_ASSERT static_assert
#else
#define MAMBA_STATIC_ASSERT _Static_assert
#endif
MAMBA_STATIC_ASSERT(sizeof(FileHeader) == MAMBA_HEADER_BYTES, "FileHeader must be MAMBA_HEADER_BYTES long");
MAMBA_STATIC_ASSERT(sizeof(TensorEntry) == 96, "TensorEntry is 96 bytes on disk");

/* Weights of one block; pointers into the mapped file. Matrices are row-major [out, in] in
 * config.dtype; everything else is f32. Shapes are Mamba-1's (Falcon-Mamba's too); Mamba-2's
 * differ where noted (conv channels: conv_dim = d_inner + 2 * n_groups * d_state). */
typedef struct {
    const float *norm;        /* [d_model] RMSNorm weight */
    const void *in_proj;      /* [2*d_inner, d_model] → (x, z); Mamba-2 [2*d_inner + 2*n_groups*d_state + n_heads,
                                 d_model] → (z, x, B, C, dt) */
    const float *conv_w;      /* [d_inner, d_conv] depthwise causal conv; Mamba-2 [conv_dim, d_conv] over (x, B, C) */
    const float *conv_b;      /* [d_inner]; Mamba-2 [conv_dim] */
    const void *x_proj;       /* [dt_rank + 2*d_state, d_inner] → (dt, B, C); Mamba-2: none */
    const void *dt_proj;      /* [d_inner, dt_rank]; Mamba-2: none */
    const float *dt_bias;     /* [d_inner]; Mamba-2 [n_heads] */
    const float *A_log;       /* [d_inner, d_state], A = -exp(A_log); Mamba-2 [n_heads] */
    const float *D;           /* [d_inner] skip connection; Mamba-2 [n_heads] */
    const float *gate_norm;   /* Mamba-2: [d_inner] gated RMSNorm weight; otherwise none */
    const void *out_proj;     /* [d_model, d_inner] */
} LayerWeights;

typedef struct {
    const void *embedding;    /* [padded_vocab, d_model] */
    LayerWeights *layers;     /* [n_layer] */
    const float *norm_f;      /* [d_model] */
    const void *lm_head;      /* [padded_vocab, d_model]; == embedding when tied */
} Weights;

/* The recurrent state of one sequence: constant size whatever its length. */
typedef struct {
    float *conv;              /* [n_layer, conv channels, d_conv] last d_conv inputs, oldest first */
    float *ssm;               /* [n_layer, d_inner, d_state] h (Mamba-2: [n_layer, n_heads, head_dim, d_state]) */
} SeqState;

static inline int dtype_is_quantized(DType t) { return t == DTYPE_Q8 || t == DTYPE_Q4; }

/* Bytes of one element of an unquantized dtype. */
static inline size_t dtype_size(DType t) { return t == DTYPE_F32 ? 4 : 2; }

/* Where a quantized [rows, cols] tensor keeps its codes and scales. */
typedef struct {
    uint64_t groups;          /* a row's groups of QUANT_GROUP */
    uint64_t code_row_bytes;  /* a row's codes: groups · QUANT_GROUP (q8) or half of it (q4) */
    uint64_t scales_offset;   /* the scales plane, from the tensor's start: rows · code_row_bytes */
    uint64_t bytes;           /* the whole tensor */
} QuantLayout;

static inline QuantLayout quant_layout(DType t, uint64_t rows, uint64_t cols) {
    QuantLayout q;
    q.groups = (cols + QUANT_GROUP - 1) / QUANT_GROUP;
    q.code_row_bytes = q.groups * QUANT_GROUP / (t == DTYPE_Q4 ? 2 : 1);
    q.scales_offset = rows * q.code_row_bytes;
    q.bytes = q.scales_offset + rows * q.groups * sizeof(float);
    return q;
}

/* Bytes of a [rows, cols] tensor stored as t. */
static inline uint64_t tensor_bytes(DType t, uint64_t rows, uint64_t cols) {
    return dtype_is_quantized(t) ? quant_layout(t, rows, cols).bytes : rows * cols * dtype_size(t);
}

static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
    return v.f;
}

static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    union { uint32_t u; float f; } v;
    if (exp == 0x1f) {                              /* inf / nan */
        v.u = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {                          /* normal: rebias 15 -> 127 */
        v.u = sign | ((exp + 112) << 23) | (mant << 13);
    } else {                                        /* zero or subnormal: mant * 2^-24 */
        v.f = (float)mant * 5.9604644775390625e-8f;
        v.u |= sign;
    }
    return v.f;
}

#endif
