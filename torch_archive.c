/* torch_archive.c: reads the tensors of a torch.save file without running its pickle.
 *
 * Since torch 1.6 torch.save writes a zip archive (read here through libzip):
 *   <prefix>/data.pkl      the pickled object; for a checkpoint a dict of name -> tensor
 *   <prefix>/data/<key>    the raw bytes of each storage
 *   <prefix>/byteorder     "little" (absent in files of torch < 1.10, which were little-endian)
 * A pickle is a program for a small stack machine that may import and call any Python function,
 * so loading one runs whatever its writer chose. Here it is interpreted, not run: only the
 * opcodes torch.save writes for a state dict are known, and of the globals only OrderedDict, the
 * tensor and parameter rebuild functions and the storage types, each emulated by a few lines of
 * C; anything else is refused, naming it. A tensor is pickled as
 *   _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
 * and its storage as the persistent id ('storage', storage_type, key, location, numel), whose
 * bytes are the entry <prefix>/data/<key>. Every count, length, index and size product read from
 * the file is checked against a limit before it is used. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L   /* mmap, fstat */
#endif
#include "torch_archive.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zip.h>

#include "model.h"

#define TA_MAX_PICKLE (64u << 20)      /* data.pkl; a state dict of 32768 tensors needs ~3 MB */
#define TA_MAX_TENSORS 32768           /* as for safetensors (convert.c); a Mamba needs <= 10 243 */
#define TA_MAX_STORAGES 32768
#define TA_MAX_STACK (1u << 18)        /* torch's pickles batch SETITEMS by 1000: depth ~2000 */
#define TA_MAX_MARKS 64                /* MARKs open at once; torch's nest 3 deep */
#define TA_MAX_MEMO (1u << 20)         /* memo indices; torch memoizes ~14 objects a tensor */
#define TA_MAX_VALUES (1u << 21)       /* objects the pickle creates */
#define TA_MAX_ITEMS (1u << 23)        /* items of all its tuples, lists and dicts together */
#define TA_MAX_NAME 4096               /* bytes of a tensor name */
#define TA_MAX_KEY 64                  /* bytes of a storage key (torch's are decimal numbers) */
#define TA_MAX_GLOBAL 256              /* bytes of a GLOBAL's module or name */
#define TA_MAX_ELEMENTS (1ull << 40)   /* of a tensor or storage */
#define TA_MAX_DEFLATE_RATIO 1032      /* deflate's largest possible expansion */

/* ---------------------------------------------------------------- the archive */

typedef struct {
    char *key;
    int type;              /* index into STORAGE_TYPES */
    uint64_t numel;
    int64_t entry;         /* zip index of <prefix>/data/<key>, -1 until a tensor needs it */
    uint64_t entry_bytes;
    int stored;            /* not compressed: zip_fseek works */
} Storage;

typedef struct {
    int storage;
    uint64_t offset;       /* in elements */
} TensorRef;

struct TorchArchive {
    char *label;           /* "PATH: " before every message ("" for bytes) */
    void *map;             /* the mapped file (torch_archive_open), else NULL */
    size_t map_bytes;
    size_t n_bytes;        /* the archive's size */
    zip_t *zip;
    char *prefix;          /* "archive/", up to and with the slash before data.pkl */
    TorchTensor *tensors;
    TensorRef *refs;
    int n, cap;
    Storage *storages;
    int n_storages, storages_cap;
    uint8_t *buf;          /* what torch_archive_data returned last */
    size_t buf_cap;
    char *err;             /* where the call in progress reports */
    size_t err_len;
};

static const struct { const char *name; int dtype, size; } STORAGE_TYPES[] = {
    {"FloatStorage", DTYPE_F32, 4}, {"HalfStorage", DTYPE_F16, 2}, {"BFloat16Storage", DTYPE_BF16, 2},
    {"DoubleStorage", -1, 8}, {"LongStorage", -1, 8}, {"IntStorage", -1, 4}, {"ShortStorage", -1, 2},
    {"CharStorage", -1, 1}, {"ByteStorage", -1, 1}, {"BoolStorage", -1, 1},
    {"ComplexDoubleStorage", -1, 16}, {"ComplexFloatStorage", -1, 8}, {"QInt8Storage", -1, 1},
    {"QUInt8Storage", -1, 1}, {"QInt32Storage", -1, 4}, {"QUInt4x2Storage", -1, 1}, {"QUInt2x4Storage", -1, 1},
};

static int vfail(TorchArchive *a, const char *fmt, va_list ap) {
    if (!a->err || !a->err_len) return -1;
    int k = snprintf(a->err, a->err_len, "%s", a->label);
    if (k >= 0 && (size_t)k < a->err_len) vsnprintf(a->err + k, a->err_len - k, fmt, ap);
    return -1;
}

/* Writes "LABEL" + the message into the caller's err; returns -1. */
static int fail(TorchArchive *a, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfail(a, fmt, ap);
    va_end(ap);
    return -1;
}

/* s[0..n) fit for a one-line message: printable ASCII as is, other bytes as '?', cut at 60. */
static const char *shown(char *out, size_t cap, const void *s, size_t n) {
    const unsigned char *c = s;
    size_t k = 0;
    for (size_t i = 0; i < n && k + 4 < cap; i++) {
        if (i == 60) {
            memcpy(out + k, "...", 3), k += 3;
            break;
        }
        out[k++] = c[i] >= 0x20 && c[i] < 0x7f ? (char)c[i] : '?';
    }
    out[k] = 0;
    return out;
}

/* Whether s[0..n) holds no control characters (nor spaces, unless spaces is 0). Names that go
 * into messages are checked, so that every message stays one line. */
static int printable(const void *s, size_t n, int no_spaces) {
    const unsigned char *c = s;
    for (size_t i = 0; i < n; i++)
        if (c[i] < 0x20 + no_spaces || c[i] == 0x7f) return 0;
    return 1;
}

static char *concat(const char *a, const char *b, size_t b_len) {
    size_t n = strlen(a);
    char *s = malloc(n + b_len + 1);
    if (!s) return NULL;
    memcpy(s, a, n);
    memcpy(s + n, b, b_len);
    s[n + b_len] = 0;
    return s;
}

/* ---------------------------------------------------------------- zip entries */

/* The entry's uncompressed size, after checking it can be read and is plausible for its
 * compressed size (so that no later allocation trusts a size the file cannot back). */
static int entry_size(TorchArchive *a, zip_int64_t index, const char *name, uint64_t *size, int *stored) {
    zip_stat_t st;
    if (zip_stat_index(a->zip, (zip_uint64_t)index, 0, &st) < 0)
        return fail(a, "cannot stat %s: %s", name, zip_strerror(a->zip));
    const zip_uint64_t need = ZIP_STAT_SIZE | ZIP_STAT_COMP_SIZE | ZIP_STAT_COMP_METHOD | ZIP_STAT_ENCRYPTION_METHOD;
    if ((st.valid & need) != need) return fail(a, "zip entry %s has no sizes", name);
    if (st.encryption_method != ZIP_EM_NONE) return fail(a, "zip entry %s is encrypted", name);
    if (st.comp_method != ZIP_CM_STORE && st.comp_method != ZIP_CM_DEFLATE)
        return fail(a, "zip entry %s uses compression method %d (only stored and deflated are read)", name,
                    (int)st.comp_method);
    if (st.comp_size > a->n_bytes ||
        (st.comp_method == ZIP_CM_STORE ? st.size != st.comp_size : st.size / TA_MAX_DEFLATE_RATIO > st.comp_size + 1))
        return fail(a, "zip entry %s claims %llu bytes from %llu compressed: damaged archive", name,
                    (unsigned long long)st.size, (unsigned long long)st.comp_size);
    *size = st.size;
    if (stored) *stored = st.comp_method == ZIP_CM_STORE;
    return 0;
}

/* Skips off bytes of an open entry: a seek when stored, else reading them. */
static int skip_bytes(TorchArchive *a, zip_file_t *f, int stored, uint64_t off, const char *name) {
    if (!off) return 0;
    if (stored) {
        if (zip_fseek(f, (zip_int64_t)off, SEEK_SET) == 0) return 0;
        return fail(a, "cannot read %s: %s", name, zip_file_strerror(f));
    }
    char scratch[16384];
    while (off) {
        zip_int64_t r = zip_fread(f, scratch, off < sizeof scratch ? off : sizeof scratch);
        if (r < 0) return fail(a, "cannot read %s: %s", name, zip_file_strerror(f));
        if (r == 0) return fail(a, "%s is shorter than its stated size", name);
        off -= (uint64_t)r;
    }
    return 0;
}

static int read_exactly(TorchArchive *a, zip_file_t *f, uint8_t *dst, uint64_t len, const char *name) {
    for (uint64_t done = 0; done < len;) {
        uint64_t chunk = len - done < (1u << 30) ? len - done : (1u << 30);
        zip_int64_t r = zip_fread(f, dst + done, chunk);
        if (r < 0) return fail(a, "cannot read %s: %s", name, zip_file_strerror(f));
        if (r == 0) return fail(a, "%s is shorter than its stated size", name);
        done += (uint64_t)r;
    }
    return 0;
}

/* Reads len bytes at off of entry index (of size bytes) into dst. A read to the end asks for
 * one byte more, which is when libzip checks the entry's CRC. */
static int read_entry(TorchArchive *a, zip_int64_t index, const char *name, uint64_t size, int stored,
                      uint64_t off, uint64_t len, uint8_t *dst) {
    zip_file_t *f = zip_fopen_index(a->zip, (zip_uint64_t)index, 0);
    if (!f) return fail(a, "cannot read %s: %s", name, zip_strerror(a->zip));
    int rc = skip_bytes(a, f, stored, off, name);
    if (!rc) rc = read_exactly(a, f, dst, len, name);
    if (!rc && off + len == size) {
        uint8_t extra;
        zip_int64_t r = zip_fread(f, &extra, 1);
        if (r < 0) rc = fail(a, "cannot read %s: %s", name, zip_file_strerror(f));
        else if (r > 0) rc = fail(a, "%s is longer than its stated size", name);
    }
    int close_err = zip_fclose(f);
    if (!rc && close_err) {
        zip_error_t e;
        zip_error_init_with_code(&e, close_err);
        rc = fail(a, "cannot read %s: %s", name, zip_error_strerror(&e));
        zip_error_fini(&e);
    }
    return rc;
}

/* ---------------------------------------------------------------- pickle values */

enum { V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_TUPLE, V_LIST, V_DICT, V_GLOBAL, V_STORAGE, V_TENSOR };
static const char *const KIND_NAMES[] = {"None", "bool", "int", "float", "str", "tuple", "list",
                                         "dict", "global", "storage", "tensor"};

enum { G_ORDERED_DICT, G_REBUILD_TENSOR, G_REBUILD_PARAMETER, G_REBUILD_PARAMETER_WITH_STATE, G_STORAGE_TYPE };

typedef struct Value Value;
struct Value {
    int kind;
    union {
        int64_t i;                                      /* V_BOOL, V_INT; V_STORAGE: its index */
        double f;
        struct { const uint8_t *s; size_t len; } str;   /* in the pickle's bytes, no NUL */
        struct { Value **item; uint32_t n, cap; } seq;  /* V_TUPLE, V_LIST; V_DICT: key, value, ... */
        struct { int which, storage_type; } global;
        Value *args;                                    /* V_TENSOR: _rebuild_tensor_v2's tuple */
    };
};

typedef struct ValueChunk {
    struct ValueChunk *next;
    int used;
    Value v[1024];
} ValueChunk;

typedef struct {
    TorchArchive *a;
    const uint8_t *b;
    size_t n, pos, op_at;  /* op_at: where the opcode being run starts */
    Value **stack;
    size_t sp, stack_cap;
    size_t mark[TA_MAX_MARKS];
    int marks;
    Value **memo;
    size_t memo_cap, memo_count;
    ValueChunk *chunks;
    size_t values, items;
    int32_t *slot;         /* storage key hash -> index + 1 */
} Pickle;

#define SLOTS (2 * TA_MAX_STORAGES)

static int bad(Pickle *p, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfail(p->a, fmt, ap);
    va_end(ap);
    return -1;
}

static Value *new_value(Pickle *p, int kind) {
    if (p->values == TA_MAX_VALUES) {
        bad(p, "data.pkl creates more than %u objects (the limit)", TA_MAX_VALUES);
        return NULL;
    }
    if (!p->chunks || p->chunks->used == (int)(sizeof p->chunks->v / sizeof *p->chunks->v)) {
        ValueChunk *c = malloc(sizeof *c);
        if (!c) {
            bad(p, "out of memory parsing data.pkl");
            return NULL;
        }
        c->next = p->chunks, c->used = 0;
        p->chunks = c;
    }
    Value *v = &p->chunks->v[p->chunks->used++];
    p->values++;
    memset(v, 0, sizeof *v);
    v->kind = kind;
    return v;
}

static void free_values(Pickle *p) {
    while (p->chunks) {
        ValueChunk *c = p->chunks;
        for (int i = 0; i < c->used; i++)
            if (c->v[i].kind == V_TUPLE || c->v[i].kind == V_LIST || c->v[i].kind == V_DICT) free(c->v[i].seq.item);
        p->chunks = c->next;
        free(c);
    }
}

static int seq_add(Pickle *p, Value *c, Value *x) {
    if (p->items == TA_MAX_ITEMS) return bad(p, "data.pkl holds more than %u items (the limit)", TA_MAX_ITEMS);
    if (c->seq.n == c->seq.cap) {
        uint32_t cap = c->seq.cap ? 2 * c->seq.cap : 8;
        Value **item = realloc(c->seq.item, cap * sizeof *item);
        if (!item) return bad(p, "out of memory parsing data.pkl");
        c->seq.item = item, c->seq.cap = cap;
    }
    c->seq.item[c->seq.n++] = x;
    p->items++;
    return 0;
}

static int is_str(const Value *v, const char *s) {
    return v->kind == V_STR && v->str.len == strlen(s) && !memcmp(v->str.s, s, v->str.len);
}

/* ---------------------------------------------------------------- the stack machine */

static size_t frame_base(const Pickle *p) { return p->marks ? p->mark[p->marks - 1] : 0; }

static int push(Pickle *p, Value *v) {
    if (!v) return -1;
    if (p->sp == p->stack_cap) {
        if (p->sp == TA_MAX_STACK) return bad(p, "data.pkl's stack grows deeper than %u (the limit)", TA_MAX_STACK);
        size_t cap = p->stack_cap ? 2 * p->stack_cap : 256;
        Value **s = realloc(p->stack, cap * sizeof *s);
        if (!s) return bad(p, "out of memory parsing data.pkl");
        p->stack = s, p->stack_cap = cap;
    }
    p->stack[p->sp++] = v;
    return 0;
}

static int pop(Pickle *p, Value **v) {
    *v = NULL;
    if (p->sp == frame_base(p)) return bad(p, "data.pkl: pickle stack underflow at offset %zu", p->op_at);
    *v = p->stack[--p->sp];
    return 0;
}

static Value *top(Pickle *p) {
    if (p->sp == frame_base(p)) {
        bad(p, "data.pkl: pickle stack underflow at offset %zu", p->op_at);
        return NULL;
    }
    return p->stack[p->sp - 1];
}

/* Ends the innermost MARK: its items are stack[*base..sp). */
static int pop_mark(Pickle *p, size_t *base) {
    if (!p->marks) return bad(p, "data.pkl: opcode at offset %zu needs a MARK, and none is open", p->op_at);
    *base = p->mark[--p->marks];
    return 0;
}

static const uint8_t *take(Pickle *p, uint64_t n) {
    if (n > p->n - p->pos) {
        bad(p, "data.pkl is truncated: the opcode at offset %zu needs %llu more bytes", p->op_at, (unsigned long long)n);
        return NULL;
    }
    const uint8_t *s = p->b + p->pos;
    p->pos += n;
    return s;
}

static int read_le(Pickle *p, int n, uint64_t *out) {
    *out = 0;
    const uint8_t *s = take(p, (uint64_t)n);
    if (!s) return -1;
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | s[i];
    *out = v;
    return 0;
}

static int push_int(Pickle *p, int64_t i) {
    Value *v = new_value(p, V_INT);
    if (v) v->i = i;
    return push(p, v);
}

static int op_int(Pickle *p, int n, int is_signed) {
    uint64_t u;
    if (read_le(p, n, &u)) return -1;
    return push_int(p, is_signed ? (int64_t)(int32_t)(uint32_t)u : (int64_t)u);
}

/* LONG1: a little-endian two's-complement integer of up to 8 bytes here. */
static int op_long1(Pickle *p) {
    uint64_t n, u = 0;
    if (read_le(p, 1, &n)) return -1;
    if (n > 8) return bad(p, "data.pkl: integer of %d bytes at offset %zu (at most 8)", (int)n, p->op_at);
    if (read_le(p, (int)n, &u)) return -1;
    if (n && n < 8 && u >> (8 * n - 1)) u |= ~0ull << (8 * n);
    return push_int(p, (int64_t)u);
}

static int op_float(Pickle *p) {
    const uint8_t *s = take(p, 8);
    if (!s) return -1;
    uint64_t u = 0;
    for (int i = 0; i < 8; i++) u = u << 8 | s[i];      /* big-endian */
    Value *v = new_value(p, V_FLOAT);
    if (v) memcpy(&v->f, &u, sizeof u);
    return push(p, v);
}

static int op_string(Pickle *p, int len_bytes) {
    uint64_t len;
    if (read_le(p, len_bytes, &len)) return -1;
    const uint8_t *s = take(p, len);
    if (!s) return -1;
    Value *v = new_value(p, V_STR);
    if (v) v->str.s = s, v->str.len = (size_t)len;
    return push(p, v);
}

static int push_simple(Pickle *p, int kind, int64_t i) {
    Value *v = new_value(p, kind);
    if (v) v->i = i;
    return push(p, v);
}

static int make_tuple(Pickle *p, size_t base) {
    size_t n = p->sp - base;
    Value *t = new_value(p, V_TUPLE);
    if (!t) return -1;
    for (size_t i = 0; i < n; i++)
        if (seq_add(p, t, p->stack[base + i])) return -1;
    p->sp = base;
    return push(p, t);
}

static int op_tuple_n(Pickle *p, size_t n) {
    if (p->sp - frame_base(p) < n) return bad(p, "data.pkl: pickle stack underflow at offset %zu", p->op_at);
    return make_tuple(p, p->sp - n);
}

static int op_tuple_mark(Pickle *p) {
    size_t base = 0;
    return pop_mark(p, &base) ? -1 : make_tuple(p, base);
}

static int op_mark(Pickle *p) {
    if (p->marks == TA_MAX_MARKS) return bad(p, "data.pkl nests more than %d MARKs (the limit)", TA_MAX_MARKS);
    p->mark[p->marks++] = p->sp;
    return 0;
}

/* SETITEMS and APPENDS: the MARK's items go into the dict or list below it. */
static int op_extend(Pickle *p, int kind) {
    size_t base = 0;
    if (pop_mark(p, &base)) return -1;
    if (base == frame_base(p)) return bad(p, "data.pkl: pickle stack underflow at offset %zu", p->op_at);
    Value *c = p->stack[base - 1];
    if (c->kind != kind)
        return bad(p, "data.pkl: %s on a %s at offset %zu", kind == V_DICT ? "SETITEMS" : "APPENDS",
                   KIND_NAMES[c->kind], p->op_at);
    if (kind == V_DICT && (p->sp - base) % 2)
        return bad(p, "data.pkl: SETITEMS at offset %zu has an odd number of items", p->op_at);
    for (size_t i = base; i < p->sp; i++)
        if (seq_add(p, c, p->stack[i])) return -1;
    p->sp = base;
    return 0;
}

static int op_setitem(Pickle *p) {
    Value *k, *v, *d;
    if (pop(p, &v) || pop(p, &k) || !(d = top(p))) return -1;
    if (d->kind != V_DICT) return bad(p, "data.pkl: SETITEM on a %s at offset %zu", KIND_NAMES[d->kind], p->op_at);
    return seq_add(p, d, k) || seq_add(p, d, v) ? -1 : 0;
}

static int op_append(Pickle *p) {
    Value *v, *l;
    if (pop(p, &v) || !(l = top(p))) return -1;
    if (l->kind != V_LIST) return bad(p, "data.pkl: APPEND on a %s at offset %zu", KIND_NAMES[l->kind], p->op_at);
    return seq_add(p, l, v);
}

/* BUILD sets an object's state: for torch's OrderedDict, attributes such as _metadata, which
 * say nothing about the tensors and are dropped. */
static int op_build(Pickle *p) {
    Value *state, *obj;
    if (pop(p, &state) || !(obj = top(p))) return -1;
    if (obj->kind != V_DICT)
        return bad(p, "data.pkl: BUILD on a %s at offset %zu is not supported", KIND_NAMES[obj->kind], p->op_at);
    return 0;
}

static int memo_put(Pickle *p, uint64_t index) {
    Value *v = top(p);
    if (!v) return -1;
    if (index >= TA_MAX_MEMO) return bad(p, "data.pkl: memo index %llu is too large (the limit is %u)",
                                         (unsigned long long)index, TA_MAX_MEMO);
    if (index >= p->memo_cap) {
        size_t cap = p->memo_cap ? p->memo_cap : 64;
        while (cap <= index) cap *= 2;
        Value **m = realloc(p->memo, cap * sizeof *m);
        if (!m) return bad(p, "out of memory parsing data.pkl");
        memset(m + p->memo_cap, 0, (cap - p->memo_cap) * sizeof *m);
        p->memo = m, p->memo_cap = cap;
    }
    if (!p->memo[index]) p->memo_count++;
    p->memo[index] = v;
    return 0;
}

static int op_put(Pickle *p, int n) {
    uint64_t index;
    return read_le(p, n, &index) ? -1 : memo_put(p, index);
}

static int op_get(Pickle *p, int n) {
    uint64_t index;
    if (read_le(p, n, &index)) return -1;
    if (index >= p->memo_cap || !p->memo[index])
        return bad(p, "data.pkl: memo entry %llu is read before it is written", (unsigned long long)index);
    return push(p, p->memo[index]);
}

/* The globals a state dict needs; anything else (os.system, builtins.eval, ...) is refused. */
static int push_global(Pickle *p, const uint8_t *mod, size_t mod_len, const uint8_t *name, size_t name_len) {
    Value *g = new_value(p, V_GLOBAL);
    if (!g) return -1;
#define IS(s, n, lit) ((n) == sizeof(lit) - 1 && !memcmp((s), (lit), (n)))
    if (IS(mod, mod_len, "collections") && IS(name, name_len, "OrderedDict")) g->global.which = G_ORDERED_DICT;
    else if (IS(mod, mod_len, "torch._utils") && IS(name, name_len, "_rebuild_tensor_v2"))
        g->global.which = G_REBUILD_TENSOR;
    else if (IS(mod, mod_len, "torch._utils") && IS(name, name_len, "_rebuild_parameter"))
        g->global.which = G_REBUILD_PARAMETER;
    else if (IS(mod, mod_len, "torch._utils") && IS(name, name_len, "_rebuild_parameter_with_state"))
        g->global.which = G_REBUILD_PARAMETER_WITH_STATE;
    else {
        g->global.which = -1;
        for (size_t i = 0; IS(mod, mod_len, "torch") && i < sizeof STORAGE_TYPES / sizeof *STORAGE_TYPES; i++)
            if (name_len == strlen(STORAGE_TYPES[i].name) && !memcmp(name, STORAGE_TYPES[i].name, name_len))
                g->global.which = G_STORAGE_TYPE, g->global.storage_type = (int)i;
    }
#undef IS
    if (g->global.which < 0) {
        char m[72], n[72];
        return bad(p, "data.pkl: pickle global %s.%s is not allowed", shown(m, sizeof m, mod, mod_len),
                   shown(n, sizeof n, name, name_len));
    }
    return push(p, g);
}

/* GLOBAL: "module\nname\n". */
static int global_line(Pickle *p, const uint8_t **s, size_t *len) {
    *s = NULL, *len = 0;
    size_t left = p->n - p->pos;
    const uint8_t *nl = memchr(p->b + p->pos, '\n', left < TA_MAX_GLOBAL + 1 ? left : TA_MAX_GLOBAL + 1);
    if (!nl) return bad(p, "data.pkl: GLOBAL at offset %zu lacks a name line of at most %d bytes", p->op_at, TA_MAX_GLOBAL);
    *s = p->b + p->pos, *len = (size_t)(nl - *s);
    p->pos += *len + 1;
    return 0;
}

static int op_global(Pickle *p) {
    const uint8_t *mod, *name;
    size_t mod_len, name_len;
    if (global_line(p, &mod, &mod_len) || global_line(p, &name, &name_len)) return -1;
    return push_global(p, mod, mod_len, name, name_len);
}

static int op_stack_global(Pickle *p) {
    Value *mod, *name;
    if (pop(p, &name) || pop(p, &mod)) return -1;
    if (mod->kind != V_STR || name->kind != V_STR)
        return bad(p, "data.pkl: STACK_GLOBAL at offset %zu takes two strings", p->op_at);
    return push_global(p, mod->str.s, mod->str.len, name->str.s, name->str.len);
}

static uint32_t key_hash(const uint8_t *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 16777619u;
    return h;
}

/* The index of storage key (declared once, or again with the same type and size). */
static int storage_index(Pickle *p, const Value *key, int type, uint64_t numel) {
    TorchArchive *a = p->a;
    char shown_key[72];
    if (!p->slot && !(p->slot = calloc(SLOTS, sizeof *p->slot))) return bad(p, "out of memory parsing data.pkl");
    uint32_t h = key_hash(key->str.s, key->str.len) % SLOTS;
    for (; p->slot[h]; h = (h + 1) % SLOTS) {
        Storage *s = &a->storages[p->slot[h] - 1];
        if (strlen(s->key) != key->str.len || memcmp(s->key, key->str.s, key->str.len)) continue;
        if (s->type != type || s->numel != numel)
            return bad(p, "data.pkl declares storage %s twice, with different types or sizes",
                       shown(shown_key, sizeof shown_key, key->str.s, key->str.len));
        return p->slot[h] - 1;
    }
    if (a->n_storages == TA_MAX_STORAGES) return bad(p, "data.pkl has more than %d storages (the limit)", TA_MAX_STORAGES);
    if (a->n_storages == a->storages_cap) {
        int cap = a->storages_cap ? 2 * a->storages_cap : 64;
        Storage *s = realloc(a->storages, cap * sizeof *s);
        if (!s) return bad(p, "out of memory parsing data.pkl");
        a->storages = s, a->storages_cap = cap;
    }
    Storage *s = &a->storages[a->n_storages];
    if (!(s->key = concat("", (const char *)key->str.s, key->str.len))) return bad(p, "out of memory parsing data.pkl");
    s->type = type, s->numel = numel, s->entry = -1, s->entry_bytes = 0, s->stored = 0;
    p->slot[h] = ++a->n_storages;
    return a->n_storages - 1;
}

/* BINPERSID: torch's persistent id ('storage', storage_type, key, location, numel). */
static int op_persid(Pickle *p) {
    Value *id;
    if (pop(p, &id)) return -1;
    if (id->kind != V_TUPLE || id->seq.n != 5 || !is_str(id->seq.item[0], "storage"))
        return bad(p, "data.pkl: persistent id at offset %zu is not ('storage', type, key, location, numel)", p->op_at);
    Value **f = id->seq.item;
    if (f[1]->kind != V_GLOBAL || f[1]->global.which != G_STORAGE_TYPE)
        return bad(p, "data.pkl: storage type at offset %zu is a %s, not a torch storage type", p->op_at, KIND_NAMES[f[1]->kind]);
    if (f[2]->kind != V_STR || !printable(f[2]->str.s, f[2]->str.len, 1) || !f[2]->str.len || f[2]->str.len > TA_MAX_KEY)
        return bad(p, "data.pkl: storage key at offset %zu is not 1 to %d printable characters", p->op_at, TA_MAX_KEY);
    if (f[3]->kind != V_STR) return bad(p, "data.pkl: storage location at offset %zu is not a string", p->op_at);
    if (f[4]->kind != V_INT || f[4]->i < 0 || (uint64_t)f[4]->i > TA_MAX_ELEMENTS)
        return bad(p, "data.pkl: storage size at offset %zu is not an integer in [0, 2^40]", p->op_at);
    int index = storage_index(p, f[2], f[1]->global.storage_type, (uint64_t)f[4]->i);
    return index < 0 ? -1 : push_simple(p, V_STORAGE, index);
}

/* REDUCE: callable(*args), for the few callables push_global lets in. */
static int op_reduce(Pickle *p) {
    Value *args, *f;
    if (pop(p, &args) || pop(p, &f)) return -1;
    if (f->kind != V_GLOBAL || args->kind != V_TUPLE)
        return bad(p, "data.pkl: REDUCE at offset %zu calls a %s with a %s", p->op_at, KIND_NAMES[f->kind], KIND_NAMES[args->kind]);
    uint32_t n = args->seq.n;
    Value **arg = args->seq.item;
    switch (f->global.which) {
    case G_ORDERED_DICT:
        if (n) return bad(p, "data.pkl: OrderedDict() with arguments at offset %zu is not supported", p->op_at);
        return push(p, new_value(p, V_DICT));
    case G_REBUILD_TENSOR: {
        if (n != 6 && n != 7) return bad(p, "data.pkl: _rebuild_tensor_v2 at offset %zu has %u arguments, not 6 or 7", p->op_at, n);
        if (arg[0]->kind != V_STORAGE)
            return bad(p, "data.pkl: _rebuild_tensor_v2 at offset %zu is given a %s, not a storage", p->op_at, KIND_NAMES[arg[0]->kind]);
        Value *t = new_value(p, V_TENSOR);
        if (t) t->args = args;
        return push(p, t);
    }
    case G_REBUILD_PARAMETER:
    case G_REBUILD_PARAMETER_WITH_STATE:   /* (data, requires_grad, backward_hooks[, state]) -> data */
        if (n != (f->global.which == G_REBUILD_PARAMETER ? 3u : 4u) || arg[0]->kind != V_TENSOR)
            return bad(p, "data.pkl: _rebuild_parameter at offset %zu is not given a tensor and its flags", p->op_at);
        return push(p, arg[0]);
    default:
        return bad(p, "data.pkl: REDUCE at offset %zu calls torch.%s, a storage type", p->op_at,
                   STORAGE_TYPES[f->global.storage_type].name);
    }
}

static int op_stop(Pickle *p, Value **result) {
    return pop(p, result);
}

static int unsupported(Pickle *p, uint8_t op) {
    if (op >= 0x20 && op < 0x7f)
        return bad(p, "data.pkl: pickle opcode 0x%02x ('%c') at offset %zu is not supported", op, op, p->op_at);
    return bad(p, "data.pkl: pickle opcode 0x%02x at offset %zu is not supported", op, p->op_at);
}

/* Runs one opcode; *result is set by STOP. */
static int step(Pickle *p, Value **result) {
    uint64_t u;
    p->op_at = p->pos;
    uint8_t op = p->b[p->pos++];
    switch (op) {
    case 0x80:  /* PROTO */
        if (read_le(p, 1, &u)) return -1;
        return u <= 5 ? 0 : bad(p, "data.pkl: pickle protocol %d is not supported", (int)u);
    case 0x95:  /* FRAME: a length prefix that only helps buffered readers */
        if (read_le(p, 8, &u)) return -1;
        return u <= p->n - p->pos ? 0 : bad(p, "data.pkl is truncated: a frame at offset %zu runs past its end", p->op_at);
    case '}': return push(p, new_value(p, V_DICT));         /* EMPTY_DICT */
    case ']': return push(p, new_value(p, V_LIST));         /* EMPTY_LIST */
    case ')': return push(p, new_value(p, V_TUPLE));        /* EMPTY_TUPLE */
    case '(': return op_mark(p);                            /* MARK */
    case 't': return op_tuple_mark(p);                      /* TUPLE */
    case 0x85: return op_tuple_n(p, 1);                     /* TUPLE1 */
    case 0x86: return op_tuple_n(p, 2);                     /* TUPLE2 */
    case 0x87: return op_tuple_n(p, 3);                     /* TUPLE3 */
    case 'X': return op_string(p, 4);                       /* BINUNICODE */
    case 0x8c: return op_string(p, 1);                      /* SHORT_BINUNICODE */
    case 0x8d: return op_string(p, 8);                      /* BINUNICODE8 */
    case 'J': return op_int(p, 4, 1);                       /* BININT */
    case 'K': return op_int(p, 1, 0);                       /* BININT1 */
    case 'M': return op_int(p, 2, 0);                       /* BININT2 */
    case 0x8a: return op_long1(p);                          /* LONG1 */
    case 'G': return op_float(p);                           /* BINFLOAT */
    case 'N': return push_simple(p, V_NONE, 0);             /* NONE */
    case 0x88: return push_simple(p, V_BOOL, 1);            /* NEWTRUE */
    case 0x89: return push_simple(p, V_BOOL, 0);            /* NEWFALSE */
    case 'q': return op_put(p, 1);                          /* BINPUT */
    case 'r': return op_put(p, 4);                          /* LONG_BINPUT */
    case 0x94: return memo_put(p, p->memo_count);           /* MEMOIZE */
    case 'h': return op_get(p, 1);                          /* BINGET */
    case 'j': return op_get(p, 4);                          /* LONG_BINGET */
    case 'c': return op_global(p);                          /* GLOBAL */
    case 0x93: return op_stack_global(p);                   /* STACK_GLOBAL */
    case 'R': return op_reduce(p);                          /* REDUCE */
    case 'Q': return op_persid(p);                          /* BINPERSID */
    case 's': return op_setitem(p);                         /* SETITEM */
    case 'u': return op_extend(p, V_DICT);                  /* SETITEMS */
    case 'a': return op_append(p);                          /* APPEND */
    case 'e': return op_extend(p, V_LIST);                  /* APPENDS */
    case 'b': return op_build(p);                           /* BUILD */
    case '.': return op_stop(p, result);                    /* STOP */
    default: return unsupported(p, op);
    }
}

static int run_pickle(Pickle *p, Value **result) {
    *result = NULL;
    while (!*result) {
        if (p->pos == p->n) return bad(p, "data.pkl is truncated: it ends without a STOP opcode");
        if (step(p, result)) return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- tensors */

/* The entry of a storage a tensor uses: present, and exactly numel elements long. */
static int resolve_storage(TorchArchive *a, int index) {
    Storage *s = &a->storages[index];
    if (s->entry >= 0) return 0;
    char *name = malloc(strlen(a->prefix) + 5 + strlen(s->key) + 1);
    if (!name) return fail(a, "out of memory");
    sprintf(name, "%sdata/%s", a->prefix, s->key);
    zip_int64_t entry = zip_name_locate(a->zip, name, ZIP_FL_ENC_RAW);
    int rc = entry < 0 ? fail(a, "storage entry %s is missing", name)
                       : entry_size(a, entry, name, &s->entry_bytes, &s->stored);
    uint64_t need = s->numel * (uint64_t)STORAGE_TYPES[s->type].size;
    if (!rc && s->entry_bytes != need)
        rc = fail(a, "storage entry %s has %llu bytes, but its %llu elements of torch.%s need %llu", name,
                  (unsigned long long)s->entry_bytes, (unsigned long long)s->numel, STORAGE_TYPES[s->type].name,
                  (unsigned long long)need);
    free(name);
    if (!rc) s->entry = entry;
    return rc;
}

static void format_dims(char *out, size_t cap, Value *const *v, uint32_t n) {
    size_t k = (size_t)snprintf(out, cap, "(");
    for (uint32_t i = 0; i < n && k < cap; i++)
        k += (size_t)snprintf(out + k, cap - k, "%s%lld", i ? ", " : "", (long long)v[i]->i);
    if (k < cap) snprintf(out + k, cap - k, ")");
}

/* The shape of _rebuild_tensor_v2's size tuple, with a strided layout that must be torch's
 * contiguous one (a size-1 dimension's stride does not matter, as for torch's is_contiguous). */
static int tensor_layout(TorchArchive *a, const char *name, Value **arg, TorchTensor *t, uint64_t *numel) {
    Value *size = arg[2], *stride = arg[3];
    if (size->kind != V_TUPLE || stride->kind != V_TUPLE || size->seq.n != stride->seq.n)
        return fail(a, "tensor %s: size and stride are not tuples of one length", name);
    if (size->seq.n > 4) return fail(a, "tensor %s has %u dimensions (at most 4)", name, size->seq.n);
    t->ndim = (int)size->seq.n;
    *numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        Value *v = size->seq.item[d];
        if (v->kind != V_INT || v->i < 0 || (uint64_t)v->i > TA_MAX_ELEMENTS)
            return fail(a, "tensor %s has a bad size", name);
        t->shape[d] = (uint64_t)v->i;
        if (t->shape[d] && *numel > TA_MAX_ELEMENTS / t->shape[d])   /* checked before it can wrap */
            return fail(a, "tensor %s is implausibly large (over 2^40 elements)", name);
        *numel *= t->shape[d];
    }
    for (int d = 0; d < t->ndim; d++)
        if (stride->seq.item[d]->kind != V_INT) return fail(a, "tensor %s has a bad stride", name);
    uint64_t expect = 1;
    for (int d = t->ndim - 1; d >= 0 && *numel; d--) {   /* an empty tensor has no layout */
        Value *v = stride->seq.item[d];
        if (t->shape[d] != 1 && (v->i < 0 || (uint64_t)v->i != expect)) {
            char sz[128], st[128];
            format_dims(sz, sizeof sz, size->seq.item, size->seq.n);
            format_dims(st, sizeof st, stride->seq.item, stride->seq.n);
            return fail(a, "tensor %s is non-contiguous (stride %s for size %s); save it after .contiguous()", name, st, sz);
        }
        expect *= t->shape[d];
    }
    return 0;
}

static int add_tensor(TorchArchive *a, const Value *key, const Value *tensor) {
    char name[72];
    shown(name, sizeof name, key->str.s, key->str.len);
    if (a->n == TA_MAX_TENSORS) return fail(a, "data.pkl has more than %d tensors (the limit)", TA_MAX_TENSORS);
    if (key->str.len > TA_MAX_NAME) return fail(a, "tensor name %s is longer than %d bytes", name, TA_MAX_NAME);
    if (memchr(key->str.s, 0, key->str.len)) return fail(a, "tensor name %s holds a NUL byte", name);
    Value **arg = tensor->args->seq.item;
    TorchTensor t = {0};
    uint64_t numel = 0;
    if (tensor_layout(a, name, arg, &t, &numel)) return -1;
    int si = (int)arg[0]->i;
    Storage *s = &a->storages[si];
    if (arg[1]->kind != V_INT || arg[1]->i < 0) return fail(a, "tensor %s has a bad storage offset", name);
    uint64_t offset = (uint64_t)arg[1]->i;
    if (numel > s->numel || offset > s->numel - numel)
        return fail(a, "tensor %s: elements [%llu, %llu + %llu) lie outside its storage of %llu elements", name,
                    (unsigned long long)offset, (unsigned long long)offset, (unsigned long long)numel,
                    (unsigned long long)s->numel);
    if (resolve_storage(a, si)) return -1;
    t.dtype = STORAGE_TYPES[s->type].dtype;
    t.bytes = numel * (uint64_t)STORAGE_TYPES[s->type].size;
    if (a->n == a->cap) {
        int cap = a->cap ? 2 * a->cap : 64;
        TorchTensor *ts = realloc(a->tensors, cap * sizeof *ts);
        if (ts) a->tensors = ts;
        TensorRef *rs = ts ? realloc(a->refs, cap * sizeof *rs) : NULL;
        if (!rs) return fail(a, "out of memory");
        a->refs = rs, a->cap = cap;
    }
    if (!(t.name = concat("", (const char *)key->str.s, key->str.len))) return fail(a, "out of memory");
    a->refs[a->n] = (TensorRef){si, offset};
    a->tensors[a->n++] = t;
    return 0;
}

static int compare_keys(const void *x, const void *y) {
    const Value *a = *(Value *const *)x, *b = *(Value *const *)y;
    size_t n = a->str.len < b->str.len ? a->str.len : b->str.len;
    int c = memcmp(a->str.s, b->str.s, n);
    return c ? c : (a->str.len > b->str.len) - (a->str.len < b->str.len);
}

/* A dict with one key twice is no state dict torch writes; which value would be meant? */
static int check_unique_keys(TorchArchive *a, const Value *dict) {
    Value **keys = malloc((dict->seq.n / 2 + 1) * sizeof *keys);
    if (!keys) return fail(a, "out of memory");
    size_t n = 0;
    for (uint32_t i = 0; i < dict->seq.n; i += 2)
        if (dict->seq.item[i]->kind == V_STR) keys[n++] = dict->seq.item[i];
    qsort(keys, n, sizeof *keys, compare_keys);
    int rc = 0;
    for (size_t i = 1; i < n && !rc; i++)
        if (!compare_keys(&keys[i - 1], &keys[i])) {
            char name[72];
            rc = fail(a, "data.pkl names tensor %s twice", shown(name, sizeof name, keys[i]->str.s, keys[i]->str.len));
        }
    free(keys);
    return rc;
}

/* The top-level dict's tensors, in its order; its other values are not weights and are skipped. */
static int collect_tensors(TorchArchive *a, const Value *top) {
    if (top->kind != V_DICT) return fail(a, "data.pkl holds a %s, not a dict of tensors", KIND_NAMES[top->kind]);
    if (check_unique_keys(a, top)) return -1;
    for (uint32_t i = 0; i < top->seq.n; i += 2) {
        const Value *k = top->seq.item[i], *v = top->seq.item[i + 1];
        if (v->kind != V_TENSOR) continue;
        if (k->kind != V_STR) return fail(a, "data.pkl has a tensor under a %s key, not a name", KIND_NAMES[k->kind]);
        if (add_tensor(a, k, v)) return -1;
    }
    return 0;
}

static int parse_pickle(TorchArchive *a, const uint8_t *b, size_t n) {
    Pickle p = {.a = a, .b = b, .n = n};
    Value *result;
    int rc = run_pickle(&p, &result);
    if (!rc) rc = collect_tensors(a, result);
    free_values(&p);
    free(p.stack);
    free(p.memo);
    free(p.slot);
    return rc;
}

/* ---------------------------------------------------------------- opening */

/* Why bytes that are no zip archive cannot be read, for the formats one might hand over. */
static int not_a_zip(TorchArchive *a, const uint8_t *b, size_t n) {
    if (!n) return fail(a, "is empty");
    if (n >= 2 && b[0] == 0x80 && b[1] <= 5)
        return fail(a, "is a legacy (non-zip) torch file; re-save it with torch >= 1.6 (torch.save's default format)");
    if (n > 262 && !memcmp(b + 257, "ustar", 5))
        return fail(a, "is a legacy (tar) torch file; re-save it with torch >= 1.6");
    uint64_t header = 0;
    for (int i = 7; n >= 10 && i >= 0; i--) header = header << 8 | b[i];
    if (n >= 10 && header >= 2 && header <= n - 8 && b[8] == '{')
        return fail(a, "is a safetensors file, not a torch.save zip archive");
    return fail(a, "is not a torch.save file (not a zip archive)");
}

static int open_zip(TorchArchive *a, const void *data, size_t n) {
    zip_error_t e;
    zip_error_init(&e);
    zip_source_t *src = zip_source_buffer_create(data, n, 0, &e);
    if (src && !(a->zip = zip_open_from_source(src, ZIP_RDONLY | ZIP_CHECKCONS, &e))) zip_source_free(src);
    int rc = a->zip ? 0 : fail(a, "is a damaged or truncated zip archive (libzip: %s)", zip_error_strerror(&e));
    zip_error_fini(&e);
    return rc;
}

/* The one <prefix>/data.pkl; a TorchScript archive (torch.jit.save) is told apart. */
static int find_pickle(TorchArchive *a, zip_int64_t *index) {
    zip_int64_t n = zip_get_num_entries(a->zip, 0), found = -1;
    int count = 0;
    for (zip_int64_t i = 0; i < n; i++) {
        const char *name = zip_get_name(a->zip, (zip_uint64_t)i, ZIP_FL_ENC_RAW);
        const char *slash = name ? strchr(name, '/') : NULL;
        if (slash && slash != name && !strcmp(slash, "/data.pkl")) found = i, count++;
    }
    if (count != 1)
        return fail(a, count ? "holds %d data.pkl files, not one" : "has no <folder>/data.pkl: not a torch.save archive", count);
    const char *name = zip_get_name(a->zip, (zip_uint64_t)found, ZIP_FL_ENC_RAW);
    if (!printable(name, strlen(name), 0)) return fail(a, "the folder name of data.pkl holds control characters");
    if (!(a->prefix = concat("", name, strlen(name) - strlen("data.pkl")))) return fail(a, "out of memory");
    char *constants = concat(a->prefix, "constants.pkl", strlen("constants.pkl"));
    if (!constants) return fail(a, "out of memory");
    int scripted = zip_name_locate(a->zip, constants, ZIP_FL_ENC_RAW) >= 0;
    free(constants);
    if (scripted) return fail(a, "is a TorchScript archive (torch.jit.save), not a torch.save state dict");
    *index = found;
    return 0;
}

/* <prefix>/byteorder, when present, must say little: the tensors are used as they lie. */
static int check_byteorder(TorchArchive *a) {
    char *name = concat(a->prefix, "byteorder", strlen("byteorder"));
    if (!name) return fail(a, "out of memory");
    zip_int64_t index = zip_name_locate(a->zip, name, ZIP_FL_ENC_RAW);
    uint64_t size = 0;
    int stored, rc = index < 0 ? 0 : entry_size(a, index, name, &size, &stored);
    uint8_t text[16];
    if (index >= 0 && !rc && size > sizeof text) rc = fail(a, "%s is not 'little' or 'big'", name);
    if (index >= 0 && !rc) rc = read_entry(a, index, name, size, stored, 0, size, text);
    if (index >= 0 && !rc && (size != 6 || memcmp(text, "little", 6))) {
        char shown_text[72];
        rc = fail(a, "%s says '%s': only little-endian files are read", name, shown(shown_text, sizeof shown_text, text, size));
    }
    free(name);
    return rc;
}

static int load_pickle(TorchArchive *a, zip_int64_t index) {
    char *name = concat(a->prefix, "data.pkl", strlen("data.pkl"));
    if (!name) return fail(a, "out of memory");
    uint64_t size = 0;
    int stored, rc = entry_size(a, index, name, &size, &stored);
    if (!rc && size > TA_MAX_PICKLE)
        rc = fail(a, "%s is %llu bytes (the limit is %u)", name, (unsigned long long)size, TA_MAX_PICKLE);
    uint8_t *b = rc ? NULL : malloc(size ? size : 1);
    if (!rc && !b) rc = fail(a, "out of memory");
    if (!rc) rc = read_entry(a, index, name, size, stored, 0, size, b);
    if (!rc) rc = parse_pickle(a, b, size);
    free(b);
    free(name);
    return rc;
}

static int load(TorchArchive *a, const void *data, size_t n) {
    const uint8_t *b = data;
    zip_int64_t pickle = -1;
    a->n_bytes = n;
    if (n < 4 || b[0] != 'P' || b[1] != 'K') return not_a_zip(a, b, n);
    if (open_zip(a, data, n) || find_pickle(a, &pickle) || check_byteorder(a) || load_pickle(a, pickle)) return -1;
    return 0;
}

static TorchArchive *new_archive(const char *label, char *err, size_t err_len) {
    TorchArchive *a = calloc(1, sizeof *a);
    if (a && !(a->label = concat(label, "", 0))) {
        free(a);
        a = NULL;
    }
    if (!a && err && err_len) snprintf(err, err_len, "%sout of memory", label);
    if (a) a->err = err, a->err_len = err_len;
    return a;
}

TorchArchive *torch_archive_open_bytes(const void *data, size_t n, char *err, size_t err_len) {
    TorchArchive *a = new_archive("", err, err_len);
    if (a && load(a, data, n)) {
        torch_archive_close(a);
        return NULL;
    }
    if (a) a->err = NULL, a->err_len = 0;   /* the caller's buffer is its own again */
    return a;
}

TorchArchive *torch_archive_open(const char *path, char *err, size_t err_len) {
    char *label = concat(path, ": ", 2);
    if (!label) {
        if (err && err_len) snprintf(err, err_len, "out of memory");
        return NULL;
    }
    TorchArchive *a = new_archive(label, err, err_len);
    free(label);
    if (!a) return NULL;
    int fd = open(path, O_RDONLY);
    struct stat st;
    int rc = fd < 0 ? fail(a, "cannot open: %s", strerror(errno))
             : fstat(fd, &st) ? fail(a, "cannot stat: %s", strerror(errno))
             : !S_ISREG(st.st_mode) ? fail(a, "is not a regular file")
             : 0;
    if (!rc && st.st_size > 0) {
        void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) rc = fail(a, "cannot map: %s", strerror(errno));
        else a->map = map, a->map_bytes = (size_t)st.st_size;
    }
    if (fd >= 0) close(fd);
    if (!rc) rc = load(a, a->map, a->map_bytes);
    if (rc) {
        torch_archive_close(a);
        return NULL;
    }
    a->err = NULL, a->err_len = 0;
    return a;
}

int torch_archive_count(const TorchArchive *a) { return a ? a->n : 0; }

const TorchTensor *torch_archive_tensor(const TorchArchive *a, int i) {
    return a && i >= 0 && i < a->n ? &a->tensors[i] : NULL;
}

const void *torch_archive_data(TorchArchive *a, int i, char *err, size_t err_len) {
    if (!a || i < 0 || i >= a->n) {
        if (err && err_len) snprintf(err, err_len, "no tensor %d in the archive", i);
        return NULL;
    }
    a->err = err, a->err_len = err_len;
    const TorchTensor *t = &a->tensors[i];
    const Storage *s = &a->storages[a->refs[i].storage];
    char shown_name[72];
    shown(shown_name, sizeof shown_name, t->name, strlen(t->name));
    if (t->bytes > SIZE_MAX - 1) return fail(a, "tensor %s is too large for memory", shown_name), NULL;
    size_t need = t->bytes ? (size_t)t->bytes : 1;
    if (need > a->buf_cap) {
        free(a->buf);
        a->buf_cap = 0;
        if (!(a->buf = malloc(need)))
            return fail(a, "out of memory for the %zu bytes of tensor %s", need, shown_name), NULL;
        a->buf_cap = need;
    }
    char *name = malloc(strlen(a->prefix) + 5 + strlen(s->key) + 1);
    if (!name) return fail(a, "out of memory"), NULL;
    sprintf(name, "%sdata/%s", a->prefix, s->key);
    uint64_t off = a->refs[i].offset * (uint64_t)STORAGE_TYPES[s->type].size;
    int rc = read_entry(a, s->entry, name, s->entry_bytes, s->stored, off, t->bytes, a->buf);
    free(name);
    a->err = NULL, a->err_len = 0;
    return rc ? NULL : a->buf;
}

void torch_archive_close(TorchArchive *a) {
    if (!a) return;
    if (a->zip) zip_discard(a->zip);
    if (a->map) munmap(a->map, a->map_bytes);
    for (int i = 0; i < a->n; i++) free(a->tensors[i].name);
    for (int i = 0; i < a->n_storages; i++) free(a->storages[i].key);
    free(a->tensors);
    free(a->refs);
    free(a->storages);
    free(a->prefix);
    free(a->buf);
    free(a->label);
    free(a);
}
