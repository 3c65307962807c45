/* cpu_quant.c: the CPU engine's matrix products with q8/q4 weights (model.h's code and scale
 * planes) as integer dot products, the way llama.cpp's q8_0 runs. The input rows are quantized
 * too, per group of QUANT_GROUP columns (the weights' groups), to int8 codes with the scale
 * amax / 127. A group's product is then an exact int32 sum, kept in 8 lanes of 4 adjacent code
 * bytes (what AVX2's maddubs + madd and AVX-512 VNNI's dpbusd both produce); each float sum adds
 * lane k's value times the weight's scale times the input's. The integer lanes are exact and the
 * float steps are fixed, so every build (VNNI, AVX2, portable C) gives the same bits. */
#include "mamba.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

enum { QUANT_MATMUL_GROUP = 4 };   /* inputs that share one pass over a weight row */

typedef int8_t Codes __attribute__((vector_size(QUANT_GROUP)));         /* one group's codes */
typedef int32_t GroupLanes __attribute__((vector_size(8 * sizeof(int32_t))));
typedef float FloatLanes __attribute__((vector_size(8 * sizeof(float))));
_Static_assert(QUANT_GROUP == 32, "a group is one 32-byte vector of codes");

struct QuantInput {
    int8_t *codes;   /* [rows, groups · QUANT_GROUP] the current input's codes */
    float *scales;   /* [rows, groups] */
    size_t max_groups;
};

QuantInput *quant_input_new(int max_rows, int max_cols) {
    QuantInput *q = xcalloc(1, sizeof *q);
    q->max_groups = (size_t)max_rows * ((max_cols + QUANT_GROUP - 1) / QUANT_GROUP);
    q->codes = aligned_alloc(QUANT_GROUP, q->max_groups * QUANT_GROUP);
    q->scales = xmalloc(q->max_groups * sizeof(float));
    if (!q->codes) die("out of memory");
    return q;
}

void quant_input_free(QuantInput *q) {
    if (!q) return;
    free(q->codes), free(q->scales), free(q);
}

/* One group of count ≤ QUANT_GROUP inputs as codes x / scale rounded to nearest (ties to even),
 * scale = amax / 127; the columns past count are zero. A group with a NaN or infinity gets a
 * NaN scale, so the outputs it reaches are NaN as in float arithmetic. For q4 the codes are
 * stored even columns first, then odd ones: the order in which a q4 weight group unpacks. */
static void quantize_input_group(int8_t *codes, float *scale, const float *x, int count, int q4_order) {
    float amax = 0.0f;
    int finite = 1;
    for (int i = 0; i < count; i++) {
        const float a = fabsf(x[i]);
        if (!isfinite(a)) finite = 0;
        else if (a > amax) amax = a;
    }
    int8_t c[QUANT_GROUP] = {0};
    const float s = amax / 127.0f;
    *scale = !finite ? NAN : s > 0.0f ? s : 0.0f;   /* amax of 0, or so small that s underflows: all zero */
    if (finite && s > 0.0f)
        for (int i = 0; i < count; i++) {
            const long v = lrintf(x[i] / s);
            c[i] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
        }
    if (!q4_order) {
        memcpy(codes, c, QUANT_GROUP);
        return;
    }
    for (int i = 0; i < QUANT_GROUP / 2; i++) codes[i] = c[2 * i], codes[QUANT_GROUP / 2 + i] = c[2 * i + 1];
}

/* The n input rows x[b] (x_stride floats apart, cols each) quantized into q. */
static void quantize_input(QuantInput *q, DType dtype, int cols, const float *x, size_t x_stride, int n) {
    const int groups = (cols + QUANT_GROUP - 1) / QUANT_GROUP;
    if ((size_t)n * groups > q->max_groups) die("internal error: a quantized input beyond its buffer");
    for (int b = 0; b < n; b++)
        for (int g = 0; g < groups; g++) {
            const int first = g * QUANT_GROUP, count = cols - first < QUANT_GROUP ? cols - first : QUANT_GROUP;
            const size_t at = (size_t)b * groups + g;
            quantize_input_group(q->codes + at * QUANT_GROUP, q->scales + at, x + b * x_stride + first, count,
                           dtype == DTYPE_Q4);
        }
}

/* A weight group's codes as int8: q8 as stored; q4's 16 bytes split in registers into the low
 * nibbles (even columns) then the high ones (odd columns), re-centred by 8. */
static inline void weight_group(Codes *w, const uint8_t *codes, DType dtype) {
    if (dtype == DTYPE_Q8) {
        memcpy(w, codes, sizeof *w);
        return;
    }
    typedef uint8_t Packed __attribute__((vector_size(QUANT_GROUP / 2)));
    typedef uint8_t Unpacked __attribute__((vector_size(QUANT_GROUP)));
    Packed b;
    memcpy(&b, codes, sizeof b);
    const Packed lo = b & 15, hi = b >> 4;
    const Unpacked u = __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17,
                                               18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31);
    *w = (Codes)(u - 8);
}

/* lane[k] = Σ_{i<4} w[4k+i] · x[4k+i], exactly. The vector forms multiply |w| (unsigned) by x
 * with w's sign (x's codes are within ±127, so the sign flip cannot overflow). */
static inline void dot_group(GroupLanes *lane, const Codes *w, const Codes *x) {
#if defined(__AVX2__)
    __m256i wv, xv;
    memcpy(&wv, w, sizeof wv), memcpy(&xv, x, sizeof xv);
    const __m256i magnitude = _mm256_sign_epi8(wv, wv), signed_x = _mm256_sign_epi8(xv, wv);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    const __m256i sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), magnitude, signed_x);
#elif defined(__AVXVNNI__)
    const __m256i sums = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), magnitude, signed_x);
#else
    /* pairs to int16 (|w| ≤ 128, |x| ≤ 127: no saturation), then pairs of those to int32 */
    const __m256i sums = _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed_x), _mm256_set1_epi16(1));
#endif
    memcpy(lane, &sums, sizeof *lane);
#else
    for (int k = 0; k < 8; k++) {
        int32_t s = 0;
        for (int i = 0; i < 4; i++) s += (int32_t)(*w)[4 * k + i] * (*x)[4 * k + i];
        (*lane)[k] = s;
    }
#endif
}

/* The 8 float lanes added pairwise: (k, k+4), then (k, k+2), then the last two. */
static inline float sum_float_lanes(const FloatLanes *v) {
    float l[8], half[4];
    memcpy(l, v, sizeof l);
    for (int k = 0; k < 4; k++) half[k] = l[k] + l[k + 4];
    return (half[0] + half[2]) + (half[1] + half[3]);
}

/* out[b · out_stride] = W[r, :] · x[first + b] for the group ≤ QUANT_MATMUL_GROUP quantized
 * inputs: each weight group is loaded (and for q4 unpacked) once for all of them. */
static inline __attribute__((always_inline)) void quant_row_group(float *out, size_t out_stride, const uint8_t *codes,
                                                                  const float *w_scales, DType dtype, int groups,
                                                                  const QuantInput *q, int first, int group) {
    const size_t group_bytes = dtype == DTYPE_Q4 ? QUANT_GROUP / 2 : QUANT_GROUP;
    FloatLanes sum[QUANT_MATMUL_GROUP];
    for (int b = 0; b < group; b++) sum[b] = (FloatLanes){0};
    for (int g = 0; g < groups; g++) {
        Codes w;
        weight_group(&w, codes + g * group_bytes, dtype);
        for (int b = 0; b < group; b++) {
            const size_t at = (size_t)(first + b) * groups + g;
            Codes x;
            GroupLanes lane;
            memcpy(&x, q->codes + at * QUANT_GROUP, sizeof x);
            dot_group(&lane, &w, &x);
            /* two statements: no compiler may fuse them into one rounding (an FMA) */
            const FloatLanes scaled = __builtin_convertvector(lane, FloatLanes) * (w_scales[g] * q->scales[at]);
            sum[b] += scaled;
        }
    }
    for (int b = 0; b < group; b++) out[b * out_stride] = sum_float_lanes(&sum[b]);
}

/* A product for parallel_for: its arguments, then rows [begin, end) of it. */
typedef struct {
    float *out;
    const uint8_t *W;
    DType dtype;
    int rows, cols, n;
    const QuantInput *q;
} QuantMatmul;

static inline __attribute__((always_inline)) void quant_rows_of(const QuantMatmul *p, DType dtype, int begin, int end) {
    const QuantLayout layout = quant_layout(dtype, p->rows, p->cols);
    const int groups = (int)layout.groups;
    const float *scales = (const float *)(p->W + layout.scales_offset);
    for (int r = begin; r < end; r++) {
        const uint8_t *codes = p->W + (size_t)r * layout.code_row_bytes;
        const float *w_scales = scales + (size_t)r * groups;
        int b = 0;
        for (; b + QUANT_MATMUL_GROUP <= p->n; b += QUANT_MATMUL_GROUP)
            quant_row_group(p->out + (size_t)b * p->rows + r, p->rows, codes, w_scales, dtype, groups, p->q, b,
                            QUANT_MATMUL_GROUP);
        for (; b < p->n; b++)
            quant_row_group(p->out + (size_t)b * p->rows + r, p->rows, codes, w_scales, dtype, groups, p->q, b, 1);
    }
}

/* Each dtype its own compiled copy. */
static void quant_rows(void *ctx, int begin, int end) {
    const QuantMatmul *p = ctx;
    if (p->dtype == DTYPE_Q8) quant_rows_of(p, DTYPE_Q8, begin, end);
    else quant_rows_of(p, DTYPE_Q4, begin, end);
}

void quant_matmul(QuantInput *q, float *out, const void *W, DType dtype, int rows, int cols, const float *x,
                  size_t x_stride, int n) {
    quantize_input(q, dtype, cols, x, x_stride, n);
    QuantMatmul p = {out, W, dtype, rows, cols, n, q};
    parallel_for(rows, quant_rows, &p);
}

void quant_matrix_row(float *out, const void *W, DType dtype, int rows, int row, int cols) {
    const QuantLayout layout = quant_layout(dtype, rows, cols);
    const uint8_t *codes = (const uint8_t *)W + (size_t)row * layout.code_row_bytes;
    const float *scales = (const float *)((const uint8_t *)W + layout.scales_offset) + (size_t)row * layout.groups;
    for (int j = 0; j < cols; j++) {
        const int code = dtype == DTYPE_Q8 ? (int8_t)codes[j] : ((codes[j / 2] >> (4 * (j & 1))) & 15) - 8;
        out[j] = (float)code * scales[j / QUANT_GROUP];
    }
}
