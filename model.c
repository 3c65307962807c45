/* model.c: a checkpoint's tensors, per architecture, and loading one: mmap the file, check
 * every header field and table entry against the config, point the weights into the map. */
#include "mamba.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- Mamba-1 ---- */

const char *const MAMBA1_LAYER_TENSOR_NAMES[MAMBA1_LAYER_TENSORS] = {
    "norm", "in_proj", "conv_w", "conv_b", "x_proj", "dt_proj", "dt_bias", "A_log", "D", "out_proj",
};

/* Rows, cols and ndim of each layer tensor, and whether it is a large matrix (config.dtype). */
static void mamba1_layer_shapes(const Config *c, uint32_t shapes[][3], int *big) {
    const uint32_t di = c->d_inner, dm = c->d_model, ns = c->d_state, rank = c->dt_rank;
    const uint32_t rows_cols_ndim[MAMBA1_LAYER_TENSORS][3] = {
        {dm, 1, 1}, {2 * di, dm, 2}, {di, c->d_conv, 2}, {di, 1, 1}, {rank + 2 * ns, di, 2}, {di, rank, 2},
        {di, 1, 1}, {di, ns, 2}, {di, 1, 1}, {dm, di, 2},
    };
    const int large[MAMBA1_LAYER_TENSORS] = {0, 1, 0, 0, 1, 1, 0, 0, 0, 1};
    memcpy(shapes, rows_cols_ndim, sizeof rows_cols_ndim);
    memcpy(big, large, sizeof large);
}

/* ptr[] holds a layer's tensors in the order of MAMBA1_LAYER_TENSOR_NAMES. */
static void mamba1_bind_layer(LayerWeights *L, const void *const *ptr) {
    L->norm = ptr[0], L->in_proj = ptr[1], L->conv_w = ptr[2], L->conv_b = ptr[3], L->x_proj = ptr[4];
    L->dt_proj = ptr[5], L->dt_bias = ptr[6], L->A_log = ptr[7], L->D = ptr[8], L->out_proj = ptr[9];
}

/* Mamba-1's hyperparameters: no Mamba-2 or Falcon-Mamba fields. */
static const char *mamba1_problem(const Config *c) {
    if (c->dt_rank < 1 || c->dt_rank > c->d_inner) return "dt_rank must be in [1, d_inner]";
    if (c->n_heads || c->head_dim || c->n_groups || c->dt_limit_lo != 0 || c->dt_limit_hi != 0)
        return "Mamba-1 has no heads, groups or Δ limits";
    if (c->mixer_eps != 0) return "Mamba-1 has no mixer_eps";
    return NULL;
}

static int mamba1_conv_dim(const Config *c) { return c->d_inner; }

static int mamba1_in_proj_rows(const Config *c) { return 2 * c->d_inner; }

/* ---- Falcon-Mamba: Mamba-1's tensors, one more hyperparameter ---- */

static const char *falcon_problem(const Config *c) {
    Config mamba1 = *c;
    mamba1.mixer_eps = 0;
    const char *problem = mamba1_problem(&mamba1);
    if (problem) return problem;
    if (!(c->mixer_eps > 0 && c->mixer_eps < 1)) return "mixer_eps must be in (0, 1)";
    return NULL;
}

/* ---- Mamba-2 ---- */

const char *const MAMBA2_LAYER_TENSOR_NAMES[MAMBA2_LAYER_TENSORS] = {
    "norm", "in_proj", "conv_w", "conv_b", "dt_bias", "A_log", "D", "gate_norm", "out_proj",
};

static int mamba2_conv_dim(const Config *c) { return c->d_inner + 2 * c->n_groups * c->d_state; }

static int mamba2_in_proj_rows(const Config *c) { return c->d_inner + mamba2_conv_dim(c) + c->n_heads; }

static void mamba2_layer_shapes(const Config *c, uint32_t shapes[][3], int *big) {
    const uint32_t di = c->d_inner, dm = c->d_model, nh = c->n_heads, conv = mamba2_conv_dim(c);
    const uint32_t rows_cols_ndim[MAMBA2_LAYER_TENSORS][3] = {
        {dm, 1, 1}, {mamba2_in_proj_rows(c), dm, 2}, {conv, c->d_conv, 2}, {conv, 1, 1},
        {nh, 1, 1}, {nh, 1, 1}, {nh, 1, 1}, {di, 1, 1}, {dm, di, 2},
    };
    const int large[MAMBA2_LAYER_TENSORS] = {0, 1, 0, 0, 0, 0, 0, 0, 1};
    memcpy(shapes, rows_cols_ndim, sizeof rows_cols_ndim);
    memcpy(big, large, sizeof large);
}

/* ptr[] holds a layer's tensors in the order of MAMBA2_LAYER_TENSOR_NAMES. */
static void mamba2_bind_layer(LayerWeights *L, const void *const *ptr) {
    L->norm = ptr[0], L->in_proj = ptr[1], L->conv_w = ptr[2], L->conv_b = ptr[3], L->dt_bias = ptr[4];
    L->A_log = ptr[5], L->D = ptr[6], L->gate_norm = ptr[7], L->out_proj = ptr[8];
}

static const char *mamba2_problem(const Config *c) {
    if (c->dt_rank != 0 || c->mixer_eps != 0) return "Mamba-2 has no dt_rank or mixer_eps";
    if (c->head_dim < 1 || c->head_dim > c->d_inner) return "head_dim must be in [1, d_inner]";
    if (c->n_heads < 1 || (int64_t)c->n_heads * c->head_dim != c->d_inner) return "n_heads * head_dim must be d_inner";
    if (c->n_groups < 1 || c->n_heads % c->n_groups) return "n_groups must divide n_heads";
    if (c->n_groups > (1 << 17) / c->d_state) return "n_groups * d_state must be at most 131072";
    if (!(c->dt_limit_lo >= 0 && c->dt_limit_hi > c->dt_limit_lo)) return "the Δ limits must satisfy 0 ≤ lo < hi";
    return NULL;
}

/* ---- the architectures: what each one's checkpoint holds ---- */

enum { MAX_LAYER_TENSORS = MAMBA1_LAYER_TENSORS };
_Static_assert((int)MAMBA2_LAYER_TENSORS <= (int)MAX_LAYER_TENSORS, "a layout has at most MAX_LAYER_TENSORS a layer");

/* Every architecture's file: the embedding, each layer's tensors, the final norm, the LM head
 * when untied. A layout names and shapes one layer's tensors and binds them to LayerWeights. */
typedef struct {
    Arch arch;
    const char *name;
    const char *(*problem)(const Config *c);   /* the architecture's own hyperparameters out of range */
    int layer_tensors;
    const char *const *layer_names;
    void (*layer_shapes)(const Config *c, uint32_t shapes[][3], int *big);
    void (*bind_layer)(LayerWeights *L, const void *const *ptr);
    int (*conv_dim)(const Config *c);          /* channels of the causal conv (and its state) */
    int (*in_proj_rows)(const Config *c);
} ArchLayout;

static const ArchLayout LAYOUTS[] = {
    {ARCH_MAMBA1, "mamba1", mamba1_problem, MAMBA1_LAYER_TENSORS, MAMBA1_LAYER_TENSOR_NAMES, mamba1_layer_shapes,
     mamba1_bind_layer, mamba1_conv_dim, mamba1_in_proj_rows},
    {ARCH_MAMBA2, "mamba2", mamba2_problem, MAMBA2_LAYER_TENSORS, MAMBA2_LAYER_TENSOR_NAMES, mamba2_layer_shapes,
     mamba2_bind_layer, mamba2_conv_dim, mamba2_in_proj_rows},
    {ARCH_FALCON_MAMBA, "falcon-mamba", falcon_problem, MAMBA1_LAYER_TENSORS, MAMBA1_LAYER_TENSOR_NAMES,
     mamba1_layer_shapes, mamba1_bind_layer, mamba1_conv_dim, mamba1_in_proj_rows},
};

static const ArchLayout *layout_of(Arch a) {
    for (size_t i = 0; i < sizeof LAYOUTS / sizeof *LAYOUTS; i++)
        if (LAYOUTS[i].arch == a) return &LAYOUTS[i];
    return NULL;
}

const char *arch_name(Arch a) {
    const ArchLayout *l = layout_of(a);
    return l ? l->name : NULL;
}

int conv_dim(const Config *c) { return layout_of(c->arch)->conv_dim(c); }

int in_proj_rows(const Config *c) { return layout_of(c->arch)->in_proj_rows(c); }

uint64_t state_floats(const Config *c) {
    return (uint64_t)c->n_layer * ((uint64_t)conv_dim(c) * c->d_conv + (uint64_t)c->d_inner * c->d_state);
}

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

int n_model_tensors(const Config *c) {
    return 1 + layout_of(c->arch)->layer_tensors * c->n_layer + 1 + !c->tied_head;
}

void model_tensor_specs(const Config *c, TensorSpec *specs) {
    const ArchLayout *a = layout_of(c->arch);
    uint32_t shapes[MAX_LAYER_TENSORS][3];     /* rows, cols, ndim */
    int big[MAX_LAYER_TENSORS], k = 0;
    a->layer_shapes(c, shapes, big);
    set_spec(&specs[k++], "embedding", c->padded_vocab, c->d_model, 2, 1);
    for (int l = 0; l < c->n_layer; l++)
        for (int t = 0; t < a->layer_tensors; t++) {
            char name[MAMBA_NAME_BYTES];
            snprintf(name, sizeof name, "layers.%d.%s", l, a->layer_names[t]);
            set_spec(&specs[k++], name, shapes[t][0], shapes[t][1], shapes[t][2], big[t]);
        }
    set_spec(&specs[k++], "norm_f", c->d_model, 1, 1, 0);
    if (!c->tied_head) set_spec(&specs[k++], "lm_head", c->padded_vocab, c->d_model, 2, 1);
}

/* ptr[] holds the tensors in the order of model_tensor_specs. */
static void bind_weights(Weights *w, const Config *c, const void *const *ptr) {
    const ArchLayout *a = layout_of(c->arch);
    int k = 0;
    w->embedding = ptr[k++];
    w->layers = xcalloc(c->n_layer, sizeof *w->layers);
    for (int l = 0; l < c->n_layer; l++, k += a->layer_tensors) a->bind_layer(&w->layers[l], ptr + k);
    w->norm_f = ptr[k++];
    w->lm_head = c->tied_head ? w->embedding : ptr[k++];
}

void set_spec(TensorSpec *s, const char *name, uint32_t rows, uint32_t cols, int ndim, int big) {
    memset(s->name, 0, sizeof s->name);     /* the whole field is written to files: no stray bytes */
    snprintf(s->name, sizeof s->name, "%s", name);
    s->rows = rows, s->cols = cols, s->ndim = ndim, s->big = big;
}

DType spec_dtype(const Config *c, const TensorSpec *s) { return s->big ? c->dtype : DTYPE_F32; }

/* Bounds on every dimension, so that products of them cannot overflow 64 bits and a hostile
 * header cannot ask for absurd allocations. */
const char *config_problem(const Config *c) {
    if (!layout_of(c->arch)) return "unknown architecture";
    if (c->n_layer < 1 || c->n_layer > 1024) return "n_layer must be in [1, 1024]";
    if (c->d_model < 1 || c->d_model > 65536) return "d_model must be in [1, 65536]";
    if (c->d_inner < 1 || c->d_inner > 262144) return "d_inner must be in [1, 262144]";
    if (c->d_state < 1 || c->d_state > MAX_D_STATE) return "d_state must be in [1, 1024]";
    if (c->d_conv < 1 || c->d_conv > 64) return "d_conv must be in [1, 64]";
    if (c->vocab_size < 1 || c->vocab_size > (1 << 24)) return "vocab_size must be in [1, 2^24]";
    if (c->padded_vocab < c->vocab_size || c->padded_vocab > (1 << 24))
        return "padded_vocab must be in [vocab_size, 2^24]";
    if (!(c->norm_eps > 0 && c->norm_eps < 1)) return "norm_eps must be in (0, 1)";
    if ((unsigned)c->dtype > DTYPE_Q4) return "unknown weight dtype";
    if (c->tied_head != 0 && c->tied_head != 1) return "tied_head must be 0 or 1";
    return layout_of(c->arch)->problem(c);
}

uint64_t model_param_count(const Config *c) {
    int n = n_model_tensors(c);
    TensorSpec *specs = xmalloc(n * sizeof *specs);
    model_tensor_specs(c, specs);
    uint64_t total = 0;
    for (int i = 0; i < n; i++) total += (uint64_t)specs[i].rows * specs[i].cols;
    free(specs);
    return total;
}

/* ---- loading ---- */

static const void *checked_tensor(const Model *m, const TensorEntry *e, const TensorSpec *s, const char *path) {
    const Config *c = &m->config;
    DType want = spec_dtype(c, s);
    if (memchr(e->name, '\0', sizeof e->name) == NULL || strcmp(e->name, s->name))
        die("%s: tensor table entry '%.64s' where '%s' was expected", path, e->name, s->name);
    if (e->dtype != want) die("%s: tensor %s has dtype %u, expected %s", path, s->name, e->dtype, dtype_name(want));
    if (e->ndim != (uint32_t)s->ndim || e->shape[0] != s->rows || e->shape[1] != s->cols)
        die("%s: tensor %s has shape [%u, %u], the config implies [%u, %u]", path, s->name, e->shape[0],
            e->shape[1], s->rows, s->cols);
    uint64_t bytes = tensor_bytes(want, s->rows, s->cols);
    if (e->bytes != bytes) die("%s: tensor %s claims %llu bytes, its shape needs %llu", path, s->name,
                               (unsigned long long)e->bytes, (unsigned long long)bytes);
    if (e->offset % MAMBA_ALIGN) die("%s: tensor %s is not %d-byte aligned", path, s->name, MAMBA_ALIGN);
    if (e->offset > m->map_bytes || e->bytes > m->map_bytes - e->offset)
        die("%s: tensor %s lies outside the file", path, s->name);
    return m->map + e->offset;
}

/* A quantized tensor's scales are finite: a NaN or infinite one would make every output it touches
 * NaN, silently. */
static void check_scales(const void *t, DType dtype, const TensorSpec *s, const char *path) {
    const QuantLayout q = quant_layout(dtype, s->rows, s->cols);
    const uint8_t *scales = (const uint8_t *)t + q.scales_offset;
    for (uint64_t i = 0; i < s->rows * q.groups; i++) {
        float v;
        memcpy(&v, scales + 4 * i, 4);
        if (!isfinite(v))
            die("%s: tensor %s has a non-finite scale (row %llu, group %llu)", path, s->name,
                (unsigned long long)(i / q.groups), (unsigned long long)(i % q.groups));
    }
}

static void map_file(Model *m, const char *path) {
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
}

/* The header's config, range-checked; version 1 files (before the arch field) are Mamba-1. */
static void read_config(Model *m, const FileHeader *h, const char *path) {
    if (memcmp(h->magic, MAMBA_MAGIC, 8)) die("%s is not a mamba checkpoint (bad magic)", path);
    if (h->version < 1 || h->version > MAMBA_FORMAT_VERSION)
        die("%s has format version %u; this mamba reads versions 1 to %d", path, h->version, MAMBA_FORMAT_VERSION);
    if (h->header_bytes != MAMBA_HEADER_BYTES) die("%s: header size %u, expected %d", path, h->header_bytes, MAMBA_HEADER_BYTES);
    if (h->file_bytes != m->map_bytes)
        die("%s: header says %llu bytes but the file has %zu (truncated or padded)", path,
            (unsigned long long)h->file_bytes, m->map_bytes);
    uint32_t arch = h->version == 1 ? ARCH_MAMBA1 : h->arch;
    if (!arch_name((Arch)arch)) die("%s: unknown architecture %u", path, arch);
    m->format_version = h->version;
    Config *c = &m->config;
    *c = (Config){.arch = (Arch)arch, .n_layer = (int)h->n_layer, .d_model = (int)h->d_model,
                  .d_inner = (int)h->d_inner, .d_state = (int)h->d_state, .d_conv = (int)h->d_conv,
                  .dt_rank = (int)h->dt_rank, .vocab_size = (int)h->vocab_size,
                  .padded_vocab = (int)h->padded_vocab, .norm_eps = h->norm_eps, .dtype = (DType)h->dtype,
                  .tied_head = (int)h->tied_head, .n_heads = (int)h->n_heads, .head_dim = (int)h->head_dim,
                  .n_groups = (int)h->n_groups, .dt_limit_lo = h->dt_limit_lo, .dt_limit_hi = h->dt_limit_hi,
                  .mixer_eps = h->mixer_eps};
    if (h->n_layer > 1024 || h->d_model > 65536 || h->d_inner > 262144 || h->d_state > MAX_D_STATE || h->d_conv > 64 ||
        h->dt_rank > 262144 || h->vocab_size > (1u << 24) || h->padded_vocab > (1u << 24) || h->dtype > DTYPE_Q4 ||
        h->tied_head > 1 || h->n_heads > 262144 || h->head_dim > 262144 || h->n_groups > 262144)
        die("%s: config out of range", path);
    const char *problem = config_problem(c);
    if (problem) die("%s: bad config: %s", path, problem);
}

/* Every table entry checked against the config's specs; the weights point into the map. */
static void read_tensors(Model *m, const FileHeader *h, const char *path) {
    const Config *c = &m->config;
    int n = n_model_tensors(c);
    if (h->n_tensors != (uint32_t)n) die("%s: %u tensors in the table, the config needs %d", path, h->n_tensors, n);
    if (h->table_offset < MAMBA_HEADER_BYTES || h->table_offset > m->map_bytes ||
        (uint64_t)n * sizeof(TensorEntry) > m->map_bytes - h->table_offset)
        die("%s: tensor table lies outside the file", path);
    if (h->table_offset % 8) die("%s: tensor table is misaligned", path);
    TensorSpec *specs = xmalloc(n * sizeof *specs);
    model_tensor_specs(c, specs);
    const TensorEntry *table = (const TensorEntry *)(m->map + h->table_offset);
    const void **ptr = xmalloc(n * sizeof *ptr);
    for (int i = 0; i < n; i++) {
        ptr[i] = checked_tensor(m, &table[i], &specs[i], path);
        if (dtype_is_quantized(spec_dtype(c, &specs[i]))) check_scales(ptr[i], c->dtype, &specs[i], path);
        m->weight_bytes += table[i].bytes;
    }
    bind_weights(&m->weights, c, ptr);
    m->table = table, m->n_tensors = n;
    free(specs);
    free(ptr);
}

static void read_tokenizer_fields(Model *m, const FileHeader *h, const char *path) {
    if (h->tokenizer_kind > TOKENIZER_HF_JSON) die("%s: unknown tokenizer kind %u", path, h->tokenizer_kind);
    m->tokenizer_kind = (TokenizerKind)h->tokenizer_kind;
    if (m->tokenizer_kind != TOKENIZER_NONE) {
        if (h->tokenizer_offset > m->map_bytes || h->tokenizer_bytes > m->map_bytes - h->tokenizer_offset ||
            h->tokenizer_bytes == 0)
            die("%s: embedded tokenizer lies outside the file", path);
        m->tokenizer_blob = m->map + h->tokenizer_offset;
        m->tokenizer_bytes = h->tokenizer_bytes;
    }
    if (h->bos_id < -1 || h->bos_id >= (int32_t)h->vocab_size || h->eos_id < -1 || h->eos_id >= (int32_t)h->vocab_size ||
        h->pad_id < -1 || h->pad_id >= (int32_t)h->vocab_size)
        die("%s: special token ids out of range", path);
    m->bos_id = h->bos_id, m->eos_id = h->eos_id, m->pad_id = h->pad_id;
}

void model_load(Model *m, const char *path) {
    memset(m, 0, sizeof *m);
    map_file(m, path);
    FileHeader h;
    memcpy(&h, m->map, sizeof h);
    read_config(m, &h, path);
    read_tensors(m, &h, path);
    read_tokenizer_fields(m, &h, path);
    m->fingerprint = h.fingerprint;
}

/* Each tensor's bytes in table order, one fingerprint running through them all. */
uint64_t tensors_fingerprint(const uint8_t *map, const TensorEntry *table, int n) {
    uint64_t h = FINGERPRINT_SEED;
    for (int i = 0; i < n; i++) h = fingerprint_bytes(h, map + table[i].offset, table[i].bytes);
    return h ? h : 1;   /* 0 means "not stored" in a header */
}

uint64_t model_fingerprint(Model *m) {
    if (!m->fingerprint) m->fingerprint = tensors_fingerprint(m->map, m->table, m->n_tensors);
    return m->fingerprint;
}

void model_free(Model *m) {
    free(m->weights.layers);
    munmap((void *)m->map, m->map_bytes);
}

int is_checkpoint(const char *path) {
    struct stat st;
    if (stat(path, &st) || !S_ISREG(st.st_mode)) return 0;
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char magic[8];
    int yes = fread(magic, 1, 8, f) == 8 && !memcmp(magic, MAMBA_MAGIC, 8);
    fclose(f);
    return yes;
}

const char *default_model_path(void) {
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
