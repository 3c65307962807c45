/* cpu.c: the CPU reference engine: fp32 math, in parallel over rows and channels (pool.c), one token of
 * each of n sequences at a time through every block in recurrent mode. The sequences go
 * through each layer together, so every weight matrix is read once per step whatever n; each
 * output is summed in an order fixed by the model alone, so a sequence's logits do not depend
 * on what else is in the batch (single-sequence use is n = 1). A prompt goes through the same
 * functions a chunk of tokens at a time: the chunk's rows are one sequence's successive tokens, so
 * each weight is read once per chunk and the conv and the scan walk the rows in time order; the
 * result is that of the steps, bit for bit. An architecture is a `prepare` and a `block` in the
 * table at the end of the file. */
#include "mamba.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

/* The rows a pass carries through the layers: lines sequences (in slots[0 .. lines)) of steps
 * successive tokens each, row line · steps + t for token t of a line. A decode step of n
 * sequences is n lines of one step; a prompt chunk of n tokens is one line of n steps. */
typedef struct {
    int lines, steps;
    const int *slots;
} Rows;

/* What an architecture brings to the CPU engine (the table CPU_ARCHS at the end): the
 * constants it derives from the weights once, and its block (the mixer of one layer for the n
 * sequences in slots[], from e->xn to e->xn). */
typedef struct {
    Arch arch;
    void (*prepare)(CpuEngine *e);
    void (*block)(CpuEngine *e, const Config *c, const LayerWeights *w, int l, const Rows *r);
} CpuArch;

static const CpuArch *cpu_arch_of(Arch a);


struct CpuEngine {
    const Model *model;
    const CpuArch *arch;   /* the model's, from CPU_ARCHS */
    int max_batch;   /* sequence slots */
    int max_rows;    /* the scratch buffers below hold this many rows: max_batch, or a prompt chunk */
    float *x;        /* [max_batch, d_model] residual stream */
    float *xn;       /* [max_batch, d_model] normalized input of a block, then the block's output */
    float *proj;     /* [max_batch, in_proj_rows] in_proj output: Mamba-1 (x, z), Mamba-2 (z, x, B, C, dt) */
    float *u;        /* [max_batch, conv_dim] conv1d + SiLU output: the SSM input (Mamba-2: x, B, C) */
    float *dbc;      /* [max_batch, dt_rank + 2*d_state] x_proj output: dt (low rank), B, C */
    float *delta;    /* [max_batch, d_inner] Δ before dt_bias and softplus */
    float *y;        /* [max_batch, d_inner] SSM output, gated */
    float *logits;   /* [max_batch, padded_vocab] */
    void *scratch;   /* the allocation the buffers above are carved from */
    float *A;        /* [n_layer, d_inner, d_state] A = -exp(A_log), computed once (Mamba-2: [n_layer, n_heads]) */
    SeqState *slots; /* [max_batch] the state of each sequence slot */
    QuantInput *quant_input;   /* a q8/q4 model's inputs as int8 codes (cpu_quant.c), else NULL */
};

void cpu_engine_reset_slot(CpuEngine *e, int slot) {
    const Config *c = &e->model->config;
    memset(e->slots[slot].conv, 0, (size_t)c->n_layer * conv_dim(c) * c->d_conv * sizeof(float));
    memset(e->slots[slot].ssm, 0, (size_t)c->n_layer * c->d_inner * c->d_state * sizeof(float));
}

SeqState *cpu_engine_state(CpuEngine *e, int slot) { return &e->slots[slot]; }

/* Bytes of n floats rounded up to whole 64-byte cache lines. */
static size_t line_bytes(size_t n) { return (n * sizeof(float) + 63) / 64 * 64; }

/* The scratch buffers, carved from one allocation, each from a cache line on: vector loads of
 * a buffer's first row never straddle two lines. */
static void carve_scratch(CpuEngine *e, const Config *c, size_t rows) {
    size_t di = c->d_inner;
    float **buffers[] = {&e->x, &e->xn, &e->proj, &e->u, &e->dbc, &e->delta, &e->y, &e->logits};
    const size_t floats[] = {rows * c->d_model, rows * c->d_model, rows * in_proj_rows(c), rows * conv_dim(c),
                             rows * (c->dt_rank + 2 * c->d_state), rows * di, rows * di, rows * c->padded_vocab};
    size_t bytes = 63;
    for (size_t i = 0; i < sizeof floats / sizeof *floats; i++) bytes += line_bytes(floats[i]);
    e->scratch = xcalloc(bytes, 1);
    char *at = (char *)e->scratch + (64 - (uintptr_t)e->scratch % 64) % 64;
    for (size_t i = 0; i < sizeof floats / sizeof *floats; i++) {
        *buffers[i] = (float *)at;
        at += line_bytes(floats[i]);
    }
}

static void alloc_states(CpuEngine *e, const Config *c) {
    e->slots = xcalloc(e->max_batch, sizeof *e->slots);
    for (int s = 0; s < e->max_batch; s++) {
        e->slots[s].conv = xcalloc((size_t)c->n_layer * conv_dim(c) * c->d_conv, sizeof(float));
        e->slots[s].ssm = xcalloc((size_t)c->n_layer * c->d_inner * c->d_state, sizeof(float));
    }
}

CpuEngine *cpu_engine_new(const Model *m, int max_batch) {
    CpuEngine *e = xcalloc(1, sizeof *e);
    e->model = m;
    e->max_batch = max_batch;
    e->max_rows = max_batch > CPU_PROMPT_CHUNK ? max_batch : CPU_PROMPT_CHUNK;
    carve_scratch(e, &m->config, e->max_rows);
    alloc_states(e, &m->config);
    e->arch = cpu_arch_of(m->config.arch);
    e->arch->prepare(e);
    const Config *c = &m->config;
    int widest = c->d_model > c->d_inner ? c->d_model : c->d_inner;
    if (c->dt_rank > widest) widest = c->dt_rank;
    if (dtype_is_quantized(c->dtype)) e->quant_input = quant_input_new(e->max_rows, widest);
    return e;
}

void cpu_engine_free(CpuEngine *e) {
    if (!e) return;
    free(e->scratch), free(e->A);
    for (int s = 0; s < e->max_batch; s++) free(e->slots[s].conv), free(e->slots[s].ssm);
    free(e->slots);
    quant_input_free(e->quant_input);
    free(e);
}

/* Dot products are summed in DOT_LANES interleaved partial sums: lane k adds the products of
 * the columns j ≡ k (mod DOT_LANES) in column order, then the lanes are added pairwise. That
 * order depends on the number of columns alone, so an output is the same bits whichever other
 * inputs share its matrix product. */
enum { DOT_LANES = 16, MATMUL_GROUP = 4 };
_Static_assert(DOT_LANES == 16, "sum_lanes and the f16 conversion handle 16 lanes");

/* DOT_LANES floats, or their bits, as one value that the compiler keeps in vector registers at
 * any optimization level (GCC and Clang vector extensions). Functions take them by pointer: GCC
 * warns about passing 64-byte vectors by value where AVX-512 is off. */
typedef float Lanes __attribute__((vector_size(DOT_LANES * sizeof(float))));
typedef uint32_t LaneBits __attribute__((vector_size(DOT_LANES * sizeof(uint32_t))));
typedef uint16_t HalfLanes __attribute__((vector_size(DOT_LANES * sizeof(uint16_t))));

/* Element i of a matrix stored as dtype, as a float. */
static inline float weight_at(const void *W, DType dtype, size_t i) {
    return dtype == DTYPE_F32    ? ((const float *)W)[i]
           : dtype == DTYPE_BF16 ? bf16_to_f32(((const uint16_t *)W)[i])
                                 : f16_to_f32(((const uint16_t *)W)[i]);
}

/* Elements i .. i + DOT_LANES - 1 of a matrix stored as dtype, as floats: f32 loaded as they
 * are, bf16 widened in registers (a bf16 is the top half of an f32), f16 by the F16C
 * conversion where there is one. */
static inline void weight_lanes(Lanes *w, const void *W, DType dtype, size_t i) {
    const uint16_t *half = (const uint16_t *)W + i;
    if (dtype == DTYPE_F32) {
        memcpy(w, (const float *)W + i, sizeof *w);
    } else if (dtype == DTYPE_BF16) {
        HalfLanes bf16;
        memcpy(&bf16, half, sizeof bf16);
        LaneBits bits = __builtin_convertvector(bf16, LaneBits) << 16;
        memcpy(w, &bits, sizeof *w);
    } else {
#if defined(__AVX512F__)
        *w = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)half));
#else
        float f[DOT_LANES];
#if defined(__F16C__) && defined(__AVX__)
        for (int k = 0; k < DOT_LANES; k += 8)
            _mm256_storeu_ps(f + k, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(half + k))));
#else
        for (int k = 0; k < DOT_LANES; k++) f[k] = f16_to_f32(half[k]);
#endif
        memcpy(w, f, sizeof *w);
#endif
    }
}

/* The lanes added pairwise, spelled out for DOT_LANES = 16. */
static float sum_lanes(const float *lane) {
    float half[8], quarter[4];
    for (int k = 0; k < 8; k++) half[k] = lane[k] + lane[k + 8];
    for (int k = 0; k < 4; k++) quarter[k] = half[k] + half[k + 4];
    return (quarter[0] + quarter[2]) + (quarter[1] + quarter[3]);
}

#if defined(__AVX2__) && defined(__F16C__) && !defined(__AVX512F__)
/* Rows a product's inner loop takes at once: one here, where two 8-float halves per lane run
 * leave no registers for more. */
enum { MATMUL_ROWS = 1 };

/* The lanes of dot_rows_group over columns [0, full), in AVX2 registers: each run of DOT_LANES
 * as two 8-float halves, multiplied and added as the vector form below does (no fused
 * multiply-add, so every build sums the same bits). GCC spills 16-float vectors to the stack
 * where it has no 512-bit registers, which made the products compute-bound. */
static inline __attribute__((always_inline)) void dot_lanes(float lanes[][MATMUL_GROUP][DOT_LANES], const void *W,
                                                            DType dtype, size_t row, size_t cols, int n_rows, int full,
                                                            const float *x, size_t x_stride, int group) {
    (void)cols, (void)n_rows;
    __m256 lo[MATMUL_GROUP], hi[MATMUL_GROUP];
    for (int b = 0; b < group; b++) lo[b] = hi[b] = _mm256_setzero_ps();
    for (int j = 0; j < full; j += DOT_LANES) {
        __m256 w_lo, w_hi;
        if (dtype == DTYPE_F32) {
            w_lo = _mm256_loadu_ps((const float *)W + row + j), w_hi = _mm256_loadu_ps((const float *)W + row + j + 8);
        } else {
            const __m128i *half = (const __m128i *)((const uint16_t *)W + row + j);
            const __m128i a = _mm_loadu_si128(half), c = _mm_loadu_si128(half + 1);
            if (dtype == DTYPE_BF16) {   /* a bf16 is the top half of an f32 */
                w_lo = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(a), 16));
                w_hi = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(c), 16));
            } else {
                w_lo = _mm256_cvtph_ps(a), w_hi = _mm256_cvtph_ps(c);
            }
        }
        for (int b = 0; b < group; b++) {
            const float *xb = x + b * x_stride + j;
            lo[b] = _mm256_add_ps(lo[b], _mm256_mul_ps(_mm256_loadu_ps(xb), w_lo));
            hi[b] = _mm256_add_ps(hi[b], _mm256_mul_ps(_mm256_loadu_ps(xb + 8), w_hi));
        }
    }
    for (int b = 0; b < group; b++) _mm256_storeu_ps(lanes[0][b], lo[b]), _mm256_storeu_ps(lanes[0][b] + 8, hi[b]);
}
#else
/* Rows a product's inner loop takes at once: each run of an input is loaded once for them, so
 * that a prompt's products are bound by the multiplies rather than the loads (16 of the 32
 * vector registers hold the sums of 4 rows × MATMUL_GROUP inputs). */
enum { MATMUL_ROWS = 4 };

/* The lanes of dot_rows_group over columns [0, full): each run of DOT_LANES weights of the
 * n_rows rows loaded and converted once, multiplied into the block's partial sums. */
static inline __attribute__((always_inline)) void dot_lanes(float lanes[][MATMUL_GROUP][DOT_LANES], const void *W,
                                                            DType dtype, size_t row, size_t cols, int n_rows, int full,
                                                            const float *x, size_t x_stride, int group) {
    Lanes sum[MATMUL_ROWS][MATMUL_GROUP];
    for (int i = 0; i < n_rows; i++)
        for (int b = 0; b < group; b++) sum[i][b] = (Lanes){0};
    for (int j = 0; j < full; j += DOT_LANES) {
        Lanes w[MATMUL_ROWS], xb;
        for (int i = 0; i < n_rows; i++) weight_lanes(&w[i], W, dtype, row + i * cols + j);
        for (int b = 0; b < group; b++) {
            memcpy(&xb, x + b * x_stride + j, sizeof xb);
            for (int i = 0; i < n_rows; i++) sum[i][b] += xb * w[i];
        }
    }
    for (int i = 0; i < n_rows; i++)
        for (int b = 0; b < group; b++) memcpy(lanes[i][b], &sum[i][b], sizeof lanes[i][b]);
}
#endif

/* out[b * out_stride + i] = W[r + i, :] · x[b] for the n_rows ≤ MATMUL_ROWS rows from r of a
 * [rows, cols] matrix and the group ≤ MATMUL_GROUP inputs x[b] (x_stride floats apart): each run
 * of DOT_LANES weights is loaded and converted once and multiplied into the block's partial sums;
 * the columns after the last whole run go into the first lanes at the end. Each output's sums
 * are those of one row and one input alone, so the block changes no bits. */
static inline __attribute__((always_inline)) void dot_rows_group(float *out, size_t out_stride, const void *W,
                                                                 DType dtype, int r, int n_rows, int cols,
                                                                 const float *x, size_t x_stride, int group) {
    size_t row = (size_t)r * cols;
    int full = cols - cols % DOT_LANES;
    float lanes[MATMUL_ROWS][MATMUL_GROUP][DOT_LANES];
    dot_lanes(lanes, W, dtype, row, (size_t)cols, n_rows, full, x, x_stride, group);
    for (int i = 0; i < n_rows; i++)
        for (int b = 0; b < group; b++) {
            float *lane = lanes[i][b];
            for (int j = full; j < cols; j++) lane[j - full] += weight_at(W, dtype, row + (size_t)i * cols + j) * x[b * x_stride + j];
            out[b * out_stride + i] = sum_lanes(lane);
        }
}

/* dot_rows_group with the dtype as a constant, so that each float dtype gets its own compiled
 * copy (q8/q4 go to cpu_quant.c before this). */
static inline __attribute__((always_inline)) void dot_rows_group_of(float *out, size_t out_stride, const void *W,
                                                                    DType dtype, int r, int n_rows, int cols,
                                                                    const float *x, size_t x_stride, int group) {
    if (dtype == DTYPE_F32) dot_rows_group(out, out_stride, W, DTYPE_F32, r, n_rows, cols, x, x_stride, group);
    else if (dtype == DTYPE_F16) dot_rows_group(out, out_stride, W, DTYPE_F16, r, n_rows, cols, x, x_stride, group);
    else dot_rows_group(out, out_stride, W, DTYPE_BF16, r, n_rows, cols, x, x_stride, group);
}

/* A matrix product for parallel_for: its arguments, then rows [begin, end) of it. */
typedef struct {
    float *out;
    const void *W;
    DType dtype;
    int rows, cols, n;
    const float *x;
    size_t x_stride;
} Matmul;

/* n_rows rows from r, every input: in groups of MATMUL_GROUP, then one by one (sizes the
 * compiler knows; later groups find the rows in the cache). */
static inline __attribute__((always_inline)) void matmul_block(const Matmul *p, int r, int n_rows) {
    int b = 0;
    for (; b + MATMUL_GROUP <= p->n; b += MATMUL_GROUP)
        dot_rows_group_of(p->out + (size_t)b * p->rows + r, p->rows, p->W, p->dtype, r, n_rows, p->cols,
                          p->x + b * p->x_stride, p->x_stride, MATMUL_GROUP);
    for (; b < p->n; b++)
        dot_rows_group_of(p->out + (size_t)b * p->rows + r, p->rows, p->W, p->dtype, r, n_rows, p->cols,
                          p->x + b * p->x_stride, p->x_stride, 1);
}

static void matmul_rows(void *ctx, int begin, int end) {
    const Matmul *p = ctx;
    int r = begin;
    /* one input uses each weight once: blocks of rows would only spread the reads */
    if (p->n > 1)
        for (; r + MATMUL_ROWS <= end; r += MATMUL_ROWS) matmul_block(p, r, MATMUL_ROWS);
    for (; r < end; r++) matmul_block(p, r, 1);
}

/* out[b, r] = Σ_c W[r, c] · x[b, c] for the n input rows x[b] (x_stride floats apart) and a
 * row-major [rows, cols] matrix stored as dtype; out is [n, rows]. In parallel over rows, in
 * blocks of MATMUL_ROWS; a row is read from memory once for all n inputs. */
static void matmul(CpuEngine *e, float *out, const void *W, DType dtype, int rows, int cols, const float *x,
                   size_t x_stride, int n) {
    if (dtype_is_quantized(dtype)) {
        quant_matmul(e->quant_input, out, W, dtype, rows, cols, x, x_stride, n);
        return;
    }
    Matmul p = {out, W, dtype, rows, cols, n, x, x_stride};
    parallel_for(rows, matmul_rows, &p);
}

/* Row `row` of a [rows, cols] matrix as floats (the embedding lookup). */
static void matrix_row(float *out, const void *W, DType dtype, int rows, int row, int cols) {
    if (dtype_is_quantized(dtype)) {
        quant_matrix_row(out, W, dtype, rows, row, cols);
        return;
    }
    for (int j = 0; j < cols; j++) out[j] = weight_at(W, dtype, (size_t)row * cols + j);
}

/* RMSNorm: out = x / sqrt(mean(x²) + eps) · weight */
static void rmsnorm(float *out, const float *x, const float *weight, int n, float eps) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float scale = 1.0f / sqrtf(ss / n + eps);
    for (int i = 0; i < n; i++) out[i] = weight[i] * (x[i] * scale);
}

/* e^x without libm, in operations that a compiler vectorizes (the scan takes one per state per
 * step, which as expf calls were half a prompt's time): x = k·ln 2 + r with k rounded to nearest
 * (ln 2 in two parts, so r is exact) and |r| ≤ ln 2 / 2, e^r by Cephes' degree-6 polynomial,
 * 2^k put into the exponent. Within 1 ulp of expf (checked on 2.2e9 inputs of -87.3 … 88.7);
 * below -87.3 (where 2^k would leave the normal range) 0, above 88.7 infinity, NaN stays NaN. */
static inline float exp_f32(float x) {
    const float lo = -87.33654f, hi = 88.72283f, round = 12582912.0f;   /* 1.5 · 2^23 */
    const float v = x > lo ? (x < hi ? x : hi) : lo;   /* NaN becomes lo here, and is returned below */
    const float k = (v * 1.44269504f + round) - round;
    const float r = (v - k * 0.693359375f) - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float e_r = p * (r * r) + r + 1.0f;
    const uint32_t bits = (uint32_t)((int32_t)k + 127) << 23;
    float two_k;
    memcpy(&two_k, &bits, sizeof two_k);
    const float y = e_r * two_k;
    return x != x ? x : x <= lo ? 0.0f : x >= hi ? INFINITY : y;
}

static float silu(float x) { return x / (1.0f + exp_f32(-x)); }

/* PyTorch's softplus, which is linear above 20. */
static float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* What the per-channel loops of a mixer read: layer l of the n sequences in slots[]. The conv
 * runs over `channels` inputs of each row of e->proj, from column conv_from on. */
typedef struct {
    CpuEngine *e;
    const Config *c;
    const LayerWeights *w;
    int l;
    const Rows *r;
    int channels, conv_from;
} Mixer;

/* Work items [begin, end) of the lines × channels: a channel of one sequence, through its steps
 * in time order: causal depthwise conv1d over the last d_conv inputs, then SiLU. */
static void conv_channels(void *ctx, int begin, int end) {
    const Mixer *p = ctx;
    CpuEngine *e = p->e;
    const LayerWeights *w = p->w;
    int nc = p->channels, nk = p->c->d_conv, rows = in_proj_rows(p->c), steps = p->r->steps;
    for (int i = begin; i < end; i++) {
        int line = i / nc, ch = i % nc;
        float *window = e->slots[p->r->slots[line]].conv + ((size_t)p->l * nc + ch) * nk;
        for (size_t row = (size_t)line * steps; row < (size_t)(line + 1) * steps; row++) {
            memmove(window, window + 1, (nk - 1) * sizeof(float));
            window[nk - 1] = e->proj[row * rows + p->conv_from + ch];
            float s = w->conv_b[ch];
            for (int k = 0; k < nk; k++) s += w->conv_w[ch * nk + k] * window[k];
            e->u[row * nc + ch] = silu(s);
        }
    }
}

/* Work items [begin, end) of the lines × d_inner: a channel of one sequence, through its steps
 * in time order: the selective scan, gated. */
static void scan_channels(void *ctx, int begin, int end) {
    const Mixer *p = ctx;
    CpuEngine *e = p->e;
    const LayerWeights *w = p->w;
    int di = p->c->d_inner, ns = p->c->d_state, dt_rank = p->c->dt_rank, n_dbc = dt_rank + 2 * ns, steps = p->r->steps;
    const float *A = e->A + (size_t)p->l * di * ns;
    for (int i = begin; i < end; i++) {
        int line = i / di, ch = i % di;
        float *h = e->slots[p->r->slots[line]].ssm + ((size_t)p->l * di + ch) * ns;
        for (size_t row = (size_t)line * steps; row < (size_t)(line + 1) * steps; row++) {
            const float *B = e->dbc + row * n_dbc + dt_rank, *C = B + ns, *z = e->proj + row * 2 * di + di;
            const size_t at = row * di + ch;
            float dt = softplus(e->delta[at] + w->dt_bias[ch]), x = e->u[at];
            float decay[MAX_D_STATE], lanes[DOT_LANES] = {0};
            /* discretize (zero-order hold on A, Euler on B) and step: h = exp(Δ·A)·h + Δ·B·x */
            for (int k = 0; k < ns; k++) decay[k] = exp_f32(dt * A[ch * ns + k]);
            for (int k = 0; k < ns; k++) h[k] = decay[k] * h[k] + dt * B[k] * x;
            /* read out: y = C·h, in interleaved partial sums as the products' */
            int k = 0;
            for (; k + DOT_LANES <= ns; k += DOT_LANES)
                for (int j = 0; j < DOT_LANES; j++) lanes[j] += h[k + j] * C[k + j];
            for (int j = 0; k + j < ns; j++) lanes[j] += h[k + j] * C[k + j];
            const float y = sum_lanes(lanes);
            /* skip connection D·x, then the gate SiLU(z) */
            e->y[at] = (y + w->D[ch] * x) * silu(z[ch]);
        }
    }
}

/* ---- Mamba-1 ---- */

/* The inputs of Mamba-1's selective scan: in_proj, the conv, x_proj (into e->dbc). */
static void mamba1_selection(CpuEngine *e, const Config *c, const LayerWeights *w, Mixer *p, int n) {
    int di = c->d_inner, lines = p->r->lines;
    /* in_proj: (x, z) = W_in · xn */
    matmul(e, e->proj, w->in_proj, c->dtype, 2 * di, c->d_model, e->xn, c->d_model, n);
    parallel_for(lines * di, conv_channels, p);
    /* x_proj: (dt, B, C) = W_x · u */
    matmul(e, e->dbc, w->x_proj, c->dtype, c->dt_rank + 2 * c->d_state, di, e->u, di, n);
}

/* Δ, the scan and out_proj, from e->dbc. */
static void mamba1_scan(CpuEngine *e, const Config *c, const LayerWeights *w, Mixer *p, int n) {
    int di = c->d_inner, lines = p->r->lines;
    /* dt_proj: W_dt · dt */
    matmul(e, e->delta, w->dt_proj, c->dtype, di, c->dt_rank, e->dbc, c->dt_rank + 2 * c->d_state, n);
    parallel_for(lines * di, scan_channels, p);
    /* out_proj back to d_model */
    matmul(e, e->xn, w->out_proj, c->dtype, c->d_model, di, e->y, di, n);
}

/* One Mamba mixer in recurrent mode for the rows r; reads e->xn, leaves the outputs there. */
static void mamba1_block(CpuEngine *e, const Config *c, const LayerWeights *w, int l, const Rows *r) {
    Mixer p = {e, c, w, l, r, c->d_inner, 0};
    const int n = r->lines * r->steps;
    mamba1_selection(e, c, w, &p, n);
    mamba1_scan(e, c, w, &p, n);
}

/* A = -exp(A_log), once for all steps (Mamba-1 and Falcon-Mamba). */
static void mamba1_prepare(CpuEngine *e) {
    const Config *c = &e->model->config;
    size_t per_layer = (size_t)c->d_inner * c->d_state;
    e->A = xcalloc(c->n_layer * per_layer, sizeof(float));
    for (int l = 0; l < c->n_layer; l++)
        for (size_t i = 0; i < per_layer; i++) e->A[l * per_layer + i] = -expf(e->model->weights.layers[l].A_log[i]);
}

/* ---- Falcon-Mamba ---- */

/* x / sqrt(mean(x²) + eps), in place: RMSNorm without a weight. */
static void rms_normalize(float *x, int n, float eps) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float scale = 1.0f / sqrtf(ss / n + eps);
    for (int i = 0; i < n; i++) x[i] *= scale;
}

/* Mamba-1 with dt (low rank), B and C each RMS-normalised (no weight) after x_proj. */
static void falcon_block(CpuEngine *e, const Config *c, const LayerWeights *w, int l, const Rows *r) {
    Mixer p = {e, c, w, l, r, c->d_inner, 0};
    const int n = r->lines * r->steps;
    int ns = c->d_state, n_dbc = c->dt_rank + 2 * ns;
    mamba1_selection(e, c, w, &p, n);
    for (int b = 0; b < n; b++) {
        float *dbc = e->dbc + (size_t)b * n_dbc;
        rms_normalize(dbc, c->dt_rank, c->mixer_eps);
        rms_normalize(dbc + c->dt_rank, ns, c->mixer_eps);
        rms_normalize(dbc + c->dt_rank + ns, ns, c->mixer_eps);
    }
    mamba1_scan(e, c, w, &p, n);
}

/* ---- Mamba-2 ---- */

/* Work items [begin, end) of the lines × n_heads: a head of one sequence, through its steps in
 * time order: the SSD recurrence, each head's head_dim × d_state state decaying by one scalar. */
static void mamba2_heads(void *ctx, int begin, int end) {
    const Mixer *p = ctx;
    CpuEngine *e = p->e;
    const Config *c = p->c;
    const LayerWeights *w = p->w;
    int di = c->d_inner, ns = c->d_state, nh = c->n_heads, hd = c->head_dim, nc = p->channels, steps = p->r->steps;
    int rows = in_proj_rows(c), heads_per_group = nh / c->n_groups;
    for (int i = begin; i < end; i++) {
        int line = i / nh, h = i % nh, g = h / heads_per_group;
        float *state = e->slots[p->r->slots[line]].ssm + ((size_t)p->l * di + (size_t)h * hd) * ns;
        for (size_t b = (size_t)line * steps; b < (size_t)(line + 1) * steps; b++) {
            const float *row = e->proj + b * rows, *z = row + h * hd;
            const float *x = e->u + b * nc + h * hd;
            const float *B = e->u + b * nc + di + g * ns, *C = B + c->n_groups * ns;
            /* Δ = softplus(dt + dt_bias), clamped to the time-step limits; the decay exp(Δ·A) */
            float dt = softplus(row[di + nc + h] + w->dt_bias[h]);
            dt = fminf(fmaxf(dt, c->dt_limit_lo), c->dt_limit_hi);
            float decay = expf(dt * e->A[(size_t)p->l * nh + h]);
            float *S = state;
            for (int q = 0; q < hd; q++, S += ns) {
                /* S = exp(Δ·A)·S + Δ·x ⊗ B; y = S·C + D·x, gated by SiLU(z) */
                float y = 0.0f, dx = dt * x[q];
                for (int k = 0; k < ns; k++) {
                    S[k] = decay * S[k] + dx * B[k];
                    y += S[k] * C[k];
                }
                e->y[b * di + h * hd + q] = (y + w->D[h] * x[q]) * silu(z[q]);
            }
        }
    }
}

/* One Mamba-2 mixer in recurrent mode; reads e->xn, leaves the outputs there. */
static void mamba2_block(CpuEngine *e, const Config *c, const LayerWeights *w, int l, const Rows *r) {
    int di = c->d_inner, group = di / c->n_groups, n = r->lines * r->steps;
    Mixer p = {e, c, w, l, r, conv_dim(c), di};
    /* in_proj: (z, x, B, C, dt) = W_in · xn */
    matmul(e, e->proj, w->in_proj, c->dtype, in_proj_rows(c), c->d_model, e->xn, c->d_model, n);
    /* the causal conv over (x, B, C) together, then SiLU */
    parallel_for(r->lines * p.channels, conv_channels, &p);
    parallel_for(r->lines * c->n_heads, mamba2_heads, &p);
    /* the gated output normalised per group of d_inner / n_groups channels, times gate_norm */
    for (int b = 0; b < n; b++)
        for (int g = 0; g < c->n_groups; g++) {
            float *y = e->y + (size_t)b * di + g * group;
            rmsnorm(y, y, w->gate_norm + g * group, group, c->norm_eps);
        }
    /* out_proj back to d_model */
    matmul(e, e->xn, w->out_proj, c->dtype, c->d_model, di, e->y, di, n);
}

/* A = -exp(A_log), one per head. */
static void mamba2_prepare(CpuEngine *e) {
    const Config *c = &e->model->config;
    e->A = xcalloc((size_t)c->n_layer * c->n_heads, sizeof(float));
    for (int l = 0; l < c->n_layer; l++)
        for (int h = 0; h < c->n_heads; h++) e->A[(size_t)l * c->n_heads + h] = -expf(e->model->weights.layers[l].A_log[h]);
}

/* embedding → (RMSNorm → mixer → residual) per layer → RMSNorm → LM head (skipped when the
 * logits are not wanted); tokens[row] for each of r's rows */
static const float *forward(CpuEngine *e, const Rows *r, const int *tokens, int want_logits) {
    const Model *m = e->model;
    const Config *c = &m->config;
    int dm = c->d_model, n = r->lines * r->steps;
    for (int b = 0; b < n; b++) matrix_row(e->x + (size_t)b * dm, m->weights.embedding, c->dtype, c->padded_vocab, tokens[b], dm);
    for (int l = 0; l < c->n_layer; l++) {
        const LayerWeights *w = &m->weights.layers[l];
        for (int b = 0; b < n; b++) rmsnorm(e->xn + (size_t)b * dm, e->x + (size_t)b * dm, w->norm, dm, c->norm_eps);
        e->arch->block(e, c, w, l, r);
        for (size_t i = 0; i < (size_t)n * dm; i++) e->x[i] += e->xn[i];      /* residual */
    }
    if (!want_logits) return NULL;
    for (int b = 0; b < n; b++) rmsnorm(e->xn + (size_t)b * dm, e->x + (size_t)b * dm, m->weights.norm_f, dm, c->norm_eps);
    matmul(e, e->logits, m->weights.lm_head, c->dtype, c->padded_vocab, dm, e->xn, dm, n);
    return e->logits;
}

/* ---- the architectures: the one place the CPU engine dispatches on one ---- */

static const CpuArch CPU_ARCHS[] = {
    {ARCH_MAMBA1, mamba1_prepare, mamba1_block},
    {ARCH_MAMBA2, mamba2_prepare, mamba2_block},
    {ARCH_FALCON_MAMBA, mamba1_prepare, falcon_block},
};

static const CpuArch *cpu_arch_of(Arch a) {
    for (size_t i = 0; i < sizeof CPU_ARCHS / sizeof *CPU_ARCHS; i++)
        if (CPU_ARCHS[i].arch == a) return &CPU_ARCHS[i];
    die("the CPU engine does not run architecture %s", arch_name(a) ? arch_name(a) : "(unknown)");
}

const float *cpu_engine_forward_batch(CpuEngine *e, int n, const int *slots, const int *tokens) {
    const Rows r = {n, 1, slots};
    return forward(e, &r, tokens, 1);
}

const float *cpu_engine_forward_prompt(CpuEngine *e, int slot, int n, const int *tokens, int want_logits) {
    if (n < 1 || n > CPU_PROMPT_CHUNK) die("internal error: a prompt chunk of %d tokens", n);
    const Rows r = {1, n, &slot};
    return forward(e, &r, tokens, want_logits);
}

void set_threads(const char *value) {
    int n = (int)parse_long("--threads", value, 1, 1024);
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}
