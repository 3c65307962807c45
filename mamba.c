/* mamba.c: a single-binary inference engine for Mamba-1 language models.
 *
 *   mamba [run] [-m MODEL] [options] [PROMPT]     generate text (the default command)
 *   mamba convert HF_DIR OUT.bin [--dtype ...]     import a Hugging Face checkpoint
 *   mamba info MODEL                               print a checkpoint's config
 *   mamba tokenize [...] [TEXT]                    text → ids, or ids → text with --decode
 *   mamba perplexity [-m MODEL] FILE               NLL, perplexity and bits per byte
 *   mamba init --shape NAME OUT.bin                a random model of a published shape
 *   mamba bench [-m MODEL] [...]                   throughput
 *
 * The CPU engine here is the reference: fp32 math, OpenMP over rows and channels, the Mamba
 * block in recurrent mode with a constant-size state per sequence. kernels.cu is the GPU one. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "model.h"
#include "tokenizer.h"
#include "gpu.h"   /* the GPU engine's API, and the limits both engines share */

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

/* ----------------------------------------------------------------------------------------
 * Errors: one line on stderr, a non-zero exit, and no half-written output file. */

static char g_partial_output[PATH_MAX];   /* temp file that convert/init must not leave behind */

static void remove_partial_output(void) {
    if (g_partial_output[0]) unlink(g_partial_output);
}

#ifdef MAMBA_FUZZ
/* Fuzz builds only (tests/fuzz/): die() formats its message (so bad arguments still show up
 * under the sanitizers) and longjmps back to the harness, which set this buffer, instead of
 * exiting; the harness frees what the abandoned input had allocated. */
#include <setjmp.h>
jmp_buf mamba_fuzz_jmp;
#endif

static void die(const char *fmt, ...) {
    va_list ap;
#ifdef MAMBA_FUZZ
    char msg[512];
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    longjmp(mamba_fuzz_jmp, 1);
#endif
    va_start(ap, fmt);
    fputs("mamba: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory allocating %zu bytes", n);
    return p;
}

static void *xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) die("out of memory allocating %zu × %zu bytes", count, size);
    return p;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static const char *dtype_name(DType t) {
    return t == DTYPE_F32 ? "f32" : t == DTYPE_F16 ? "f16" : "bf16";
}

static int parse_dtype(const char *s, DType *out) {
    if (!strcmp(s, "f32")) *out = DTYPE_F32;
    else if (!strcmp(s, "f16")) *out = DTYPE_F16;
    else if (!strcmp(s, "bf16")) *out = DTYPE_BF16;
    else return -1;
    return 0;
}

/* Strict number parsing for flags: the whole string must be a number inside [lo, hi]. */
static long parse_long(const char *flag, const char *s, long lo, long hi) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        die("%s expects an integer in [%ld, %ld], got '%s'", flag, lo, hi, s);
    return v;
}

static double parse_double(const char *flag, const char *s, double lo, double hi) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        die("%s expects a number in [%g, %g], got '%s'", flag, lo, hi, s);
    return v;
}

/* Reads a whole file (or stdin for "-") into a NUL-terminated buffer, refusing more than
 * max_bytes so that nothing outside can make us allocate without limit. */
static char *read_file(const char *path, size_t max_bytes, size_t *len_out, const char *limit_note) {
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    const char *name = f == stdin ? "standard input" : path;
    if (!f) die("cannot open %s: %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *buf = xmalloc(cap + 1);
    size_t got;
    while ((got = fread(buf + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len > max_bytes) {
            if (f != stdin) fclose(f);
            die("%s is larger than the limit of %zu bytes%s%s%s", name, max_bytes, limit_note ? " (" : "",
                limit_note ? limit_note : "", limit_note ? ")" : "");
        }
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
            if (!buf) die("out of memory reading %s", name);
        }
    }
    if (ferror(f)) die("cannot read %s: %s", name, strerror(errno));
    if (f != stdin) fclose(f);
    buf[len] = '\0';
    *len_out = len;
    return buf;
}

/* ----------------------------------------------------------------------------------------
 * The checkpoint: tensor specs, loading and validation. */

/* What a checkpoint of a given config must contain, in file order. */
typedef struct {
    char name[MAMBA_NAME_BYTES];
    uint32_t rows, cols;      /* 1-D tensors: cols == 1 */
    int ndim;
    int big;                  /* stored in config.dtype; otherwise f32 */
} TensorSpec;

enum { LAYER_TENSORS = 10 };
static const char *const LAYER_TENSOR_NAMES[LAYER_TENSORS] = {
    "norm", "in_proj", "conv_w", "conv_b", "x_proj", "dt_proj", "dt_bias", "A_log", "D", "out_proj",
};

static int n_model_tensors(const Config *c) {
    return 1 + LAYER_TENSORS * c->n_layer + 1 + !c->tied_head;
}

static void set_spec(TensorSpec *s, const char *name, uint32_t rows, uint32_t cols, int ndim, int big) {
    snprintf(s->name, sizeof s->name, "%s", name);
    s->rows = rows, s->cols = cols, s->ndim = ndim, s->big = big;
}

/* Fills specs[n_model_tensors(c)]. */
static void model_tensor_specs(const Config *c, TensorSpec *specs) {
    int k = 0, di = c->d_inner, dm = c->d_model, ns = c->d_state;
    set_spec(&specs[k++], "embedding", c->padded_vocab, dm, 2, 1);
    for (int l = 0; l < c->n_layer; l++) {
        const uint32_t shapes[LAYER_TENSORS][3] = {     /* rows, cols, ndim */
            {dm, 1, 1}, {2 * di, dm, 2}, {di, c->d_conv, 2}, {di, 1, 1},
            {c->dt_rank + 2 * ns, di, 2}, {di, c->dt_rank, 2}, {di, 1, 1}, {di, ns, 2}, {di, 1, 1}, {dm, di, 2},
        };
        const int big[LAYER_TENSORS] = {0, 1, 0, 0, 1, 1, 0, 0, 0, 1};
        for (int t = 0; t < LAYER_TENSORS; t++) {
            char name[MAMBA_NAME_BYTES];
            snprintf(name, sizeof name, "layers.%d.%s", l, LAYER_TENSOR_NAMES[t]);
            set_spec(&specs[k++], name, shapes[t][0], shapes[t][1], shapes[t][2], big[t]);
        }
    }
    set_spec(&specs[k++], "norm_f", dm, 1, 1, 0);
    if (!c->tied_head) set_spec(&specs[k++], "lm_head", c->padded_vocab, dm, 2, 1);
}

static DType spec_dtype(const Config *c, const TensorSpec *s) { return s->big ? c->dtype : DTYPE_F32; }

/* Bounds on every dimension, so that products of them cannot overflow 64 bits and a hostile
 * header cannot ask for absurd allocations. */
static const char *config_problem(const Config *c) {
    if (c->n_layer < 1 || c->n_layer > 1024) return "n_layer must be in [1, 1024]";
    if (c->d_model < 1 || c->d_model > 65536) return "d_model must be in [1, 65536]";
    if (c->d_inner < 1 || c->d_inner > 262144) return "d_inner must be in [1, 262144]";
    if (c->d_state < 1 || c->d_state > 1024) return "d_state must be in [1, 1024]";
    if (c->d_conv < 1 || c->d_conv > 64) return "d_conv must be in [1, 64]";
    if (c->dt_rank < 1 || c->dt_rank > c->d_inner) return "dt_rank must be in [1, d_inner]";
    if (c->vocab_size < 1 || c->vocab_size > (1 << 24)) return "vocab_size must be in [1, 2^24]";
    if (c->padded_vocab < c->vocab_size || c->padded_vocab > (1 << 24))
        return "padded_vocab must be in [vocab_size, 2^24]";
    if (!(c->norm_eps > 0 && c->norm_eps < 1)) return "norm_eps must be in (0, 1)";
    if (c->dtype != DTYPE_F32 && c->dtype != DTYPE_F16 && c->dtype != DTYPE_BF16) return "unknown weight dtype";
    if (c->tied_head != 0 && c->tied_head != 1) return "tied_head must be 0 or 1";
    return NULL;
}

typedef struct {
    Config config;
    Weights weights;
    TokenizerKind tokenizer_kind;
    const void *tokenizer_blob;
    size_t tokenizer_bytes;
    int bos_id, eos_id, pad_id;
    const uint8_t *map;
    size_t map_bytes;
    uint64_t weight_bytes;    /* bytes of all tensors, what one decode step reads */
} Model;

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

static const void *checked_tensor(const Model *m, const TensorEntry *e, const TensorSpec *s, const char *path) {
    const Config *c = &m->config;
    DType want = spec_dtype(c, s);
    if (memchr(e->name, '\0', sizeof e->name) == NULL || strcmp(e->name, s->name))
        die("%s: tensor table entry '%.64s' where '%s' was expected", path, e->name, s->name);
    if (e->dtype != want) die("%s: tensor %s has dtype %u, expected %s", path, s->name, e->dtype, dtype_name(want));
    if (e->ndim != (uint32_t)s->ndim || e->shape[0] != s->rows || e->shape[1] != s->cols)
        die("%s: tensor %s has shape [%u, %u], the config implies [%u, %u]", path, s->name, e->shape[0],
            e->shape[1], s->rows, s->cols);
    uint64_t bytes = (uint64_t)s->rows * s->cols * dtype_size(want);
    if (e->bytes != bytes) die("%s: tensor %s claims %llu bytes, its shape needs %llu", path, s->name,
                               (unsigned long long)e->bytes, (unsigned long long)bytes);
    if (e->offset % MAMBA_ALIGN) die("%s: tensor %s is not %d-byte aligned", path, s->name, MAMBA_ALIGN);
    if (e->offset > m->map_bytes || e->bytes > m->map_bytes - e->offset)
        die("%s: tensor %s lies outside the file", path, s->name);
    return m->map + e->offset;
}

static void model_load(Model *m, const char *path) {
    memset(m, 0, sizeof *m);
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("cannot open model %s: %s", path, strerror(errno));
    struct stat st;
    int st_err = fstat(fd, &st);
    if (st_err || !S_ISREG(st.st_mode) || (uint64_t)st.st_size < MAMBA_HEADER_BYTES) close(fd);
    if (st_err || !S_ISREG(st.st_mode)) die("model %s is not a regular file", path);
    if ((uint64_t)st.st_size < MAMBA_HEADER_BYTES)
        die("model %s is truncated: %lld bytes, smaller than the header", path, (long long)st.st_size);
    m->map_bytes = st.st_size;
    m->map = mmap(NULL, m->map_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (m->map == MAP_FAILED) die("cannot map model %s: %s", path, strerror(map_errno));

    FileHeader h;
    memcpy(&h, m->map, sizeof h);
    if (memcmp(h.magic, MAMBA_MAGIC, 8)) die("%s is not a mamba checkpoint (bad magic)", path);
    if (h.version != MAMBA_FORMAT_VERSION)
        die("%s has format version %u; this mamba reads version %d", path, h.version, MAMBA_FORMAT_VERSION);
    if (h.header_bytes != MAMBA_HEADER_BYTES) die("%s: header size %u, expected %d", path, h.header_bytes, MAMBA_HEADER_BYTES);
    if (h.file_bytes != m->map_bytes)
        die("%s: header says %llu bytes but the file has %zu (truncated or padded)", path,
            (unsigned long long)h.file_bytes, m->map_bytes);

    Config *c = &m->config;
    *c = (Config){.n_layer = (int)h.n_layer, .d_model = (int)h.d_model, .d_inner = (int)h.d_inner,
                  .d_state = (int)h.d_state, .d_conv = (int)h.d_conv, .dt_rank = (int)h.dt_rank,
                  .vocab_size = (int)h.vocab_size, .padded_vocab = (int)h.padded_vocab,
                  .norm_eps = h.norm_eps, .dtype = (DType)h.dtype, .tied_head = (int)h.tied_head};
    if (h.n_layer > 1024 || h.d_model > 65536 || h.d_inner > 262144 || h.d_state > 1024 || h.d_conv > 64 ||
        h.dt_rank > 262144 || h.vocab_size > (1u << 24) || h.padded_vocab > (1u << 24) || h.dtype > 2 || h.tied_head > 1)
        die("%s: config out of range", path);
    const char *problem = config_problem(c);
    if (problem) die("%s: bad config: %s", path, problem);

    int n = n_model_tensors(c);
    if (h.n_tensors != (uint32_t)n) die("%s: %u tensors in the table, the config needs %d", path, h.n_tensors, n);
    if (h.table_offset < MAMBA_HEADER_BYTES || h.table_offset > m->map_bytes ||
        (uint64_t)n * sizeof(TensorEntry) > m->map_bytes - h.table_offset)
        die("%s: tensor table lies outside the file", path);
    if (h.table_offset % 8) die("%s: tensor table is misaligned", path);

    TensorSpec *specs = xmalloc(n * sizeof *specs);
    model_tensor_specs(c, specs);
    const TensorEntry *table = (const TensorEntry *)(m->map + h.table_offset);
    const void **ptr = xmalloc(n * sizeof *ptr);
    for (int i = 0; i < n; i++) {
        ptr[i] = checked_tensor(m, &table[i], &specs[i], path);
        m->weight_bytes += table[i].bytes;
    }

    Weights *w = &m->weights;
    int k = 0;
    w->embedding = ptr[k++];
    w->layers = xcalloc(c->n_layer, sizeof *w->layers);
    for (int l = 0; l < c->n_layer; l++) {
        LayerWeights *L = &w->layers[l];
        L->norm = ptr[k++], L->in_proj = ptr[k++], L->conv_w = ptr[k++], L->conv_b = ptr[k++];
        L->x_proj = ptr[k++], L->dt_proj = ptr[k++], L->dt_bias = ptr[k++], L->A_log = ptr[k++];
        L->D = ptr[k++], L->out_proj = ptr[k++];
    }
    w->norm_f = ptr[k++];
    w->lm_head = c->tied_head ? w->embedding : ptr[k++];
    free(specs);
    free(ptr);

    if (h.tokenizer_kind > TOKENIZER_HF_JSON) die("%s: unknown tokenizer kind %u", path, h.tokenizer_kind);
    m->tokenizer_kind = (TokenizerKind)h.tokenizer_kind;
    if (m->tokenizer_kind != TOKENIZER_NONE) {
        if (h.tokenizer_offset > m->map_bytes || h.tokenizer_bytes > m->map_bytes - h.tokenizer_offset ||
            h.tokenizer_bytes == 0)
            die("%s: embedded tokenizer lies outside the file", path);
        m->tokenizer_blob = m->map + h.tokenizer_offset;
        m->tokenizer_bytes = h.tokenizer_bytes;
    }
    if (h.bos_id < -1 || h.bos_id >= (int32_t)h.vocab_size || h.eos_id < -1 || h.eos_id >= (int32_t)h.vocab_size ||
        h.pad_id < -1 || h.pad_id >= (int32_t)h.vocab_size)
        die("%s: special token ids out of range", path);
    m->bos_id = h.bos_id, m->eos_id = h.eos_id, m->pad_id = h.pad_id;
}

static void model_free(Model *m) {
    free(m->weights.layers);
    munmap((void *)m->map, m->map_bytes);
}

static uint64_t model_param_count(const Config *c) {
    int n = n_model_tensors(c);
    TensorSpec *specs = xmalloc(n * sizeof *specs);
    model_tensor_specs(c, specs);
    uint64_t total = 0;
    for (int i = 0; i < n; i++) total += (uint64_t)specs[i].rows * specs[i].cols;
    free(specs);
    return total;
}

/* ----------------------------------------------------------------------------------------
 * Writing a checkpoint (convert, init): to a temporary file beside the target, fsynced and
 * renamed into place, so an interrupted or failed write never leaves a file that looks valid. */

static uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);   /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1);                                              /* round to nearest even */
    return (uint16_t)(u >> 16);
}

/* Round to nearest even; sets *overflow when a finite value is beyond f16's range. */
static uint16_t f32_to_f16(float f, int *overflow) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) {                         /* ≥ 65520 rounds to infinity */
        if (a < 0x7f800000u) *overflow = 1;
        return (uint16_t)(sign | 0x7c00u);
    }
    if (a < 0x38800000u) {                          /* below 2^-14: f16 subnormal, in units of 2^-24 */
        float v;
        memcpy(&v, &a, 4);
        return (uint16_t)(sign | (uint32_t)lrintf(v * 16777216.0f));
    }
    uint32_t h = (((a >> 23) - 112) << 10) | ((a >> 13) & 0x3ffu), rest = a & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1))) h++;                    /* a carry bumps the exponent */
    return (uint16_t)(sign | h);
}

static void on_signal_remove_partial(int sig) {
    static const char xfsz[] = "mamba: error: the file size limit (ulimit -f) was reached; no output was written\n";
    static const char other[] = "mamba: interrupted; no output was written\n";
    if (g_partial_output[0]) unlink(g_partial_output);
    ssize_t ignored = sig == SIGXFSZ ? write(STDERR_FILENO, xfsz, sizeof xfsz - 1) : write(STDERR_FILENO, other, sizeof other - 1);
    (void)ignored;
    _exit(128 + sig);
}

static void fwrite_or_die(const void *p, size_t n, FILE *f, const char *path) {
    if (n && fwrite(p, 1, n, f) != n) die("cannot write %s: %s", path, strerror(errno));
}

static void pad_to(FILE *f, uint64_t *pos, uint64_t target, const char *path) {
    static const uint8_t zeros[MAMBA_ALIGN];
    while (*pos < target) {
        size_t n = target - *pos < sizeof zeros ? (size_t)(target - *pos) : sizeof zeros;
        fwrite_or_die(zeros, n, f, path);
        *pos += n;
    }
}

/* Produces tensor i (of spec s) as rows*cols floats. */
typedef void (*TensorSource)(void *ctx, int i, const TensorSpec *s, float *out);

typedef struct {
    TokenizerKind kind;
    const void *blob;
    size_t bytes;
    int bos_id, eos_id, pad_id;
} TokenizerInfo;

static void write_checkpoint(const char *path, const Config *c, TensorSource source, void *ctx,
                             const TokenizerInfo *tok) {
    int n = n_model_tensors(c);
    TensorSpec *specs = xmalloc(n * sizeof *specs);
    model_tensor_specs(c, specs);
    TensorEntry *table = xcalloc(n, sizeof *table);
    uint64_t pos = align_up(MAMBA_HEADER_BYTES + (uint64_t)n * sizeof *table, MAMBA_ALIGN);
    for (int i = 0; i < n; i++) {
        DType t = spec_dtype(c, &specs[i]);
        memcpy(table[i].name, specs[i].name, sizeof table[i].name);
        table[i].dtype = t, table[i].ndim = specs[i].ndim;
        table[i].shape[0] = specs[i].rows, table[i].shape[1] = specs[i].cols;
        table[i].offset = pos;
        table[i].bytes = (uint64_t)specs[i].rows * specs[i].cols * dtype_size(t);
        pos = align_up(pos + table[i].bytes, MAMBA_ALIGN);
    }
    FileHeader h = {0};
    memcpy(h.magic, MAMBA_MAGIC, 8);
    h.version = MAMBA_FORMAT_VERSION, h.header_bytes = MAMBA_HEADER_BYTES;
    h.n_layer = c->n_layer, h.d_model = c->d_model, h.d_inner = c->d_inner, h.d_state = c->d_state;
    h.d_conv = c->d_conv, h.dt_rank = c->dt_rank, h.vocab_size = c->vocab_size, h.padded_vocab = c->padded_vocab;
    h.norm_eps = c->norm_eps, h.dtype = c->dtype, h.tied_head = c->tied_head;
    h.tokenizer_kind = tok->blob ? tok->kind : TOKENIZER_NONE;
    h.bos_id = tok->bos_id, h.eos_id = tok->eos_id, h.pad_id = tok->pad_id;
    h.n_tensors = n, h.table_offset = MAMBA_HEADER_BYTES;
    h.tokenizer_offset = tok->blob ? pos : 0, h.tokenizer_bytes = tok->blob ? tok->bytes : 0;
    h.file_bytes = pos + h.tokenizer_bytes;

    /* The temporary file lives in the target's folder so that rename() is atomic. */
    int written = snprintf(g_partial_output, sizeof g_partial_output, "%s.partial-XXXXXX", path);
    if (written < 0 || (size_t)written >= sizeof g_partial_output) die("output path too long: %s", path);
    struct sigaction sa = {.sa_handler = on_signal_remove_partial};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGXFSZ, &sa, NULL);
    int fd = mkstemp(g_partial_output);
    if (fd < 0) {
        g_partial_output[0] = '\0';
        die("cannot create a file beside %s: %s", path, strerror(errno));
    }
    mode_t mask = umask(0);                         /* mkstemp makes 0600; give the usual 0666 & ~umask */
    umask(mask);
    if (fchmod(fd, 0666 & ~mask)) die("cannot set the mode of %s: %s", g_partial_output, strerror(errno));
    FILE *f = fdopen(fd, "wb");
    if (!f) die("cannot open %s: %s", g_partial_output, strerror(errno));
    fwrite_or_die(&h, sizeof h, f, path);
    fwrite_or_die(table, n * sizeof *table, f, path);
    uint64_t at = MAMBA_HEADER_BYTES + (uint64_t)n * sizeof *table;
    for (int i = 0; i < n; i++) {
        const TensorSpec *s = &specs[i];
        size_t count = (size_t)s->rows * s->cols;
        float *values = xmalloc(count * sizeof *values);
        source(ctx, i, s, values);
        pad_to(f, &at, table[i].offset, path);
        DType t = spec_dtype(c, s);
        if (t == DTYPE_F32) {
            fwrite_or_die(values, count * 4, f, path);
        } else {
            uint16_t *half = xmalloc(count * sizeof *half);
            int overflow = 0;
            for (size_t j = 0; j < count; j++)
                half[j] = t == DTYPE_BF16 ? f32_to_bf16(values[j]) : f32_to_f16(values[j], &overflow);
            if (overflow) die("tensor %s has values beyond the f16 range; use --dtype bf16 or f32", s->name);
            fwrite_or_die(half, count * 2, f, path);
            free(half);
        }
        at += table[i].bytes;
        free(values);
    }
    pad_to(f, &at, pos, path);
    if (tok->blob) fwrite_or_die(tok->blob, tok->bytes, f, path);
    if (fflush(f) || fsync(fileno(f))) die("cannot write %s: %s", path, strerror(errno));
    if (fclose(f)) die("cannot write %s: %s", path, strerror(errno));
    if (rename(g_partial_output, path)) die("cannot rename the output to %s: %s", path, strerror(errno));
    g_partial_output[0] = '\0';
    /* and the rename itself survives a crash once its folder is synced (best effort) */
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) slash[slash == dir] = '\0';
    int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) fsync(dfd), close(dfd);
    free(specs);
    free(table);
}

/* ----------------------------------------------------------------------------------------
 * mamba convert: Hugging Face Mamba checkpoints (config.json + safetensors). */

#define MAX_JSON_BYTES (64u << 20)        /* config.json, index and safetensors headers */
#define MAX_SAFETENSORS_TENSORS 32768     /* in all shards together; a Mamba needs ≤ 10 243 */

typedef struct {
    char *name;
    DType dtype;
    int ndim;
    uint64_t shape[4];
    const uint8_t *data;
    uint64_t bytes;
} SafeTensor;

typedef struct {
    SafeTensor *tensors;
    int n, cap;
    const char *dir;
    struct { const uint8_t *map; size_t bytes; } files[256];   /* mapped shards, to unmap */
    int n_files;
} TensorSet;

static void tensor_set_free(TensorSet *set) {
    for (int i = 0; i < set->n; i++) free(set->tensors[i].name);
    free(set->tensors);
    for (int i = 0; i < set->n_files; i++) munmap((void *)set->files[i].map, set->files[i].bytes);
}

static cJSON *parse_json_file(const char *path, const char *what) {
    size_t len;
    char *text = read_file(path, MAX_JSON_BYTES, &len, NULL);
    cJSON *json = cJSON_ParseWithLength(text, len);
    size_t depth = json ? 0 : json_nesting_depth(text, len);
    free(text);
    if (!json && depth > CJSON_NESTING_LIMIT)
        die("%s %s nests arrays and objects deeper than %d levels (the limit)", what, path, CJSON_NESTING_LIMIT);
    if (!json) die("%s %s is not valid JSON", what, path);
    return json;
}

/* Maps one .safetensors file and appends its tensors; every offset is checked against the
 * file before use. */
static void load_safetensors(TensorSet *set, const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("cannot open %s: %s", path, strerror(errno));
    struct stat st;
    int st_err = fstat(fd, &st);
    if (st_err || !S_ISREG(st.st_mode) || st.st_size < 8) close(fd);
    if (st_err || !S_ISREG(st.st_mode)) die("%s is not a regular file", path);
    uint64_t size = st.st_size;
    if (size < 8) die("%s is truncated: no safetensors header", path);
    if (set->n_files == (int)(sizeof set->files / sizeof *set->files)) {
        close(fd);
        die("%s: more than %d safetensors shards", set->dir, (int)(sizeof set->files / sizeof *set->files));
    }
    const uint8_t *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED) die("cannot map %s: %s", path, strerror(map_errno));
    set->files[set->n_files].map = map, set->files[set->n_files++].bytes = size;
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = header_len << 8 | map[i];
    if (header_len > size - 8 || header_len > MAX_JSON_BYTES)
        die("%s: safetensors header length %llu exceeds the file", path, (unsigned long long)header_len);
    cJSON *header = cJSON_ParseWithLength((const char *)map + 8, header_len);
    if (!header && json_nesting_depth((const char *)map + 8, header_len) > CJSON_NESTING_LIMIT)
        die("%s: safetensors header nests deeper than %d levels (the limit)", path, CJSON_NESTING_LIMIT);
    if (!cJSON_IsObject(header)) die("%s: safetensors header is not a JSON object", path);
    const uint8_t *data = map + 8 + header_len;
    uint64_t data_bytes = size - 8 - header_len;
    for (cJSON *item = header->child; item; item = item->next) {
        if (!strcmp(item->string, "__metadata__")) continue;
        cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
        cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
        cJSON *offsets = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
        if (!cJSON_IsString(dtype) || !cJSON_IsArray(shape) || !cJSON_IsArray(offsets) ||
            cJSON_GetArraySize(offsets) != 2)
            die("%s: tensor %s has a malformed entry", path, item->string);
        SafeTensor t = {.ndim = cJSON_GetArraySize(shape)};
        if (!strcmp(dtype->valuestring, "F32")) t.dtype = DTYPE_F32;
        else if (!strcmp(dtype->valuestring, "F16")) t.dtype = DTYPE_F16;
        else if (!strcmp(dtype->valuestring, "BF16")) t.dtype = DTYPE_BF16;
        else t.dtype = (DType)-1;                   /* refused only if the tensor is used */
        if (t.ndim > 4) die("%s: tensor %s has %d dimensions", path, item->string, t.ndim);
        uint64_t count = 1;
        for (int d = 0; d < t.ndim; d++) {
            double v = cJSON_GetArrayItem(shape, d)->valuedouble;
            if (!cJSON_IsNumber(cJSON_GetArrayItem(shape, d)) || v < 0 || v > 1e12 || v != floor(v))
                die("%s: tensor %s has a bad shape", path, item->string);
            t.shape[d] = (uint64_t)v;
            if (t.shape[d] && count > (1ull << 40) / t.shape[d])     /* checked before it can wrap */
                die("%s: tensor %s is implausibly large (over 2^40 elements)", path, item->string);
            count *= t.shape[d];
        }
        double begin = cJSON_GetArrayItem(offsets, 0)->valuedouble, end = cJSON_GetArrayItem(offsets, 1)->valuedouble;
        if (!cJSON_IsNumber(cJSON_GetArrayItem(offsets, 0)) || !cJSON_IsNumber(cJSON_GetArrayItem(offsets, 1)) ||
            begin < 0 || end < begin || end > (double)data_bytes || begin != floor(begin) || end != floor(end))
            die("%s: tensor %s has data offsets outside the file", path, item->string);
        t.data = data + (uint64_t)begin;
        t.bytes = (uint64_t)end - (uint64_t)begin;
        if ((int)t.dtype >= 0 && t.bytes != count * dtype_size(t.dtype))
            die("%s: tensor %s has %llu bytes but its shape needs %llu", path, item->string,
                (unsigned long long)t.bytes, (unsigned long long)(count * dtype_size(t.dtype)));
        if (set->n == MAX_SAFETENSORS_TENSORS)
            die("%s: more than %d tensors in the checkpoint (the limit)", path, MAX_SAFETENSORS_TENSORS);
        if (!(t.name = strdup(item->string))) die("out of memory");
        if (set->n == set->cap) {
            set->cap = set->cap ? 2 * set->cap : 64;
            set->tensors = realloc(set->tensors, set->cap * sizeof *set->tensors);
            if (!set->tensors) die("out of memory");
        }
        set->tensors[set->n++] = t;
    }
    cJSON_Delete(header);
}

static const SafeTensor *find_tensor(const TensorSet *set, const char *name) {
    for (int i = 0; i < set->n; i++)
        if (!strcmp(set->tensors[i].name, name)) return &set->tensors[i];
    return NULL;
}

/* Reads a checkpoint directory: one model.safetensors, or shards listed by the index. */
static void load_hf_tensors(TensorSet *set, const char *dir) {
    char path[PATH_MAX];
    set->dir = dir;
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (access(path, F_OK) == 0) {
        cJSON *index = parse_json_file(path, "safetensors index");
        cJSON *map = cJSON_GetObjectItemCaseSensitive(index, "weight_map");
        if (!cJSON_IsObject(map)) die("%s has no weight_map object", path);
        if (cJSON_GetArraySize(map) > MAX_SAFETENSORS_TENSORS)
            die("%s: weight_map lists more than %d tensors (the limit)", path, MAX_SAFETENSORS_TENSORS);
        char **seen = NULL;
        int n_seen = 0;
        for (cJSON *e = map->child; e; e = e->next) {
            if (!cJSON_IsString(e) || strchr(e->valuestring, '/') || !strcmp(e->valuestring, "..") || !e->valuestring[0])
                die("%s: weight_map entry %s names a bad file", path, e->string);
            int known = 0;
            for (int i = 0; i < n_seen; i++) known |= !strcmp(seen[i], e->valuestring);
            if (known) continue;
            seen = realloc(seen, (n_seen + 1) * sizeof *seen);
            if (!seen) die("out of memory");
            seen[n_seen++] = e->valuestring;
            char shard[PATH_MAX];
            snprintf(shard, sizeof shard, "%s/%s", dir, e->valuestring);
            load_safetensors(set, shard);
        }
        for (cJSON *e = map->child; e; e = e->next)
            if (!find_tensor(set, e->string)) die("%s lists tensor %s, which its shard lacks", path, e->string);
        free(seen);
        cJSON_Delete(index);
        return;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (access(path, F_OK) == 0) {
        load_safetensors(set, path);
        return;
    }
    snprintf(path, sizeof path, "%s/pytorch_model.bin", dir);
    if (access(path, F_OK) == 0)
        die("%s holds pytorch_model.bin only; save it as safetensors first (save_pretrained)", dir);
    die("%s has neither model.safetensors nor model.safetensors.index.json", dir);
}

static double json_number(const cJSON *obj, const char *key, double fallback, int required, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v) {
        if (required) die("%s lacks \"%s\"", path, key);
        return fallback;
    }
    if (!cJSON_IsNumber(v)) die("%s: \"%s\" is not a number", path, key);
    return v->valuedouble;
}

static int json_int(const cJSON *obj, const char *key, int fallback, int required, const char *path) {
    double v = json_number(obj, key, fallback, required, path);
    if (v != floor(v) || v < -1 || v > (1 << 30)) die("%s: \"%s\" is not a valid integer", path, key);
    return (int)v;
}

static int json_bool(const cJSON *obj, const char *key, int fallback, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v) return fallback;
    if (!cJSON_IsBool(v)) die("%s: \"%s\" is not true or false", path, key);
    return cJSON_IsTrue(v);
}

/* dt_rank is a number or "auto" = ceil(d_model / 16). */
static int json_dt_rank(const cJSON *obj, const char *key, int d_model, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || (cJSON_IsString(v) && !strcmp(v->valuestring, "auto"))) return (d_model + 15) / 16;
    return json_int(obj, key, 0, 1, path);
}

/* a × b for d_inner = expand × d_model; 0 (which config_problem refuses) when it is out of
 * range, rather than an int overflow. */
static int times_or_zero(int a, int b) {
    int64_t v = (int64_t)a * b;
    return v < 1 || v > INT_MAX ? 0 : (int)v;
}

/* Two spellings of the config: transformers' MambaConfig (hidden_size, ...) and the original
 * state-spaces one (d_model, ssm_cfg, pad_vocab_size_multiple). Returns the vocab padding
 * multiple (1 for transformers, whose vocab_size already counts the embedding rows). */
static int config_from_json(const cJSON *j, const char *path, Config *c, TokenizerInfo *tok) {
    int multiple = 1;
    *c = (Config){0};
    if (cJSON_GetObjectItemCaseSensitive(j, "hidden_size")) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(j, "model_type");
        if (type && (!cJSON_IsString(type) || strcmp(type->valuestring, "mamba")))
            die("%s: model_type is %s, not \"mamba\" (only Mamba-1 is supported)", path,
                cJSON_IsString(type) ? type->valuestring : "not a string");
        c->d_model = json_int(j, "hidden_size", 0, 1, path);
        c->n_layer = json_int(j, "num_hidden_layers", 0, 1, path);
        c->vocab_size = json_int(j, "vocab_size", 0, 1, path);
        c->d_state = json_int(j, "state_size", 16, 0, path);
        c->d_conv = json_int(j, "conv_kernel", 4, 0, path);
        int expand = json_int(j, "expand", 2, 0, path);
        c->d_inner = json_int(j, "intermediate_size", times_or_zero(expand, c->d_model), 0, path);
        c->dt_rank = json_dt_rank(j, "time_step_rank", c->d_model, path);
        c->norm_eps = (float)json_number(j, "layer_norm_epsilon", 1e-5, 0, path);
        c->tied_head = json_bool(j, "tie_word_embeddings", 1, path);
        if (json_bool(j, "use_bias", 0, path)) die("%s: use_bias=true (biased in/out projections) is not supported", path);
        if (!json_bool(j, "use_conv_bias", 1, path)) die("%s: use_conv_bias=false is not supported", path);
    } else if (cJSON_GetObjectItemCaseSensitive(j, "d_model")) {
        c->d_model = json_int(j, "d_model", 0, 1, path);
        c->n_layer = json_int(j, "n_layer", 0, 1, path);
        c->vocab_size = json_int(j, "vocab_size", 0, 1, path);
        multiple = json_int(j, "pad_vocab_size_multiple", 8, 0, path);
        if (multiple < 1) die("%s: pad_vocab_size_multiple must be ≥ 1", path);
        c->tied_head = json_bool(j, "tie_embeddings", 1, path);
        if (!json_bool(j, "rms_norm", 1, path)) die("%s: rms_norm=false (LayerNorm) is not supported", path);
        const cJSON *ssm = cJSON_GetObjectItemCaseSensitive(j, "ssm_cfg");
        if (ssm && !cJSON_IsObject(ssm)) die("%s: ssm_cfg is not an object", path);
        const cJSON *layer = ssm ? cJSON_GetObjectItemCaseSensitive(ssm, "layer") : NULL;
        if (layer && (!cJSON_IsString(layer) || strcmp(layer->valuestring, "Mamba1")))
            die("%s: ssm_cfg.layer is not Mamba1 (only Mamba-1 is supported)", path);
        c->d_state = json_int(ssm, "d_state", 16, 0, path);
        c->d_conv = json_int(ssm, "d_conv", 4, 0, path);
        c->d_inner = times_or_zero(json_int(ssm, "expand", 2, 0, path), c->d_model);
        c->dt_rank = json_dt_rank(ssm, "dt_rank", c->d_model, path);
        if (json_bool(ssm, "bias", 0, path)) die("%s: ssm_cfg.bias=true is not supported", path);
        if (!json_bool(ssm, "conv_bias", 1, path)) die("%s: ssm_cfg.conv_bias=false is not supported", path);
        c->norm_eps = 1e-5f;
    } else {
        die("%s has neither hidden_size (transformers) nor d_model (state-spaces)", path);
    }
    /* out of range (refused by config_problem) rather than wrapped */
    uint64_t padded = c->vocab_size < 1 ? 0 : align_up((uint64_t)c->vocab_size, (uint64_t)multiple);
    c->padded_vocab = padded > INT_MAX ? -1 : (int)padded;
    tok->bos_id = json_int(j, "bos_token_id", -1, 0, path);
    tok->eos_id = json_int(j, "eos_token_id", -1, 0, path);
    tok->pad_id = json_int(j, "pad_token_id", -1, 0, path);
    return multiple;
}

/* Source names of each of our tensors; the two conventions differ only in the embedding. */
static void source_names(const TensorSpec *s, char names[2][128]) {
    int layer;
    char part[32];
    names[1][0] = '\0';
    if (!strcmp(s->name, "embedding")) {
        strcpy(names[0], "backbone.embeddings.weight");
        strcpy(names[1], "backbone.embedding.weight");
    } else if (!strcmp(s->name, "norm_f")) {
        strcpy(names[0], "backbone.norm_f.weight");
    } else if (!strcmp(s->name, "lm_head")) {
        strcpy(names[0], "lm_head.weight");
    } else if (sscanf(s->name, "layers.%d.%31s", &layer, part) == 2) {
        static const char *const hf[LAYER_TENSORS] = {
            "norm.weight", "mixer.in_proj.weight", "mixer.conv1d.weight", "mixer.conv1d.bias", "mixer.x_proj.weight",
            "mixer.dt_proj.weight", "mixer.dt_proj.bias", "mixer.A_log", "mixer.D", "mixer.out_proj.weight",
        };
        for (int t = 0; t < LAYER_TENSORS; t++)
            if (!strcmp(part, LAYER_TENSOR_NAMES[t])) snprintf(names[0], 128, "backbone.layers.%d.%s", layer, hf[t]);
    }
}

static const SafeTensor *lookup_source(const TensorSet *set, const TensorSpec *s) {
    char names[2][128];
    source_names(s, names);
    const SafeTensor *t = find_tensor(set, names[0]);
    if (!t && names[1][0]) t = find_tensor(set, names[1]);
    if (!t) die("%s: missing tensor %s", set->dir, names[0]);
    if ((int)t->dtype < 0) die("%s: tensor %s has an unsupported dtype (F32, F16 and BF16 are read)", set->dir, t->name);
    /* Unit dimensions are ignored: conv1d.weight is [d_inner, 1, d_conv] in PyTorch. */
    uint64_t got[4], want[2] = {s->rows, s->cols};
    int n_got = 0, n_want = 0;
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] != 1) got[n_got++] = t->shape[d];
    for (int d = 0; d < 2; d++)
        if (want[d] != 1) want[n_want++] = want[d];
    int same = n_got == n_want;
    for (int d = 0; same && d < n_got; d++) same = got[d] == want[d];
    if (!same) {
        char text[96] = "";
        for (int d = 0; d < t->ndim; d++)
            snprintf(text + strlen(text), sizeof text - strlen(text), "%s%llu", d ? ", " : "", (unsigned long long)t->shape[d]);
        if (s->ndim == 1) die("tensor %s has shape [%s] but the config implies [%u]", t->name, text, s->rows);
        die("tensor %s has shape [%s] but the config implies [%u, %u]", t->name, text, s->rows, s->cols);
    }
    return t;
}

typedef struct {
    const TensorSet *set;
} ConvertSource;

static void convert_tensor(void *ctx, int i, const TensorSpec *s, float *out) {
    (void)i;
    const SafeTensor *t = lookup_source(((ConvertSource *)ctx)->set, s);
    size_t count = (size_t)s->rows * s->cols;
    for (size_t j = 0; j < count; j++) {
        uint16_t half;
        if (t->dtype == DTYPE_F32) {
            memcpy(&out[j], t->data + 4 * j, 4);
        } else {
            memcpy(&half, t->data + 2 * j, 2);
            out[j] = t->dtype == DTYPE_BF16 ? bf16_to_f32(half) : f16_to_f32(half);
        }
        if (!isfinite(out[j])) die("tensor %s contains NaN or infinity at element %zu", t->name, j);
    }
}

/* The tokenizer blob embedded in the output: tokenizer.json wins over tokenizer.model. */
static void find_tokenizer(const char *dir, TokenizerInfo *tok) {
    static const struct { const char *file; TokenizerKind kind; } candidates[] = {
        {"tokenizer.json", TOKENIZER_HF_JSON}, {"tokenizer.model", TOKENIZER_SENTENCEPIECE}};
    for (size_t i = 0; i < sizeof candidates / sizeof *candidates; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, candidates[i].file);
        if (access(path, F_OK)) continue;
        char err[256];
        Tokenizer *t = tokenizer_load_file(path, err, sizeof err);
        if (!t) die("%s", err);
        if (tok->bos_id < 0) tok->bos_id = tokenizer_bos_id(t);
        if (tok->eos_id < 0) tok->eos_id = tokenizer_eos_id(t);
        if (tok->pad_id < 0) tok->pad_id = tokenizer_pad_id(t);
        tokenizer_free(t);
        tok->blob = read_file(path, MAX_TOKENIZER_BYTES, &tok->bytes, NULL);
        tok->kind = candidates[i].kind;
        return;
    }
}

static void cmd_convert(int argc, char **argv) {
    const char *dir = NULL, *out = NULL;
    DType dtype = DTYPE_BF16;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--dtype")) {
            if (i + 1 >= argc) die("--dtype needs a value: f32, f16 or bf16");
            if (parse_dtype(argv[++i], &dtype)) die("--dtype must be f32, f16 or bf16, got '%s'", argv[i]);
        } else if (argv[i][0] == '-' && argv[i][1]) {
            die("convert: unknown option %s", argv[i]);
        } else if (!dir) dir = argv[i];
        else if (!out) out = argv[i];
        else die("convert: unexpected argument %s", argv[i]);
    }
    if (!dir || !out) die("usage: mamba convert HF_DIR OUT.bin [--dtype f32|f16|bf16]");
    struct stat st;
    if (stat(dir, &st) || !S_ISDIR(st.st_mode)) die("%s is not a readable directory", dir);

    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (access(path, R_OK)) die("cannot read %s: %s", path, strerror(errno));
    cJSON *json = parse_json_file(path, "config");
    Config c;
    TokenizerInfo tok = {0};
    int multiple = config_from_json(json, path, &c, &tok);
    cJSON_Delete(json);
    c.dtype = dtype;

    TensorSet set = {0};
    load_hf_tensors(&set, dir);
    /* The embedding's row count is the padded vocab; it must agree with the config. */
    TensorSpec probe;
    set_spec(&probe, "embedding", 0, 0, 2, 1);
    char names[2][128];
    source_names(&probe, names);
    const SafeTensor *emb = find_tensor(&set, names[0]);
    if (!emb) emb = find_tensor(&set, names[1]);
    if (!emb) die("%s: missing tensor %s", dir, names[0]);
    if (emb->ndim == 2 && emb->shape[0] != (uint64_t)c.padded_vocab)
        die("tensor %s has %llu rows but the config implies %d (vocab_size %d padded to a multiple of %d)", emb->name,
            (unsigned long long)emb->shape[0], c.padded_vocab, c.vocab_size, multiple);
    const char *problem = config_problem(&c);
    if (problem) die("%s: bad config: %s", path, problem);

    find_tokenizer(dir, &tok);
    ConvertSource src = {&set};
    write_checkpoint(out, &c, convert_tensor, &src, &tok);
    tensor_set_free(&set);
    free((void *)tok.blob);
    fprintf(stderr, "wrote %s: %d layers, d_model %d, vocab %d, %s, %llu parameters\n", out, c.n_layer, c.d_model,
            c.vocab_size, dtype_name(dtype), (unsigned long long)model_param_count(&c));
}

/* ----------------------------------------------------------------------------------------
 * The CPU reference engine: one token of each of n sequences at a time through every Mamba
 * block. The sequences go through each layer together, so every weight matrix is read once per
 * step whatever n; each output is summed in an order fixed by the model alone, so a sequence's
 * logits do not depend on what else is in the batch (single-sequence use is n = 1). */

typedef struct {
    int max_batch;   /* the scratch buffers below hold this many rows, one per sequence */
    float *x;        /* [max_batch, d_model] residual stream */
    float *xn;       /* [max_batch, d_model] normalized input of a block, then the block's output */
    float *xz;       /* [max_batch, 2*d_inner] in_proj output: x then the gate z */
    float *u;        /* [max_batch, d_inner] conv1d + SiLU output, the SSM input */
    float *dbc;      /* [max_batch, dt_rank + 2*d_state] x_proj output: dt (low rank), B, C */
    float *delta;    /* [max_batch, d_inner] Δ before dt_bias and softplus */
    float *y;        /* [max_batch, d_inner] SSM output, gated */
    float *logits;   /* [max_batch, padded_vocab] */
    void *scratch;   /* the allocation the buffers above are carved from */
    float *A;        /* [n_layer, d_inner, d_state] A = -exp(A_log), computed once */
    SeqState *slots; /* [max_batch] the state of each sequence slot */
} CpuEngine;

static void cpu_engine_reset_slot(CpuEngine *e, const Config *c, int slot) {
    memset(e->slots[slot].conv, 0, (size_t)c->n_layer * c->d_inner * c->d_conv * sizeof(float));
    memset(e->slots[slot].ssm, 0, (size_t)c->n_layer * c->d_inner * c->d_state * sizeof(float));
}

/* Bytes of n floats rounded up to whole 64-byte cache lines. */
static size_t line_bytes(size_t n) { return (n * sizeof(float) + 63) / 64 * 64; }

static void cpu_engine_init(CpuEngine *e, const Model *m, int max_batch) {
    const Config *c = &m->config;
    size_t di = c->d_inner, per_layer_A = di * c->d_state, rows = max_batch;
    /* the scratch buffers, carved from one allocation, each from a cache line on: vector loads of
     * a buffer's first row never straddle two lines */
    float **buffers[] = {&e->x, &e->xn, &e->xz, &e->u, &e->dbc, &e->delta, &e->y, &e->logits};
    const size_t floats[] = {rows * c->d_model, rows * c->d_model, rows * 2 * di, rows * di,
                             rows * (c->dt_rank + 2 * c->d_state), rows * di, rows * di, rows * c->padded_vocab};
    size_t bytes = 63;
    for (size_t i = 0; i < sizeof floats / sizeof *floats; i++) bytes += line_bytes(floats[i]);
    e->max_batch = max_batch;
    e->scratch = xcalloc(bytes, 1);
    char *at = (char *)e->scratch + (64 - (uintptr_t)e->scratch % 64) % 64;
    for (size_t i = 0; i < sizeof floats / sizeof *floats; i++) {
        *buffers[i] = (float *)at;
        at += line_bytes(floats[i]);
    }
    e->A = xcalloc(c->n_layer * per_layer_A, sizeof(float));
    for (int l = 0; l < c->n_layer; l++)
        for (size_t i = 0; i < per_layer_A; i++) e->A[l * per_layer_A + i] = -expf(m->weights.layers[l].A_log[i]);
    e->slots = xcalloc(rows, sizeof *e->slots);
    for (int s = 0; s < max_batch; s++) {
        e->slots[s].conv = xcalloc((size_t)c->n_layer * di * c->d_conv, sizeof(float));
        e->slots[s].ssm = xcalloc((size_t)c->n_layer * per_layer_A, sizeof(float));
    }
}

static void cpu_engine_free(CpuEngine *e) {
    free(e->scratch), free(e->A);
    for (int s = 0; s < e->max_batch; s++) free(e->slots[s].conv), free(e->slots[s].ssm);
    free(e->slots);
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

/* out[b * out_stride] = W[r, :] · x[b] for the group ≤ MATMUL_GROUP inputs x[b] (x_stride floats
 * apart) and row r of a [rows, cols] matrix: each run of DOT_LANES weights is loaded and
 * converted once and multiplied into the group's partial sums; the columns after the last whole
 * run go into the first lanes at the end. */
static inline __attribute__((always_inline)) void dot_row_group(float *out, size_t out_stride, const void *W,
                                                                DType dtype, int r, int cols, const float *x,
                                                                size_t x_stride, int group) {
    size_t row = (size_t)r * cols;
    int full = cols - cols % DOT_LANES;
    Lanes sum[MATMUL_GROUP];
    for (int b = 0; b < group; b++) sum[b] = (Lanes){0};
    for (int j = 0; j < full; j += DOT_LANES) {
        Lanes w, xb;
        weight_lanes(&w, W, dtype, row + j);
        for (int b = 0; b < group; b++) {
            memcpy(&xb, x + b * x_stride + j, sizeof xb);
            sum[b] += xb * w;
        }
    }
    for (int b = 0; b < group; b++) {
        float lane[DOT_LANES];
        memcpy(lane, &sum[b], sizeof lane);
        for (int j = full; j < cols; j++) lane[j - full] += weight_at(W, dtype, row + j) * x[b * x_stride + j];
        out[b * out_stride] = sum_lanes(lane);
    }
}

/* dot_row_group with the dtype as a constant, so that each dtype gets its own compiled copy. */
static inline __attribute__((always_inline)) void dot_row_group_of(float *out, size_t out_stride, const void *W,
                                                                   DType dtype, int r, int cols, const float *x,
                                                                   size_t x_stride, int group) {
    switch (dtype) {
    case DTYPE_F32: dot_row_group(out, out_stride, W, DTYPE_F32, r, cols, x, x_stride, group); break;
    case DTYPE_F16: dot_row_group(out, out_stride, W, DTYPE_F16, r, cols, x, x_stride, group); break;
    case DTYPE_BF16: dot_row_group(out, out_stride, W, DTYPE_BF16, r, cols, x, x_stride, group); break;
    }
}

/* out[b, r] = Σ_c W[r, c] · x[b, c] for the n input rows x[b] (x_stride floats apart) and a
 * row-major [rows, cols] matrix stored as dtype; out is [n, rows]. OpenMP over rows; a row is
 * read from memory once for all n inputs, in groups of MATMUL_GROUP then one by one (group sizes
 * the compiler knows; later groups find the row in the cache). */
static void matmul(float *out, const void *W, DType dtype, int rows, int cols, const float *x, size_t x_stride, int n) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        int b = 0;
        for (; b + MATMUL_GROUP <= n; b += MATMUL_GROUP)
            dot_row_group_of(out + (size_t)b * rows + r, rows, W, dtype, r, cols, x + b * x_stride, x_stride,
                             MATMUL_GROUP);
        for (; b < n; b++)
            dot_row_group_of(out + (size_t)b * rows + r, rows, W, dtype, r, cols, x + b * x_stride, x_stride, 1);
    }
}

/* Row `row` of a [rows, cols] matrix as floats (the embedding lookup). */
static void matrix_row(float *out, const void *W, DType dtype, int row, int cols) {
    for (int j = 0; j < cols; j++) out[j] = weight_at(W, dtype, (size_t)row * cols + j);
}

/* RMSNorm: out = x / sqrt(mean(x²) + eps) · weight */
static void rmsnorm(float *out, const float *x, const float *weight, int n, float eps) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float scale = 1.0f / sqrtf(ss / n + eps);
    for (int i = 0; i < n; i++) out[i] = weight[i] * (x[i] * scale);
}

static float silu(float x) { return x / (1.0f + expf(-x)); }

/* PyTorch's softplus, which is linear above 20. */
static float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* One Mamba mixer in recurrent mode for the n sequences in slots[]; reads e->xn (row b for
 * slots[b]), leaves the outputs there. */
static void mamba_block(CpuEngine *e, const Config *c, const LayerWeights *w, int l, int n, const int *slots) {
    int di = c->d_inner, ns = c->d_state, nk = c->d_conv, dt_rank = c->dt_rank, n_dbc = dt_rank + 2 * ns;
    /* in_proj: (x, z) = W_in · xn */
    matmul(e->xz, w->in_proj, c->dtype, 2 * di, c->d_model, e->xn, c->d_model, n);
    /* causal depthwise conv1d over the last d_conv inputs of each channel, then SiLU */
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n * di; i++) {
        int b = i / di, ch = i % di;
        float *window = e->slots[slots[b]].conv + ((size_t)l * di + ch) * nk;
        memmove(window, window + 1, (nk - 1) * sizeof(float));
        window[nk - 1] = e->xz[(size_t)b * 2 * di + ch];
        float s = w->conv_b[ch];
        for (int k = 0; k < nk; k++) s += w->conv_w[ch * nk + k] * window[k];
        e->u[i] = silu(s);
    }
    /* x_proj: (dt, B, C) = W_x · u; dt_proj: W_dt · dt */
    matmul(e->dbc, w->x_proj, c->dtype, n_dbc, di, e->u, di, n);
    matmul(e->delta, w->dt_proj, c->dtype, di, dt_rank, e->dbc, n_dbc, n);
    const float *A = e->A + (size_t)l * di * ns;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n * di; i++) {
        int b = i / di, ch = i % di;
        const float *B = e->dbc + (size_t)b * n_dbc + dt_rank, *C = B + ns, *z = e->xz + (size_t)b * 2 * di + di;
        float dt = softplus(e->delta[i] + w->dt_bias[ch]), x = e->u[i];
        float *h = e->slots[slots[b]].ssm + ((size_t)l * di + ch) * ns;
        float y = 0.0f;
        for (int k = 0; k < ns; k++) {
            /* discretize (zero-order hold on A, Euler on B) and step: h = exp(Δ·A)·h + Δ·B·x */
            h[k] = expf(dt * A[ch * ns + k]) * h[k] + dt * B[k] * x;
            /* read out: y = C·h */
            y += h[k] * C[k];
        }
        /* skip connection D·x, then the gate SiLU(z) */
        e->y[i] = (y + w->D[ch] * x) * silu(z[ch]);
    }
    /* out_proj back to d_model */
    matmul(e->xn, w->out_proj, c->dtype, c->d_model, di, e->y, di, n);
}

/* Runs tokens[b] through the sequence in slots[b] for b < n (distinct slots); returns the n
 * rows of padded_vocab logits, row b for slots[b]. */
static const float *cpu_engine_forward_batch(CpuEngine *e, const Model *m, int n, const int *slots, const int *tokens) {
    const Config *c = &m->config;
    int dm = c->d_model;
    for (int b = 0; b < n; b++) matrix_row(e->x + (size_t)b * dm, m->weights.embedding, c->dtype, tokens[b], dm);
    for (int l = 0; l < c->n_layer; l++) {
        const LayerWeights *w = &m->weights.layers[l];
        for (int b = 0; b < n; b++) rmsnorm(e->xn + (size_t)b * dm, e->x + (size_t)b * dm, w->norm, dm, c->norm_eps);
        mamba_block(e, c, w, l, n, slots);
        for (size_t i = 0; i < (size_t)n * dm; i++) e->x[i] += e->xn[i];      /* residual */
    }
    for (int b = 0; b < n; b++) rmsnorm(e->xn + (size_t)b * dm, e->x + (size_t)b * dm, m->weights.norm_f, dm, c->norm_eps);
    matmul(e->logits, m->weights.lm_head, c->dtype, c->padded_vocab, dm, e->xn, dm, n);
    return e->logits;
}

/* ----------------------------------------------------------------------------------------
 * The sampler: repetition penalty, then greedy or temperature + top-k + top-p. */

typedef struct {
    float temperature;     /* 0: greedy */
    int top_k;             /* 0: off */
    float top_p;           /* 1: off */
    float repeat_penalty;  /* 1: off */
    int repeat_last_n;     /* how many recent tokens the penalty looks at */
    uint64_t rng;          /* xorshift64* state, from --seed */
} SamplerConfig;

typedef struct {
    float p;
    int id;
} Candidate;

typedef struct {
    SamplerConfig cfg;
    int vocab;
    float *scratch;        /* [vocab] */
    Candidate *cand;       /* [vocab] */
} Sampler;

/* New settings and seed for a sampler (each sequence of a batch gets its own seed). */
static void sampler_configure(Sampler *s, const SamplerConfig *cfg) {
    s->cfg = *cfg;
    if (s->cfg.rng == 0) s->cfg.rng = 0x9E3779B97F4A7C15ull;   /* xorshift must not start at 0 */
}

static void sampler_init(Sampler *s, const SamplerConfig *cfg, int vocab) {
    s->vocab = vocab;
    s->scratch = xmalloc(vocab * sizeof *s->scratch);
    s->cand = xmalloc(vocab * sizeof *s->cand);
    sampler_configure(s, cfg);
}

static void sampler_free(Sampler *s) { free(s->scratch), free(s->cand); }

static float random_f32(uint64_t *state) {   /* uniform in [0, 1) */
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (float)((*state * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f;
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static int compare_candidates(const void *a, const void *b) {
    float pa = ((const Candidate *)a)->p, pb = ((const Candidate *)b)->p;
    if (pa != pb) return pa > pb ? -1 : 1;
    return ((const Candidate *)a)->id - ((const Candidate *)b)->id;
}

/* The k largest of x[n] into cand (unordered), through a min-heap of size k: O(n log k). */
static int top_k_candidates(Candidate *cand, const float *x, int n, int k) {
    for (int i = 0; i < n; i++) {
        if (i >= k && x[i] <= cand[0].p) continue;
        int at;
        if (i < k) {                                   /* grow the heap: sift up */
            at = i;
            while (at > 0 && cand[(at - 1) / 2].p > x[i]) cand[at] = cand[(at - 1) / 2], at = (at - 1) / 2;
        } else {                                       /* replace the root: sift down */
            at = 0;
            for (;;) {
                int child = 2 * at + 1;
                if (child >= k) break;
                if (child + 1 < k && cand[child + 1].p < cand[child].p) child++;
                if (cand[child].p >= x[i]) break;
                cand[at] = cand[child], at = child;
            }
        }
        cand[at] = (Candidate){x[i], i};
    }
    return k;
}

/* Picks the next id from logits[vocab] given the ids produced so far. */
static int sample(Sampler *s, const float *logits, const int *history, int n_history) {
    float *x = s->scratch;
    int n = s->vocab;
    memcpy(x, logits, n * sizeof *x);
    /* repetition penalty (as in CTRL): push recently seen tokens down */
    if (s->cfg.repeat_penalty != 1.0f) {
        int from = n_history > s->cfg.repeat_last_n ? n_history - s->cfg.repeat_last_n : 0;
        for (int i = from; i < n_history; i++) {
            int id = history[i];
            if (id < 0 || id >= n) continue;
            /* a token seen twice is penalized once: mark it by comparing with the original */
            if (x[id] != logits[id]) continue;
            x[id] = x[id] > 0 ? x[id] / s->cfg.repeat_penalty : x[id] * s->cfg.repeat_penalty;
        }
    }
    if (s->cfg.temperature == 0.0f) return argmax(x, n);

    /* softmax of logits / temperature */
    float max = x[argmax(x, n)], sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = expf((x[i] - max) / s->cfg.temperature);
        sum += x[i];
    }
    int m = 0;
    int k = s->cfg.top_k > 0 && s->cfg.top_k < n ? s->cfg.top_k : n;
    if (k < n || s->cfg.top_p < 1.0f) {
        if (k < n) {
            m = top_k_candidates(s->cand, x, n, k);
        } else {
            /* top-p alone: a token below (1-p)/(n-1) of the mass cannot be in the nucleus */
            float cutoff = (1.0f - s->cfg.top_p) / (n - 1) * sum;
            for (int i = 0; i < n; i++)
                if (x[i] >= cutoff || x[i] == 1.0f) s->cand[m++] = (Candidate){x[i], i};   /* 1.0: the most likely */
        }
        qsort(s->cand, m, sizeof *s->cand, compare_candidates);
        float kept = 0.0f;
        for (int i = 0; i < m; i++) kept += s->cand[i].p;
        if (s->cfg.top_p < 1.0f) {
            float mass = 0.0f;
            for (int i = 0; i < m; i++) {
                mass += s->cand[i].p;
                if (mass >= s->cfg.top_p * kept) {
                    m = i + 1;
                    kept = mass;
                    break;
                }
            }
        }
        float r = random_f32(&s->cfg.rng) * kept, acc = 0.0f;
        for (int i = 0; i < m; i++) {
            acc += s->cand[i].p;
            if (r < acc) return s->cand[i].id;
        }
        return s->cand[m - 1].id;
    }
    float r = random_f32(&s->cfg.rng) * sum, acc = 0.0f;
    for (int i = 0; i < n; i++) {
        acc += x[i];
        if (r < acc) return i;
    }
    return n - 1;
}

/* ----------------------------------------------------------------------------------------
 * Engines behind one interface: the CPU reference, or the GPU when there is one. */

typedef enum { DEVICE_AUTO, DEVICE_CPU, DEVICE_CUDA } DeviceChoice;

typedef struct {
    const Model *model;
    int max_batch;              /* sequence slots 0 .. max_batch-1; slot 0 is the single sequence's */
    unsigned char *in_batch;    /* [max_batch] marks, to check that a batch names each slot once */
    CpuEngine cpu;
#ifdef MAMBA_CUDA
    GpuEngine *gpu;             /* NULL: the CPU engine runs */
    int sampling_set;           /* the GPU sampler has the generation's settings */
    int ran_ahead;              /* the sampled id the GPU already ran (engine_sample), or -1 */
    const float *ahead_logits;  /* its logits on the host, when they were asked for */
#endif
} Engine;

/* An engine with the state of max_batch sequences (1 ≤ max_batch ≤ MAX_BATCH). --device cuda
 * insists on the GPU; auto takes it when one is usable, else says so once and runs on the CPU. */
static void engine_open(Engine *e, const Model *m, DeviceChoice device, int max_batch) {
    memset(e, 0, sizeof *e);
    e->model = m;
    e->max_batch = max_batch;
    e->in_batch = xcalloc(max_batch, 1);
#ifdef MAMBA_CUDA
    e->ran_ahead = -1;
    if (device != DEVICE_CPU) {
        char err[512];
        e->gpu = gpu_engine_create(&m->config, &m->weights, max_batch, err, sizeof err);
        if (e->gpu) return;
        if (device == DEVICE_CUDA) die("--device cuda: %s", err);
        fprintf(stderr, "mamba: note: %s; running on the CPU\n", err);
    }
#else
    if (device == DEVICE_CUDA) die("this mamba was built without CUDA; use --device cpu");
#endif
    cpu_engine_init(&e->cpu, m, max_batch);
}

static void engine_close(Engine *e) {
    free(e->in_batch);
#ifdef MAMBA_CUDA
    if (e->gpu) {
        gpu_engine_free(e->gpu);
        return;
    }
#endif
    cpu_engine_free(&e->cpu);
}

/* Empties the single sequence (slot 0). */
static void engine_reset(Engine *e) {
#ifdef MAMBA_CUDA
    if (e->gpu) {
        gpu_engine_reset(e->gpu);
        e->ran_ahead = -1;
        return;
    }
#endif
    cpu_engine_reset_slot(&e->cpu, &e->model->config, 0);
}

/* The single sequence's token on the CPU: a batch of one, in slot 0. */
static const float *cpu_forward_single(Engine *e, int token) {
    static const int slot0 = 0;
    return cpu_engine_forward_batch(&e->cpu, e->model, 1, &slot0, &token);
}

/* Runs one token of the single sequence and returns its logits on the host. */
static const float *engine_forward(Engine *e, int token) {
#ifdef MAMBA_CUDA
    if (e->gpu) return gpu_engine_feed(e->gpu, token, 1);
#endif
    return cpu_forward_single(e, token);
}

/* Runs one token of a generation; the logits come back only when want_logits (the GPU keeps
 * them for its sampler). A token that engine_sample already ran on the GPU is not run again. */
static const float *engine_feed(Engine *e, int token, int want_logits) {
#ifdef MAMBA_CUDA
    if (e->gpu) {
        if (e->ran_ahead < 0) return gpu_engine_feed(e->gpu, token, want_logits);
        if (token != e->ran_ahead) die("internal error: the GPU ran token %d, not %d", e->ran_ahead, token);
        e->ran_ahead = -1;
        return e->ahead_logits;
    }
#endif
    (void)want_logits;
    return cpu_forward_single(e, token);
}

/* The next token. On the GPU the sampler reads the logits and the history there, and the
 * sampled token is run at once (engine_feed then finds it done). */
static int engine_sample(Engine *e, Sampler *s, const float *logits, const int *history, int n_history,
                         int want_logits) {
#ifdef MAMBA_CUDA
    if (e->gpu) {
        if (!e->sampling_set) {
            GpuSampling g = {s->cfg.temperature, s->cfg.top_k, s->cfg.top_p, s->cfg.repeat_penalty,
                             s->cfg.repeat_last_n, s->cfg.rng, s->vocab};
            gpu_engine_set_sampling(e->gpu, &g);
            e->sampling_set = 1;
        }
        e->ran_ahead = gpu_engine_sample_feed(e->gpu, want_logits, &e->ahead_logits);
        return e->ran_ahead;
    }
#endif
    (void)e, (void)want_logits;
    return sample(s, logits, history, n_history);
}

/* Empties one sequence slot. */
static void engine_reset_slot(Engine *e, int slot) {
#ifdef MAMBA_CUDA
    if (e->gpu) {
        gpu_engine_reset_slot(e->gpu, slot);
        return;
    }
#endif
    cpu_engine_reset_slot(&e->cpu, &e->model->config, slot);
}

/* Floats from one row of engine_forward_batch's logits to the next: the CPU makes padded_vocab
 * logits a row, the GPU vocab_size. */
static int engine_logits_stride(const Engine *e) {
#ifdef MAMBA_CUDA
    if (e->gpu) return e->model->config.vocab_size;
#endif
    return e->model->config.padded_vocab;
}

/* A batch names each slot at most once, only slots the engine has, and ids of the vocabulary:
 * anything else is a bug of the caller, stopped before it mixes up two sequences' states. */
static void check_batch(Engine *e, int n, const int *slots, const int *tokens) {
    if (n < 1 || n > e->max_batch) die("internal error: a batch of %d sequences for %d slots", n, e->max_batch);
    for (int b = 0; b < n; b++) {
        if (slots[b] < 0 || slots[b] >= e->max_batch || e->in_batch[slots[b]])
            die("internal error: slot %d is out of range or twice in a batch", slots[b]);
        if (tokens[b] < 0 || tokens[b] >= e->model->config.vocab_size)
            die("internal error: token %d is outside the vocabulary", tokens[b]);
        e->in_batch[slots[b]] = 1;
    }
    for (int b = 0; b < n; b++) e->in_batch[slots[b]] = 0;
}

/* Runs tokens[b] through the sequence in slots[b] for b < n as one batch; returns n rows of
 * logits on the host, engine_logits_stride() floats apart, row b for slots[b] (valid until the
 * next call). */
static const float *engine_forward_batch(Engine *e, int n, const int *slots, const int *tokens) {
    check_batch(e, n, slots, tokens);
#ifdef MAMBA_CUDA
    if (e->gpu) return gpu_engine_forward_batch(e->gpu, n, slots, tokens);
#endif
    return cpu_engine_forward_batch(&e->cpu, e->model, n, slots, tokens);
}

/* Waits until the queued work is done (for timings). */
static void engine_sync(Engine *e) {
#ifdef MAMBA_CUDA
    if (e->gpu) gpu_engine_sync(e->gpu);
#endif
    (void)e;
}

static const char *engine_name(const Engine *e) {
#ifdef MAMBA_CUDA
    if (e->gpu) return "cuda";
#endif
    (void)e;
    return "cpu";
}

/* The --stats lines about the device. */
static void engine_report(const Engine *e, FILE *f) {
#ifdef MAMBA_CUDA
    if (e->gpu) fprintf(f, "gpu: %s\ngpu memory: %zu bytes\n", gpu_engine_device_name(e->gpu), gpu_memory_used());
#endif
    (void)e, (void)f;
}

/* ----------------------------------------------------------------------------------------
 * Generation. */

typedef struct {
    const char *model_path;
    const char *tokenizer_path;
    char *prompt;              /* text, or NULL */
    const char *prompt_ids;    /* "1,2,3", or NULL */
    const char *logits_out;
    const char *batch_file;    /* --batch-file: one prompt a line, or NULL */
    DeviceChoice device;
    int steps;
    int ignore_eos, stats, print_ids, echo, threads, json;
    int batch_size;            /* batched runs: the most sequences in flight at once */
    int prompt_batch;          /* GPU: prompt tokens a parallel pass takes (0: the most; 1: one step at a time) */
    long max_prompt_tokens;
    SamplerConfig sampler;
} RunOptions;

/* Ctrl-C during generation: the token (or batch step) being computed is finished and printed,
 * then generate() (or generate_batch()) flushes, prints its stats when asked, and exits with
 * 130. A second Ctrl-C kills at once. */
static volatile sig_atomic_t g_interrupted;

static void on_sigint_stop(int sig) {
    (void)sig;
    g_interrupted = 1;
}

/* Writes to stdout; a reader that went away (| head) ends the program quietly. */
static void emit(const char *s, size_t n) {
    if ((n && fwrite(s, 1, n, stdout) != n) || fflush(stdout)) {
        if (errno == EPIPE) exit(0);
        die("cannot write to stdout: %s", strerror(errno));
    }
}

/* Prints a JSON object on one line of stdout (for scripts) and frees it. */
static void emit_json_line(cJSON *o) {
    char *s = cJSON_PrintUnformatted(o);
    if (!s) die("out of memory printing JSON");
    emit(s, strlen(s));
    emit("\n", 1);
    free(s);
    cJSON_Delete(o);
}

static Tokenizer *open_tokenizer(const Model *m, const char *override_path) {
    char err[512];
    Tokenizer *t = NULL;
    if (override_path) {
        t = tokenizer_load_file(override_path, err, sizeof err);
        if (!t) die("%s", err);
    } else if (m->tokenizer_kind != TOKENIZER_NONE) {
        t = tokenizer_load_bytes(m->tokenizer_kind, m->tokenizer_blob, m->tokenizer_bytes, err, sizeof err);
        if (!t) die("embedded tokenizer: %s", err);
    } else {
        return NULL;
    }
    if (tokenizer_vocab_size(t) > m->config.padded_vocab)
        die("the tokenizer has %d ids but the model only %d", tokenizer_vocab_size(t), m->config.padded_vocab);
    return t;
}

/* Parses "1,2,3" (commas and/or spaces) into ids, each checked against the vocabulary. */
static int *parse_id_list(const char *text, int vocab, size_t *n_out) {
    size_t n = 0, cap = 16;
    int *ids = xmalloc(cap * sizeof *ids);
    const char *p = text;
    for (;;) {
        while (*p == ',' || isspace((unsigned char)*p)) p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || (*end && *end != ',' && !isspace((unsigned char)*end)))
            die("token ids must be integers separated by commas or spaces, got '%.40s'", p);
        if (v < 0 || v >= vocab) die("token id %ld is out of range: the vocabulary has %d ids", v, vocab);
        if (n == cap) ids = realloc(ids, (cap *= 2) * sizeof *ids);
        if (!ids) die("out of memory");
        ids[n++] = (int)v;
        p = end;
    }
    if (n == 0) die("no token ids given");
    *n_out = n;
    return ids;
}

static void write_logits_row(FILE *f, const float *logits, int vocab, const char *path) {
    if (f && fwrite(logits, sizeof(float), vocab, f) != (size_t)vocab) die("cannot write %s: %s", path, strerror(errno));
}

/* The ids of the prompt's text (BOS alone when there is none). */
static int *text_to_ids(const RunOptions *o, const Model *m, const Tokenizer *tok, size_t *n) {
    int bos = m->bos_id >= 0 ? m->bos_id : tok ? tokenizer_bos_id(tok) : -1;
    if (!o->prompt || !o->prompt[0]) {
        /* no prompt: generate from BOS alone, as a model trained with it expects */
        if (bos < 0) die("no prompt: give one as an argument, with -i, --prompt-ids, or on standard input");
        int *ids = xmalloc(sizeof *ids);
        ids[0] = bos;
        *n = 1;
        return ids;
    }
    if (!tok) die("this model has no tokenizer: use --prompt-ids, or --tokenizer FILE");
    size_t len = strlen(o->prompt), bad = utf8_valid_prefix(o->prompt, len);
    if (bad < len)
        fprintf(stderr, "mamba: note: the prompt is not valid UTF-8 (byte %zu); %s\n", bad,
                tokenizer_kind(tok) == TOKENIZER_HF_JSON ? "its ill-formed bytes are tokenized as raw bytes (byte-level BPE)"
                                                         : "each ill-formed byte is read as U+FFFD (SentencePiece)");
    char err[512];
    int *ids;
    if (tokenizer_encode(tok, o->prompt, len, tokenizer_wants_bos(tok), &ids, n, err, sizeof err))
        die("cannot tokenize the prompt: %s", err);
    if (*n == 0) die("the prompt encodes to no tokens");
    for (size_t i = 0; i < *n; i++)
        if (ids[i] >= m->config.vocab_size) die("the tokenizer produced id %d, beyond the model's vocabulary", ids[i]);
    return ids;
}

/* The prompt's ids, from --prompt-ids or from its text, within --max-prompt-tokens. */
static int *prompt_to_ids(const RunOptions *o, const Model *m, const Tokenizer *tok, size_t *n) {
    int *ids = o->prompt_ids ? parse_id_list(o->prompt_ids, m->config.vocab_size, n) : text_to_ids(o, m, tok, n);
    if (*n > (size_t)o->max_prompt_tokens) {
        free(ids);
        die("the prompt is %zu tokens, over the limit of %ld (--max-prompt-tokens)", *n, o->max_prompt_tokens);
    }
    return ids;
}

/* The model and its tokenizer for generating; text output needs a tokenizer. */
static Tokenizer *open_model_and_tokenizer(const RunOptions *o, Model *m) {
    model_load(m, o->model_path);
    Tokenizer *tok = open_tokenizer(m, o->tokenizer_path);
    if (!tok && !o->print_ids) die("this model has no tokenizer to print text: use --print-ids, or --tokenizer FILE");
    return tok;
}

/* The id that ends a generation, or -1. */
static int eos_of(const Model *m, const Tokenizer *tok) {
    return m->eos_id >= 0 ? m->eos_id : tok ? tokenizer_eos_id(tok) : -1;
}

/* The ids the sampler may pick: those beyond the tokenizer's vocabulary (padding rows) have no
 * text, so they are never sampled. */
static int sampling_vocab(const Model *m, const Tokenizer *tok) {
    int vocab = m->config.vocab_size;
    return tok && tokenizer_vocab_size(tok) < vocab ? tokenizer_vocab_size(tok) : vocab;
}

/* A generated id as --print-ids writes it, a space before all but the first; returns the length. */
static int format_id(char buf[16], int id, int first) {
    return snprintf(buf, 16, "%s%d", first ? "" : " ", id);
}

/* While generating, Ctrl-C sets g_interrupted (once: a second one kills). */
static void catch_sigint(struct sigaction *old) {
    struct sigaction stop = {.sa_handler = on_sigint_stop, .sa_flags = SA_RESETHAND};
    sigaction(SIGINT, &stop, old);
}

/* The last --stats lines of a generation. */
static void print_stats_end(const Engine *e) {
    engine_report(e, stderr);
    if (g_interrupted) fprintf(stderr, "interrupted\n");
}

/* After Ctrl-C, once everything is printed: the exit status says so. */
static void exit_if_interrupted(void) {
    if (!g_interrupted) return;
    if (fflush(stdout) && errno != EPIPE) die("cannot write to stdout: %s", strerror(errno));
    exit(130);
}

/* Runs the first n tokens of the prompt of the sequence in a slot before its steps begin, and
 * returns how many it ran. The GPU runs them as parallel passes of up to `chunk` tokens (none
 * when chunk is 1: they go one step at a time); the CPU runs none: its prompt tokens go through
 * the steps, batched over the sequences. With logits_file open their logits rows go there,
 * PREFILL_LOGIT_ROWS rows at a time. */
static size_t engine_prefill(Engine *e, int slot, const int *ids, size_t n, int chunk, FILE *logits_file, const char *path) {
#ifdef MAMBA_CUDA
    if (e->gpu && chunk != 1) {
        const int vocab = e->model->config.vocab_size;
        /* in blocks, so that Ctrl-C is seen between them */
        const size_t block = logits_file ? PREFILL_LOGIT_ROWS : chunk > 0 ? (size_t)chunk : PREFILL_CHUNK;
        float *rows = logits_file ? xmalloc(block * vocab * sizeof(float)) : NULL;
        size_t done = 0;
        while (done < n && !g_interrupted) {
            const size_t len = n - done < block ? n - done : block;
            gpu_engine_prefill(e->gpu, slot, ids + done, (long)len, chunk, rows);
            for (size_t i = 0; rows && i < len; i++) write_logits_row(logits_file, rows + i * vocab, vocab, path);
            done += len;
        }
        free(rows);
        return done;
    }
#endif
    (void)e, (void)slot, (void)ids, (void)n, (void)chunk, (void)logits_file, (void)path;
    return 0;
}

/* Starts a sequence of n ≥ 1 prompt tokens in an emptied slot; returns how many of them it ran:
 * all but the last at most, which goes through a step and gives the logits to sample from. */
static int engine_start(Engine *e, int slot, const int *prompt, int n, int chunk) {
    engine_reset_slot(e, slot);
    return (int)engine_prefill(e, slot, prompt, n - 1, chunk, NULL, NULL);
}

/* One prompt, its tokens streamed to stdout as they come. */
static void generate(const RunOptions *o) {
    Model m;
    Tokenizer *tok = open_model_and_tokenizer(o, &m);
    size_t n_prompt;
    int *prompt = prompt_to_ids(o, &m, tok, &n_prompt);
    int eos = eos_of(&m, tok);

    FILE *logits_file = NULL;
    if (o->logits_out && !(logits_file = fopen(o->logits_out, "wb")))
        die("cannot open %s: %s", o->logits_out, strerror(errno));

    Engine engine;
    engine_open(&engine, &m, o->device, 1);
    Sampler sampler;
    sampler_init(&sampler, &o->sampler, sampling_vocab(&m, tok));
    int *history = xmalloc((n_prompt + o->steps) * sizeof *history);
    memcpy(history, prompt, n_prompt * sizeof *history);
    int n_history = (int)n_prompt;

    struct sigaction old_int;
    catch_sigint(&old_int);

    TokenDecoder *decoder = tok ? decoder_new(tok) : NULL;
    for (size_t i = 0; i < n_prompt; i++) {
        const char *text = decoder ? decoder_push(decoder, prompt[i]) : "";
        if (o->echo && !o->print_ids) emit(text, decoder_len(decoder));
    }

    double t_start = now_seconds();
    const float *logits = NULL;
    size_t ran = engine_prefill(&engine, 0, prompt, n_prompt - 1, o->prompt_batch, logits_file, o->logits_out);
    for (size_t i = ran; i < n_prompt && !g_interrupted; i++) {
        logits = engine_feed(&engine, prompt[i], logits_file != NULL);
        write_logits_row(logits_file, logits, m.config.vocab_size, o->logits_out);
    }
    engine_sync(&engine);
    double t_prompt = now_seconds(), t_first = t_prompt;
    int generated = 0;
    while (generated < o->steps && !g_interrupted) {
        int next = engine_sample(&engine, &sampler, logits, history, n_history, logits_file != NULL);
        if (next == eos && !o->ignore_eos) break;
        history[n_history++] = next;
        if (++generated == 1) t_first = now_seconds();
        if (o->print_ids) {
            char buf[16];
            emit(buf, format_id(buf, next, generated == 1));
        } else {
            const char *text = decoder_push(decoder, next);
            emit(text, decoder_len(decoder));
        }
        if (generated < o->steps) {
            logits = engine_feed(&engine, next, logits_file != NULL);
            write_logits_row(logits_file, logits, m.config.vocab_size, o->logits_out);
        }
    }
    double t_end = now_seconds();
    if (o->print_ids) emit("\n", 1);
    else if (decoder) {
        const char *rest = decoder_finish(decoder);
        emit(rest, decoder_len(decoder));
        emit("\n", 1);
    }
    if (logits_file && fclose(logits_file)) die("cannot write %s: %s", o->logits_out, strerror(errno));
    if (o->stats) {
        double prompt_s = t_prompt - t_start, gen_s = t_end - t_prompt;
        fprintf(stderr, "device: %s\n", engine_name(&engine));
        fprintf(stderr, "prompt: %zu tokens in %.3f s (%.1f tokens/s)\n", n_prompt, prompt_s, n_prompt / prompt_s);
        fprintf(stderr, "generated: %d tokens in %.3f s (%.1f tokens/s)\n", generated, gen_s,
                generated > 1 ? (generated - 1) / gen_s : 0.0);
        fprintf(stderr, "time to first token: %.3f s\n", t_first - t_start);
        fprintf(stderr, "seed: %llu\n", (unsigned long long)o->sampler.rng);
        print_stats_end(&engine);
    }
    sigaction(SIGINT, &old_int, NULL);
    if (decoder) decoder_free(decoder);
    if (tok) tokenizer_free(tok);
    free(history), free(prompt);
    sampler_free(&sampler);
    engine_close(&engine);
    model_free(&m);
    exit_if_interrupted();
}

/* ----------------------------------------------------------------------------------------
 * Batched generation: several prompts decoded together, each in its own engine slot with its
 * own random state (seeded --seed + its index, so that it generates what `mamba run -s SEED+i`
 * generates for that prompt alone), stop condition and output. */

/* One prompt of a batch. ids holds its prompt, then the tokens it generated (the repetition
 * penalty reads them all). */
typedef struct {
    const char *text;          /* the prompt as given; NULL: none (BOS alone) */
    int *ids;
    size_t n_prompt, n_ids, ids_cap;
    size_t fed;                /* prompt tokens the engine has run */
    uint64_t rng;              /* its sampler's random state */
    TokenDecoder *decoder;     /* text output: the streaming decode of its ids */
    char *out;                 /* its output: the echoed prompt (text blocks only), then the completion */
    size_t out_len, out_cap;
    const char *finish;        /* NULL until it ends: "eos", "length" or "interrupted" */
} Sequence;

typedef struct {
    const RunOptions *o;
    const Tokenizer *tok;
    Engine engine;
    Sampler sampler;           /* serves every sequence in turn, with that sequence's rng */
    int eos;
    Sequence *seqs;
    int n_seqs, n_slots;
    int *running;              /* [n_slots] the sequence in each engine slot, or -1 */
    int *step_slots, *step_tokens;   /* [n_slots] one step's batch */
    int next_start;            /* the first sequence not started yet */
    int next_print;            /* text output: the first sequence whose block is not printed yet */
    long prompt_tokens, generated;
} Batch;

/* Room for need elements of elem_size bytes in p (capacity *cap), growing by doubling. */
static void *reserve(void *p, size_t *cap, size_t need, size_t elem_size) {
    if (need <= *cap) return p;
    size_t grown = *cap ? *cap : 16;
    while (grown < need) grown *= 2;
    if (!(p = realloc(p, grown * elem_size))) die("out of memory");
    *cap = grown;
    return p;
}

static void sequence_print(Sequence *s, const char *text, size_t n) {
    if (n == 0) return;
    s->out = reserve(s->out, &s->out_cap, s->out_len + n, 1);
    memcpy(s->out + s->out_len, text, n);
    s->out_len += n;
}

static void sequence_free(Sequence *s) {
    free(s->ids), free(s->out);
    s->ids = NULL, s->out = NULL;
}

/* s[0..n) as a quoted JSON string: valid UTF-8 whatever the bytes (each ill-formed part becomes
 * one U+FFFD, as in decoded text) and NUL bytes kept, which a cJSON string cannot hold. */
static char *json_quote(const char *s, size_t n) {
    char *out = xmalloc(6 * n + 3), *p = out;
    *p++ = '"';
    for (size_t i = 0; i < n;) {
        size_t valid = i + utf8_valid_prefix(s + i, n - i);
        for (; i < valid; i++) {
            unsigned char c = s[i];
            const char *short_escape = c == '\n' ? "\\n" : c == '\t' ? "\\t" : c == '\r' ? "\\r" : NULL;
            if (c == '"' || c == '\\') *p++ = '\\', *p++ = c;
            else if (short_escape) memcpy(p, short_escape, 2), p += 2;
            else if (c < 0x20) p += sprintf(p, "\\u%04x", c);
            else *p++ = c;
        }
        if (i < n) memcpy(p, "\xEF\xBF\xBD", 3), p += 3, i += utf8_ill_formed_length(s + i, n - i);
    }
    *p++ = '"';
    *p = '\0';
    return out;
}

static void add_json_text(cJSON *o, const char *key, const char *s, size_t n) {
    char *quoted = json_quote(s, n);
    if (!cJSON_AddRawToObject(o, key, quoted)) die("out of memory making JSON");
    free(quoted);
}

/* --json: a sequence's line, as soon as it ends. */
static void print_json_result(Batch *r, int i) {
    Sequence *s = &r->seqs[i];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "index", i);
    add_json_text(o, "prompt", s->text ? s->text : "", s->text ? strlen(s->text) : 0);
    add_json_text(o, "completion", s->out ? s->out : "", s->out_len);
    cJSON_AddNumberToObject(o, "tokens", (double)(s->n_ids - s->n_prompt));
    cJSON_AddStringToObject(o, "finish", s->finish);
    emit_json_line(o);
    sequence_free(s);
}

/* Text output: a block per sequence ("==> i <==", then what `mamba run` prints for its prompt,
 * then a blank line), in index order: a block waits for those before it. */
static void print_text_blocks(Batch *r) {
    for (; r->next_print < r->n_seqs && r->seqs[r->next_print].finish; r->next_print++) {
        Sequence *s = &r->seqs[r->next_print];
        char header[32];
        emit(header, snprintf(header, sizeof header, "==> %d <==\n", r->next_print));
        emit(s->out, s->out_len);
        emit("\n\n", 2);
        sequence_free(s);
    }
}

/* Decodes the prompt, so that the completion decodes as it does after the prompt in a single
 * run; text blocks echo it unless --no-echo. */
static void sequence_open(Batch *r, Sequence *s) {
    if (r->o->print_ids) return;
    s->decoder = decoder_new(r->tok);
    int echo = r->o->echo && !r->o->json;
    for (size_t i = 0; i < s->n_prompt; i++) {
        const char *text = decoder_push(s->decoder, s->ids[i]);
        if (echo) sequence_print(s, text, decoder_len(s->decoder));
    }
}

/* Ends sequence i and prints what can be printed. */
static void sequence_finish(Batch *r, int i, const char *why) {
    Sequence *s = &r->seqs[i];
    s->finish = why;
    if (s->decoder) {
        const char *rest = decoder_finish(s->decoder);
        sequence_print(s, rest, decoder_len(s->decoder));
        decoder_free(s->decoder);
        s->decoder = NULL;
    }
    if (r->o->json) print_json_result(r, i);
    else print_text_blocks(r);
}

/* Frees a slot: its sequence ends. */
static void slot_finish(Batch *r, int slot, const char *why) {
    int i = r->running[slot];
    r->running[slot] = -1;
    sequence_finish(r, i, why);
}

/* Starts sequence i in a free slot; the engine may run part of its prompt at once. */
static void sequence_start(Batch *r, int i, int slot) {
    Sequence *s = &r->seqs[i];
    SamplerConfig cfg = r->o->sampler;
    cfg.rng += (uint64_t)i;
    sampler_configure(&r->sampler, &cfg);
    s->rng = r->sampler.cfg.rng;
    sequence_open(r, s);
    s->fed = engine_start(&r->engine, slot, s->ids, (int)s->n_prompt, r->o->prompt_batch);
    r->prompt_tokens += (long)s->fed;
    r->running[slot] = i;
}

/* The sequence in slot has read its prompt: it samples its next token from logits, or ends at
 * EOS or after -n tokens. */
static void sequence_sample(Batch *r, int slot, const float *logits) {
    Sequence *s = &r->seqs[r->running[slot]];
    if (s->n_ids - s->n_prompt == (size_t)r->o->steps) {     /* -n 0 */
        slot_finish(r, slot, "length");
        return;
    }
    r->sampler.cfg.rng = s->rng;
    int next = sample(&r->sampler, logits, s->ids, (int)s->n_ids);
    s->rng = r->sampler.cfg.rng;
    if (next == r->eos && !r->o->ignore_eos) {
        slot_finish(r, slot, "eos");
        return;
    }
    s->ids = reserve(s->ids, &s->ids_cap, s->n_ids + 1, sizeof *s->ids);
    s->ids[s->n_ids++] = next;
    r->generated++;
    if (r->o->print_ids) {
        char buf[16];
        sequence_print(s, buf, format_id(buf, next, s->n_ids == s->n_prompt + 1));
    } else {
        const char *text = decoder_push(s->decoder, next);
        sequence_print(s, text, decoder_len(s->decoder));
    }
    if (s->n_ids - s->n_prompt == (size_t)r->o->steps) slot_finish(r, slot, "length");
}

/* Free slots take the next waiting prompts. */
static void batch_fill_slots(Batch *r) {
    for (int slot = 0; slot < r->n_slots && r->next_start < r->n_seqs; slot++)
        if (r->running[slot] < 0) sequence_start(r, r->next_start++, slot);
}

/* One step: every running sequence feeds one token, its next prompt token or the one it sampled
 * last, all in one engine batch; those that have read their whole prompt then sample. Returns
 * 0 when no sequence was running. */
static int batch_step(Batch *r) {
    int n = 0;
    for (int slot = 0; slot < r->n_slots; slot++) {
        if (r->running[slot] < 0) continue;
        const Sequence *s = &r->seqs[r->running[slot]];
        r->step_slots[n] = slot;
        r->step_tokens[n++] = s->ids[s->fed < s->n_prompt ? s->fed : s->n_ids - 1];
    }
    if (n == 0) return 0;
    const float *logits = engine_forward_batch(&r->engine, n, r->step_slots, r->step_tokens);
    size_t stride = engine_logits_stride(&r->engine);
    for (int b = 0; b < n; b++) {
        Sequence *s = &r->seqs[r->running[r->step_slots[b]]];
        if (s->fed < s->n_prompt) s->fed++, r->prompt_tokens++;
        if (s->fed == s->n_prompt) sequence_sample(r, r->step_slots[b], logits + b * stride);
    }
    return 1;
}

/* Ctrl-C: the sequences still running or waiting end as "interrupted". */
static void batch_interrupt(Batch *r) {
    for (int slot = 0; slot < r->n_slots; slot++)
        if (r->running[slot] >= 0) slot_finish(r, slot, "interrupted");
    for (; r->next_start < r->n_seqs; r->next_start++) {
        sequence_open(r, &r->seqs[r->next_start]);
        sequence_finish(r, r->next_start, "interrupted");
    }
}

static void print_batch_stats(const Batch *r, double seconds) {
    fprintf(stderr, "device: %s\n", engine_name(&r->engine));
    fprintf(stderr, "sequences: %d, at most %d at once\n", r->n_seqs, r->n_slots);
    fprintf(stderr, "prompt: %ld tokens\n", r->prompt_tokens);
    fprintf(stderr, "generated: %ld tokens in %.3f s (%.1f tokens/s in all)\n", r->generated, seconds,
            r->generated / seconds);
    fprintf(stderr, "processed: %.1f tokens/s, prompt and generated\n", (r->prompt_tokens + r->generated) / seconds);
    fprintf(stderr, "seed: %llu (prompt i samples with seed + i)\n", (unsigned long long)r->o->sampler.rng);
    print_stats_end(&r->engine);
}

/* Decodes the n prompts texts[i] together, at most --batch-size at a time. */
static void generate_batch(const RunOptions *o, const char *const *texts, int n) {
    Model m;
    Batch r = {.o = o, .n_seqs = n, .n_slots = n < o->batch_size ? n : o->batch_size};
    Tokenizer *tok = open_model_and_tokenizer(o, &m);
    r.tok = tok;
    r.eos = eos_of(&m, tok);
    /* every prompt is tokenized first, so that a bad one stops the run before any output */
    r.seqs = xcalloc(n, sizeof *r.seqs);
    for (int i = 0; i < n; i++) {
        RunOptions one = *o;
        one.prompt = (char *)texts[i];
        r.seqs[i].text = texts[i];
        r.seqs[i].ids = prompt_to_ids(&one, &m, tok, &r.seqs[i].n_prompt);
        r.seqs[i].n_ids = r.seqs[i].ids_cap = r.seqs[i].n_prompt;
    }
    engine_open(&r.engine, &m, o->device, r.n_slots);
    sampler_init(&r.sampler, &o->sampler, sampling_vocab(&m, tok));
    r.running = xmalloc(r.n_slots * sizeof *r.running);
    for (int slot = 0; slot < r.n_slots; slot++) r.running[slot] = -1;
    r.step_slots = xmalloc(r.n_slots * sizeof *r.step_slots);
    r.step_tokens = xmalloc(r.n_slots * sizeof *r.step_tokens);

    struct sigaction old_int;
    catch_sigint(&old_int);
    double t_start = now_seconds();
    while (!g_interrupted) {
        batch_fill_slots(&r);
        if (!batch_step(&r)) break;            /* every sequence has ended */
    }
    double seconds = now_seconds() - t_start;
    if (g_interrupted) batch_interrupt(&r);
    if (o->stats) print_batch_stats(&r, seconds);
    sigaction(SIGINT, &old_int, NULL);

    free(r.running), free(r.step_slots), free(r.step_tokens), free(r.seqs);
    sampler_free(&r.sampler);
    engine_close(&r.engine);
    if (tok) tokenizer_free(tok);
    model_free(&m);
    exit_if_interrupted();
}

/* ----------------------------------------------------------------------------------------
 * Options shared by the commands. */

#define MAX_PROMPT_BYTES (256u << 20)
#define DEFAULT_MAX_PROMPT_TOKENS (1L << 20)
#define PROMPT_BYTES_PER_TOKEN 16

static const char *default_model_path(void) {
    static char path[PATH_MAX + 32];
    const char *env = getenv("MAMBA_MODEL");
    if (env && *env) return env;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return "weights/model.bin";
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) *slash = '\0';
    snprintf(path, sizeof path, "%s/weights/model.bin", exe);
    return path;
}

static DeviceChoice parse_device(const char *s) {
    if (!strcmp(s, "auto")) return DEVICE_AUTO;
    if (!strcmp(s, "cpu")) return DEVICE_CPU;
    if (!strcmp(s, "cuda")) return DEVICE_CUDA;
    die("--device must be auto, cpu or cuda, got '%s'", s);
    return DEVICE_AUTO;
}

static void set_threads(const char *value) {
    int n = (int)parse_long("--threads", value, 1, 1024);
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

/* The value of option argv[*i], advancing *i; dies when it is missing. */
static const char *option_value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) die("%s needs a value", argv[*i]);
    return argv[++*i];
}

/* Appends a word to a space-joined string (the prompt given as several arguments). */
static char *append_word(char *text, const char *word) {
    size_t old = text ? strlen(text) : 0, add = strlen(word);
    char *out = realloc(text, old + add + 2);
    if (!out) die("out of memory");
    if (old) out[old++] = ' ';
    memcpy(out + old, word, add + 1);
    return out;
}

/* The prompt from standard input, when none was given and stdin is not a terminal. One
 * trailing newline (as echo adds) is dropped. */
static char *read_stdin_prompt(size_t max_bytes, const char *note) {
    size_t len;
    char *text = read_file("-", max_bytes, &len, note);
    if (memchr(text, '\0', len)) die("the prompt on standard input contains a NUL byte");
    if (len && text[len - 1] == '\n') text[--len] = '\0';
    return text;
}

/* A prompt is refused before it is read whole or tokenized when its bytes could not fit the
 * token limit: a token is rarely longer than a few bytes. */
static void check_prompt_bytes(const char *text, const char *what, size_t max_bytes, long max_tokens) {
    if (text && strlen(text) > max_bytes)
        die("%s is larger than the limit of %zu bytes (%d per token of --max-prompt-tokens %ld)", what, max_bytes,
            PROMPT_BYTES_PER_TOKEN, max_tokens);
}

/* The one prompt: the arguments, else standard input when it is not a terminal (a closed stdin
 * is no prompt), else none (BOS alone). */
static void read_single_prompt(RunOptions *o, size_t max_bytes) {
    check_prompt_bytes(o->prompt, "the prompt", max_bytes, o->max_prompt_tokens);
    if (!o->prompt && !o->prompt_ids && !isatty(STDIN_FILENO) && fcntl(STDIN_FILENO, F_GETFD) != -1) {
        char note[96];
        snprintf(note, sizeof note, "%d per token of --max-prompt-tokens %ld", PROMPT_BYTES_PER_TOKEN, o->max_prompt_tokens);
        o->prompt = read_stdin_prompt(max_bytes, note);
    }
}

#define MAX_BATCH_PROMPTS 65536

static int is_blank(const char *s) {
    while (isspace((unsigned char)*s)) s++;
    return !*s;
}

/* The prompts of --batch-file ("-": standard input): one a line, "\n" or "\r\n", blank lines
 * skipped. They point into *text, which the caller frees. */
static const char **read_batch_file(const RunOptions *o, size_t max_bytes, int *n_out, char **text) {
    const char *name = strcmp(o->batch_file, "-") ? o->batch_file : "standard input";
    size_t len, cap = 0;
    *text = read_file(o->batch_file, MAX_PROMPT_BYTES, &len, NULL);
    if (memchr(*text, '\0', len)) die("%s contains a NUL byte", name);
    const char **prompts = NULL;
    int n = 0, line_no = 0;
    for (char *line = *text, *next; *line; line = next) {
        char *end = strchr(line, '\n');
        next = end ? end + 1 : line + strlen(line);
        line_no++;
        if (end) *end = '\0';
        if (end > line && end[-1] == '\r') end[-1] = '\0';
        if (is_blank(line)) continue;
        char what[PATH_MAX + 32];
        snprintf(what, sizeof what, "line %d of %s", line_no, name);
        check_prompt_bytes(line, what, max_bytes, o->max_prompt_tokens);
        if (n == MAX_BATCH_PROMPTS) die("%s has more than %d prompts (the limit)", name, MAX_BATCH_PROMPTS);
        prompts = reserve(prompts, &cap, n + 1, sizeof *prompts);
        prompts[n++] = line;
    }
    if (n == 0) die("%s has no prompt (blank lines are skipped)", name);
    *n_out = n;
    return prompts;
}

/* Several prompts (--batch-file, or -i more than once), or --json: decoded by generate_batch. */
static void run_batched(RunOptions *o, const char **inputs, int n_inputs, int n_words, size_t max_bytes) {
    const char *mode = o->batch_file ? "--batch-file" : n_inputs > 1 ? "several -i" : "--json";
    if (o->prompt_ids) die("--prompt-ids cannot be combined with %s", mode);
    if (o->logits_out) die("--logits-out cannot be combined with %s", mode);
    if (o->batch_file && (n_inputs || n_words)) die("--batch-file gives the prompts: no -i or prompt words with it");
    if (n_inputs > 1 && n_words) die("with several -i, give each prompt with its own -i (bare words found)");
    if (o->batch_file) {
        char *text;
        int n;
        const char **prompts = read_batch_file(o, max_bytes, &n, &text);
        generate_batch(o, prompts, n);
        free(prompts), free(text);
    } else if (n_inputs > 1) {
        for (int i = 0; i < n_inputs; i++) check_prompt_bytes(inputs[i], "a prompt", max_bytes, o->max_prompt_tokens);
        generate_batch(o, inputs, n_inputs);
    } else {
        read_single_prompt(o, max_bytes);
        generate_batch(o, (const char *const *)&o->prompt, 1);
    }
}

static void cmd_run(int argc, char **argv) {
    RunOptions o = {.steps = 256, .echo = 1, .device = DEVICE_AUTO, .max_prompt_tokens = DEFAULT_MAX_PROMPT_TOKENS,
                    .batch_size = 32,
                    .sampler = {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .repeat_penalty = 1.0f,
                                .repeat_last_n = 64}};
    const char **inputs = xmalloc(argc * sizeof *inputs);     /* each -i: a prompt of its own when several */
    int n_inputs = 0, n_words = 0, seeded = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) o.model_path = option_value(argc, argv, &i);
        else if (!strcmp(a, "-i") || !strcmp(a, "--prompt")) {
            inputs[n_inputs] = option_value(argc, argv, &i);
            o.prompt = append_word(o.prompt, inputs[n_inputs++]);
        }
        else if (!strcmp(a, "--prompt-ids")) o.prompt_ids = option_value(argc, argv, &i);
        else if (!strcmp(a, "--batch-file")) o.batch_file = option_value(argc, argv, &i);
        else if (!strcmp(a, "--batch-size")) o.batch_size = (int)parse_long(a, option_value(argc, argv, &i), 1, MAX_BATCH);
        else if (!strcmp(a, "--tokenizer")) o.tokenizer_path = option_value(argc, argv, &i);
        else if (!strcmp(a, "-n") || !strcmp(a, "--steps")) o.steps = (int)parse_long(a, option_value(argc, argv, &i), 0, 100000000);
        else if (!strcmp(a, "-t") || !strcmp(a, "--temperature")) o.sampler.temperature = (float)parse_double(a, option_value(argc, argv, &i), 0, 100);
        else if (!strcmp(a, "-k") || !strcmp(a, "--top-k")) o.sampler.top_k = (int)parse_long(a, option_value(argc, argv, &i), 0, 1 << 24);
        else if (!strcmp(a, "-p") || !strcmp(a, "--top-p")) o.sampler.top_p = (float)parse_double(a, option_value(argc, argv, &i), 1e-6, 1);
        else if (!strcmp(a, "--repeat-penalty")) o.sampler.repeat_penalty = (float)parse_double(a, option_value(argc, argv, &i), 1e-3, 100);
        else if (!strcmp(a, "--repeat-last-n")) o.sampler.repeat_last_n = (int)parse_long(a, option_value(argc, argv, &i), 0, 1 << 20);
        else if (!strcmp(a, "-s") || !strcmp(a, "--seed")) o.sampler.rng = (uint64_t)parse_long(a, option_value(argc, argv, &i), 0, LONG_MAX), seeded = 1;
        else if (!strcmp(a, "--device")) o.device = parse_device(option_value(argc, argv, &i));
        else if (!strcmp(a, "--threads")) set_threads(option_value(argc, argv, &i));
        else if (!strcmp(a, "--logits-out")) o.logits_out = option_value(argc, argv, &i);
        else if (!strcmp(a, "--max-prompt-tokens")) o.max_prompt_tokens = parse_long(a, option_value(argc, argv, &i), 1, 1 << 30);
        else if (!strcmp(a, "--prompt-batch")) o.prompt_batch = (int)parse_long(a, option_value(argc, argv, &i), 1, PREFILL_CHUNK);
        else if (!strcmp(a, "--ignore-eos")) o.ignore_eos = 1;
        else if (!strcmp(a, "--stats")) o.stats = 1;
        else if (!strcmp(a, "--print-ids")) o.print_ids = 1;
        else if (!strcmp(a, "--no-echo")) o.echo = 0;
        else if (!strcmp(a, "--json")) o.json = 1;
        else if (a[0] == '-' && a[1]) die("unknown option %s (see mamba --help)", a);
        else o.prompt = append_word(o.prompt, a), n_words++;
    }
    if (!seeded) o.sampler.rng = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    if (!o.model_path) o.model_path = default_model_path();
    size_t max_bytes = (size_t)o.max_prompt_tokens * PROMPT_BYTES_PER_TOKEN;
    if (max_bytes > MAX_PROMPT_BYTES) max_bytes = MAX_PROMPT_BYTES;
    if (o.batch_file || n_inputs > 1 || o.json) {
        run_batched(&o, inputs, n_inputs, n_words, max_bytes);
    } else {
        if (o.prompt && o.prompt_ids) die("give the prompt as text or as --prompt-ids, not both");
        read_single_prompt(&o, max_bytes);
        generate(&o);
    }
    free(o.prompt), free(inputs);
}

/* ----------------------------------------------------------------------------------------
 * mamba tokenize: text → ids, or ids → text with --decode. */

static void cmd_tokenize(int argc, char **argv) {
    const char *model_path = NULL, *tok_path = NULL;
    char *text = NULL;
    int decode = 0, bos = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_path = option_value(argc, argv, &i);
        else if (!strcmp(a, "--tokenizer")) tok_path = option_value(argc, argv, &i);
        else if (!strcmp(a, "--decode")) decode = 1;
        else if (!strcmp(a, "--bos")) bos = 1;
        else if (a[0] == '-' && a[1]) die("tokenize: unknown option %s", a);
        else text = append_word(text, a);
    }
    char err[512];
    Tokenizer *tok;
    Model m;
    if (tok_path) {
        if (!(tok = tokenizer_load_file(tok_path, err, sizeof err))) die("%s", err);
    } else {
        model_load(&m, model_path ? model_path : default_model_path());
        if (!(tok = open_tokenizer(&m, NULL))) die("this model has no embedded tokenizer; use --tokenizer FILE");
    }
    size_t len;
    if (!text) text = read_file("-", MAX_PROMPT_BYTES, &len, NULL);
    else len = strlen(text);
    if (decode) {
        size_t n;
        int *ids = parse_id_list(text, tokenizer_vocab_size(tok), &n);
        TokenDecoder *d = decoder_new(tok);
        for (size_t i = 0; i < n; i++) {
            const char *s = decoder_push(d, ids[i]);
            emit(s, decoder_len(d));
        }
        const char *rest = decoder_finish(d);
        emit(rest, decoder_len(d));
        decoder_free(d);
        free(ids);
    } else {
        int *ids;
        size_t n;
        if (tokenizer_encode(tok, text, len, bos, &ids, &n, err, sizeof err)) die("cannot tokenize: %s", err);
        for (size_t i = 0; i < n; i++) {
            char buf[16];
            emit(buf, format_id(buf, ids[i], i == 0));
        }
        emit("\n", 1);
        free(ids);
    }
    tokenizer_free(tok);
    if (!tok_path) model_free(&m);
    free(text);
}

/* ----------------------------------------------------------------------------------------
 * mamba perplexity: the text is encoded whole, cut into windows of ctx-1 ids, and each window
 * is scored from a fresh state after BOS, so every token is predicted exactly once. */

static double log_softmax_at(const float *logits, int n, int target) {
    float max = logits[argmax(logits, n)];
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += exp((double)logits[i] - max);
    return (double)logits[target] - max - log(sum);
}

static void cmd_perplexity(int argc, char **argv) {
    const char *model_path = NULL, *tok_path = NULL, *file = NULL;
    int ctx = 1024, json = 0;
    long max_tokens = 0;
    DeviceChoice device = DEVICE_AUTO;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_path = option_value(argc, argv, &i);
        else if (!strcmp(a, "--tokenizer")) tok_path = option_value(argc, argv, &i);
        else if (!strcmp(a, "--ctx")) ctx = (int)parse_long(a, option_value(argc, argv, &i), 2, 1 << 24);
        else if (!strcmp(a, "--max-tokens")) max_tokens = parse_long(a, option_value(argc, argv, &i), 1, LONG_MAX);
        else if (!strcmp(a, "--device")) device = parse_device(option_value(argc, argv, &i));
        else if (!strcmp(a, "--threads")) set_threads(option_value(argc, argv, &i));
        else if (!strcmp(a, "--json")) json = 1;
        else if (a[0] == '-' && a[1]) die("perplexity: unknown option %s", a);
        else if (!file) file = a;
        else die("perplexity: unexpected argument %s", a);
    }
    if (!file) die("usage: mamba perplexity [-m MODEL] [--ctx N] FILE");
    Model m;
    model_load(&m, model_path ? model_path : default_model_path());
    Tokenizer *tok = open_tokenizer(&m, tok_path);
    if (!tok) die("perplexity needs a tokenizer: this model has none embedded; use --tokenizer FILE");
    size_t bytes;
    char *text = read_file(file, 1u << 30, &bytes, NULL);
    int *ids;
    size_t n_ids;
    char err[512];
    if (tokenizer_encode(tok, text, bytes, 0, &ids, &n_ids, err, sizeof err)) die("cannot tokenize %s: %s", file, err);
    if (max_tokens && n_ids > (size_t)max_tokens) n_ids = (size_t)max_tokens;
    if (n_ids == 0) die("%s encodes to no tokens", file);
    for (size_t i = 0; i < n_ids; i++)
        if (ids[i] >= m.config.vocab_size) die("the tokenizer produced id %d, beyond the model's vocabulary", ids[i]);
    int bos = m.bos_id >= 0 ? m.bos_id : tokenizer_bos_id(tok);
    if (bos < 0) die("perplexity needs a BOS token to start each window, and this model has none");

    Engine engine;
    engine_open(&engine, &m, device, 1);
    double nll = 0.0, t0 = now_seconds(), last_report = t0;
    int window = ctx - 1, progress = isatty(STDERR_FILENO);
    for (size_t start = 0; start < n_ids; start += window) {
        engine_reset(&engine);
        const float *logits = engine_forward(&engine, bos);
        size_t end = start + window < n_ids ? start + window : n_ids;
        for (size_t i = start; i < end; i++) {
            nll -= log_softmax_at(logits, m.config.vocab_size, ids[i]);
            if (i + 1 < end) logits = engine_forward(&engine, ids[i]);
        }
        double t = now_seconds();
        if (progress && t - last_report > 1.0) {
            fprintf(stderr, "\rperplexity: %zu/%zu tokens, %.0f tokens/s", end, n_ids, end / (t - t0));
            last_report = t;
        }
    }
    if (progress) fputc('\n', stderr);
    /* bits per byte counts the bytes of the scored text: all of it unless --max-tokens cut it */
    size_t scored_bytes = bytes;
    if (max_tokens && n_ids == (size_t)max_tokens) {
        TokenDecoder *d = decoder_new(tok);
        scored_bytes = 0;
        for (size_t i = 0; i < n_ids; i++) {
            decoder_push(d, ids[i]);
            scored_bytes += decoder_len(d);
        }
        decoder_finish(d);
        scored_bytes += decoder_len(d);
        decoder_free(d);
    }
    double mean = nll / n_ids, bpb = nll / log(2.0) / scored_bytes;
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "tokens", (double)n_ids);
        cJSON_AddNumberToObject(o, "bytes", (double)scored_bytes);
        cJSON_AddNumberToObject(o, "ctx", ctx);
        cJSON_AddNumberToObject(o, "mean_nll", mean);
        cJSON_AddNumberToObject(o, "perplexity", exp(mean));
        cJSON_AddNumberToObject(o, "bits_per_byte", bpb);
        cJSON_AddNumberToObject(o, "seconds", now_seconds() - t0);
        emit_json_line(o);
    } else {
        printf("tokens: %zu\nbytes: %zu\nctx: %d\nmean NLL: %.6f nats/token\nperplexity: %.4f\nbits per byte: %.4f\n",
               n_ids, scored_bytes, ctx, mean, exp(mean), bpb);
    }
    engine_close(&engine);
    tokenizer_free(tok);
    model_free(&m);
    free(ids), free(text);
}

/* ----------------------------------------------------------------------------------------
 * mamba info */

static void cmd_info(int argc, char **argv) {
    if (argc != 1) die("usage: mamba info MODEL");
    Model m;
    model_load(&m, argv[0]);
    const Config *c = &m.config;
    static const char *const tok_names[] = {"none", "sentencepiece", "tokenizer.json"};
    printf("n_layer: %d\nd_model: %d\nd_inner: %d\nd_state: %d\nd_conv: %d\ndt_rank: %d\n", c->n_layer, c->d_model,
           c->d_inner, c->d_state, c->d_conv, c->dt_rank);
    printf("vocab_size: %d\npadded_vocab: %d\nnorm_eps: %g\ndtype: %s\ntied_head: %s\n", c->vocab_size,
           c->padded_vocab, c->norm_eps, dtype_name(c->dtype), c->tied_head ? "yes" : "no");
    printf("parameters: %llu\nweight_bytes: %llu\ntokenizer: %s (%zu bytes)\nbos_id: %d\neos_id: %d\npad_id: %d\n",
           (unsigned long long)model_param_count(c), (unsigned long long)m.weight_bytes, tok_names[m.tokenizer_kind],
           m.tokenizer_bytes, m.bos_id, m.eos_id, m.pad_id);
    model_free(&m);
}

/* ----------------------------------------------------------------------------------------
 * mamba init: a random model of a published Mamba-1 shape, for benchmarks without downloads.
 * Weights are scaled like a trained model's so that activations stay finite and logits spread. */

typedef struct {
    const char *name;
    int d_model, n_layer, vocab;
} Shape;

static const Shape SHAPES[] = {
    {"tiny", 64, 2, 512},       {"130m", 768, 24, 50280},   {"370m", 1024, 48, 50280},
    {"790m", 1536, 48, 50280},  {"1.4b", 2048, 48, 50280},  {"2.8b", 2560, 64, 50280},
};

typedef struct {
    const Config *config;
    uint64_t seed;
} InitSource;

/* A counter-based generator (splitmix64), so every element is reproducible on its own and the
 * fill parallelizes without shared state. */
static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static float uniform_at(uint64_t seed, uint64_t i) {     /* uniform in (-1, 1) */
    return ((splitmix64(seed ^ splitmix64(i)) >> 40) + 0.5f) / 8388608.0f - 1.0f;
}

static void init_tensor(void *ctx, int index, const TensorSpec *s, float *out) {
    const InitSource *src = ctx;
    const Config *c = src->config;
    uint64_t seed = splitmix64(src->seed + (uint64_t)index * 0x632BE59BD9B4E019ull);
    size_t count = (size_t)s->rows * s->cols;
    const char *kind = strrchr(s->name, '.') ? strrchr(s->name, '.') + 1 : s->name;
    /* uniform(-a, a) has std a/√3: matrices get std 1/√fan_in (out_proj also 1/√n_layer) */
    float scale = sqrtf(3.0f / s->cols);
    if (!strcmp(kind, "out_proj")) scale /= sqrtf((float)c->n_layer);
    if (!strcmp(kind, "embedding") || !strcmp(kind, "lm_head")) scale = sqrtf(3.0f) * 2.0f / sqrtf((float)c->d_model);
    enum { MATRIX, A_LOG, NEAR_ONE, DT_BIAS, CONV_W, CONV_B } what = MATRIX;
    if (!strcmp(kind, "A_log")) what = A_LOG;
    else if (!strcmp(kind, "D") || !strcmp(kind, "norm") || !strcmp(kind, "norm_f")) what = NEAR_ONE;
    else if (!strcmp(kind, "dt_bias")) what = DT_BIAS;
    else if (!strcmp(kind, "conv_w")) what = CONV_W;
    else if (!strcmp(kind, "conv_b")) what = CONV_B;
    const float log_lo = logf(1e-3f), log_hi = logf(1e-1f), conv_scale = 1.0f / sqrtf((float)c->d_conv);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) {
        float r = uniform_at(seed, i);
        switch (what) {
        case A_LOG: out[i] = logf((float)(i % s->cols + 1)); break;         /* S4D-real init: A = -(1..N) */
        case NEAR_ONE: out[i] = 1.0f + 0.1f * r; break;
        case DT_BIAS: {                                                      /* softplus⁻¹ of a log-uniform Δ */
            float dt = expf(log_lo + (r + 1.0f) * 0.5f * (log_hi - log_lo));
            out[i] = dt + logf(-expm1f(-dt));
            break;
        }
        case CONV_W: out[i] = conv_scale * r; break;
        case CONV_B: out[i] = 0.1f * r; break;
        default: out[i] = scale * r;
        }
    }
}

static void cmd_init(int argc, char **argv) {
    const char *shape = NULL, *out = NULL;
    DType dtype = DTYPE_BF16;
    uint64_t seed = 1;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--shape")) shape = option_value(argc, argv, &i);
        else if (!strcmp(a, "--dtype")) {
            if (parse_dtype(option_value(argc, argv, &i), &dtype)) die("--dtype must be f32, f16 or bf16, got '%s'", argv[i]);
        } else if (!strcmp(a, "--seed")) seed = (uint64_t)parse_long(a, option_value(argc, argv, &i), 0, LONG_MAX);
        else if (a[0] == '-' && a[1]) die("init: unknown option %s", a);
        else if (!out) out = a;
        else die("init: unexpected argument %s", a);
    }
    if (!shape || !out) die("usage: mamba init --shape tiny|130m|370m|790m|1.4b|2.8b [--dtype bf16] [--seed N] OUT.bin");
    const Shape *sh = NULL;
    for (size_t i = 0; i < sizeof SHAPES / sizeof *SHAPES; i++)
        if (!strcmp(SHAPES[i].name, shape)) sh = &SHAPES[i];
    if (!sh) die("--shape must be one of tiny, 130m, 370m, 790m, 1.4b, 2.8b; got '%s'", shape);
    Config c = {.n_layer = sh->n_layer, .d_model = sh->d_model, .d_inner = 2 * sh->d_model, .d_state = 16,
                .d_conv = 4, .dt_rank = (sh->d_model + 15) / 16, .vocab_size = sh->vocab, .padded_vocab = sh->vocab,
                .norm_eps = 1e-5f, .dtype = dtype, .tied_head = 1};
    InitSource src = {&c, seed};
    TokenizerInfo tok = {.bos_id = -1, .eos_id = -1, .pad_id = -1};
    write_checkpoint(out, &c, init_tensor, &src, &tok);
    fprintf(stderr, "wrote %s: shape %s, %s, %llu parameters, seed %llu\n", out, sh->name, dtype_name(dtype),
            (unsigned long long)model_param_count(&c), (unsigned long long)seed);
}

/* ----------------------------------------------------------------------------------------
 * mamba bench: prompt and decode throughput (greedy) of one sequence or of a batch decoding
 * together, time to first token, memory, and the bytes a decode step must read against a read
 * bandwidth measured in the same run. */

/* Bytes one decode step of batch sequences reads: every weight once (the LM head whole, one
 * embedding row a sequence) and their recurrent states. */
static uint64_t step_bytes(const Model *m, int batch) {
    const Config *c = &m->config;
    uint64_t row = (uint64_t)c->d_model * dtype_size(c->dtype), emb = (uint64_t)c->padded_vocab * row;
    uint64_t state = (uint64_t)c->n_layer * c->d_inner * (c->d_conv + c->d_state) * sizeof(float);
    return m->weight_bytes - (c->tied_head ? 0 : emb - batch * row) + batch * state;
}
/* The best of a few multi-threaded passes over a buffer far larger than the caches, in bytes/s. */
static double cpu_read_bandwidth(void) {
    size_t n = (size_t)256 << 20 >> 3;
    uint64_t *buf = xmalloc(n * sizeof *buf);
    memset(buf, 0x5a, n * sizeof *buf);
    double best = 0;
    uint64_t sink = 0;
    for (int rep = 0; rep < 4; rep++) {
        double t = now_seconds();
        uint64_t acc = 0;
#pragma omp parallel for reduction(^ : acc) schedule(static)
        for (size_t i = 0; i < n; i++) acc ^= buf[i];
        t = now_seconds() - t;
        sink ^= acc;
        if (n * sizeof *buf / t > best) best = n * sizeof *buf / t;
    }
    free(buf);
    return sink == 1 ? best + 1 : best;   /* keeps the reads */
}

/* Token i of the synthetic prompt; sequence b of a batch reads it from token b on. */
static int bench_token(long i, int vocab) { return (int)((1 + 7919ull * i) % (uint64_t)vocab); }

typedef struct {
    double ttft, decode_s, bandwidth;   /* seconds to the first generated tokens, of the decode steps; bytes/s */
    uint64_t memory, engine_memory;     /* GPU bytes in use, the engine's */
    const char *device_name;
} BenchResult;

/* The greedy choice of each of the batch rows of logits, into next. */
static void argmax_rows(int *next, const float *logits, int batch, size_t stride, int vocab) {
    for (int b = 0; b < batch; b++) next[b] = argmax(logits + b * stride, vocab);
}

/* Seconds to take in the prompts of a batch in slots 0 .. batch-1 as a batched run does: each
 * sequence started in its slot (the GPU runs all but its last token in parallel), then steps of
 * every sequence until all the prompts are in. tokens gets each sequence's greedy next token. */
static double bench_prompts(Engine *e, int vocab, int n_prompt, int batch, const int *slots, int *tokens) {
    int *prompt = xmalloc((size_t)(n_prompt + batch) * sizeof *prompt);
    for (long i = 0; i < n_prompt + batch; i++) prompt[i] = bench_token(i, vocab);
    const double t0 = now_seconds();
    int ran = 0;
    for (int b = 0; b < batch; b++) ran = engine_start(e, slots[b], prompt + b, n_prompt, 0);   /* the same for every b */
    const float *logits = NULL;
    for (int i = ran; i < n_prompt; i++) {
        for (int b = 0; b < batch; b++) tokens[b] = prompt[b + i];
        logits = engine_forward_batch(e, batch, slots, tokens);
    }
    argmax_rows(tokens, logits, batch, engine_logits_stride(e), vocab);
    free(prompt);
    return now_seconds() - t0;
}

/* On the CPU: batch sequences in slots 0 .. batch-1 read their prompts, then decode greedily,
 * together. */
static void bench_cpu(Engine *e, int vocab, int n_prompt, int n_decode, int batch, BenchResult *r) {
    int *slots = xmalloc(batch * sizeof *slots), *tokens = xmalloc(batch * sizeof *tokens);
    size_t stride = engine_logits_stride(e);
    for (int b = 0; b < batch; b++) slots[b] = b;
    r->ttft = bench_prompts(e, vocab, n_prompt, batch, slots, tokens);
    double t0 = now_seconds();
    for (int i = 0; i < n_decode; i++)
        argmax_rows(tokens, engine_forward_batch(e, batch, slots, tokens), batch, stride, vocab);
    r->decode_s = now_seconds() - t0;
    r->bandwidth = cpu_read_bandwidth();
    r->device_name = "cpu";
    free(slots), free(tokens);
}

static void print_bench(const char *model_path, const Model *m, const Engine *e, int n_prompt, int n_decode, int batch,
                        const BenchResult *r, int json) {
    const Config *c = &m->config;
    const uint64_t bytes = step_bytes(m, batch);
    const double steps_per_s = n_decode / r->decode_s, decode_tps = batch * steps_per_s, achieved = bytes * steps_per_s;
    const double prompt_tps = (double)batch * n_prompt / r->ttft;
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "model", model_path);
        cJSON_AddNumberToObject(o, "n_layer", c->n_layer);
        cJSON_AddNumberToObject(o, "d_model", c->d_model);
        cJSON_AddStringToObject(o, "dtype", dtype_name(c->dtype));
        cJSON_AddStringToObject(o, "engine", engine_name(e));
        cJSON_AddStringToObject(o, "device", r->device_name);
        cJSON_AddNumberToObject(o, "batch", batch);
        cJSON_AddNumberToObject(o, "prompt_tokens", n_prompt);
        cJSON_AddNumberToObject(o, "prompt_tokens_per_s", prompt_tps);
        cJSON_AddNumberToObject(o, "time_to_first_token_ms", r->ttft * 1e3);
        cJSON_AddNumberToObject(o, "decode_tokens", n_decode);
        cJSON_AddNumberToObject(o, "decode_tokens_per_s", decode_tps);
        cJSON_AddNumberToObject(o, "decode_tokens_per_s_per_sequence", steps_per_s);
        cJSON_AddNumberToObject(o, "ms_per_token", 1e3 / steps_per_s);
        cJSON_AddNumberToObject(o, "gpu_memory_bytes", (double)r->memory);
        cJSON_AddNumberToObject(o, "engine_bytes", (double)r->engine_memory);
        cJSON_AddNumberToObject(o, "bytes_per_token", (double)bytes / batch);
        cJSON_AddNumberToObject(o, "achieved_GBps", achieved / 1e9);
        cJSON_AddNumberToObject(o, "read_bandwidth_GBps", r->bandwidth / 1e9);
        cJSON_AddNumberToObject(o, "roofline_tokens_per_s", r->bandwidth / bytes * batch);
        cJSON_AddNumberToObject(o, "fraction_of_roofline", achieved / r->bandwidth);
        emit_json_line(o);
        return;
    }
    printf("model: %s (%d layers, d_model %d, %s)\ndevice: %s (%s)\n", model_path, c->n_layer, c->d_model,
           dtype_name(c->dtype), engine_name(e), r->device_name);
    if (batch > 1) printf("batch: %d sequences decoding together\n", batch);
    printf("prompt: %d tokens, %.1f tokens/s\ntime to first token: %.3f ms\n", n_prompt, prompt_tps, r->ttft * 1e3);
    if (batch > 1)
        printf("decode: %d tokens a sequence, %.1f tokens/s in all, %.1f per sequence (%.4f ms a step)\n", n_decode,
               decode_tps, steps_per_s, 1e3 / steps_per_s);
    else
        printf("decode: %d tokens, %.1f tokens/s (%.4f ms/token)\n", n_decode, decode_tps, 1e3 / decode_tps);
    if (r->memory)
        printf("gpu memory: %llu bytes in use, %llu of them the engine's\n", (unsigned long long)r->memory,
               (unsigned long long)r->engine_memory);
    printf("bytes per token: %llu\nachieved: %.1f GB/s, %.1f%% of the measured read bandwidth %.1f GB/s "
           "(roofline %.1f tokens/s)\n",
           (unsigned long long)(bytes / batch), achieved / 1e9, 100 * achieved / r->bandwidth, r->bandwidth / 1e9,
           r->bandwidth / bytes * batch);
}

#ifdef MAMBA_CUDA
#define SWEEP_MAX_BATCH 64

/* bench --sweep: the GPU's parallel paths. The prompt pass at several lengths, its FLOP/s (2 ×
 * parameters a token, a floor on the work) against a large matrix product's measured now on
 * random operands (the one on zeros, faster, is shown beside it); then batched decoding at
 * several batch sizes against the batch-1 step. One table, or a JSON line a measurement. */
static void bench_sweep_gpu(Engine *e, const Model *m, const char *model_path, int json) {
    static const int lengths[] = {512, 2048, 8192, 65536}, batches[] = {1, 4, 16, 64};
    GpuEngine *g = e->gpu;
    const double params = (double)model_param_count(&m->config), matmul = gpu_engine_matmul_flops(g, 0);
    const double matmul_zeros = gpu_engine_matmul_flops(g, 1);
    int prompt[16];
    for (int i = 0; i < 16; i++) prompt[i] = bench_token(i, m->config.vocab_size);
    GpuBench one;
    gpu_engine_bench(g, prompt, 16, 256, &one);
    const double batch1 = 256 / one.decode_seconds;
    if (!json)
        printf("model: %s (%d layers, d_model %d, %s) on %s\nmatrix products: %.1f TFLOP/s (%.1f on zeros); batch-1 "
               "decode: %.1f tokens/s\n"
               "\n%9s %9s %11s %8s %10s %9s\n",
               model_path, m->config.n_layer, m->config.d_model, dtype_name(m->config.dtype), gpu_engine_device_name(g),
               matmul / 1e12, matmul_zeros / 1e12, batch1, "prompt", "seconds", "tokens/s", "TFLOP/s", "of matmul", "GPU MiB");
    for (size_t k = 0; k < sizeof lengths / sizeof *lengths; k++) {
        const double s = gpu_engine_bench_prefill(g, lengths[k]), flops = 2 * params * lengths[k] / s;
        const double mib = gpu_memory_used() / 1048576.0;
        if (json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "kind", "prefill");
            cJSON_AddNumberToObject(o, "prompt_tokens", lengths[k]);
            cJSON_AddNumberToObject(o, "seconds", s);
            cJSON_AddNumberToObject(o, "tokens_per_s", lengths[k] / s);
            cJSON_AddNumberToObject(o, "tflops", flops / 1e12);
            cJSON_AddNumberToObject(o, "matmul_tflops", matmul / 1e12);
            cJSON_AddNumberToObject(o, "matmul_zeros_tflops", matmul_zeros / 1e12);
            cJSON_AddNumberToObject(o, "fraction_of_matmul", flops / matmul);
            cJSON_AddNumberToObject(o, "gpu_memory_bytes", mib * 1048576.0);
            emit_json_line(o);
        } else {
            printf("%9d %9.3f %11.0f %8.1f %9.1f%% %9.0f\n", lengths[k], s, lengths[k] / s, flops / 1e12, 100 * flops / matmul, mib);
        }
    }
    if (!json) printf("\n%9s %11s %10s %9s\n", "batch", "tokens/s", "ms/step", "× batch 1");
    for (size_t k = 0; k < sizeof batches / sizeof *batches; k++) {
        const int steps = 64;
        const double s = gpu_engine_bench_batch(g, batches[k], steps), tps = batches[k] * steps / s;
        if (json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "kind", "batch");
            cJSON_AddNumberToObject(o, "batch", batches[k]);
            cJSON_AddNumberToObject(o, "tokens_per_s", tps);
            cJSON_AddNumberToObject(o, "ms_per_step", 1e3 * s / steps);
            cJSON_AddNumberToObject(o, "batch1_tokens_per_s", batch1);
            cJSON_AddNumberToObject(o, "speedup_over_batch1", tps / batch1);
            emit_json_line(o);
        } else {
            printf("%9d %11.0f %10.3f %9.1f\n", batches[k], tps, 1e3 * s / steps, tps / batch1);
        }
    }
}
#else
#define SWEEP_MAX_BATCH 1
#endif

static void cmd_bench(int argc, char **argv) {
    const char *model_path = NULL;
    int n_decode = 256, n_prompt = 16, batch = 1, json = 0, sweep = 0, sized = 0;
    DeviceChoice device = DEVICE_AUTO;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_path = option_value(argc, argv, &i);
        else if (!strcmp(a, "-n") || !strcmp(a, "--steps")) n_decode = (int)parse_long(a, option_value(argc, argv, &i), 1, 1000000), sized = 1;
        else if (!strcmp(a, "--prompt-len")) n_prompt = (int)parse_long(a, option_value(argc, argv, &i), 1, 1000000), sized = 1;
        else if (!strcmp(a, "--batch")) batch = (int)parse_long(a, option_value(argc, argv, &i), 1, MAX_BATCH), sized = 1;
        else if (!strcmp(a, "--device")) device = parse_device(option_value(argc, argv, &i));
        else if (!strcmp(a, "--threads")) set_threads(option_value(argc, argv, &i));
        else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--sweep")) sweep = 1;
        else die("bench: unknown argument %s", a);
    }
    if (sweep && sized) die("bench --sweep sets its own lengths and batch sizes: drop -n, --prompt-len and --batch");
    if (!model_path) model_path = default_model_path();
    Model m;
    model_load(&m, model_path);
    Engine engine;
    engine_open(&engine, &m, device, sweep ? SWEEP_MAX_BATCH : batch);
    BenchResult r = {0};
#ifdef MAMBA_CUDA
    if (engine.gpu && sweep) {
        bench_sweep_gpu(&engine, &m, model_path, json);
    } else if (engine.gpu) {
        int *prompt = xmalloc(n_prompt * sizeof *prompt);
        for (int i = 0; i < n_prompt; i++) prompt[i] = bench_token(i, m.config.vocab_size);
        GpuBench b;   /* batch 1; with a batch, only its bandwidth and memory are kept */
        gpu_engine_bench(engine.gpu, prompt, n_prompt, batch > 1 ? 1 : n_decode, &b);
        r.ttft = b.first_token_seconds, r.decode_s = b.decode_seconds, r.bandwidth = b.read_bandwidth;
        r.memory = b.used_bytes, r.engine_memory = b.engine_bytes;
        r.device_name = gpu_engine_device_name(engine.gpu);
        if (batch > 1) {
            int *slots = xmalloc(batch * sizeof *slots), *next = xmalloc(batch * sizeof *next);
            for (int i = 0; i < batch; i++) slots[i] = i;
            r.ttft = bench_prompts(&engine, m.config.vocab_size, n_prompt, batch, slots, next);
            r.decode_s = gpu_engine_bench_batch(engine.gpu, batch, n_decode);
            free(slots), free(next);
        }
        free(prompt);
    } else
#endif
    {
        if (sweep) die("bench --sweep measures the GPU's parallel paths: it needs --device cuda");
        bench_cpu(&engine, m.config.vocab_size, n_prompt, n_decode, batch, &r);
    }
    if (!sweep) print_bench(model_path, &m, &engine, n_prompt, n_decode, batch, &r, json);
    engine_close(&engine);
    model_free(&m);
}

/* ----------------------------------------------------------------------------------------
 * main */

static void usage(void) {
    fputs("usage:\n"
          "  mamba [run] [-m MODEL] [options] [PROMPT]   generate (prompt from stdin when not given)\n"
          "      -n N             tokens to generate (256)        -t T   temperature, 0 = greedy (0.8)\n"
          "      -k K             top-k, 0 = off (40)             -p P   top-p (0.95)\n"
          "      --repeat-penalty R (1.0 = off)   --repeat-last-n N (64)   -s, --seed N\n"
          "      -i TEXT          prompt   --prompt-ids 1,2,3      --tokenizer FILE\n"
          "      --ignore-eos  --print-ids  --no-echo  --stats  --logits-out FILE\n"
          "      --max-prompt-tokens N (1048576; text beyond 16 bytes a token is refused unread)\n"
          "      --prompt-batch N GPU: prompt tokens a parallel pass takes (" STRINGIFY(PREFILL_CHUNK) "; 1 = one step at a time)\n"
          "      --device auto|cpu|cuda   --threads N\n"
          "    several prompts decoded together (prompt i samples with seed + i):\n"
          "      --batch-file FILE  one prompt a line (- = stdin), or -i TEXT given more than once\n"
          "      --batch-size B   most sequences in flight at once (32, at most " STRINGIFY(MAX_BATCH) ")\n"
          "      --json           a JSON line per prompt as it ends: index, prompt, completion,\n"
          "                       tokens, finish (eos|length|interrupted); also with one prompt\n"
          "  mamba convert HF_DIR OUT.bin [--dtype f32|f16|bf16]\n"
          "  mamba info MODEL\n"
          "  mamba tokenize [-m MODEL | --tokenizer FILE] [--bos] [--decode] [TEXT]\n"
          "  mamba perplexity [-m MODEL] [--ctx N] [--max-tokens N] [--json] FILE\n"
          "  mamba init --shape tiny|130m|370m|790m|1.4b|2.8b [--dtype bf16] [--seed N] OUT.bin\n"
          "  mamba bench [-m MODEL] [--device auto|cpu|cuda] [-n N] [--prompt-len L] [--batch B] [--sweep] [--json]\n",
          stdout);
}

int main(int argc, char **argv) {
    atexit(remove_partial_output);
    signal(SIGPIPE, SIG_IGN);          /* a closed stdout shows up as EPIPE, handled in emit() */
    const char *cmd = argc > 1 ? argv[1] : "run";
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) usage();
    else if (!strcmp(cmd, "convert")) cmd_convert(argc - 2, argv + 2);
    else if (!strcmp(cmd, "info")) cmd_info(argc - 2, argv + 2);
    else if (!strcmp(cmd, "tokenize")) cmd_tokenize(argc - 2, argv + 2);
    else if (!strcmp(cmd, "perplexity")) cmd_perplexity(argc - 2, argv + 2);
    else if (!strcmp(cmd, "init")) cmd_init(argc - 2, argv + 2);
    else if (!strcmp(cmd, "bench")) cmd_bench(argc - 2, argv + 2);
    else if (!strcmp(cmd, "run")) cmd_run(argc - 2, argv + 2);
    else cmd_run(argc - 1, argv + 1);
    if (fflush(stdout) && errno != EPIPE) die("cannot write to stdout: %s", strerror(errno));
    return 0;
}
