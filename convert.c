/* convert.c: making checkpoints. The writer (a temporary file beside the target, fsynced and
 * renamed into place, so an interrupted or failed write never leaves a file that looks valid),
 * `mamba convert` (Hugging Face and state-spaces checkpoints of every family: config.json +
 * safetensors or pytorch_model.bin) and `mamba init` (a random model of a published shape). */
#include "mamba.h"
#include "torch_archive.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_partial_output[PATH_MAX];   /* the temporary file, removed if we exit before the rename */

static void remove_partial_output(void) {
    if (g_partial_output[0]) unlink(g_partial_output);
}

/* ----------------------------------------------------------------------------------------
 * The checkpoint writer (convert, init). */

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
    if (g_progress_shown) {
        ssize_t cleared = write(STDERR_FILENO, "\r\033[K", 4);
        (void)cleared;
    }
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

/* The header of a checkpoint of config c with n tensors whose data ends at data_end. */
static FileHeader checkpoint_header(const Config *c, int n, uint64_t data_end, const TokenizerInfo *tok) {
    FileHeader h = {0};
    memcpy(h.magic, MAMBA_MAGIC, 8);
    h.version = MAMBA_FORMAT_VERSION, h.header_bytes = MAMBA_HEADER_BYTES, h.arch = c->arch;
    h.n_layer = c->n_layer, h.d_model = c->d_model, h.d_inner = c->d_inner, h.d_state = c->d_state;
    h.d_conv = c->d_conv, h.dt_rank = c->dt_rank, h.vocab_size = c->vocab_size, h.padded_vocab = c->padded_vocab;
    h.norm_eps = c->norm_eps, h.dtype = c->dtype, h.tied_head = c->tied_head;
    h.n_heads = c->n_heads, h.head_dim = c->head_dim, h.n_groups = c->n_groups;
    h.dt_limit_lo = c->dt_limit_lo, h.dt_limit_hi = c->dt_limit_hi, h.mixer_eps = c->mixer_eps;
    h.tokenizer_kind = tok->blob ? tok->kind : TOKENIZER_NONE;
    h.bos_id = tok->bos_id, h.eos_id = tok->eos_id, h.pad_id = tok->pad_id;
    h.n_tensors = n, h.table_offset = MAMBA_HEADER_BYTES;
    h.tokenizer_offset = tok->blob ? data_end : 0, h.tokenizer_bytes = tok->blob ? tok->bytes : 0;
    h.file_bytes = data_end + h.tokenizer_bytes;
    return h;
}

/* The temporary file, in the target's folder so that rename() is atomic, with the usual mode. */
static FILE *open_partial_output(const char *path) {
    static int registered;
    if (!registered) atexit(remove_partial_output), registered = 1;
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
    return f;
}

/* One group of a row (n ≤ QUANT_GROUP values, the rest of the group zero) to codes; returns its
 * scale. q8: the largest magnitude maps to ±127. q4: the value of largest magnitude maps to
 * code 0 (-8 · scale), so that all 16 codes are used. Codes of the row's padding are zero. */
static float quantize_group(DType t, const float *w, int n, uint8_t *codes) {
    float big = 0;
    for (int j = 0; j < n; j++)
        if (fabsf(w[j]) > fabsf(big)) big = w[j];
    const float scale = t == DTYPE_Q8 ? fabsf(big) / 127 : big / -8;
    const float inv = scale != 0 ? 1 / scale : 0;
    for (int j = 0; j < QUANT_GROUP; j++) {
        if (t == DTYPE_Q8) {
            codes[j] = (uint8_t)(int8_t)(j < n ? lrintf(w[j] * inv) : 0);
        } else {
            long q = j < n ? lrintf(w[j] * inv) + 8 : 8;
            q = q < 0 ? 0 : q > 15 ? 15 : q;
            if (j % 2 == 0) codes[j / 2] = (uint8_t)q;
            else codes[j / 2] |= (uint8_t)(q << 4);
        }
    }
    return scale;
}

/* A [rows, cols] matrix quantized to t (model.h's planes: codes, then scales). */
static void write_quantized(FILE *f, const TensorSpec *s, DType t, const float *values, const char *path) {
    const QuantLayout q = quant_layout(t, s->rows, s->cols);
    uint8_t *codes = xcalloc(q.scales_offset, 1);
    float *scales = xmalloc(s->rows * q.groups * sizeof *scales);
    const size_t group_bytes = t == DTYPE_Q4 ? QUANT_GROUP / 2 : QUANT_GROUP;
    for (size_t r = 0; r < s->rows; r++)
        for (size_t g = 0; g < q.groups; g++) {
            const size_t j0 = g * QUANT_GROUP, n = s->cols - j0 < QUANT_GROUP ? s->cols - j0 : QUANT_GROUP;
            scales[r * q.groups + g] =
                quantize_group(t, values + r * s->cols + j0, (int)n, codes + r * q.code_row_bytes + g * group_bytes);
        }
    fwrite_or_die(codes, q.scales_offset, f, path);
    fwrite_or_die(scales, s->rows * q.groups * sizeof *scales, f, path);
    free(codes);
    free(scales);
}

/* One tensor's values in its stored dtype; a quantized one must be finite. */
static void write_tensor(FILE *f, const TensorSpec *s, DType t, const float *values, const char *path) {
    size_t count = (size_t)s->rows * s->cols;
    if (dtype_is_quantized(t)) {
        for (size_t j = 0; j < count; j++)
            if (!isfinite(values[j])) die("tensor %s has a non-finite value: it cannot be quantized", s->name);
        write_quantized(f, s, t, values, path);
        return;
    }
    if (t == DTYPE_F32) {
        fwrite_or_die(values, count * 4, f, path);
        return;
    }
    uint16_t *half = xmalloc(count * sizeof *half);
    int overflow = 0;
    for (size_t j = 0; j < count; j++)
        half[j] = t == DTYPE_BF16 ? f32_to_bf16(values[j]) : f32_to_f16(values[j], &overflow);
    if (overflow) die("tensor %s has values beyond the f16 range; use --dtype bf16 or f32", s->name);
    fwrite_or_die(half, count * 2, f, path);
    free(half);
}

/* Closes the temporary file and renames it to path; the rename itself survives a crash once
 * its folder is synced (best effort). */
static void commit_partial_output(FILE *f, const char *path) {
    if (fflush(f) || fsync(fileno(f))) die("cannot write %s: %s", path, strerror(errno));
    if (fclose(f)) die("cannot write %s: %s", path, strerror(errno));
    if (rename(g_partial_output, path)) die("cannot rename the output to %s: %s", path, strerror(errno));
    g_partial_output[0] = '\0';
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) slash[slash == dir] = '\0';
    int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) fsync(dfd), close(dfd);
}

/* The fingerprint of the tensors as written, read back from the temporary file, into its header. */
static void store_fingerprint(FILE *f, FileHeader *h, const TensorEntry *table, int n, const char *path) {
    if (fflush(f)) die("cannot write %s: %s", path, strerror(errno));
    const uint8_t *map = mmap(NULL, h->file_bytes, PROT_READ, MAP_SHARED, fileno(f), 0);
    if (map == MAP_FAILED) die("cannot map %s to fingerprint it: %s", g_partial_output, strerror(errno));
    h->fingerprint = tensors_fingerprint(map, table, n);
    munmap((void *)map, h->file_bytes);
    if (fseek(f, 0, SEEK_SET)) die("cannot write %s: %s", path, strerror(errno));
    fwrite_or_die(h, sizeof *h, f, path);
}

/* Writes the checkpoint of config c to path, tensor i coming from source; `what` names the job
 * on the progress line. */
static void write_checkpoint(const char *path, const Config *c, TensorSource source, void *ctx,
                             const TokenizerInfo *tok, const char *what) {
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
        table[i].bytes = tensor_bytes(t, specs[i].rows, specs[i].cols);
        pos = align_up(pos + table[i].bytes, MAMBA_ALIGN);
    }
    FileHeader h = checkpoint_header(c, n, pos, tok);
    FILE *f = open_partial_output(path);
    fwrite_or_die(&h, sizeof h, f, path);
    fwrite_or_die(table, n * sizeof *table, f, path);
    uint64_t at = MAMBA_HEADER_BYTES + (uint64_t)n * sizeof *table;
    Progress progress;
    progress_begin(&progress, what, pos / 1e6, "MB");
    for (int i = 0; i < n; i++) {
        const TensorSpec *s = &specs[i];
        float *values = xmalloc((size_t)s->rows * s->cols * sizeof *values);
        source(ctx, i, s, values);
        pad_to(f, &at, table[i].offset, path);
        write_tensor(f, s, spec_dtype(c, s), values, path);
        at += table[i].bytes;
        free(values);
        progress_update(&progress, at / 1e6);
    }
    progress_end(&progress);
    pad_to(f, &at, pos, path);
    if (tok->blob) fwrite_or_die(tok->blob, tok->bytes, f, path);
    store_fingerprint(f, &h, table, n, path);
    commit_partial_output(f, path);
    free(specs);
    free(table);
}

/* ----------------------------------------------------------------------------------------
 * mamba convert: Hugging Face Mamba checkpoints (config.json + safetensors). */

#define MAX_JSON_BYTES (64u << 20)        /* config.json, index and safetensors headers */
#define MAX_SOURCE_TENSORS 32768     /* in all shards together; a Mamba needs ≤ 10 243 */

/* A source tensor: in a mapped safetensors file (data), or tensor `index` of a torch.save
 * archive, read when it is converted. */
typedef struct {
    char *name;
    DType dtype;
    int ndim;
    uint64_t shape[4];
    const uint8_t *data;
    uint64_t bytes;
    TorchArchive *archive;
    int index;
} SourceTensor;

#define MAX_SHARDS 256

typedef struct {
    SourceTensor *tensors;
    int n, cap;
    const char *dir;
    struct { const uint8_t *map; size_t bytes; } files[MAX_SHARDS];   /* mapped safetensors shards, to unmap */
    int n_files;
    TorchArchive *archives[MAX_SHARDS];                              /* open pytorch_model*.bin shards */
    int n_archives;
} TensorSet;

static void tensor_set_free(TensorSet *set) {
    for (int i = 0; i < set->n; i++) free(set->tensors[i].name);
    free(set->tensors);
    for (int i = 0; i < set->n_files; i++) munmap((void *)set->files[i].map, set->files[i].bytes);
    for (int i = 0; i < set->n_archives; i++) torch_archive_close(set->archives[i]);
}

/* Appends t, within the limit on tensors. */
static void add_source_tensor(TensorSet *set, SourceTensor t, const char *path) {
    if (set->n == MAX_SOURCE_TENSORS)
        die("%s: more than %d tensors in the checkpoint (the limit)", path, MAX_SOURCE_TENSORS);
    if (set->n == set->cap) {
        set->cap = set->cap ? 2 * set->cap : 64;
        set->tensors = realloc(set->tensors, set->cap * sizeof *set->tensors);
        if (!set->tensors) die("out of memory");
    }
    set->tensors[set->n++] = t;
}

/* Python's json module writes float("inf") as Infinity, which is not JSON: configs saved by
 * transformers 4 hold time_step_limit: [0.0, Infinity] (transformers 5 writes
 * {"__float__": "Infinity"}, see json_float). Outside strings, Infinity becomes 1e999 of the
 * same length, which parses to inf; NaN, meaningful in no field, is refused. */
static void accept_infinity(char *text, size_t len, const char *path) {
    int in_string = 0;
    for (size_t i = 0; i < len; i++) {
        if (in_string) {
            if (text[i] == '\\') i++;
            else if (text[i] == '"') in_string = 0;
        } else if (text[i] == '"') {
            in_string = 1;
        } else if (len - i >= 8 && !memcmp(text + i, "Infinity", 8)) {
            memcpy(text + i, "1e999   ", 8);
            i += 7;
        } else if (len - i >= 3 && !memcmp(text + i, "NaN", 3)) {
            die("%s holds NaN, a value no field may take", path);
        }
    }
}

/* The JSON documents being read, reachable from here until closed: a refusal exits (die) with
 * them open, and LeakSanitizer would report a tree only a dead stack frame pointed to. */
static cJSON *g_open_json[4];

static cJSON *keep_open(cJSON *json) {
    for (size_t i = 0; json && i < sizeof g_open_json / sizeof *g_open_json; i++)
        if (!g_open_json[i]) {
            g_open_json[i] = json;
            break;
        }
    return json;
}

static void close_json(cJSON *json) {
    for (size_t i = 0; i < sizeof g_open_json / sizeof *g_open_json; i++)
        if (g_open_json[i] == json) g_open_json[i] = NULL;
    cJSON_Delete(json);
}

static cJSON *parse_json_file(const char *path, const char *what) {
    size_t len;
    char *text = read_file(path, MAX_JSON_BYTES, &len, NULL);
    accept_infinity(text, len, path);
    cJSON *json = keep_open(cJSON_ParseWithLength(text, len));
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
    if (set->n_files == MAX_SHARDS) {
        close(fd);
        die("%s: more than %d safetensors shards", set->dir, MAX_SHARDS);
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
    cJSON *header = keep_open(cJSON_ParseWithLength((const char *)map + 8, header_len));
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
        SourceTensor t = {.ndim = cJSON_GetArraySize(shape)};
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
        if (!(t.name = strdup(item->string))) die("out of memory");
        add_source_tensor(set, t, path);
    }
    close_json(header);
}

static const SourceTensor *find_tensor(const TensorSet *set, const char *name) {
    for (int i = 0; i < set->n; i++)
        if (!strcmp(set->tensors[i].name, name)) return &set->tensors[i];
    return NULL;
}

/* Opens one torch.save file (pytorch_model.bin) and appends its tensors, read at conversion. */
static void load_torch_archive(TensorSet *set, const char *path) {
    if (set->n_archives == MAX_SHARDS) die("%s: more than %d pytorch_model shards", set->dir, MAX_SHARDS);
    char err[512];
    TorchArchive *a = torch_archive_open(path, err, sizeof err);
    if (!a) die("%s", err);
    set->archives[set->n_archives++] = a;
    for (int i = 0; i < torch_archive_count(a); i++) {
        const TorchTensor *tt = torch_archive_tensor(a, i);
        SourceTensor t = {.dtype = (DType)tt->dtype, .ndim = tt->ndim, .bytes = tt->bytes, .archive = a, .index = i};
        memcpy(t.shape, tt->shape, sizeof t.shape);
        if (!(t.name = strdup(tt->name))) die("out of memory");
        add_source_tensor(set, t, path);
    }
}

/* The shards an index (model.safetensors.index.json, pytorch_model.bin.index.json) names,
 * each loaded once, and every tensor it lists found in its shard. */
static void load_index(TensorSet *set, const char *dir, const char *path, void (*load_shard)(TensorSet *, const char *)) {
    cJSON *index = parse_json_file(path, "checkpoint index");
    cJSON *map = cJSON_GetObjectItemCaseSensitive(index, "weight_map");
    if (!cJSON_IsObject(map)) die("%s has no weight_map object", path);
    if (cJSON_GetArraySize(map) > MAX_SOURCE_TENSORS)
        die("%s: weight_map lists more than %d tensors (the limit)", path, MAX_SOURCE_TENSORS);
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
        load_shard(set, shard);
    }
    for (cJSON *e = map->child; e; e = e->next)
        if (!find_tensor(set, e->string)) die("%s lists tensor %s, which its shard lacks", path, e->string);
    free(seen);
    close_json(index);
}

/* Reads a checkpoint directory: safetensors (one file, or shards listed by the index), else
 * torch.save files (the original state-spaces repositories have only pytorch_model.bin). */
static void load_hf_tensors(TensorSet *set, const char *dir) {
    static const struct {
        const char *index, *single;
        void (*load)(TensorSet *, const char *);
    } kinds[] = {
        {"model.safetensors.index.json", "model.safetensors", load_safetensors},
        {"pytorch_model.bin.index.json", "pytorch_model.bin", load_torch_archive},
    };
    set->dir = dir;
    for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, kinds[k].index);
        if (access(path, F_OK) == 0) {
            load_index(set, dir, path, kinds[k].load);
            return;
        }
        snprintf(path, sizeof path, "%s/%s", dir, kinds[k].single);
        if (access(path, F_OK) == 0) {
            kinds[k].load(set, path);
            return;
        }
    }
    die("%s has no model.safetensors, pytorch_model.bin or an index of their shards", dir);
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

/* A special token id: a number, null (none: -1) or a list, whose first entry counts. */
static int json_token_id(const cJSON *obj, const char *key, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsArray(v)) v = cJSON_GetArrayItem(v, 0);
    if (!v || cJSON_IsNull(v)) return -1;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < -1 || v->valuedouble > (1 << 30))
        die("%s: \"%s\" is not a token id", path, key);
    return (int)v->valuedouble;
}

/* A number, or transformers' spelling of a non-finite one: {"__float__": "Infinity"}. */
static int json_float(const cJSON *v, double *out) {
    if (cJSON_IsNumber(v)) return *out = v->valuedouble, 1;
    const cJSON *f = cJSON_IsObject(v) && cJSON_GetArraySize(v) == 1 ? cJSON_GetObjectItemCaseSensitive(v, "__float__") : NULL;
    if (!cJSON_IsString(f)) return 0;
    if (!strcmp(f->valuestring, "Infinity")) return *out = INFINITY, 1;
    if (!strcmp(f->valuestring, "-Infinity")) return *out = -INFINITY, 1;
    return 0;
}

/* The Δ limits: [lo, hi] with 0 ≤ lo < hi (hi may be Infinity), [0, inf) when absent. */
static void json_dt_limit(const cJSON *obj, const char *key, Config *c, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    c->dt_limit_lo = 0.0f, c->dt_limit_hi = INFINITY;
    if (!v) return;
    double lo, hi;
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 2 || !json_float(cJSON_GetArrayItem(v, 0), &lo) ||
        !json_float(cJSON_GetArrayItem(v, 1), &hi))
        die("%s: \"%s\" is not a pair of numbers", path, key);
    if (!(lo >= 0 && hi > lo)) die("%s: \"%s\" must be [lo, hi] with 0 ≤ lo < hi", path, key);
    c->dt_limit_lo = (float)lo, c->dt_limit_hi = (float)hi;
}

/* d_inner / head_dim heads, or a one-line refusal when head_dim does not divide d_inner. */
static int heads_of(int d_inner, int head_dim, const char *path) {
    if (head_dim < 1 || d_inner % head_dim) die("%s: head_dim %d does not divide d_inner %d", path, head_dim, d_inner);
    return d_inner / head_dim;
}

/* transformers' MambaConfig. */
static void hf_mamba1_config(const cJSON *j, const char *path, Config *c) {
    c->arch = ARCH_MAMBA1;
    c->d_state = json_int(j, "state_size", 16, 0, path);
    c->d_conv = json_int(j, "conv_kernel", 4, 0, path);
    int expand = json_int(j, "expand", 2, 0, path);
    c->d_inner = json_int(j, "intermediate_size", times_or_zero(expand, c->d_model), 0, path);
    c->dt_rank = json_dt_rank(j, "time_step_rank", c->d_model, path);
    c->norm_eps = (float)json_number(j, "layer_norm_epsilon", 1e-5, 0, path);
    c->tied_head = json_bool(j, "tie_word_embeddings", 1, path);
}

/* transformers' FalconMambaConfig: MambaConfig and the eps of the Δ, B, C normalisation. */
static void hf_falcon_config(const cJSON *j, const char *path, Config *c) {
    hf_mamba1_config(j, path, c);
    c->arch = ARCH_FALCON_MAMBA;
    c->mixer_eps = (float)json_number(j, "mixer_rms_eps", 1e-6, 0, path);
}

/* transformers' Mamba2Config (its defaults are Codestral-Mamba's). */
static void hf_mamba2_config(const cJSON *j, const char *path, Config *c) {
    c->arch = ARCH_MAMBA2;
    c->d_state = json_int(j, "state_size", 128, 0, path);
    c->d_conv = json_int(j, "conv_kernel", 4, 0, path);
    c->d_inner = times_or_zero(json_int(j, "expand", 2, 0, path), c->d_model);
    c->head_dim = json_int(j, "head_dim", 64, 0, path);
    c->n_heads = json_int(j, "num_heads", 128, 0, path);
    if ((int64_t)c->n_heads * c->head_dim != c->d_inner)
        die("%s: num_heads %d × head_dim %d is not expand × hidden_size = %d", path, c->n_heads, c->head_dim, c->d_inner);
    c->n_groups = json_int(j, "n_groups", 8, 0, path);
    c->norm_eps = (float)json_number(j, "layer_norm_epsilon", 1e-5, 0, path);
    c->tied_head = json_bool(j, "tie_word_embeddings", 0, path);
    json_dt_limit(j, "time_step_limit", c, path);
}

/* The original state-spaces Mamba (mamba_ssm's Mamba class), from ssm_cfg. */
static void ss_mamba1_config(const cJSON *ssm, const char *path, Config *c) {
    c->arch = ARCH_MAMBA1;
    c->d_state = json_int(ssm, "d_state", 16, 0, path);
    c->d_conv = json_int(ssm, "d_conv", 4, 0, path);
    c->d_inner = times_or_zero(json_int(ssm, "expand", 2, 0, path), c->d_model);
    c->dt_rank = json_dt_rank(ssm, "dt_rank", c->d_model, path);
    if (json_bool(ssm, "bias", 0, path)) die("%s: ssm_cfg.bias=true is not supported", path);
    if (!json_bool(ssm, "conv_bias", 1, path)) die("%s: ssm_cfg.conv_bias=false is not supported", path);
}

/* The original state-spaces Mamba2, from ssm_cfg with mamba_ssm's defaults. */
static void ss_mamba2_config(const cJSON *ssm, const char *path, Config *c) {
    c->arch = ARCH_MAMBA2;
    c->d_state = json_int(ssm, "d_state", 128, 0, path);
    c->d_conv = json_int(ssm, "d_conv", 4, 0, path);
    c->d_inner = times_or_zero(json_int(ssm, "expand", 2, 0, path), c->d_model);
    const cJSON *d_ssm = cJSON_GetObjectItemCaseSensitive(ssm, "d_ssm");
    if (d_ssm && !cJSON_IsNull(d_ssm) && json_int(ssm, "d_ssm", 0, 1, path) != c->d_inner)
        die("%s: ssm_cfg.d_ssm other than d_inner (an MLP beside the SSM) is not supported", path);
    c->head_dim = json_int(ssm, "headdim", 64, 0, path);
    c->n_heads = heads_of(c->d_inner, c->head_dim, path);
    c->n_groups = json_int(ssm, "ngroups", 1, 0, path);
    json_dt_limit(ssm, "dt_limit", c, path);
    if (!json_bool(ssm, "rmsnorm", 1, path)) die("%s: ssm_cfg.rmsnorm=false is not supported", path);
    if (json_bool(ssm, "norm_before_gate", 0, path)) die("%s: ssm_cfg.norm_before_gate=true is not supported", path);
    if (json_bool(ssm, "D_has_hdim", 0, path)) die("%s: ssm_cfg.D_has_hdim=true is not supported", path);
    if (json_bool(ssm, "bias", 0, path)) die("%s: ssm_cfg.bias=true is not supported", path);
    if (!json_bool(ssm, "conv_bias", 1, path)) die("%s: ssm_cfg.conv_bias=false is not supported", path);
}

typedef struct {
    const char *name;                       /* transformers' model_type, or ssm_cfg.layer */
    void (*read)(const cJSON *j, const char *path, Config *c);
} ConfigReader;

static const ConfigReader HF_CONFIGS[] = {
    {"mamba", hf_mamba1_config}, {"mamba2", hf_mamba2_config}, {"falcon_mamba", hf_falcon_config},
};
static const ConfigReader STATE_SPACES_CONFIGS[] = {{"Mamba1", ss_mamba1_config}, {"Mamba2", ss_mamba2_config}};

/* The reader called `name` in table[n], or a one-line refusal listing the known ones. */
static const ConfigReader *config_reader(const ConfigReader *table, int n, const char *name, const char *key,
                                         const char *path) {
    char known[128] = "";
    for (int i = 0; i < n; i++) {
        if (!strcmp(table[i].name, name)) return &table[i];
        snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", i ? ", " : "", table[i].name);
    }
    die("%s: %s \"%s\" is not supported (known: %s)", path, key, name, known);
}

/* The string at key, `fallback` when absent. */
static const char *json_string(const cJSON *obj, const char *key, const char *fallback, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v) return fallback;
    if (!cJSON_IsString(v)) die("%s: \"%s\" is not a string", path, key);
    return v->valuestring;
}

/* transformers' config (hidden_size, model_type). */
static void hf_config(const cJSON *j, const char *path, Config *c) {
    const ConfigReader *r = config_reader(HF_CONFIGS, sizeof HF_CONFIGS / sizeof *HF_CONFIGS,
                                          json_string(j, "model_type", "mamba", path), "model_type", path);
    c->d_model = json_int(j, "hidden_size", 0, 1, path);
    c->n_layer = json_int(j, "num_hidden_layers", 0, 1, path);
    c->vocab_size = json_int(j, "vocab_size", 0, 1, path);
    r->read(j, path, c);
    if (strcmp(json_string(j, "hidden_act", "silu", path), "silu"))
        die("%s: hidden_act \"%s\" is not supported (silu only)", path, json_string(j, "hidden_act", "silu", path));
    if (json_bool(j, "use_bias", 0, path)) die("%s: use_bias=true (biased in/out projections) is not supported", path);
    if (!json_bool(j, "use_conv_bias", 1, path)) die("%s: use_conv_bias=false is not supported", path);
}

/* The original state-spaces config (d_model, ssm_cfg); returns the vocab padding multiple.
 * Hybrid models (attention layers, MLPs) are refused. */
static int state_spaces_config(const cJSON *j, const char *path, Config *c) {
    c->d_model = json_int(j, "d_model", 0, 1, path);
    c->n_layer = json_int(j, "n_layer", 0, 1, path);
    c->vocab_size = json_int(j, "vocab_size", 0, 1, path);
    int multiple = json_int(j, "pad_vocab_size_multiple", 8, 0, path);
    if (multiple < 1) die("%s: pad_vocab_size_multiple must be ≥ 1", path);
    c->tied_head = json_bool(j, "tie_embeddings", 1, path);
    if (!json_bool(j, "rms_norm", 1, path)) die("%s: rms_norm=false (LayerNorm) is not supported", path);
    const cJSON *attn = cJSON_GetObjectItemCaseSensitive(j, "attn_layer_idx");
    if (attn && !cJSON_IsNull(attn) && (!cJSON_IsArray(attn) || cJSON_GetArraySize(attn) > 0))
        die("%s: attn_layer_idx names attention layers: hybrid models are not supported", path);
    if (json_int(j, "d_intermediate", 0, 0, path) > 0)
        die("%s: d_intermediate > 0 (an MLP after each mixer): hybrid models are not supported", path);
    const cJSON *ssm = cJSON_GetObjectItemCaseSensitive(j, "ssm_cfg");
    if (ssm && !cJSON_IsObject(ssm)) die("%s: ssm_cfg is not an object", path);
    const ConfigReader *r = config_reader(STATE_SPACES_CONFIGS, sizeof STATE_SPACES_CONFIGS / sizeof *STATE_SPACES_CONFIGS,
                                          json_string(ssm, "layer", "Mamba1", path),
                                          "ssm_cfg.layer", path);
    r->read(ssm, path, c);
    c->norm_eps = 1e-5f;                    /* mamba_ssm's, not in its config */
    return multiple;
}

/* Two spellings of the config: transformers' (hidden_size, ...) and the original state-spaces
 * one (d_model, ssm_cfg, pad_vocab_size_multiple). Returns the vocab padding multiple (1 for
 * transformers, whose vocab_size already counts the embedding rows). */
static int config_from_json(const cJSON *j, const char *path, Config *c, TokenizerInfo *tok) {
    int multiple = 1;
    *c = (Config){0};
    if (cJSON_GetObjectItemCaseSensitive(j, "hidden_size")) hf_config(j, path, c);
    else if (cJSON_GetObjectItemCaseSensitive(j, "d_model")) multiple = state_spaces_config(j, path, c);
    else die("%s has neither hidden_size (transformers) nor d_model (state-spaces)", path);
    /* out of range (refused by config_problem) rather than wrapped */
    uint64_t padded = c->vocab_size < 1 ? 0 : align_up((uint64_t)c->vocab_size, (uint64_t)multiple);
    c->padded_vocab = padded > INT_MAX ? -1 : (int)padded;
    tok->bos_id = json_token_id(j, "bos_token_id", path);
    tok->eos_id = json_token_id(j, "eos_token_id", path);
    tok->pad_id = json_token_id(j, "pad_token_id", path);
    return multiple;
}

/* The Hugging Face names of each architecture's layer tensors, in the order of its layout's
 * (model.c); the state-spaces checkpoints use the same ones. */
static const char *const MAMBA1_SOURCE_NAMES[MAMBA1_LAYER_TENSORS] = {
    "norm.weight", "mixer.in_proj.weight", "mixer.conv1d.weight", "mixer.conv1d.bias", "mixer.x_proj.weight",
    "mixer.dt_proj.weight", "mixer.dt_proj.bias", "mixer.A_log", "mixer.D", "mixer.out_proj.weight",
};
static const char *const MAMBA2_SOURCE_NAMES[MAMBA2_LAYER_TENSORS] = {
    "norm.weight", "mixer.in_proj.weight", "mixer.conv1d.weight", "mixer.conv1d.bias", "mixer.dt_bias",
    "mixer.A_log", "mixer.D", "mixer.norm.weight", "mixer.out_proj.weight",
};

static const struct {
    Arch arch;
    int n;
    const char *const *ours, *const *theirs;
} LAYER_SOURCES[] = {
    {ARCH_MAMBA1, MAMBA1_LAYER_TENSORS, MAMBA1_LAYER_TENSOR_NAMES, MAMBA1_SOURCE_NAMES},
    {ARCH_MAMBA2, MAMBA2_LAYER_TENSORS, MAMBA2_LAYER_TENSOR_NAMES, MAMBA2_SOURCE_NAMES},
    {ARCH_FALCON_MAMBA, MAMBA1_LAYER_TENSORS, MAMBA1_LAYER_TENSOR_NAMES, MAMBA1_SOURCE_NAMES},
};

/* Source names of each of our tensors; the two conventions differ only in the embedding. */
static void source_names(const Config *c, const TensorSpec *s, char names[2][128]) {
    int layer;
    char part[32];
    names[0][0] = names[1][0] = '\0';
    if (!strcmp(s->name, "embedding")) {
        strcpy(names[0], "backbone.embeddings.weight");
        strcpy(names[1], "backbone.embedding.weight");
    } else if (!strcmp(s->name, "norm_f")) {
        strcpy(names[0], "backbone.norm_f.weight");
    } else if (!strcmp(s->name, "lm_head")) {
        strcpy(names[0], "lm_head.weight");
    } else if (sscanf(s->name, "layers.%d.%31s", &layer, part) == 2) {
        for (size_t a = 0; a < sizeof LAYER_SOURCES / sizeof *LAYER_SOURCES; a++)
            for (int t = 0; LAYER_SOURCES[a].arch == c->arch && t < LAYER_SOURCES[a].n; t++)
                if (!strcmp(part, LAYER_SOURCES[a].ours[t]))
                    snprintf(names[0], 128, "backbone.layers.%d.%s", layer, LAYER_SOURCES[a].theirs[t]);
    }
}

static const SourceTensor *lookup_source(const TensorSet *set, const Config *c, const TensorSpec *s) {
    char names[2][128];
    source_names(c, s, names);
    const SourceTensor *t = find_tensor(set, names[0]);
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
    const Config *config;
} ConvertSource;

static void convert_tensor(void *ctx, int i, const TensorSpec *s, float *out) {
    (void)i;
    const ConvertSource *src = ctx;
    const SourceTensor *t = lookup_source(src->set, src->config, s);
    size_t count = (size_t)s->rows * s->cols;
    const uint8_t *data = t->data;
    char err[512];
    if (!data && !(data = torch_archive_data(t->archive, t->index, err, sizeof err))) die("%s", err);
    for (size_t j = 0; j < count; j++) {
        uint16_t half;
        if (t->dtype == DTYPE_F32) {
            memcpy(&out[j], data + 4 * j, 4);
        } else {
            memcpy(&half, data + 2 * j, 2);
            out[j] = t->dtype == DTYPE_BF16 ? bf16_to_f32(half) : f16_to_f32(half);
        }
        if (!isfinite(out[j])) die("tensor %s contains NaN or infinity at element %zu", t->name, j);
    }
}

/* The tokenizer file at path, checked by loading it and against the model's rows, as the blob
 * to embed. Its special ids win over config.json's, which are often stale (Codestral-Mamba's
 * say 0, its <unk>, for all three). */
static void take_tokenizer(const char *path, const Config *c, TokenizerInfo *tok) {
    char err[256];
    Tokenizer *t = tokenizer_load_file(path, err, sizeof err);
    if (!t) die("%s", err);
    if (tokenizer_vocab_size(t) > c->padded_vocab)
        die("%s has %d ids but the model only %d", path, tokenizer_vocab_size(t), c->padded_vocab);
    if (tokenizer_bos_id(t) >= 0) tok->bos_id = tokenizer_bos_id(t);
    if (tokenizer_eos_id(t) >= 0) tok->eos_id = tokenizer_eos_id(t);
    if (tokenizer_pad_id(t) >= 0) tok->pad_id = tokenizer_pad_id(t);
    tok->kind = tokenizer_kind(t);
    tokenizer_free(t);
    tok->blob = read_file(path, MAX_TOKENIZER_BYTES, &tok->bytes, NULL);
}

/* The checkpoint folder's tokenizer: tokenizer.json wins over tokenizer.model, then Mistral's
 * versioned tokenizer.model.v3 (and .v1, .v2); none is fine (--tokenizer at run time). */
static void find_tokenizer(const char *dir, const Config *c, TokenizerInfo *tok) {
    static const char *const candidates[] = {"tokenizer.json", "tokenizer.model", "tokenizer.model.v3",
                                             "tokenizer.model.v2", "tokenizer.model.v1"};
    for (size_t i = 0; i < sizeof candidates / sizeof *candidates; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, candidates[i]);
        if (access(path, F_OK) == 0) {
            take_tokenizer(path, c, tok);
            return;
        }
    }
}

/* generation_config.json, when the folder has one, says what generation stops at: its ids win
 * over the tokenizer's and config.json's (as in transformers' generate). */
static void read_generation_config(const char *dir, TokenizerInfo *tok) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    if (access(path, F_OK)) return;
    cJSON *j = parse_json_file(path, "generation config");
    const char *keys[3] = {"bos_token_id", "eos_token_id", "pad_token_id"};
    int *ids[3] = {&tok->bos_id, &tok->eos_id, &tok->pad_id};
    for (int i = 0; i < 3; i++) {
        int id = json_token_id(j, keys[i], path);
        if (id >= 0) *ids[i] = id;
    }
    close_json(j);
}

/* Special ids beyond the vocabulary (from whichever file) would make a checkpoint that does not
 * load. */
static void check_special_ids(const TokenizerInfo *tok, const Config *c, const char *dir) {
    const int ids[3] = {tok->bos_id, tok->eos_id, tok->pad_id};
    const char *const names[3] = {"bos", "eos", "pad"};
    for (int i = 0; i < 3; i++)
        if (ids[i] >= c->vocab_size)
            die("%s: the %s token id %d is outside the vocabulary (vocab_size %d)", dir, names[i], ids[i], c->vocab_size);
}

enum { CONVERT_DTYPE = 1, CONVERT_TOKENIZER };

static const Option CONVERT_OPTIONS[] = {
    {CONVERT_DTYPE, "--dtype", "f32|f16|bf16|q8|q4", "how the matrices are stored (default bf16; q8, q4: quantized, docs/FORMAT.md)"},
    {CONVERT_TOKENIZER, "--tokenizer", "FILE",
     "tokenizer.json or tokenizer.model to embed (default: the folder's own; the state-spaces repos have none)"},
    {0},
};

static const Command CONVERT_COMMAND = {
    "convert", "mamba convert HF_DIR|MODEL.bin OUT.bin [--dtype f32|f16|bf16|q8|q4] [--tokenizer FILE]",
    "Imports a Mamba-1, Mamba-2 (Codestral-Mamba) or Falcon-Mamba checkpoint folder, Hugging Face's\n"
    "or the original state-spaces one (config.json; safetensors or pytorch_model.bin, sharded or\n"
    "not; tokenizer.json or tokenizer.model when present) into one mamba checkpoint file; or\n"
    "stores a mamba checkpoint's matrices in another dtype (quantizes it), its tokenizer kept.",
    CONVERT_OPTIONS, 0,
};

/* ----------------------------------------------------------------------------------------
 * mamba convert from a mamba checkpoint: the same model in another dtype (e.g. quantized). */

typedef struct {
    const Model *m;
    const TensorEntry *table;
} CheckpointSource;

/* Tensor i of the checkpoint as floats (its dtype is a float type: quantized ones are refused). */
static void checkpoint_tensor(void *ctx, int i, const TensorSpec *s, float *out) {
    const CheckpointSource *src = ctx;
    const TensorEntry *e = &src->table[i];
    const uint8_t *data = src->m->map + e->offset;
    const size_t count = (size_t)s->rows * s->cols;
    for (size_t j = 0; j < count; j++) {
        uint16_t h;
        if (e->dtype == DTYPE_F32) memcpy(&out[j], data + 4 * j, 4);
        else memcpy(&h, data + 2 * j, 2), out[j] = e->dtype == DTYPE_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
    }
}

static void convert_checkpoint(const char *in, const char *out, DType dtype) {
    Model m;
    model_load(&m, in);
    if (dtype_is_quantized(m.config.dtype))
        die("%s is already quantized (%s): convert from its f32, f16 or bf16 source instead", in, dtype_name(m.config.dtype));
    Config c = m.config;
    c.dtype = dtype;
    FileHeader h;
    memcpy(&h, m.map, sizeof h);
    CheckpointSource src = {&m, (const TensorEntry *)(m.map + h.table_offset)};
    TokenizerInfo tok = {m.tokenizer_kind, m.tokenizer_blob, m.tokenizer_bytes, m.bos_id, m.eos_id, m.pad_id};
    write_checkpoint(out, &c, checkpoint_tensor, &src, &tok, "convert");
    fprintf(stderr, "wrote %s: %d layers, d_model %d, vocab %d, %s (from %s), %llu parameters\n", out, c.n_layer,
            c.d_model, c.vocab_size, dtype_name(dtype), dtype_name(m.config.dtype), (unsigned long long)model_param_count(&c));
    model_free(&m);
}

static DType dtype_value(const char *flag, const char *value) {
    DType t;
    if (parse_dtype(value, &t)) die("%s must be f32, f16, bf16, q8 or q4, got '%s'", flag, value);
    return t;
}

void cmd_convert(int argc, char **argv) {
    const char *dir = NULL, *out = NULL, *tokenizer_path = NULL, *value;
    DType dtype = DTYPE_BF16;
    OptionParser p;
    options_begin(&p, &CONVERT_COMMAND, argc, argv);
    for (int id; (id = options_next(&p, &value)) != OPT_END;) {
        if (id == CONVERT_DTYPE) dtype = dtype_value(p.name, value);
        else if (id == CONVERT_TOKENIZER) tokenizer_path = value;
        else if (!dir) dir = value;
        else if (!out) out = value;
        else die("convert: unexpected argument %s", value);
    }
    if (!dir || !out) die("usage: %s", CONVERT_COMMAND.synopsis);
    if (is_checkpoint(dir)) {
        if (tokenizer_path) die("convert: --tokenizer is for a checkpoint folder; %s keeps its own", dir);
        convert_checkpoint(dir, out, dtype);
        return;
    }
    struct stat st;
    if (stat(dir, &st) || !S_ISDIR(st.st_mode)) die("%s is not a readable directory", dir);

    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (access(path, R_OK)) die("cannot read %s: %s", path, strerror(errno));
    cJSON *json = parse_json_file(path, "config");
    Config c;
    TokenizerInfo tok = {0};
    int multiple = config_from_json(json, path, &c, &tok);
    close_json(json);
    c.dtype = dtype;

    TensorSet set = {0};
    load_hf_tensors(&set, dir);
    /* The embedding's row count is the padded vocab; it must agree with the config. */
    TensorSpec probe;
    set_spec(&probe, "embedding", 0, 0, 2, 1);
    char names[2][128];
    source_names(&c, &probe, names);
    const SourceTensor *emb = find_tensor(&set, names[0]);
    if (!emb) emb = find_tensor(&set, names[1]);
    if (!emb) die("%s: missing tensor %s", dir, names[0]);
    if (emb->ndim == 2 && emb->shape[0] != (uint64_t)c.padded_vocab)
        die("tensor %s has %llu rows but the config implies %d (vocab_size %d padded to a multiple of %d)", emb->name,
            (unsigned long long)emb->shape[0], c.padded_vocab, c.vocab_size, multiple);
    const char *problem = config_problem(&c);
    if (problem) die("%s: bad config: %s", path, problem);

    if (tokenizer_path) take_tokenizer(tokenizer_path, &c, &tok);
    else find_tokenizer(dir, &c, &tok);
    read_generation_config(dir, &tok);
    check_special_ids(&tok, &c, dir);
    ConvertSource src = {&set, &c};
    write_checkpoint(out, &c, convert_tensor, &src, &tok, "convert");
    tensor_set_free(&set);
    free((void *)tok.blob);
    fprintf(stderr, "wrote %s: %d layers, d_model %d, vocab %d, %s, %llu parameters\n", out, c.n_layer, c.d_model,
            c.vocab_size, dtype_name(dtype), (unsigned long long)model_param_count(&c));
}

/* ----------------------------------------------------------------------------------------
 * mamba init: a random model of a published Mamba-1 shape, for benchmarks without downloads.
 * Weights are scaled like a trained model's so that activations stay finite and logits spread. */

typedef struct {
    const char *name;
    Config config;                          /* dtype set by --dtype */
} Shape;

/* The published shapes, expand 2 and conv 4 throughout: Mamba-1 (state-spaces/mamba-*, Δ rank
 * d_model / 16), Mamba-2 (state-spaces/mamba2-*: head_dim 64, one group, 50277 ids padded to a
 * multiple of 16; Codestral-Mamba-7B: 8 groups, untied) and Falcon-Mamba-7B (untied). */
#define MAMBA1_SHAPE(NAME, DM, NL, V)                                                                           \
    {NAME, {.arch = ARCH_MAMBA1, .n_layer = NL, .d_model = DM, .d_inner = 2 * DM, .d_state = 16, .d_conv = 4, \
            .dt_rank = (DM + 15) / 16, .vocab_size = V, .padded_vocab = V, .norm_eps = 1e-5f, .tied_head = 1}}
#define FALCON_SHAPE(NAME, DM, NL, V)                                                                           \
    {NAME, {.arch = ARCH_FALCON_MAMBA, .n_layer = NL, .d_model = DM, .d_inner = 2 * DM, .d_state = 16,         \
            .d_conv = 4, .dt_rank = (DM + 15) / 16, .vocab_size = V, .padded_vocab = V, .norm_eps = 1e-5f,      \
            .tied_head = 0, .mixer_eps = 1e-6f}}
#define MAMBA2_SHAPE(NAME, DM, NL, V, PADDED, NS, HD, GROUPS, TIED)                                             \
    {NAME, {.arch = ARCH_MAMBA2, .n_layer = NL, .d_model = DM, .d_inner = 2 * DM, .d_state = NS, .d_conv = 4,  \
            .vocab_size = V, .padded_vocab = PADDED, .norm_eps = 1e-5f, .tied_head = TIED,                      \
            .n_heads = 2 * DM / HD, .head_dim = HD, .n_groups = GROUPS, .dt_limit_lo = 0.0f,                   \
            .dt_limit_hi = INFINITY}}

static const Shape SHAPES[] = {
    MAMBA1_SHAPE("tiny", 64, 2, 512),
    MAMBA1_SHAPE("130m", 768, 24, 50280),
    MAMBA1_SHAPE("370m", 1024, 48, 50280),
    MAMBA1_SHAPE("790m", 1536, 48, 50280),
    MAMBA1_SHAPE("1.4b", 2048, 48, 50280),
    MAMBA1_SHAPE("2.8b", 2560, 64, 50280),
    MAMBA2_SHAPE("mamba2-tiny", 64, 2, 512, 512, 16, 16, 2, 1),
    MAMBA2_SHAPE("mamba2-130m", 768, 24, 50277, 50288, 128, 64, 1, 1),
    MAMBA2_SHAPE("mamba2-370m", 1024, 48, 50277, 50288, 128, 64, 1, 1),
    MAMBA2_SHAPE("mamba2-780m", 1536, 48, 50277, 50288, 128, 64, 1, 1),
    MAMBA2_SHAPE("mamba2-1.3b", 2048, 48, 50277, 50288, 128, 64, 1, 1),
    MAMBA2_SHAPE("mamba2-2.7b", 2560, 64, 50277, 50288, 128, 64, 1, 1),
    MAMBA2_SHAPE("codestral-7b", 4096, 64, 32768, 32768, 128, 64, 8, 0),
    FALCON_SHAPE("falcon-mamba-tiny", 64, 2, 512),
    FALCON_SHAPE("falcon-mamba-7b", 4096, 64, 65024),
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
    else if (!strcmp(kind, "D") || !strcmp(kind, "norm") || !strcmp(kind, "norm_f") || !strcmp(kind, "gate_norm"))
        what = NEAR_ONE;
    else if (!strcmp(kind, "dt_bias")) what = DT_BIAS;
    else if (!strcmp(kind, "conv_w")) what = CONV_W;
    else if (!strcmp(kind, "conv_b")) what = CONV_B;
    const float log_lo = logf(1e-3f), log_hi = logf(1e-1f), conv_scale = 1.0f / sqrtf((float)c->d_conv);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) {
        float r = uniform_at(seed, i);
        switch (what) {
        case A_LOG:                                                          /* S4D-real init: A = -(1..N) */
            /* (Mamba-2, one per head: A uniform in [-16, -1]) */
            out[i] = s->ndim == 1 ? logf(1.0f + 7.5f * (r + 1.0f)) : logf((float)(i % s->cols + 1));
            break;
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

enum { INIT_SHAPE = 1, INIT_DTYPE, INIT_SEED };

static const Option INIT_OPTIONS[] = {
    {INIT_SHAPE, "--shape", "NAME", "a published shape (required): Mamba-1 tiny, 130m, 370m, 790m, 1.4b, 2.8b; "
                                    "Mamba-2 mamba2-tiny, mamba2-130m, mamba2-370m, mamba2-780m, mamba2-1.3b, "
                                    "mamba2-2.7b, codestral-7b; Falcon-Mamba falcon-mamba-tiny, falcon-mamba-7b"},
    {INIT_DTYPE, "--dtype", "f32|f16|bf16|q8|q4", "how the matrices are stored (default bf16)"},
    {INIT_SEED, "-s|--seed", "N", "the weights' seed (default 1)"},
    {0},
};

static const Command INIT_COMMAND = {
    "init", "mamba init --shape NAME [--dtype bf16] [--seed N] OUT.bin",
    "Writes a random model of a published shape (no tokenizer), for benchmarks and tests without\n"
    "downloads.",
    INIT_OPTIONS, 0,
};

void cmd_init(int argc, char **argv) {
    const char *shape = NULL, *out = NULL, *value;
    DType dtype = DTYPE_BF16;
    uint64_t seed = 1;
    OptionParser p;
    options_begin(&p, &INIT_COMMAND, argc, argv);
    for (int id; (id = options_next(&p, &value)) != OPT_END;) {
        if (id == INIT_SHAPE) shape = value;
        else if (id == INIT_DTYPE) dtype = dtype_value(p.name, value);
        else if (id == INIT_SEED) seed = (uint64_t)parse_long(p.name, value, 0, LONG_MAX);
        else if (!out) out = value;
        else die("init: unexpected argument %s", value);
    }
    if (!shape || !out) die("usage: %s", INIT_COMMAND.synopsis);
    const Shape *sh = NULL;
    for (size_t i = 0; i < sizeof SHAPES / sizeof *SHAPES; i++)
        if (!strcmp(SHAPES[i].name, shape)) sh = &SHAPES[i];
    if (!sh) {
        char known[512] = "";
        for (size_t i = 0; i < sizeof SHAPES / sizeof *SHAPES; i++)
            snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", i ? ", " : "", SHAPES[i].name);
        die("--shape must be one of %s; got '%s'", known, shape);
    }
    Config c = sh->config;
    c.dtype = dtype;
    InitSource src = {&c, seed};
    TokenizerInfo tok = {.bos_id = -1, .eos_id = -1, .pad_id = -1};
    write_checkpoint(out, &c, init_tensor, &src, &tok, "init");
    fprintf(stderr, "wrote %s: shape %s, %s, %llu parameters, seed %llu\n", out, sh->name, dtype_name(dtype),
            (unsigned long long)model_param_count(&c), (unsigned long long)seed);
}

