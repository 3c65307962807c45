/* tokenizer.c: the two tokenizers behind tokenizer.h.
 *
 * SentencePiece is the C++ library itself, through sp_wrapper.cc; like spm_encode, it reads each
 * byte of ill-formed UTF-8 as U+FFFD.
 *
 * Byte-level BPE follows Hugging Face `tokenizers` step by step, as the tokenizer.json declares:
 *   1. the input splits into maximal runs of valid UTF-8 and the ill-formed bytes between them
 *      (each byte of an ill-formed sequence on its own). Each run goes through steps 2 to 5 as
 *      a text of its own, so its ids are those `tokenizers` gives that run: added tokens,
 *      normalization and add_prefix_space apply to it as to the text between two added tokens
 *      (the split pattern and the normalizers need valid text, and `tokenizers`, which only
 *      takes valid text, has no rule for a run cut by a bad byte). Each ill-formed byte becomes
 *      the id of its byte-level symbol (below), one id per byte, merged with nothing, so these
 *      ids decode back to the very bytes. Every byte-level vocabulary has the 256 symbols;
 *      encoding fails, with a reason, on a byte whose symbol is missing or whose id an added
 *      token took;
 *   2. added tokens with normalized=false are split off the raw text, leftmost-longest;
 *   3. each remaining piece is normalized (utf8proc), then added tokens with normalized=true
 *      are split off the normalized text, leftmost-longest;
 *   4. the ByteLevel pre-tokenizer splits what is left with the GPT-2 pattern (PCRE2) and each
 *      word's bytes become the GPT-2 byte alphabet;
 *   5. BPE merges each word, lowest merge rank first, leftmost first among equal ranks.
 * Decoding maps pieces back to bytes (ByteLevel decoder) and keeps special tokens' text, as
 * tokenizers' decode(ids, skip_special_tokens=False) does; the streaming decoder shows each
 * ill-formed sequence of those bytes as one U+FFFD, as tokenizers' decode does too. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L   /* strdup */
#endif
#include "tokenizer.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <utf8proc.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "sp_wrapper.h"

#define MAX_ID (1 << 24)      /* ids in tokenizer.json beyond this are rejected as corrupt */
#define MAX_NORMALIZERS 8
#define REPLACEMENT "\xEF\xBF\xBD"   /* U+FFFD in UTF-8 */

static void set_err(char *err, size_t err_len, const char *fmt, ...) {
    if (!err || !err_len) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------- growable arrays */

typedef struct { char *data; size_t len, cap; } Buf;
typedef struct { int *data; size_t len, cap; } IntVec;

/* Returns p grown to hold at least need elements (updating *cap), or NULL when out of memory. */
static void *reserve(void *p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap && p) return p;
    size_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *q = realloc(p, c * elem);
    if (q) *cap = c;
    return q;
}

/* Appends n bytes and keeps the buffer NUL-terminated (the NUL is not counted). */
static int buf_add(Buf *b, const void *s, size_t n) {
    char *d = reserve(b->data, &b->cap, b->len + n + 1, 1);
    if (!d) return -1;
    b->data = d;
    if (n) memcpy(d + b->len, s, n);
    b->len += n;
    d[b->len] = 0;
    return 0;
}

static int ivec_add(IntVec *v, const int *x, size_t n) {
    int *d = reserve(v->data, &v->cap, v->len + n + 1, sizeof(int));
    if (!d) return -1;
    v->data = d;
    if (n) memcpy(d + v->len, x, n * sizeof(int));
    v->len += n;
    return 0;
}

/* ---------------------------------------------------------------- hash tables */

static uint64_t hash_bytes(const char *s, size_t n) {   /* FNV-1a */
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t hash_u64(uint64_t x) {                  /* splitmix64 finalizer */
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27; x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Byte strings → int64, open addressing with linear probing. Keys live NUL-terminated in one
 * arena, so a key's text stays valid (at keys.data + off) once insertions stop. */
typedef struct { uint64_t hash; size_t off, len; int64_t val; int used; } Slot;
typedef struct { Slot *slots; size_t cap, n; Buf keys; } StrMap;

static Slot *strmap_slot(const StrMap *m, const char *k, size_t n, uint64_t h) {
    for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        Slot *s = &m->slots[i];
        if (!s->used || (s->hash == h && s->len == n && !memcmp(m->keys.data + s->off, k, n)))
            return s;
    }
}

static int strmap_get(const StrMap *m, const char *k, size_t n, int64_t *val) {
    if (!m->cap) return 0;
    Slot *s = strmap_slot(m, k, n, hash_bytes(k, n));
    if (s->used) *val = s->val;
    return s->used;
}

static int strmap_grow(StrMap *m) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    Slot *old = m->slots, *slots = calloc(cap, sizeof(Slot));
    if (!slots) return -1;
    size_t old_cap = m->cap;
    m->slots = slots;
    m->cap = cap;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].used) *strmap_slot(m, m->keys.data + old[i].off, old[i].len, old[i].hash) = old[i];
    free(old);
    return 0;
}

/* Inserts or overwrites; -1 when out of memory. */
static int strmap_put(StrMap *m, const char *k, size_t n, int64_t val) {
    if ((m->n + 1) * 2 > m->cap && strmap_grow(m)) return -1;
    uint64_t h = hash_bytes(k, n);
    Slot *s = strmap_slot(m, k, n, h);
    if (!s->used) {
        size_t off = m->keys.len;
        if (buf_add(&m->keys, k, n) || buf_add(&m->keys, "", 1)) return -1;
        *s = (Slot){h, off, n, 0, 1};
        m->n++;
    }
    s->val = val;
    return 0;
}

static void strmap_free(StrMap *m) { free(m->slots); free(m->keys.data); }

/* A merge: the pair of ids (left << 32 | right) → its rank and the id of the merged piece. */
typedef struct { uint64_t key; uint32_t rank; int id; } PairSlot;
typedef struct { PairSlot *slots; size_t cap, n; } PairMap;
#define PAIR_EMPTY UINT64_MAX

static PairSlot *pairmap_slot(const PairMap *m, uint64_t key) {
    for (size_t i = hash_u64(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1))
        if (m->slots[i].key == key || m->slots[i].key == PAIR_EMPTY) return &m->slots[i];
}

/* The key of the pair (a, b) of symbol ids. */
static uint64_t pair_key(int a, int b) { return (uint64_t)a << 32 | (uint32_t)b; }

static const PairSlot *pairmap_get(const PairMap *m, int a, int b) {
    if (!m->cap) return NULL;
    PairSlot *s = pairmap_slot(m, pair_key(a, b));
    return s->key == PAIR_EMPTY ? NULL : s;
}

static int pairmap_put(PairMap *m, int a, int b, uint32_t rank, int id) {
    if ((m->n + 1) * 2 > m->cap) {
        size_t old_cap = m->cap, cap = old_cap ? old_cap * 2 : 1024;
        PairSlot *old = m->slots, *slots = malloc(cap * sizeof(PairSlot));
        if (!slots) return -1;
        for (size_t i = 0; i < cap; i++) slots[i].key = PAIR_EMPTY;
        m->slots = slots;
        m->cap = cap;
        for (size_t i = 0; i < old_cap; i++)
            if (old[i].key != PAIR_EMPTY) *pairmap_slot(m, old[i].key) = old[i];
        free(old);
    }
    PairSlot *s = pairmap_slot(m, pair_key(a, b));
    if (s->key == PAIR_EMPTY) m->n++;
    /* a repeated merge takes its later rank, as tokenizers' map built from the list does */
    *s = (PairSlot){pair_key(a, b), rank, id};
    return 0;
}

/* ---------------------------------------------------------------- UTF-8 */

/* The UTF-8 character at s (n ≥ 1 bytes): its length when valid; -k when its first k bytes
 * are an ill-formed maximal subpart (one U+FFFD); 0 when s is the valid start of a character
 * cut off by the end of the n bytes. */
static int utf8_char(const unsigned char *s, size_t n) {
    unsigned lo = 0x80, hi = 0xBF;
    int need;
    if (s[0] < 0x80) return 1;
    if (s[0] >= 0xC2 && s[0] <= 0xDF) need = 1;
    else if (s[0] >= 0xE0 && s[0] <= 0xEF) {
        need = 2;
        if (s[0] == 0xE0) lo = 0xA0;          /* no overlong forms */
        if (s[0] == 0xED) hi = 0x9F;          /* no surrogates */
    } else if (s[0] >= 0xF0 && s[0] <= 0xF4) {
        need = 3;
        if (s[0] == 0xF0) lo = 0x90;
        if (s[0] == 0xF4) hi = 0x8F;          /* nothing above U+10FFFF */
    } else return -1;
    for (int i = 1; i <= need; i++) {
        if ((size_t)i >= n) return 0;
        if (s[i] < lo || s[i] > hi) return -i;
        lo = 0x80, hi = 0xBF;
    }
    return need + 1;
}

size_t utf8_valid_prefix(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    int k;
    while (i < n && (k = utf8_char(u + i, n - i)) > 0) i += (size_t)k;
    return i;
}

size_t utf8_ill_formed_length(const char *s, size_t n) {
    const int k = utf8_char((const unsigned char *)s, n);
    return k < 0 ? (size_t)-k : k == 0 ? n : 0;
}

/* Appends the complete part of s[0..n) to out, ill-formed subparts as U+FFFD; *used tells how
 * many bytes were consumed (the rest is the valid start of a cut-off character). */
static int utf8_lossy(const char *s, size_t n, Buf *out, size_t *used) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;                     /* run: valid bytes not yet copied */
    while (i + run < n) {
        int k = utf8_char(u + i + run, n - i - run);
        if (k > 0) {
            run += (size_t)k;
            continue;
        }
        if (buf_add(out, s + i, run)) return -1;
        i += run, run = 0;
        if (k == 0) break;
        if (buf_add(out, REPLACEMENT, 3)) return -1;
        i += (size_t)-k;
    }
    if (buf_add(out, s + i, run)) return -1;
    *used = i + run;
    return 0;
}

static int32_t cp_at(const char *s, size_t n, size_t *len) {
    int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &c);
    *len = k > 0 ? (size_t)k : 1;
    return k > 0 ? c : -1;
}

/* Start of the character that ends at s[i), i > 0. */
static size_t cp_back(const char *s, size_t i) {
    do i--; while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80);
    return i;
}

static int32_t cp_before(const char *s, size_t i) {
    size_t len, start = cp_back(s, i);
    return cp_at(s + start, i - start, &len);
}

/* Unicode White_Space, as Rust's \s sees it for added tokens' lstrip and rstrip. */
static int is_space(int32_t c) {
    if ((c >= 9 && c <= 13) || c == 0x20 || c == 0x85) return 1;
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_ZS || k == UTF8PROC_CATEGORY_ZL || k == UTF8PROC_CATEGORY_ZP;
}

/* Rust's \w (alphabetic, marks, decimal digits, connector punctuation, joiners), for added
 * tokens' single_word; letters and letter numbers stand in for the Alphabetic property. */
static int is_word(int32_t c) {
    switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC: return 1;
    default: return c == 0x200C || c == 0x200D;
    }
}

/* ---------------------------------------------------------------- byte-level BPE: data */

typedef struct {
    char *content;              /* the token's text */
    char *pattern;              /* what is matched and decoded: content, normalized when
                                   normalized=true */
    int id, normalized, single_word, lstrip, rstrip;
} Added;

/* A byte trie of added-token patterns, for leftmost-longest matching. */
typedef struct { int child, sibling, token; unsigned char byte; } TrieNode;
typedef struct { TrieNode *nodes; size_t n, cap; unsigned char first[256]; } Trie;

typedef struct {
    StrMap vocab;                       /* model piece → id */
    StrMap added_ids;                   /* added token content → id */
    PairMap merges;
    Added *added;
    int n_added;
    Trie raw, norm;                     /* added tokens matched before / after normalization */
    utf8proc_option_t norm_opts[MAX_NORMALIZERS];
    int n_norm;
    int add_prefix_space, use_regex, ignore_merges;
    int unk, fuse_unk;                  /* unk: id for bytes without a piece, -1 drops them */
    int byte_id[256];                   /* id of each byte's one-character piece, or -1 */
    char byte_char[256][3];             /* GPT-2 byte-to-unicode: each byte's character */
    short char_byte[324];               /* and back: code point → byte, or -1 */
    pcre2_code *split;
    const char **piece;                 /* [vocab_size] text of each id, NULL for unused ids */
    int vocab_size;
} Bpe;

struct Tokenizer {
    TokenizerKind kind;
    int vocab_size, bos, eos, pad, wants_bos;
    Bpe *bpe;
    SpModel *sp;
    int sp_anchor;                      /* see sp_push */
    char *sp_anchor_text;
    size_t sp_anchor_len;
};

static int trie_add(Trie *t, const char *s, size_t n, int token) {
    if (!t->n) {
        TrieNode *d = reserve(t->nodes, &t->cap, 1, sizeof(TrieNode));
        if (!d) return -1;
        t->nodes = d;
        t->nodes[t->n++] = (TrieNode){-1, -1, -1, 0};
    }
    int node = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        int ch = t->nodes[node].child;
        while (ch >= 0 && t->nodes[ch].byte != c) ch = t->nodes[ch].sibling;
        if (ch < 0) {
            TrieNode *d = reserve(t->nodes, &t->cap, t->n + 1, sizeof(TrieNode));
            if (!d) return -1;
            t->nodes = d;
            ch = (int)t->n++;
            t->nodes[ch] = (TrieNode){-1, t->nodes[node].child, -1, c};
            t->nodes[node].child = ch;
        }
        node = ch;
    }
    if (t->nodes[node].token < 0) t->nodes[node].token = token;  /* first of equal patterns */
    t->first[(unsigned char)s[0]] = 1;
    return 0;
}

/* End of the longest pattern starting at s[i] (0 if none), its token in *token. */
static size_t trie_longest(const Trie *t, const char *s, size_t n, size_t i, int *token) {
    size_t best = 0;
    if (!t->n || !t->first[(unsigned char)s[i]]) return 0;
    for (int node = 0; i < n;) {
        int ch = t->nodes[node].child;
        unsigned char c = (unsigned char)s[i++];
        while (ch >= 0 && t->nodes[ch].byte != c) ch = t->nodes[ch].sibling;
        if (ch < 0) break;
        node = ch;
        if (t->nodes[node].token >= 0) best = i, *token = t->nodes[node].token;
    }
    return best;
}

/* ---------------------------------------------------------------- byte-level BPE: loading */

static const cJSON *get(const cJSON *o, const char *key) {
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

static const char *type_of(const cJSON *o) {
    const cJSON *t = get(o, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

static int is_type(const cJSON *o, const char *type) {
    const char *t = type_of(o);
    return t && !strcmp(t, type);
}

static int get_bool(const cJSON *o, const char *key, int dflt) {
    const cJSON *b = get(o, key);
    return cJSON_IsBool(b) ? cJSON_IsTrue(b) : dflt;
}

static int get_id(const cJSON *j, int *id) {
    if (!cJSON_IsNumber(j) || j->valuedouble < 0 || j->valuedouble >= MAX_ID ||
        j->valuedouble != (int)j->valuedouble)
        return -1;
    *id = (int)j->valuedouble;
    return 0;
}

/* The GPT-2 byte alphabet: printable Latin-1 bytes stand for themselves, the others (controls,
 * space, DEL, NBSP, soft hyphen) for U+0100 onwards, in byte order. */
static void byte_alphabet(Bpe *b) {
    int next = 256;
    for (int c = 0; c < 324; c++) b->char_byte[c] = -1;
    for (int c = 0; c < 256; c++) {
        int same = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE;
        int cp = same ? c : next++;
        b->char_byte[cp] = (short)c;
        memset(b->byte_char[c], 0, 3);
        if (cp < 0x80) b->byte_char[c][0] = (char)cp;
        else b->byte_char[c][0] = (char)(0xC0 | cp >> 6), b->byte_char[c][1] = (char)(0x80 | (cp & 0x3F));
    }
}

static int parse_normalizer(Bpe *b, const cJSON *j, char *err, size_t err_len) {
    static const struct { const char *type; utf8proc_option_t opts; } forms[] = {
        {"NFC", UTF8PROC_STABLE | UTF8PROC_COMPOSE},
        {"NFD", UTF8PROC_STABLE | UTF8PROC_DECOMPOSE},
        {"NFKC", UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT},
        {"NFKD", UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT},
    };
    if (!j || cJSON_IsNull(j)) return 0;
    const char *type = type_of(j);
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *list = get(j, "normalizers"), *x;
        if (!cJSON_IsArray(list)) {
            set_err(err, err_len, "tokenizer.json: normalizer Sequence has no 'normalizers' list");
            return -1;
        }
        cJSON_ArrayForEach(x, list) if (parse_normalizer(b, x, err, err_len)) return -1;
        return 0;
    }
    for (size_t i = 0; type && i < sizeof forms / sizeof forms[0]; i++) {
        if (strcmp(type, forms[i].type)) continue;
        if (b->n_norm == MAX_NORMALIZERS) break;
        b->norm_opts[b->n_norm++] = forms[i].opts;
        return 0;
    }
    set_err(err, err_len, "tokenizer.json: normalizer '%s' is not supported (NFC, NFD, NFKC, NFKD, "
            "Sequence of at most %d)", type ? type : "?", MAX_NORMALIZERS);
    return -1;
}

/* Normalizes s[0..n) into *out, malloc'd; *out stays NULL when the text is unchanged: no
 * normalizer, or pure ASCII, which every Unicode normalization form leaves alone. */
static int normalize(const Bpe *b, const char *s, size_t n, char **out, size_t *out_len) {
    size_t i = 0;
    *out = NULL;
    while (i < n && (unsigned char)s[i] < 0x80) i++;
    if (!b->n_norm || i == n) return 0;
    const char *cur = s;
    size_t len = n;
    for (int k = 0; k < b->n_norm; k++) {
        utf8proc_uint8_t *dst;
        utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)cur, (utf8proc_ssize_t)len,
                                          &dst, b->norm_opts[k]);
        free(*out);
        *out = NULL;
        if (r < 0) return -1;
        *out = (char *)dst, cur = *out, len = (size_t)r;
    }
    *out_len = len;
    return 0;
}

static int parse_added(Bpe *b, const cJSON *list, char *err, size_t err_len) {
    const cJSON *x;
    if (!list || cJSON_IsNull(list)) return 0;
    if (!cJSON_IsArray(list)) {
        set_err(err, err_len, "tokenizer.json: 'added_tokens' is not a list");
        return -1;
    }
    b->added = calloc((size_t)cJSON_GetArraySize(list) + 1, sizeof(Added));
    if (!b->added) goto oom;
    cJSON_ArrayForEach(x, list) {
        Added *a = &b->added[b->n_added];
        const cJSON *content = get(x, "content");
        if (!cJSON_IsString(content) || !content->valuestring[0] || get_id(get(x, "id"), &a->id)) {
            set_err(err, err_len, "tokenizer.json: added token %d needs a non-empty 'content' and "
                    "an 'id' in [0, %d)", b->n_added, MAX_ID);
            return -1;
        }
        /* an invalid pattern could cut a character in two, and PCRE2 is given valid text only */
        size_t len = strlen(content->valuestring);
        if (utf8_valid_prefix(content->valuestring, len) != len) {
            set_err(err, err_len, "tokenizer.json: added token %d is not valid UTF-8", b->n_added);
            return -1;
        }
        if (!(a->content = strdup(content->valuestring))) goto oom;
        b->n_added++;
        a->normalized = get_bool(x, "normalized", !get_bool(x, "special", 0));
        a->single_word = get_bool(x, "single_word", 0);
        a->lstrip = get_bool(x, "lstrip", 0);
        a->rstrip = get_bool(x, "rstrip", 0);
        if (strmap_put(&b->added_ids, a->content, strlen(a->content), a->id)) goto oom;
    }
    return 0;
oom:
    set_err(err, err_len, "tokenizer.json: out of memory");
    return -1;
}

/* Added tokens go to two tries: normalized=false ones match the raw text, normalized=true ones
 * the normalized text, so their patterns are normalized too (as tokenizers does). */
static int build_tries(Bpe *b) {
    for (int i = 0; i < b->n_added; i++) {
        Added *a = &b->added[i];
        size_t len = strlen(a->content);
        if (a->normalized && normalize(b, a->content, len, &a->pattern, &len)) return -1;
        if (!a->pattern && !(a->pattern = strdup(a->content))) return -1;
        if (trie_add(a->normalized ? &b->norm : &b->raw, a->pattern, len, i)) return -1;
    }
    return 0;
}

static int parse_vocab(Bpe *b, const cJSON *model, char *err, size_t err_len) {
    const cJSON *vocab = get(model, "vocab"), *x;
    if (!cJSON_IsObject(vocab)) {
        set_err(err, err_len, "tokenizer.json: model.vocab is not an object");
        return -1;
    }
    cJSON_ArrayForEach(x, vocab) {
        int id;
        if (get_id(x, &id)) {
            set_err(err, err_len, "tokenizer.json: vocab entry '%.40s' has no id in [0, %d)",
                    x->string, MAX_ID);
            return -1;
        }
        if (strmap_put(&b->vocab, x->string, strlen(x->string), id)) goto oom;
        if (id >= b->vocab_size) b->vocab_size = id + 1;
    }
    return 0;
oom:
    set_err(err, err_len, "tokenizer.json: out of memory");
    return -1;
}

/* Merges come as "left right" strings (older files) or ["left", "right"] pairs (newer ones);
 * their order is their rank. */
static int parse_merges(Bpe *b, const cJSON *model, char *err, size_t err_len) {
    const cJSON *merges = get(model, "merges"), *x;
    Buf both = {0};
    uint32_t rank = 0;
    if (!cJSON_IsArray(merges)) {
        set_err(err, err_len, "tokenizer.json: model.merges is not a list");
        return -1;
    }
    cJSON_ArrayForEach(x, merges) {
        const char *l, *r, *space;
        size_t ln;
        if (cJSON_IsString(x) && (space = strchr(x->valuestring, ' '))) {
            l = x->valuestring, ln = (size_t)(space - l), r = space + 1;
        } else if (cJSON_IsArray(x) && cJSON_GetArraySize(x) == 2 && cJSON_IsString(x->child) &&
                   cJSON_IsString(x->child->next)) {
            l = x->child->valuestring, ln = strlen(l), r = x->child->next->valuestring;
        } else {
            set_err(err, err_len, "tokenizer.json: merge %u is neither \"a b\" nor [\"a\", \"b\"]", rank);
            goto fail;
        }
        int64_t a, c, m;
        both.len = 0;
        if (buf_add(&both, l, ln) || buf_add(&both, r, strlen(r))) {
            set_err(err, err_len, "tokenizer.json: out of memory");
            goto fail;
        }
        if (!strmap_get(&b->vocab, l, ln, &a) || !strmap_get(&b->vocab, r, strlen(r), &c) ||
            !strmap_get(&b->vocab, both.data, both.len, &m)) {
            set_err(err, err_len, "tokenizer.json: merge %u ('%.*s' + '%.20s') uses a piece that "
                    "is not in the vocabulary", rank, (int)(ln < 20 ? ln : 20), l, r);
            goto fail;
        }
        if (pairmap_put(&b->merges, (int)a, (int)c, rank++, (int)m)) {
            set_err(err, err_len, "tokenizer.json: out of memory");
            goto fail;
        }
    }
    free(both.data);
    return 0;
fail:
    free(both.data);
    return -1;
}

/* Model options that change ids and that this implementation does not have are refused. */
static int parse_model_options(Bpe *b, const cJSON *model, char *err, size_t err_len) {
    const cJSON *dropout = get(model, "dropout"), *unk = get(model, "unk_token");
    const char *affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const cJSON *a = get(model, affixes[i]);
        if (a && !cJSON_IsNull(a) && !(cJSON_IsString(a) && !a->valuestring[0])) {
            set_err(err, err_len, "tokenizer.json: BPE option %s is not supported", affixes[i]);
            return -1;
        }
    }
    if (cJSON_IsNumber(dropout) && dropout->valuedouble != 0) {
        set_err(err, err_len, "tokenizer.json: BPE dropout is not supported");
        return -1;
    }
    if (get_bool(model, "byte_fallback", 0)) {
        set_err(err, err_len, "tokenizer.json: BPE byte_fallback is not supported");
        return -1;
    }
    b->ignore_merges = get_bool(model, "ignore_merges", 0);
    b->fuse_unk = get_bool(model, "fuse_unk", 0);
    b->unk = -1;
    if (cJSON_IsString(unk)) {
        int64_t id;
        if (!strmap_get(&b->vocab, unk->valuestring, strlen(unk->valuestring), &id)) {
            set_err(err, err_len, "tokenizer.json: unk_token '%.40s' is not in the vocabulary",
                    unk->valuestring);
            return -1;
        }
        b->unk = (int)id;
    }
    return 0;
}

/* The pre-tokenizer and the decoder must both be ByteLevel: that is what this BPE is. */
static int parse_byte_level(Bpe *b, const cJSON *root, char *err, size_t err_len) {
    const cJSON *pre = get(root, "pre_tokenizer"), *dec = get(root, "decoder");
    if (!is_type(pre, "ByteLevel")) {
        set_err(err, err_len, "tokenizer.json: pre_tokenizer '%s' is not supported (ByteLevel only)",
                type_of(pre) ? type_of(pre) : "null");
        return -1;
    }
    if (!is_type(dec, "ByteLevel")) {
        set_err(err, err_len, "tokenizer.json: decoder '%s' is not supported (ByteLevel only)",
                type_of(dec) ? type_of(dec) : "null");
        return -1;
    }
    b->add_prefix_space = get_bool(pre, "add_prefix_space", 1);
    b->use_regex = get_bool(pre, "use_regex", 1);
    return 0;
}

/* The id the post-processor puts before the text (a BOS), -1 when none. */
static int leading_special(const cJSON *pp, int *bos, char *err, size_t err_len) {
    const char *type = type_of(pp);
    const cJSON *x;
    if (!pp || cJSON_IsNull(pp) || (type && !strcmp(type, "ByteLevel"))) return 0;
    if (type && !strcmp(type, "Sequence")) {            /* the last one to prepend wins */
        cJSON_ArrayForEach(x, get(pp, "processors")) {
            int id = -1;
            if (leading_special(x, &id, err, err_len)) return -1;
            if (id >= 0) *bos = id;
        }
        return 0;
    }
    if (type && (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing"))) {
        const cJSON *cls = get(pp, "cls");             /* ["<s>", 0] */
        if (cJSON_GetArraySize(cls) == 2 && !get_id(cls->child->next, bos)) return 0;
    }
    if (type && !strcmp(type, "TemplateProcessing")) {
        const cJSON *single = get(pp, "single"), *first, *spec, *ids;
        if (!cJSON_IsArray(single)) goto bad;
        first = get(single->child, "SpecialToken");
        if (!first) return 0;                          /* starts with the text itself */
        x = get(first, "id");
        spec = cJSON_IsString(x) ? get(get(pp, "special_tokens"), x->valuestring) : NULL;
        ids = get(spec, "ids");
        if (cJSON_GetArraySize(ids) == 1 && !get_id(ids->child, bos)) return 0;
    }
bad:
    set_err(err, err_len, "tokenizer.json: post_processor '%s' is not supported (or malformed)",
            type ? type : "?");
    return -1;
}

/* The GPT-2 split pattern. Its \s is written [\t-\r\x{85}\p{Z}] (Unicode White_Space), because
 * tokenizers' Oniguruma and PCRE2 disagree on U+180E; every repeat is of a single class, so
 * PCRE2's JIT needs no stack however long a run is. */
static const char GPT2_SPLIT[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\t-\\r\\x{85}\\p{Z}\\p{L}\\p{N}]+"
    "|[\\t-\\r\\x{85}\\p{Z}]+(?![^\\t-\\r\\x{85}\\p{Z}])|[\\t-\\r\\x{85}\\p{Z}]+";

static int compile_split(Bpe *b, char *err, size_t err_len) {
    int code;
    PCRE2_SIZE at;
    b->split = pcre2_compile((PCRE2_SPTR)GPT2_SPLIT, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                             &code, &at, NULL);
    if (!b->split) {
        set_err(err, err_len, "tokenizer: PCRE2 cannot compile the GPT-2 pattern (error %d)", code);
        return -1;
    }
    pcre2_jit_compile(b->split, PCRE2_JIT_COMPLETE);   /* without JIT it is only slower */
    return 0;
}

static void bpe_free(Bpe *b) {
    if (!b) return;
    strmap_free(&b->vocab);
    strmap_free(&b->added_ids);
    free(b->merges.slots);
    for (int i = 0; i < b->n_added; i++) free(b->added[i].content), free(b->added[i].pattern);
    free(b->added);
    free(b->raw.nodes);
    free(b->norm.nodes);
    pcre2_code_free(b->split);
    free(b->piece);
    free(b);
}

/* Ids → text table; added tokens override model pieces, as tokenizers' id_to_token does, and
 * normalized=true ones show their normalized form, which is what tokenizers decodes. */
static int build_pieces(Bpe *b) {
    for (int i = 0; i < b->n_added; i++)
        if (b->added[i].id >= b->vocab_size) b->vocab_size = b->added[i].id + 1;
    b->piece = calloc((size_t)b->vocab_size + 1, sizeof(char *));
    if (!b->piece) return -1;
    for (size_t i = 0; i < b->vocab.cap; i++)
        if (b->vocab.slots[i].used)
            b->piece[b->vocab.slots[i].val] = b->vocab.keys.data + b->vocab.slots[i].off;
    for (int i = 0; i < b->n_added; i++) b->piece[b->added[i].id] = b->added[i].pattern;
    for (int c = 0; c < 256; c++) {
        int64_t id;
        int found = strmap_get(&b->vocab, b->byte_char[c], strlen(b->byte_char[c]), &id);
        b->byte_id[c] = found ? (int)id : -1;
    }
    return 0;
}

static Bpe *bpe_load(const cJSON *root, int *bos, char *err, size_t err_len) {
    const cJSON *model = get(root, "model");
    Bpe *b = calloc(1, sizeof(Bpe));
    if (!b) {
        set_err(err, err_len, "tokenizer.json: out of memory");
        return NULL;
    }
    byte_alphabet(b);
    if (!cJSON_IsObject(model)) {
        set_err(err, err_len, "tokenizer.json: no 'model' object");
        goto fail;
    }
    if (!is_type(model, "BPE")) {
        set_err(err, err_len, "tokenizer.json: model type '%.40s' is not supported (BPE only)",
                type_of(model) ? type_of(model) : "?");
        goto fail;
    }
    *bos = -1;
    if (parse_vocab(b, model, err, err_len) || parse_merges(b, model, err, err_len) ||
        parse_model_options(b, model, err, err_len) ||
        parse_added(b, get(root, "added_tokens"), err, err_len) ||
        parse_normalizer(b, get(root, "normalizer"), err, err_len) ||
        parse_byte_level(b, root, err, err_len) ||
        leading_special(get(root, "post_processor"), bos, err, err_len) ||
        compile_split(b, err, err_len))
        goto fail;
    if (build_tries(b) || build_pieces(b)) {
        set_err(err, err_len, "tokenizer.json: out of memory");
        goto fail;
    }
    if (*bos >= b->vocab_size) {
        set_err(err, err_len, "tokenizer.json: post_processor BOS id %d is not in the vocabulary", *bos);
        goto fail;
    }
    return b;
fail:
    bpe_free(b);
    return NULL;
}

/* ---------------------------------------------------------------- byte-level BPE: encoding */

typedef struct { int id, prev, next; } Sym;      /* id -1: merged into its left neighbour */
typedef struct { uint32_t rank; int pos, id; } Cand;
typedef struct { size_t start, stop, resume; int id; } Match;

typedef struct {                  /* the scratch space of one tokenizer_encode call */
    const Bpe *b;
    IntVec *out;
    StrMap cache;                 /* word → (offset << 32 | count) of its ids in `cached` */
    IntVec cached;
    Buf spaced, mapped;
    Sym *syms;
    size_t syms_cap;
    Cand *heap;
    size_t heap_cap, heap_n;
    pcre2_match_data *md;
    const char *fail;             /* why encoding stopped */
    char why[128];                /* room for a fail message with details */
} Enc;

static int cand_before(Cand a, Cand b) { return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos; }

static void heap_push(Enc *e, Cand c) {              /* room is reserved by bpe_word */
    size_t i = e->heap_n++;
    for (; i > 0 && cand_before(c, e->heap[(i - 1) / 2]); i = (i - 1) / 2)
        e->heap[i] = e->heap[(i - 1) / 2];
    e->heap[i] = c;
}

static Cand heap_pop(Enc *e) {
    Cand top = e->heap[0], last = e->heap[--e->heap_n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= e->heap_n) break;
        if (c + 1 < e->heap_n && cand_before(e->heap[c + 1], e->heap[c])) c++;
        if (!cand_before(e->heap[c], last)) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (e->heap_n) e->heap[i] = last;
    return top;
}

static void push_pair(Enc *e, int pos) {
    const PairSlot *p = pairmap_get(&e->b->merges, e->syms[pos].id, e->syms[e->syms[pos].next].id);
    if (p) heap_push(e, (Cand){p->rank, pos, p->id});
}

/* BPE of one word, as tokenizers' Word::merge_all: always the pair of lowest rank, the leftmost
 * among equals, until no pair of neighbours has a merge. */
static int bpe_word(Enc *e, const unsigned char *w, size_t n) {
    const Bpe *b = e->b;
    if (b->ignore_merges) {                          /* a word that is a piece stays whole */
        int64_t id;
        e->mapped.len = 0;
        for (size_t i = 0; i < n; i++)
            if (buf_add(&e->mapped, b->byte_char[w[i]], strlen(b->byte_char[w[i]]))) return -1;
        if (strmap_get(&b->vocab, e->mapped.data, e->mapped.len, &id)) {
            int x = (int)id;
            return ivec_add(e->out, &x, 1);
        }
    }
    Sym *s = reserve(e->syms, &e->syms_cap, n, sizeof(Sym));
    if (!s) return -1;
    e->syms = s;
    Cand *h = reserve(e->heap, &e->heap_cap, 3 * n, sizeof(Cand));   /* n - 1 pairs + 2 per merge */
    if (!h) return -1;
    e->heap = h;
    int m = 0, last_unk = 0;
    for (size_t i = 0; i < n; i++) {
        int id = b->byte_id[w[i]];
        if (id < 0) {                                /* no piece: unk (fused) or dropped */
            if (b->unk < 0 || (b->fuse_unk && last_unk)) continue;
            id = b->unk, last_unk = 1;
        } else last_unk = 0;
        s[m] = (Sym){id, m - 1, m + 1};
        m++;
    }
    if (!m) return 0;
    s[m - 1].next = -1;
    e->heap_n = 0;
    for (int i = 0; i + 1 < m; i++) push_pair(e, i);
    while (e->heap_n) {
        Cand c = heap_pop(e);
        Sym *l = &s[c.pos];
        if (l->id < 0 || l->next < 0) continue;      /* stale: merged away since */
        const PairSlot *p = pairmap_get(&b->merges, l->id, s[l->next].id);
        if (!p || p->id != c.id) continue;
        Sym *r = &s[l->next];
        l->id = c.id, r->id = -1, l->next = r->next;
        if (l->next >= 0) s[l->next].prev = c.pos;
        if (l->prev >= 0) push_pair(e, l->prev);
        if (l->next >= 0) push_pair(e, c.pos);
    }
    for (int i = 0; i >= 0; i = s[i].next)
        if (ivec_add(e->out, &s[i].id, 1)) return -1;
    return 0;
}

static int encode_word(Enc *e, const char *w, size_t n) {
    int64_t v;
    if (strmap_get(&e->cache, w, n, &v))
        return ivec_add(e->out, e->cached.data + (v >> 32), (size_t)(v & 0xffffffff));
    size_t start = e->out->len, off = e->cached.len;
    if (bpe_word(e, (const unsigned char *)w, n)) return -1;
    size_t count = e->out->len - start;
    if (ivec_add(&e->cached, e->out->data + start, count)) return -1;
    return strmap_put(&e->cache, w, n, (int64_t)off << 32 | (int64_t)count);
}

/* The ByteLevel pre-tokenizer on one piece of normalized text. */
static int encode_pretokens(Enc *e, const char *s, size_t n) {
    if (e->b->add_prefix_space && s[0] != ' ') {
        e->spaced.len = 0;
        if (buf_add(&e->spaced, " ", 1) || buf_add(&e->spaced, s, n)) return -1;
        s = e->spaced.data, n = e->spaced.len;
    }
    if (!e->b->use_regex) return encode_word(e, s, n);
    for (size_t off = 0; off < n;) {
        size_t start = n, end = n;
        int rc = pcre2_match(e->b->split, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK, e->md, NULL);
        if (rc >= 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
            start = ov[0], end = ov[1];
        } else if (rc != PCRE2_ERROR_NOMATCH) {
            e->fail = "PCRE2 failed on the split pattern";
            return -1;
        }
        if (start > off && encode_word(e, s + off, start - off)) return -1;   /* unmatched gap */
        if (end > start && encode_word(e, s + start, end - start)) return -1;
        off = end;
    }
    return 0;
}

/* The next match of trie t in s[0..n) from byte `from`, as tokenizers' find_matches:
 * single_word tokens must not touch word characters; lstrip / rstrip tokens take the spaces
 * beside them (lstrip never back past prev_stop, where the previous match ended); scanning
 * resumes after the pattern itself, not after the spaces rstrip took. */
static int next_added(const Bpe *b, const Trie *t, const char *s, size_t n, size_t from,
                      size_t prev_stop, Match *m) {
    size_t len;
    for (size_t i = from; i < n;) {
        int tok = -1;
        size_t end = trie_longest(t, s, n, i, &tok);
        if (!end) {
            i++;
            continue;
        }
        const Added *a = &b->added[tok];
        if (a->single_word && ((i > 0 && is_word(cp_before(s, i))) ||
                               (end < n && is_word(cp_at(s + end, n - end, &len))))) {
            i = end;
            continue;
        }
        *m = (Match){i, end, end, a->id};
        if (a->lstrip) {
            size_t j = i;
            while (j > 0 && is_space(cp_before(s, j))) j = cp_back(s, j);
            m->start = j > prev_stop ? j : prev_stop;
        }
        if (a->rstrip)
            while (m->stop < n && is_space(cp_at(s + m->stop, n - m->stop, &len))) m->stop += len;
        return 1;
    }
    return 0;
}

/* Splits s[0..n) around the added tokens of trie t, the text between them going to gap(). */
static int split_added(Enc *e, const Trie *t, const char *s, size_t n,
                       int (*gap)(Enc *, const char *, size_t)) {
    size_t pos = 0, from = 0;
    Match m;
    while (next_added(e->b, t, s, n, from, pos, &m)) {
        if (m.start > pos && gap(e, s + pos, m.start - pos)) return -1;
        if (ivec_add(e->out, &m.id, 1)) return -1;
        pos = m.stop, from = m.resume;
    }
    return pos < n ? gap(e, s + pos, n - pos) : 0;
}

static int encode_normalized(Enc *e, const char *s, size_t n) {
    char *norm;
    size_t len;
    if (normalize(e->b, s, n, &norm, &len)) {
        e->fail = "utf8proc failed to normalize";
        return -1;
    }
    int rc = norm ? (len ? split_added(e, &e->b->norm, norm, len, encode_pretokens) : 0)
                  : split_added(e, &e->b->norm, s, n, encode_pretokens);
    free(norm);
    return rc;
}

/* An ill-formed byte: the id of its byte-level symbol, whose piece decodes to that byte alone. */
static int encode_raw_byte(Enc *e, unsigned char c) {
    const Bpe *b = e->b;
    int id = b->byte_id[c];
    if (id < 0 || !b->piece[id] || strcmp(b->piece[id], b->byte_char[c])) {
        snprintf(e->why, sizeof e->why, "the text has the ill-formed UTF-8 byte 0x%02X and the "
                 "vocabulary has no byte-level piece '%s' for it", c, b->byte_char[c]);
        e->fail = e->why;
        return -1;
    }
    return ivec_add(e->out, &id, 1);
}

/* Valid runs are texts of their own, ill-formed bytes between them byte tokens (see the top). */
static int bpe_encode(const Bpe *b, const char *text, size_t len, IntVec *out, char *err, size_t err_len) {
    Enc e = {.b = b, .out = out, .fail = "out of memory"};
    int rc = -1;
    if (!(e.md = pcre2_match_data_create_from_pattern(b->split, NULL))) goto done;
    for (size_t i = 0; i < len;) {
        size_t run = utf8_valid_prefix(text + i, len - i);
        if (run && split_added(&e, &b->raw, text + i, run, encode_normalized)) goto done;
        i += run;
        if (i < len && encode_raw_byte(&e, (unsigned char)text[i++])) goto done;
    }
    rc = 0;
done:
    if (rc) set_err(err, err_len, "tokenizer: encoding failed: %s", e.fail);
    pcre2_match_data_free(e.md);
    strmap_free(&e.cache);
    free(e.cached.data);
    free(e.spaced.data);
    free(e.mapped.data);
    free(e.syms);
    free(e.heap);
    return rc;
}

/* Appends the bytes of id's piece as tokenizers' ByteLevel decoder does: each character back to
 * its byte, or the piece's own UTF-8 when one of its characters is not in the byte alphabet. */
static int bpe_piece_bytes(const Bpe *b, int id, Buf *out) {
    const char *p = b->piece[id];
    size_t n = strlen(p), start = out->len, len;
    for (size_t i = 0; i < n; i += len) {
        int32_t c = cp_at(p + i, n - i, &len);
        if (c < 0 || c >= 324 || b->char_byte[c] < 0) {
            out->len = start;
            return buf_add(out, p, n);
        }
        char byte = (char)b->char_byte[c];
        if (buf_add(out, &byte, 1)) return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- the API */

static int find_token(const Tokenizer *t, const char *const *names) {
    for (; *names; names++) {
        int id = tokenizer_piece_to_id(t, *names);
        if (id >= 0) return id;
    }
    return -1;
}

/* tokenizer.json does not name BOS / EOS / pad (tokenizer_config.json does): BOS is what the
 * post-processor prepends, else a conventional name; GPT-2 / GPT-NeoX use <|endoftext|> for
 * both BOS and EOS. A pad id comes from the "padding" section when it has one. */
static void bpe_specials(Tokenizer *t, const cJSON *root, int bos) {
    static const char *const bos_names[] = {"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>",
                                             "<|endoftext|>", NULL};
    static const char *const eos_names[] = {"</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>", NULL};
    static const char *const pad_names[] = {"<pad>", "<|padding|>", "[PAD]", NULL};
    t->wants_bos = bos >= 0;
    t->bos = bos >= 0 ? bos : find_token(t, bos_names);
    t->eos = find_token(t, eos_names);
    if (get_id(get(get(root, "padding"), "pad_id"), &t->pad) || t->pad >= t->vocab_size)
        t->pad = find_token(t, pad_names);
}

size_t json_nesting_depth(const char *text, size_t n) {
    size_t depth = 0, deepest = 0;
    int in_string = 0;
    for (size_t i = 0; i < n; i++) {
        char c = text[i];
        if (in_string) {
            if (c == '\\') i++;
            else if (c == '"') in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '[' || c == '{') {
            if (++depth > deepest) deepest = depth;
        } else if ((c == ']' || c == '}') && depth) {
            depth--;
        }
    }
    return deepest;
}

static Tokenizer *load_json(const void *data, size_t n, char *err, size_t err_len) {
    /* cJSON gets its own NUL-terminated copy, and must use all of it */
    char *text = malloc(n + 1);
    Tokenizer *t = NULL;
    const char *end = NULL;
    int bos;
    if (!text) {
        set_err(err, err_len, "tokenizer.json: out of memory");
        return NULL;
    }
    memcpy(text, data, n);
    text[n] = 0;
    cJSON *root = cJSON_ParseWithOpts(text, &end, 1);
    if (!root || !cJSON_IsObject(root)) {
        if (!root && json_nesting_depth(text, n) > CJSON_NESTING_LIMIT)
            set_err(err, err_len, "tokenizer.json: arrays and objects nested deeper than %d levels (the limit)",
                    CJSON_NESTING_LIMIT);
        else if (!root)
            set_err(err, err_len, "tokenizer.json: invalid JSON at byte %zu of %zu",
                    (size_t)(end ? end - text : 0), n);
        else set_err(err, err_len, "tokenizer.json: not a JSON object");
        goto done;
    }
    if (!(t = calloc(1, sizeof(Tokenizer)))) {
        set_err(err, err_len, "tokenizer.json: out of memory");
        goto done;
    }
    t->kind = TOKENIZER_HF_JSON;
    if (!(t->bpe = bpe_load(root, &bos, err, err_len))) {
        free(t);
        t = NULL;
        goto done;
    }
    t->vocab_size = t->bpe->vocab_size;
    bpe_specials(t, root, bos);
done:
    cJSON_Delete(root);
    free(text);
    return t;
}

/* A plain piece that decodes to non-space ASCII; see sp_push. */
static int sp_find_anchor(Tokenizer *t) {
    for (int id = 0; id < t->vocab_size; id++) {
        SpPieceType type = sp_piece_type(t->sp, id);
        if (type != SP_NORMAL && type != SP_BYTE) continue;
        if (!strncmp(sp_id_to_piece(t->sp, id), "\xE2\x96\x81", 3)) continue;   /* "▁" */
        size_t len, i = 0;
        char *s = sp_decode(t->sp, &id, 1, &len);
        if (!s) return -1;
        while (i < len && s[i] > ' ' && s[i] < 0x7F) i++;
        if (len && i == len) {
            t->sp_anchor = id, t->sp_anchor_text = s, t->sp_anchor_len = len;
            return 0;
        }
        free(s);
    }
    return -1;
}

static Tokenizer *load_sp(const void *data, size_t n, char *err, size_t err_len) {
    Tokenizer *t = calloc(1, sizeof(Tokenizer));
    if (!t) {
        set_err(err, err_len, "SentencePiece: out of memory");
        return NULL;
    }
    t->kind = TOKENIZER_SENTENCEPIECE;
    if (!(t->sp = sp_load(data, n, err, err_len))) {
        free(t);
        return NULL;
    }
    t->vocab_size = sp_piece_count(t->sp);
    t->bos = sp_bos_id(t->sp);
    t->eos = sp_eos_id(t->sp);
    t->pad = sp_pad_id(t->sp);
    t->wants_bos = t->bos >= 0;
    if (sp_find_anchor(t)) {
        set_err(err, err_len, "SentencePiece model has no plain ASCII piece (needed for streaming decode)");
        tokenizer_free(t);
        return NULL;
    }
    return t;
}

Tokenizer *tokenizer_load_bytes(TokenizerKind kind, const void *data, size_t n, char *err, size_t err_len) {
    if (kind == TOKENIZER_HF_JSON) return load_json(data, n, err, err_len);
    if (kind == TOKENIZER_SENTENCEPIECE) return load_sp(data, n, err, err_len);
    set_err(err, err_len, "tokenizer: unknown kind %d", (int)kind);
    return NULL;
}

Tokenizer *tokenizer_load_file(const char *path, char *err, size_t err_len) {
    FILE *f = fopen(path, "rb");
    Buf b = {0};
    char chunk[65536];
    size_t n, i = 0;
    if (!f) {
        set_err(err, err_len, "%s: cannot open (%s)", path, strerror(errno));
        return NULL;
    }
    int too_big = 0, no_memory = 0;
    while (!too_big && !no_memory && (n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        too_big = b.len + n > MAX_TOKENIZER_BYTES;
        no_memory = !too_big && buf_add(&b, chunk, n);
    }
    const int bad = too_big || no_memory || ferror(f) || !feof(f);
    fclose(f);
    if (too_big) {
        set_err(err, err_len, "%s: larger than the limit of %u bytes for a tokenizer", path, MAX_TOKENIZER_BYTES);
        free(b.data);
        return NULL;
    }
    if (bad || !b.len) {
        set_err(err, err_len, "%s: %s", path, no_memory ? "out of memory" : bad ? "read error" : "empty file");
        free(b.data);
        return NULL;
    }
    /* a tokenizer.json is a JSON object (perhaps after a BOM); anything else may be a protobuf */
    if (b.len >= 3 && !memcmp(b.data, "\xEF\xBB\xBF", 3)) i = 3;
    while (i < b.len && strchr(" \t\r\n", b.data[i])) i++;
    TokenizerKind kind = i < b.len && b.data[i] == '{' ? TOKENIZER_HF_JSON : TOKENIZER_SENTENCEPIECE;
    char why[256];
    const size_t skip = kind == TOKENIZER_HF_JSON ? i : 0;   /* the BOM and blanks before the object */
    Tokenizer *t = tokenizer_load_bytes(kind, b.data + skip, b.len - skip, why, sizeof why);
    if (!t) set_err(err, err_len, "%s: %s%s", path,
                    kind == TOKENIZER_SENTENCEPIECE ? "no JSON object, and " : "", why);
    free(b.data);
    return t;
}

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    bpe_free(t->bpe);
    sp_free(t->sp);
    free(t->sp_anchor_text);
    free(t);
}

TokenizerKind tokenizer_kind(const Tokenizer *t) { return t->kind; }
int tokenizer_vocab_size(const Tokenizer *t) { return t->vocab_size; }
int tokenizer_bos_id(const Tokenizer *t) { return t->bos; }
int tokenizer_eos_id(const Tokenizer *t) { return t->eos; }
int tokenizer_pad_id(const Tokenizer *t) { return t->pad; }
int tokenizer_wants_bos(const Tokenizer *t) { return t->wants_bos; }

int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int add_bos,
                     int **ids, size_t *n_ids, char *err, size_t err_len) {
    int bos = add_bos ? t->bos : -1;
    if (t->sp) return sp_encode(t->sp, text ? text : "", len, bos, ids, n_ids, err, err_len);
    IntVec v = {0};
    if ((bos >= 0 && ivec_add(&v, &bos, 1)) || ivec_add(&v, NULL, 0)) {
        set_err(err, err_len, "tokenizer: out of memory");
        free(v.data);
        return -1;
    }
    if (bpe_encode(t->bpe, text ? text : "", len, &v, err, err_len)) {
        free(v.data);
        return -1;
    }
    *ids = v.data;
    *n_ids = v.len;
    return 0;
}

const char *tokenizer_id_to_piece(const Tokenizer *t, int id) {
    if (id < 0 || id >= t->vocab_size) return NULL;
    return t->sp ? sp_id_to_piece(t->sp, id) : t->bpe->piece[id];
}

int tokenizer_piece_to_id(const Tokenizer *t, const char *piece) {
    int64_t id;
    if (t->sp) return sp_piece_to_id(t->sp, piece);
    if (strmap_get(&t->bpe->added_ids, piece, strlen(piece), &id) ||
        strmap_get(&t->bpe->vocab, piece, strlen(piece), &id))
        return (int)id;
    return -1;
}

/* ---------------------------------------------------------------- streaming decode */

struct TokenDecoder {
    const Tokenizer *t;
    Buf out;          /* what the last call returned */
    Buf pend;         /* byte-level BPE: the start of a character not yet complete */
    IntVec ids;       /* SentencePiece: [anchor, ids not yet printed...] */
    int anchored;     /* SentencePiece: text was printed, so decode after the anchor */
};

TokenDecoder *decoder_new(const Tokenizer *t) {
    TokenDecoder *d = calloc(1, sizeof(TokenDecoder));
    if (!d) return NULL;
    d->t = t;
    if (buf_add(&d->out, "", 0) || ivec_add(&d->ids, &t->sp_anchor, 1)) {
        decoder_free(d);
        return NULL;
    }
    return d;
}

/* Whether the ids end with byte pieces that start a UTF-8 character still missing bytes (at
 * most 3 of a 4-byte character can have come). */
static int sp_ends_incomplete(const TokenDecoder *d) {
    unsigned char bytes[3];
    int k = 0;
    for (size_t i = d->ids.len - 1; i > 0 && k < 3; i--) {     /* ids[0] is the anchor */
        if (sp_piece_type(d->t->sp, d->ids.data[i]) != SP_BYTE) break;
        bytes[2 - k++] = (unsigned char)strtol(sp_id_to_piece(d->t->sp, d->ids.data[i]) + 3, NULL, 16);
    }
    for (int j = 3 - k; j < 3; j++)
        if (utf8_char(bytes + j, (size_t)(3 - j)) == 0) return 1;
    return 0;
}

/* Empties the text a push returns. */
static void out_clear(TokenDecoder *d) {
    d->out.len = 0;
    d->out.data[0] = 0;
}

/* SentencePiece decodes a sequence as a whole: the first piece loses its leading "▁", byte
 * pieces are joined into characters. So the ids not yet printed are decoded together, and
 * printed once their text is not empty and does not end inside a character. Until then they
 * are the start of the text and are decoded as such; after that they are decoded behind the
 * anchor, a plain piece, so that SentencePiece sees them in mid-text. */
static const char *sp_push(TokenDecoder *d, int id, int last) {
    const Tokenizer *t = d->t;
    size_t len, skip = d->anchored ? t->sp_anchor_len : 0;
    out_clear(d);
    if ((id >= 0 && ivec_add(&d->ids, &id, 1)) || (!last && sp_ends_incomplete(d))) return d->out.data;
    char *s = sp_decode(t->sp, d->ids.data + !d->anchored, d->ids.len - !d->anchored, &len);
    if (!s || len < skip || memcmp(s, t->sp_anchor_text, skip)) {   /* only out of memory */
        free(s);
        return d->out.data;
    }
    if (last || len > skip) {
        buf_add(&d->out, s + skip, len - skip);
        d->ids.len = 1;
        d->anchored = !last;
    }
    free(s);
    return d->out.data;
}

/* Bytes become text as soon as they complete a character; ill-formed ones become U+FFFD at
 * once, the same maximal subparts as decoding the whole text lossily. */
static const char *bpe_push(TokenDecoder *d, int id) {
    size_t used = 0;
    out_clear(d);
    if (bpe_piece_bytes(d->t->bpe, id, &d->pend) || !d->pend.len ||   /* a piece may be "" */
        utf8_lossy(d->pend.data, d->pend.len, &d->out, &used))
        return d->out.data;
    memmove(d->pend.data, d->pend.data + used, d->pend.len - used);
    d->pend.len -= used;
    return d->out.data;
}

const char *decoder_push(TokenDecoder *d, int id) {
    if (id < 0 || id >= d->t->vocab_size || (d->t->bpe && !d->t->bpe->piece[id])) {
        out_clear(d);
        return d->out.data;
    }
    return d->t->sp ? sp_push(d, id, 0) : bpe_push(d, id);
}

size_t decoder_len(const TokenDecoder *d) { return d->out.len; }

const char *decoder_finish(TokenDecoder *d) {
    if (d->t->sp) return sp_push(d, -1, 1);
    out_clear(d);
    if (d->pend.len) buf_add(&d->out, REPLACEMENT, 3);
    d->pend.len = 0;
    return d->out.data;
}

void decoder_free(TokenDecoder *d) {
    if (!d) return;
    free(d->out.data);
    free(d->pend.data);
    free(d->ids.data);
    free(d);
}
