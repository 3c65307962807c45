/* tokenizer.c: the two tokenizers behind tokenizer.h.
 *
 * SentencePiece is the C++ library itself, through sp_wrapper.cc; like spm_encode, it reads each
 * byte of ill-formed UTF-8 as U+FFFD.
 *
 * A tokenizer.json BPE follows Hugging Face `tokenizers` step by step, as the file declares; it
 * covers byte-level BPE (GPT-2, GPT-NeoX, Falcon) and SentencePiece-style BPE with "▁" for
 * spaces and <0xXX> byte pieces (Llama, Mistral):
 *   1. the input splits into maximal runs of valid UTF-8 and the ill-formed bytes between them
 *      (each byte of an ill-formed sequence on its own). Each run goes through steps 2 to 5 as
 *      a text of its own, so its ids are those `tokenizers` gives that run: added tokens,
 *      normalization and prefixes apply to it as to the text between two added tokens (the
 *      split patterns and the normalizers need valid text, and `tokenizers`, which only takes
 *      valid text, has no rule for a run cut by a bad byte). Each ill-formed byte becomes one id
 *      merged with nothing, so that it decodes back to that byte: with a ByteLevel
 *      pre-tokenizer the id of its byte-level symbol (below), else its <0xXX> piece when the
 *      model has byte_fallback, else unk. Encoding fails, with a reason, when there is none or
 *      an added token took its id;
 *   2. added tokens with normalized=false are split off the raw text, leftmost-longest;
 *   3. each remaining piece is normalized (Unicode forms through utf8proc, Prepend, Replace),
 *      then added tokens with normalized=true are split off the normalized text;
 *   4. the pre-tokenizer components split what is left, each one every piece the one before
 *      made (Split, Punctuation, Digits, Whitespace, WhitespaceSplit, Metaspace, ByteLevel with
 *      the GPT-2 pattern); ByteLevel also turns each piece's bytes into the GPT-2 byte
 *      alphabet, so the components after it see those characters;
 *   5. BPE merges each word, lowest merge rank first, leftmost first among equal ranks, from one
 *      symbol per character: its piece, else (byte_fallback) one <0xXX> piece per byte, else unk.
 * Decoding keeps special tokens' text, as tokenizers' decode(ids, skip_special_tokens=False)
 * does: the ByteLevel decoder maps pieces back to bytes; the other decoders (Replace,
 * ByteFallback, Fuse, Strip, Metaspace) run in their order on the stream of pieces. The
 * streaming decoder shows each ill-formed sequence of the bytes as one U+FFFD, as tokenizers'
 * ByteLevel decode does, and holds a run of <0xXX> pieces until it ends: ByteFallback makes
 * the run one text when it is valid UTF-8, else one U+FFFD per piece. */
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
#include "tokenizer_unicode.h"

#define MAX_ID (1 << 24)      /* ids in tokenizer.json beyond this are rejected as corrupt */
#define MAX_NORMALIZERS 8
#define MAX_PRETOKENIZERS 16
#define MAX_DECODERS 8
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

/* Whether c is in one of the n sorted ranges. */
static int in_ranges(const uint32_t (*r)[2], size_t n, int32_t c) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if ((uint32_t)c > r[mid][1]) lo = mid + 1;
        else if ((uint32_t)c < r[mid][0]) hi = mid;
        else return 1;
    }
    return 0;
}

/* The Punctuation and Digits pre-tokenizers' classes, in tokenizers' own Unicode tables
 * (tokenizer_unicode.h; utf8proc's are of another Unicode version). */
static int is_punctuation(int32_t c) {
    return in_ranges(PUNCTUATION_RANGES, sizeof PUNCTUATION_RANGES / sizeof PUNCTUATION_RANGES[0], c);
}

static int is_numeric(int32_t c) {
    return in_ranges(NUMERIC_RANGES, sizeof NUMERIC_RANGES / sizeof NUMERIC_RANGES[0], c);
}

/* ---------------------------------------------------------------- BPE: data */

typedef struct {
    char *content;              /* the token's text */
    char *pattern;              /* what is matched and decoded: content, normalized when
                                   normalized=true */
    int id, normalized, single_word, lstrip, rstrip;
} Added;

/* A byte trie of added-token patterns, for leftmost-longest matching. */
typedef struct { int child, sibling, token; unsigned char byte; } TrieNode;
typedef struct { TrieNode *nodes; size_t n, cap; unsigned char first[256]; } Trie;

/* How a split keeps what its pattern matched (tokenizers' SplitDelimiterBehavior). */
typedef enum { KEEP_REMOVED, KEEP_ISOLATED, KEEP_WITH_PREVIOUS, KEEP_WITH_NEXT, KEEP_CONTIGUOUS } Behavior;

/* What a pattern matches: a regular expression (PCRE2; a String pattern is compiled as a
 * literal), or one character at a time, a class of characters. */
typedef enum { CLASS_NONE, CLASS_PUNCTUATION, CLASS_NUMERIC, CLASS_SPACE, CLASS_CHAR } CharClass;
typedef struct {
    pcre2_code *re;             /* owned unless it is the Bpe's gpt2 */
    CharClass cls;
    int32_t ch;                 /* CLASS_CHAR: the character */
} Pattern;

/* One normalizer of the chain. */
typedef enum { NORM_FORM, NORM_PREPEND, NORM_REPLACE } NormKind;
typedef struct {
    NormKind kind;
    utf8proc_option_t opts;     /* NORM_FORM */
    char *text;                 /* NORM_PREPEND: the prefix; NORM_REPLACE: the replacement */
    Pattern pat;                /* NORM_REPLACE */
} Norm;

/* One pre-tokenizer component: an optional change of each piece, then a split. */
typedef enum { PRE_BYTE_LEVEL, PRE_SPLIT, PRE_METASPACE } PreKind;
typedef enum { PREPEND_NEVER, PREPEND_FIRST, PREPEND_ALWAYS } Prepend;
typedef struct {
    PreKind kind;
    Pattern pat;                /* pat.re and pat.cls both empty: no split */
    Behavior behavior;
    int invert;
    int add_prefix_space;       /* ByteLevel */
    char rep[5];                /* Metaspace: the replacement character, in UTF-8 */
    Prepend prepend;            /* Metaspace */
} PreTok;

/* One decoder of a chain (the ByteLevel decoder is not one: it is the whole decoder). */
typedef enum { DEC_REPLACE, DEC_BYTE_FALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE } DecKind;
typedef struct {
    DecKind kind;
    int fused;                  /* after a Fuse: the stream is one token */
    Pattern pat;                /* Replace */
    char *content;              /* Replace */
    int32_t ch;                 /* Strip: the character; Metaspace: the replacement */
    int start, stop;            /* Strip: how many at each end; Metaspace: start = drop them in
                                   the first token */
} DecStep;

typedef struct {
    StrMap vocab;                       /* model piece → id */
    StrMap added_ids;                   /* added token content → id */
    PairMap merges;
    Added *added;
    int n_added;
    Trie raw, norm;                     /* added tokens matched before / after normalization */
    Norm norms[MAX_NORMALIZERS];
    int n_norm, norm_forms_only;        /* only Unicode forms: ASCII stays as it is */
    PreTok pre[MAX_PRETOKENIZERS];
    int n_pre;
    int byte_level;                     /* a ByteLevel component: words are in the byte alphabet */
    int raw_words;                      /* the last component is ByteLevel: words reach BPE as
                                           bytes, mapped there */
    int ignore_merges, byte_fallback;
    int unk, fuse_unk;                  /* unk: id for characters without a piece, -1 drops them */
    int byte_id[256];                   /* id of each byte's one-character piece, or -1 */
    int fallback_id[256];               /* id of each byte's <0xXX> piece, or -1 */
    char byte_char[256][3];             /* GPT-2 byte-to-unicode: each byte's character */
    short char_byte[324];               /* and back: code point → byte, or -1 */
    pcre2_code *gpt2;                   /* ByteLevel's split pattern, compiled once */
    pcre2_match_context *mctx;          /* limits that keep a hostile pattern from running away */
    int dec_byte_level;                 /* the ByteLevel decoder */
    DecStep dec[MAX_DECODERS];          /* else this chain; none: pieces joined by spaces */
    int n_dec;
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

/* ---------------------------------------------------------------- patterns */

/* A piece of text: [start, end) and whether the pattern matched it, as tokenizers'
 * find_matches gives them (every byte in one span, in order). */
typedef struct { size_t start, end; int match; } Span;
typedef struct { Span *data; size_t len, cap; } SpanVec;

static int span_add(SpanVec *v, size_t start, size_t end, int match) {
    Span *d = reserve(v->data, &v->cap, v->len + 1, sizeof(Span));
    if (!d) return -1;
    v->data = d;
    v->data[v->len++] = (Span){start, end, match};
    return 0;
}

/* The regular expression's matches and the gaps between them, found as the Oniguruma binding
 * of tokenizers iterates: an empty match right where the last match ended is skipped, the
 * search going on one character further. */
static int regex_spans(const pcre2_code *re, pcre2_match_data *md, const pcre2_match_context *mc,
                       const char *s, size_t n, SpanVec *v, const char **fail) {
    size_t prev = 0, from = 0, last_end = (size_t)-1, len;
    while (from <= n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, md, (pcre2_match_context *)mc);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            *fail = rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT || rc == PCRE2_ERROR_HEAPLIMIT ||
                    rc == PCRE2_ERROR_JIT_STACKLIMIT ? "a split or replace pattern needs too much backtracking"
                                                      : "PCRE2 failed on a split or replace pattern";
            return -1;
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t start = ov[0], end = ov[1];
        if (start == end && end == last_end) {
            if (from == n) break;
            cp_at(s + from, n - from, &len);
            from += len;
            continue;
        }
        if ((start > prev && span_add(v, prev, start, 0)) || span_add(v, start, end, 1)) return -1;
        prev = from = last_end = end;
    }
    return prev < n ? span_add(v, prev, n, 0) : 0;
}

static int in_class(const Pattern *p, int32_t c) {
    switch (p->cls) {
    case CLASS_PUNCTUATION: return is_punctuation(c);
    case CLASS_NUMERIC: return is_numeric(c);
    case CLASS_SPACE: return is_space(c);
    case CLASS_CHAR: return c == p->ch;
    default: return 0;
    }
}

/* A class matches each of its characters on its own. */
static int class_spans(const Pattern *p, const char *s, size_t n, SpanVec *v) {
    size_t last = 0, len;
    for (size_t i = 0; i < n; i += len) {
        int32_t c = cp_at(s + i, n - i, &len);
        if (!in_class(p, c)) continue;
        if ((last < i && span_add(v, last, i, 0)) || span_add(v, i, i + len, 1)) return -1;
        last = i + len;
    }
    return last < n ? span_add(v, last, n, 0) : 0;
}

/* Spans of s[0..n) (n > 0) by pattern p into v (emptied first); -1 with *fail set on error. */
static int pattern_spans(const Pattern *p, pcre2_match_data *md, const pcre2_match_context *mc,
                         const char *s, size_t n, SpanVec *v, const char **fail) {
    v->len = 0;
    int rc = p->re ? regex_spans(p->re, md, mc, s, n, v, fail) : class_spans(p, s, n, v);
    if (rc && !*fail) *fail = "out of memory";
    return rc;
}

/* The pieces a split keeps, as tokenizers' NormalizedString::split: matched spans on their own,
 * dropped, or joined to the span before or after them (or runs of like spans joined); empty
 * pieces dropped. In place; returns the new count. */
static size_t split_by_behavior(Span *v, size_t n, Behavior how, int invert) {
    size_t w = 0;
    for (size_t i = 0; i < n; i++) v[i].match ^= invert;
    for (size_t i = 0; i < n; i++) {
        const int prev_match = i > 0 && v[i - 1].match;
        if (how == KEEP_REMOVED && v[i].match) continue;
        if (w > 0 && ((how == KEEP_CONTIGUOUS && v[i].match == prev_match) ||
                      (how == KEEP_WITH_PREVIOUS && v[i].match && !prev_match))) {
            v[w - 1].end = v[i].end;
            continue;
        }
        if (how == KEEP_WITH_NEXT && v[i].match && i + 1 < n && !v[i + 1].match) {
            v[w++] = (Span){v[i].start, v[i + 1].end, 0};
            i++;
            continue;
        }
        v[w++] = v[i];
    }
    size_t kept = 0;
    for (size_t i = 0; i < w; i++)
        if (v[i].end > v[i].start) v[kept++] = v[i];
    return kept;
}

/* ---------------------------------------------------------------- BPE: loading */

static const cJSON *get(const cJSON *o, const char *key) {
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

/* Up to 40 bytes of a string from the file, for an error message: control characters (a
 * newline would break the one line) as '?'. */
typedef struct { char s[41]; } Shown;
static Shown shown(const char *s, size_t n) {
    Shown out;
    size_t k = 0;
    for (; s && k < n && k < 40 && s[k]; k++) out.s[k] = (unsigned char)s[k] < 0x20 || s[k] == 0x7F ? '?' : s[k];
    out.s[k] = 0;
    return out;
}
#define SHOWN(str) (shown((str), (size_t)-1).s)

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

/* A string from the file that becomes part of the text: it must be valid UTF-8, as PCRE2 is
 * only ever given valid text. NULL when absent or not. */
static const char *get_text(const cJSON *o, const char *key) {
    const cJSON *j = get(o, key);
    if (!cJSON_IsString(j)) return NULL;
    size_t n = strlen(j->valuestring);
    return utf8_valid_prefix(j->valuestring, n) == n ? j->valuestring : NULL;
}

/* The code point of a string that is one character, else -1. */
static int32_t one_char(const char *s) {
    size_t n = s ? strlen(s) : 0, len;
    int32_t c = n ? cp_at(s, n, &len) : -1;
    return c >= 0 && len == n ? c : -1;
}

/* A pattern of tokenizers (Oniguruma, Ruby syntax) in PCRE2's terms, where they differ on
 * text: \s is White_Space (PCRE2 adds U+180E), \w letters, marks, decimal digits and
 * connectors (PCRE2 takes every number), \h a hex digit (PCRE2: horizontal space). Inside a
 * character class \W and \H stay PCRE2's (a class cannot hold their complement). */
static int translate_regex(const char *re, Buf *out) {
    static const char *const outside[][2] = {
        {"s", "\\p{White_Space}"}, {"S", "\\P{White_Space}"}, {"w", "[\\p{L}\\p{M}\\p{Nd}\\p{Pc}]"},
        {"W", "[^\\p{L}\\p{M}\\p{Nd}\\p{Pc}]"}, {"h", "[0-9a-fA-F]"}, {"H", "[^0-9a-fA-F]"}};
    static const char *const inside[][2] = {
        {"s", "\\p{White_Space}"}, {"S", "\\P{White_Space}"}, {"w", "\\p{L}\\p{M}\\p{Nd}\\p{Pc}"},
        {"h", "0-9a-fA-F"}};
    int in_class = 0;
    out->len = 0;
    for (size_t i = 0; re[i]; i++) {
        const char c = re[i];
        if (c == '\\' && re[i + 1]) {
            const char *to = NULL;
            const size_t n = in_class ? 4 : 6;
            for (size_t k = 0; k < n && !to; k++)
                if (re[i + 1] == (in_class ? inside : outside)[k][0][0]) to = (in_class ? inside : outside)[k][1];
            if (to ? buf_add(out, to, strlen(to)) : buf_add(out, re + i, 2)) return -1;
            i++;
            continue;
        }
        if (c == '[' && !in_class) {                   /* a ']' first in the class is literal */
            size_t j = i + 1 + (re[i + 1] == '^');
            in_class = 1;
            if (re[j] == ']') j++;
            if (buf_add(out, re + i, j - i)) return -1;
            i = j - 1;
            continue;
        }
        if (c == ']') in_class = 0;
        if (buf_add(out, &c, 1)) return -1;
    }
    return buf_add(out, "", 0);
}

/* A {"String": s} or {"Regex": r} pattern, compiled by PCRE2 (a String as a literal). */
static int parse_pattern(const cJSON *j, Pattern *p, const char *what, char *err, size_t err_len) {
    const char *lit = get_text(j, "String"), *re = get_text(j, "Regex");
    int code;
    PCRE2_SIZE at;
    Buf pcre = {0};
    memset(p, 0, sizeof *p);
    if (!lit && !re) {
        set_err(err, err_len, "tokenizer.json: %s needs a pattern {\"String\": ...} or {\"Regex\": ...} "
                "of valid UTF-8", what);
        return -1;
    }
    if (re && translate_regex(re, &pcre)) {
        free(pcre.data);
        set_err(err, err_len, "tokenizer.json: out of memory");
        return -1;
    }
    p->re = pcre2_compile((PCRE2_SPTR)(lit ? lit : pcre.data), PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | (lit ? PCRE2_LITERAL : PCRE2_UCP), &code, &at, NULL);
    free(pcre.data);
    if (!p->re) {
        PCRE2_UCHAR msg[120];
        pcre2_get_error_message(code, msg, sizeof msg);
        set_err(err, err_len, "tokenizer.json: %s pattern does not compile (PCRE2: %s)", what, (const char *)msg);
        return -1;
    }
    pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE);   /* without JIT it is only slower */
    return 0;
}

static void pattern_free(Pattern *p, const Bpe *b) {
    if (p->re != b->gpt2) pcre2_code_free(p->re);
    p->re = NULL;
}

/* One normalizer, or each of a Sequence's, appended to the chain. */
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
    if (b->n_norm == MAX_NORMALIZERS) {
        set_err(err, err_len, "tokenizer.json: more than %d normalizers", MAX_NORMALIZERS);
        return -1;
    }
    Norm *m = &b->norms[b->n_norm];
    for (size_t i = 0; type && i < sizeof forms / sizeof forms[0]; i++) {
        if (strcmp(type, forms[i].type)) continue;
        *m = (Norm){.kind = NORM_FORM, .opts = forms[i].opts};
        b->n_norm++;
        return 0;
    }
    const int prepend = type && !strcmp(type, "Prepend"), replace = type && !strcmp(type, "Replace");
    if (prepend || replace) {
        const char *text = get_text(j, prepend ? "prepend" : "content");
        if (!text) {
            set_err(err, err_len, "tokenizer.json: normalizer %s needs '%s', a string of valid UTF-8",
                    type, prepend ? "prepend" : "content");
            return -1;
        }
        if (replace && parse_pattern(get(j, "pattern"), &m->pat, "normalizer Replace", err, err_len)) return -1;
        m->kind = prepend ? NORM_PREPEND : NORM_REPLACE;
        b->n_norm++;                                   /* bpe_free frees what it holds from here */
        if (!(m->text = strdup(text))) {
            set_err(err, err_len, "tokenizer.json: out of memory");
            return -1;
        }
        return 0;
    }
    set_err(err, err_len, "tokenizer.json: normalizer '%s' is not supported (NFC, NFD, NFKC, NFKD, "
            "Prepend, Replace, Sequence)", type ? SHOWN(type) : "?");
    return -1;
}

/* Replace: each match of the pattern becomes the text. */
static int norm_replace(const Norm *m, pcre2_match_data *md, const pcre2_match_context *mc,
                        const char *s, size_t n, Buf *out, const char **fail) {
    SpanVec v = {0};
    int rc = -1;
    out->len = 0;
    if (buf_add(out, "", 0) || (n && pattern_spans(&m->pat, md, mc, s, n, &v, fail))) goto done;
    for (size_t i = 0; i < v.len; i++) {
        const Span *x = &v.data[i];
        if (x->match ? buf_add(out, m->text, strlen(m->text)) : buf_add(out, s + x->start, x->end - x->start))
            goto done;
    }
    rc = 0;
done:
    free(v.data);
    return rc;
}

/* One normalizer on cur[0..n) into out (NUL-terminated). */
static int norm_one(const Norm *m, pcre2_match_data *md, const pcre2_match_context *mc,
                    const char *cur, size_t n, Buf *out, const char **fail) {
    out->len = 0;
    if (m->kind == NORM_REPLACE) return norm_replace(m, md, mc, cur, n, out, fail);
    if (m->kind == NORM_PREPEND)                       /* empty text stays empty */
        return (n && buf_add(out, m->text, strlen(m->text))) || buf_add(out, cur, n) ? -1 : 0;
    utf8proc_uint8_t *dst;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)cur, (utf8proc_ssize_t)n, &dst, m->opts);
    if (r < 0) {
        *fail = "utf8proc failed to normalize";
        return -1;
    }
    int rc = buf_add(out, dst, (size_t)r);
    free(dst);
    return rc;
}

/* Normalizes s[0..n) into *out, malloc'd; *out stays NULL when the text is unchanged: no
 * normalizer, or pure ASCII, which every Unicode normalization form leaves alone. md: match
 * data for Replace patterns. */
static int normalize(const Bpe *b, pcre2_match_data *md, const char *s, size_t n, char **out,
                     size_t *out_len, const char **fail) {
    size_t i = 0;
    *out = NULL;
    while (i < n && (unsigned char)s[i] < 0x80) i++;
    if (!b->n_norm || (i == n && b->norm_forms_only)) return 0;
    Buf cur = {0}, next = {0};
    int rc = buf_add(&cur, s, n);
    for (int k = 0; !rc && k < b->n_norm; k++) {
        rc = norm_one(&b->norms[k], md, b->mctx, cur.data, cur.len, &next, fail);
        Buf t = cur;
        cur = next, next = t;
    }
    free(next.data);
    if (rc) {
        free(cur.data);
        if (!*fail) *fail = "out of memory";
        return -1;
    }
    *out = cur.data, *out_len = cur.len;
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
static int build_tries(Bpe *b, char *err, size_t err_len) {
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    const char *fail = NULL;
    int rc = md ? 0 : -1;
    for (int i = 0; !rc && i < b->n_added; i++) {
        Added *a = &b->added[i];
        size_t len = strlen(a->content);
        if (a->normalized && normalize(b, md, a->content, len, &a->pattern, &len, &fail)) rc = -1;
        else if (!a->pattern && !(a->pattern = strdup(a->content))) rc = -1;
        else if (len && trie_add(a->normalized ? &b->norm : &b->raw, a->pattern, len, i)) rc = -1;
    }
    if (rc) set_err(err, err_len, "tokenizer.json: normalizing the added tokens: %s", fail ? fail : "out of memory");
    pcre2_match_data_free(md);
    return rc;
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
            set_err(err, err_len, "tokenizer.json: vocab entry '%s' has no id in [0, %d)",
                    SHOWN(x->string), MAX_ID);
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
            set_err(err, err_len, "tokenizer.json: merge %u ('%.20s' + '%.20s') uses a piece that "
                    "is not in the vocabulary", rank, shown(l, ln).s, SHOWN(r));
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
    b->byte_fallback = get_bool(model, "byte_fallback", 0);
    b->ignore_merges = get_bool(model, "ignore_merges", 0);
    b->fuse_unk = get_bool(model, "fuse_unk", 0);
    b->unk = -1;
    if (cJSON_IsString(unk)) {
        int64_t id;
        if (!strmap_get(&b->vocab, unk->valuestring, strlen(unk->valuestring), &id)) {
            set_err(err, err_len, "tokenizer.json: unk_token '%s' is not in the vocabulary",
                    SHOWN(unk->valuestring));
            return -1;
        }
        b->unk = (int)id;
    }
    return 0;
}

static int parse_behavior(const cJSON *o, Behavior dflt, Behavior *how) {
    static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
    const cJSON *j = get(o, "behavior");
    *how = dflt;
    if (!j) return 0;
    for (int i = 0; i < 5; i++)
        if (cJSON_IsString(j) && !strcmp(j->valuestring, names[i])) {
            *how = (Behavior)i;
            return 0;
        }
    return -1;
}

/* Metaspace's options (pre-tokenizer and decoder alike): the replacement character and when a
 * piece gets one in front; older files say add_prefix_space instead of prepend_scheme. */
static int parse_metaspace(const cJSON *j, int32_t *rep, Prepend *prepend) {
    const cJSON *scheme = get(j, "prepend_scheme");
    const char *r = get_text(j, "replacement");
    *rep = r ? one_char(r) : get(j, "replacement") ? -1 : 0x2581;   /* absent: ▁; not text: refused */
    *prepend = get_bool(j, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER;
    if (cJSON_IsString(scheme)) {
        const char *v = scheme->valuestring;
        *prepend = !strcmp(v, "first") ? PREPEND_FIRST : !strcmp(v, "always") ? PREPEND_ALWAYS
                 : !strcmp(v, "never") ? PREPEND_NEVER : (Prepend)-1;
    }
    return *rep < 0 || (int)*prepend < 0 ? -1 : 0;
}

static void put_utf8(int32_t c, char out[5]) {
    utf8proc_ssize_t k = utf8proc_encode_char(c, (utf8proc_uint8_t *)out);
    out[k] = 0;
}

/* One pre-tokenizer component (in *p) from its JSON; `where` names it in errors. */
static int parse_component(Bpe *b, const cJSON *j, PreTok *p, const char *where, char *err, size_t err_len) {
    const char *type = type_of(j);
    int32_t rep;
    memset(p, 0, sizeof *p);
    p->kind = PRE_SPLIT;
    p->behavior = KEEP_ISOLATED;
    if (!type) type = "?";
    if (!strcmp(type, "ByteLevel")) {
        p->kind = PRE_BYTE_LEVEL;
        p->add_prefix_space = get_bool(j, "add_prefix_space", 1);
        if (get_bool(j, "use_regex", 1)) p->pat.re = b->gpt2;
        return 0;
    }
    if (!strcmp(type, "Split")) {
        p->invert = get_bool(j, "invert", 0);
        if (parse_behavior(j, KEEP_ISOLATED, &p->behavior) || !get(j, "behavior")) goto bad_behavior;
        return parse_pattern(get(j, "pattern"), &p->pat, "pre_tokenizer Split", err, err_len);
    }
    if (!strcmp(type, "Punctuation")) {
        p->pat.cls = CLASS_PUNCTUATION;
        if (parse_behavior(j, KEEP_ISOLATED, &p->behavior)) goto bad_behavior;
        return 0;
    }
    if (!strcmp(type, "Digits")) {
        p->pat.cls = CLASS_NUMERIC;
        p->behavior = get_bool(j, "individual_digits", 0) ? KEEP_ISOLATED : KEEP_CONTIGUOUS;
        return 0;
    }
    if (!strcmp(type, "WhitespaceSplit")) {
        p->pat.cls = CLASS_SPACE;
        p->behavior = KEEP_REMOVED;
        return 0;
    }
    if (!strcmp(type, "Whitespace")) {                 /* what Rust's regex crate calls \w and \s */
        static const char word[] = "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]+"
                                   "|[^\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}\\p{White_Space}]+";
        cJSON *pat = cJSON_CreateObject();
        int rc = !pat || !cJSON_AddStringToObject(pat, "Regex", word) ? -1
               : parse_pattern(pat, &p->pat, "pre_tokenizer Whitespace", err, err_len);
        cJSON_Delete(pat);
        p->behavior = KEEP_REMOVED, p->invert = 1;
        return rc;
    }
    if (!strcmp(type, "Metaspace")) {
        p->kind = PRE_METASPACE;
        if (parse_metaspace(j, &rep, &p->prepend)) {
            set_err(err, err_len, "tokenizer.json: %s Metaspace needs a one-character 'replacement' and "
                    "a prepend_scheme of first, always or never", where);
            return -1;
        }
        put_utf8(rep, p->rep);
        if (get_bool(j, "split", 1)) p->pat = (Pattern){NULL, CLASS_CHAR, rep}, p->behavior = KEEP_WITH_NEXT;
        return 0;
    }
    set_err(err, err_len, "tokenizer.json: %s '%s' is not supported (ByteLevel, Split, Punctuation, "
            "Digits, Whitespace, WhitespaceSplit, Metaspace, Sequence of them)", where, SHOWN(type));
    return -1;
bad_behavior:
    set_err(err, err_len, "tokenizer.json: %s %s needs a behavior: Removed, Isolated, MergedWithPrevious, "
            "MergedWithNext or Contiguous", where, type);
    return -1;
}

/* The pre-tokenizer: null, one component, or a Sequence of them (nested ones flattened). */
static int parse_pretok(Bpe *b, const cJSON *j, int nested, char *err, size_t err_len) {
    const cJSON *x;
    if (!j || cJSON_IsNull(j)) return 0;
    if (is_type(j, "Sequence")) {
        const cJSON *list = get(j, "pretokenizers");
        if (!cJSON_IsArray(list)) {
            set_err(err, err_len, "tokenizer.json: pre_tokenizer Sequence has no 'pretokenizers' list");
            return -1;
        }
        cJSON_ArrayForEach(x, list) if (parse_pretok(b, x, 1, err, err_len)) return -1;
        return 0;
    }
    if (b->n_pre == MAX_PRETOKENIZERS) {
        set_err(err, err_len, "tokenizer.json: more than %d pre_tokenizer components", MAX_PRETOKENIZERS);
        return -1;
    }
    PreTok *p = &b->pre[b->n_pre];
    int rc = parse_component(b, j, p, nested ? "pre_tokenizer Sequence component" : "pre_tokenizer", err, err_len);
    if (p->pat.re || !rc) b->n_pre++;                  /* bpe_free frees what it holds */
    if (!rc && p->kind == PRE_BYTE_LEVEL) b->byte_level = 1;
    return rc;
}

static int has_decoder(const Bpe *b, int kind) {
    for (int i = 0; i < b->n_dec; i++)
        if ((int)b->dec[i].kind == kind) return 1;
    return 0;
}

/* One decoder of a chain, or each of a Sequence's. A Replace after a Fuse sees the text in
 * pieces, so it may only replace one character; ByteFallback must come before any Fuse, and
 * once (its run of bytes is the decoder's one). */
static int parse_decoder(Bpe *b, const cJSON *j, int *fused, char *err, size_t err_len) {
    const char *type = type_of(j);
    const cJSON *x;
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *list = get(j, "decoders");
        if (!cJSON_IsArray(list)) {
            set_err(err, err_len, "tokenizer.json: decoder Sequence has no 'decoders' list");
            return -1;
        }
        cJSON_ArrayForEach(x, list) if (parse_decoder(b, x, fused, err, err_len)) return -1;
        return 0;
    }
    if (b->n_dec == MAX_DECODERS) {
        set_err(err, err_len, "tokenizer.json: more than %d decoders", MAX_DECODERS);
        return -1;
    }
    DecStep *d = &b->dec[b->n_dec];
    memset(d, 0, sizeof *d);
    d->fused = *fused;
    if (type && !strcmp(type, "Fuse")) {
        d->kind = DEC_FUSE;
        *fused = 1;
    } else if (type && !strcmp(type, "ByteFallback") && !*fused && !has_decoder(b, DEC_BYTE_FALLBACK)) {
        d->kind = DEC_BYTE_FALLBACK;
    } else if (type && !strcmp(type, "Strip")) {
        const cJSON *start = get(j, "start"), *stop = get(j, "stop");
        d->kind = DEC_STRIP;
        d->ch = one_char(get_text(j, "content"));
        d->start = cJSON_IsNumber(start) && start->valuedouble >= 0 && start->valuedouble < 1e6 ? (int)start->valuedouble : -1;
        d->stop = cJSON_IsNumber(stop) && stop->valuedouble >= 0 && stop->valuedouble < 1e6 ? (int)stop->valuedouble : -1;
        if (d->ch < 0 || d->start < 0 || d->stop < 0) {
            set_err(err, err_len, "tokenizer.json: decoder Strip needs a one-character 'content', 'start' and 'stop'");
            return -1;
        }
    } else if (type && !strcmp(type, "Metaspace")) {
        Prepend prepend;
        d->kind = DEC_METASPACE;
        if (parse_metaspace(j, &d->ch, &prepend)) {
            set_err(err, err_len, "tokenizer.json: decoder Metaspace needs a one-character 'replacement' and "
                    "a prepend_scheme of first, always or never");
            return -1;
        }
        d->start = prepend != PREPEND_NEVER;
    } else if (type && !strcmp(type, "Replace")) {
        const char *content = get_text(j, "content");
        const cJSON *pat = get(j, "pattern");
        d->kind = DEC_REPLACE;
        if (!content) {
            set_err(err, err_len, "tokenizer.json: decoder Replace needs 'content', a string of valid UTF-8");
            return -1;
        }
        if (*fused && one_char(get_text(pat, "String")) < 0) {
            set_err(err, err_len, "tokenizer.json: decoder Replace after Fuse is supported for a one-character "
                    "String pattern only");
            return -1;
        }
        if (parse_pattern(pat, &d->pat, "decoder Replace", err, err_len)) return -1;
        b->n_dec++;                                    /* bpe_free frees what it holds from here */
        if (!(d->content = strdup(content))) {
            set_err(err, err_len, "tokenizer.json: out of memory");
            return -1;
        }
        return 0;
    } else {
        set_err(err, err_len, "tokenizer.json: decoder '%s'%s is not supported (ByteLevel, or Replace, "
                "ByteFallback, Fuse, Strip, Metaspace, alone or in a Sequence)", type ? SHOWN(type) : "?",
                type && !strcmp(type, "ByteFallback") ? " after Fuse or twice" : "");
        return -1;
    }
    b->n_dec++;
    return 0;
}

/* The decoder: ByteLevel, a chain of the others, or none (pieces joined by spaces). */
static int parse_decoders(Bpe *b, const cJSON *j, char *err, size_t err_len) {
    int fused = 0;
    if (!j || cJSON_IsNull(j)) return 0;
    if (is_type(j, "ByteLevel")) {
        b->dec_byte_level = 1;
        return 0;
    }
    return parse_decoder(b, j, &fused, err, err_len);
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
            type ? SHOWN(type) : "?");
    return -1;
}

/* The GPT-2 split pattern. Its \s is written [\t-\r\x{85}\p{Z}] (Unicode White_Space), because
 * tokenizers' Oniguruma and PCRE2 disagree on U+180E; every repeat is of a single class, so
 * PCRE2's JIT needs no stack however long a run is. */
static const char GPT2_SPLIT[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\t-\\r\\x{85}\\p{Z}\\p{L}\\p{N}]+"
    "|[\\t-\\r\\x{85}\\p{Z}]+(?![^\\t-\\r\\x{85}\\p{Z}])|[\\t-\\r\\x{85}\\p{Z}]+";

/* The GPT-2 pattern and the match limits: a pattern from the file may backtrack for ever on
 * some text, and then encoding fails instead. */
static int compile_split(Bpe *b, char *err, size_t err_len) {
    int code;
    PCRE2_SIZE at;
    b->gpt2 = pcre2_compile((PCRE2_SPTR)GPT2_SPLIT, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                            &code, &at, NULL);
    if (!b->gpt2) {
        set_err(err, err_len, "tokenizer: PCRE2 cannot compile the GPT-2 pattern (error %d)", code);
        return -1;
    }
    pcre2_jit_compile(b->gpt2, PCRE2_JIT_COMPLETE);   /* without JIT it is only slower */
    if (!(b->mctx = pcre2_match_context_create(NULL))) {
        set_err(err, err_len, "tokenizer.json: out of memory");
        return -1;
    }
    pcre2_set_match_limit(b->mctx, 1000000);
    pcre2_set_depth_limit(b->mctx, 10000);
    pcre2_set_heap_limit(b->mctx, 65536);               /* KiB */
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
    for (int i = 0; i < b->n_norm; i++) free(b->norms[i].text), pattern_free(&b->norms[i].pat, b);
    for (int i = 0; i < b->n_pre; i++) pattern_free(&b->pre[i].pat, b);
    for (int i = 0; i < b->n_dec; i++) free(b->dec[i].content), pattern_free(&b->dec[i].pat, b);
    pcre2_code_free(b->gpt2);
    pcre2_match_context_free(b->mctx);
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
        char hex[7];
        int found = strmap_get(&b->vocab, b->byte_char[c], strlen(b->byte_char[c]), &id);
        b->byte_id[c] = found ? (int)id : -1;
        snprintf(hex, sizeof hex, "<0x%02X>", c);      /* byte_fallback's spelling */
        found = b->byte_fallback && strmap_get(&b->vocab, hex, 6, &id);
        b->fallback_id[c] = found ? (int)id : -1;
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
        set_err(err, err_len, "tokenizer.json: model type '%s' is not supported (BPE only)",
                type_of(model) ? SHOWN(type_of(model)) : "?");
        goto fail;
    }
    *bos = -1;
    if (compile_split(b, err, err_len) ||
        parse_vocab(b, model, err, err_len) || parse_merges(b, model, err, err_len) ||
        parse_model_options(b, model, err, err_len) ||
        parse_added(b, get(root, "added_tokens"), err, err_len) ||
        parse_normalizer(b, get(root, "normalizer"), err, err_len) ||
        parse_pretok(b, get(root, "pre_tokenizer"), 0, err, err_len) ||
        parse_decoders(b, get(root, "decoder"), err, err_len) ||
        leading_special(get(root, "post_processor"), bos, err, err_len) ||
        build_tries(b, err, err_len))
        goto fail;
    b->norm_forms_only = 1;
    for (int i = 0; i < b->n_norm; i++) b->norm_forms_only &= b->norms[i].kind == NORM_FORM;
    b->raw_words = b->n_pre && b->pre[b->n_pre - 1].kind == PRE_BYTE_LEVEL;
    if (build_pieces(b)) {
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

/* ---------------------------------------------------------------- BPE: encoding */

typedef struct { int id, prev, next; } Sym;      /* id -1: merged into its left neighbour */
typedef struct { uint32_t rank; int pos, id; } Cand;
typedef struct { size_t start, stop, resume; int id; } Match;

typedef struct {                  /* the scratch space of one tokenizer_encode call */
    const Bpe *b;
    IntVec *out;
    StrMap cache;                 /* word → (offset << 32 | count) of its ids in `cached` */
    IntVec cached;
    Buf text[MAX_PRETOKENIZERS];  /* each component's changed piece (prefix, Metaspace) */
    Buf mapped[MAX_PRETOKENIZERS];/* and each piece after ByteLevel's byte alphabet */
    SpanVec spans[MAX_PRETOKENIZERS];
    Buf word;                     /* a raw word in the byte alphabet, for ignore_merges */
    int first;                    /* the piece being encoded starts its run (Metaspace "first") */
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

/* The id of the piece of one character (UTF-8 c[0..len), code point cp), -1 when none; the
 * byte alphabet's characters through byte_id, the others through the vocabulary. */
static int char_id(const Bpe *b, int32_t cp, const char *c, size_t len) {
    int64_t id;
    if (cp >= 0 && cp < 324 && b->char_byte[cp] >= 0) return b->byte_id[b->char_byte[cp]];
    return strmap_get(&b->vocab, c, len, &id) ? (int)id : -1;
}

static void sym_add(Sym *s, int *m, int id) {
    s[*m] = (Sym){id, *m - 1, *m + 1};
    (*m)++;
}

/* A word's first symbols, as tokenizers' merge_word: each character's piece; else, with
 * byte_fallback, the <0xXX> pieces of its bytes when all exist; else unk, fused with an unk
 * right before when fuse_unk, and (as there) put down only at the next character that has a
 * piece, or at the end: after any byte pieces in between. Raw words are bytes, each standing
 * for its character of the byte alphabet. Returns the count. */
static int word_symbols(const Bpe *b, Sym *s, const unsigned char *w, size_t n, int raw) {
    int m = 0, unk = -1;
    size_t len;
    for (size_t i = 0; i < n; i += len) {
        const char *c = (const char *)w + i;
        size_t c_len = len = 1;
        int id;
        if (raw) {
            c = b->byte_char[w[i]], c_len = strlen(c), id = b->byte_id[w[i]];
        } else {
            int32_t cp = cp_at(c, n - i, &len);
            c_len = len, id = char_id(b, cp, c, len);
        }
        if (id >= 0) {
            if (unk >= 0) sym_add(s, &m, unk), unk = -1;
            sym_add(s, &m, id);
            continue;
        }
        size_t k = 0;
        while (b->byte_fallback && k < c_len && b->fallback_id[(unsigned char)c[k]] >= 0) k++;
        if (b->byte_fallback && k == c_len) {
            for (k = 0; k < c_len; k++) sym_add(s, &m, b->fallback_id[(unsigned char)c[k]]);
            continue;
        }
        if (b->unk < 0) continue;                    /* no piece and no unk: dropped */
        if (unk >= 0 && !b->fuse_unk) sym_add(s, &m, unk);
        unk = b->unk;
    }
    if (unk >= 0) sym_add(s, &m, unk);
    return m;
}

/* ignore_merges: the id of the whole word when it is a piece, else -1. */
static int whole_word(Enc *e, const unsigned char *w, size_t n, int raw) {
    const Bpe *b = e->b;
    int64_t id;
    if (raw) {
        e->word.len = 0;
        for (size_t i = 0; i < n; i++)
            if (buf_add(&e->word, b->byte_char[w[i]], strlen(b->byte_char[w[i]]))) return -2;
        w = (const unsigned char *)e->word.data, n = e->word.len;
    }
    return strmap_get(&b->vocab, (const char *)w, n, &id) ? (int)id : -1;
}

/* BPE of one word, as tokenizers' Word::merge_all: always the pair of lowest rank, the leftmost
 * among equals, until no pair of neighbours has a merge. */
static int bpe_word(Enc *e, const unsigned char *w, size_t n) {
    const Bpe *b = e->b;
    const int raw = b->raw_words;
    if (b->ignore_merges) {                          /* a word that is a piece stays whole */
        int id = whole_word(e, w, n, raw);
        if (id != -1) return id < 0 ? -1 : ivec_add(e->out, &id, 1);
    }
    /* a byte of the word makes at most 2 symbols (the bytes of its 2-byte character) */
    Sym *s = reserve(e->syms, &e->syms_cap, 2 * n + 1, sizeof(Sym));
    if (!s) return -1;
    e->syms = s;
    Cand *h = reserve(e->heap, &e->heap_cap, 6 * n + 3, sizeof(Cand));   /* m - 1 pairs + 2 per merge */
    if (!h) return -1;
    e->heap = h;
    int m = word_symbols(b, s, w, n, raw);
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

/* A component's change of a piece before it splits: ByteLevel's prefix space, Metaspace's "▁"
 * for spaces and in front (always, or only at the start of the run). *s and *n are updated
 * when it changes. */
static int pretok_change(Enc *e, int k, const char **s, size_t *n, int first) {
    const PreTok *p = &e->b->pre[k];
    Buf *t = &e->text[k];
    t->len = 0;
    if (p->kind == PRE_BYTE_LEVEL) {
        if (!p->add_prefix_space || (*s)[0] == ' ') return 0;
        if (buf_add(t, " ", 1) || buf_add(t, *s, *n)) return -1;
    } else if (p->kind == PRE_METASPACE) {
        const size_t rep_len = strlen(p->rep);
        for (size_t i = 0; i < *n; i++)
            if ((*s)[i] == ' ' ? buf_add(t, p->rep, rep_len) : buf_add(t, *s + i, 1)) return -1;
        const int starts = t->len >= rep_len && !memcmp(t->data, p->rep, rep_len);
        if (!starts && (p->prepend == PREPEND_ALWAYS || (p->prepend == PREPEND_FIRST && first))) {
            if (buf_add(t, p->rep, rep_len)) return -1;          /* room, then shift it in front */
            memmove(t->data + rep_len, t->data, t->len - rep_len);
            memcpy(t->data, p->rep, rep_len);
        }
    } else return 0;
    *s = t->data, *n = t->len;
    return 0;
}

/* Component k of the pre-tokenizer on one piece: it splits the piece, each of its pieces goes
 * on to component k + 1 (after ByteLevel: in the byte alphabet), and words to BPE. first: the
 * piece starts its run. */
static int pretokenize(Enc *e, int k, const char *s, size_t n, int first) {
    const Bpe *b = e->b;
    if (!n) return 0;
    if (k == b->n_pre) return encode_word(e, s, n);
    const PreTok *p = &b->pre[k];
    SpanVec *v = &e->spans[k];
    if (pretok_change(e, k, &s, &n, first)) return -1;
    if (p->pat.re || p->pat.cls) {
        if (pattern_spans(&p->pat, e->md, p->pat.re == b->gpt2 ? NULL : b->mctx, s, n, v, &e->fail)) return -1;
        v->len = split_by_behavior(v->data, v->len, p->behavior, p->invert);
    } else {
        v->len = 0;
        if (span_add(v, 0, n, 0)) return -1;
    }
    for (size_t i = 0; i < v->len; i++) {
        const char *piece = s + v->data[i].start;
        size_t len = v->data[i].end - v->data[i].start;
        const int at_start = first && v->data[i].start == 0;
        if (p->kind == PRE_BYTE_LEVEL && k + 1 < b->n_pre) {   /* the last one leaves it to BPE */
            Buf *m = &e->mapped[k];
            m->len = 0;
            for (size_t j = 0; j < len; j++) {
                const char *c = b->byte_char[(unsigned char)piece[j]];
                if (buf_add(m, c, strlen(c))) return -1;
            }
            piece = m->data, len = m->len;
        }
        if (pretokenize(e, k + 1, piece, len, at_start)) return -1;
    }
    return 0;
}

static int encode_pretokens(Enc *e, const char *s, size_t n) { return pretokenize(e, 0, s, n, e->first); }

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

/* Splits s[0..n) around the added tokens of trie t, the text between them going to gap();
 * e->first tells gap() whether its text starts the run. */
static int split_added(Enc *e, const Trie *t, const char *s, size_t n,
                       int (*gap)(Enc *, const char *, size_t)) {
    const int first = e->first;
    size_t pos = 0, from = 0;
    Match m;
    while (next_added(e->b, t, s, n, from, pos, &m)) {
        e->first = first && pos == 0;
        if (m.start > pos && gap(e, s + pos, m.start - pos)) return -1;
        if (ivec_add(e->out, &m.id, 1)) return -1;
        pos = m.stop, from = m.resume;
    }
    e->first = first && pos == 0;
    return pos < n ? gap(e, s + pos, n - pos) : 0;
}

static int encode_normalized(Enc *e, const char *s, size_t n) {
    char *norm;
    size_t len;
    if (normalize(e->b, e->md, s, n, &norm, &len, &e->fail)) return -1;
    int rc = norm ? (len ? split_added(e, &e->b->norm, norm, len, encode_pretokens) : 0)
                  : split_added(e, &e->b->norm, s, n, encode_pretokens);
    free(norm);
    return rc;
}

/* An ill-formed byte: one id that decodes to that byte alone (see the top). */
static int encode_raw_byte(Enc *e, unsigned char c) {
    const Bpe *b = e->b;
    if (!b->byte_level) {
        int id = b->fallback_id[c] >= 0 ? b->fallback_id[c] : b->unk;
        if (id >= 0) return ivec_add(e->out, &id, 1);
        snprintf(e->why, sizeof e->why, "the text has the ill-formed UTF-8 byte 0x%02X and the "
                 "vocabulary has neither a byte_fallback piece <0x%02X> nor unk", c, c);
        e->fail = e->why;
        return -1;
    }
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
    if (!(e.md = pcre2_match_data_create(1, NULL))) goto done;
    for (size_t i = 0; i < len;) {
        size_t run = utf8_valid_prefix(text + i, len - i);
        e.first = 1;
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
    for (int k = 0; k < MAX_PRETOKENIZERS; k++) free(e.text[k].data), free(e.mapped[k].data), free(e.spans[k].data);
    free(e.word.data);
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
    Buf pend;         /* BPE: the start of a character not yet complete */
    IntVec ids;       /* SentencePiece: [anchor, ids not yet printed...] */
    int anchored;     /* SentencePiece: text was printed, so decode after the anchor */
    /* the decoder chain of tokenizer.json: */
    size_t tokens;                  /* pieces pushed (no decoder: joined by spaces) */
    size_t seen[MAX_DECODERS];      /* tokens that reached each decoder */
    int stripped[MAX_DECODERS];     /* Strip after Fuse: the start of the text is done */
    int held[MAX_DECODERS];         /* Strip after Fuse: its characters held at the end */
    Buf step_out[MAX_DECODERS];     /* each decoder's output for the next one */
    Buf run;                        /* ByteFallback: the bytes of the <0xXX> pieces so far */
    pcre2_match_data *md;           /* Replace's matches */
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

/* ByteFallback's reading of a piece: <0xHH> (Rust's u8::from_str_radix also takes "+H"). */
static int byte_piece(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return -1;
    int v = 0;
    for (int i = s[3] == '+' ? 4 : 3; i < 5; i++) {
        char c = s[i];
        int x = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (x < 0) return -1;
        v = v * 16 + x;
    }
    return v;
}

static int dec_feed(TokenDecoder *d, int k, const char *s, size_t n);

/* ByteFallback at the end of a run of byte pieces: the run as one text when it is valid UTF-8,
 * else one U+FFFD per piece, each a token for the decoders after it. */
static int dec_flush_run(TokenDecoder *d, int k) {
    Buf *r = &d->run;
    int rc = 0;
    if (!r->len) return 0;
    if (utf8_valid_prefix(r->data, r->len) == r->len) rc = dec_feed(d, k + 1, r->data, r->len);
    else for (size_t i = 0; !rc && i < r->len; i++) rc = dec_feed(d, k + 1, REPLACEMENT, 3);
    r->len = 0;
    return rc;
}

/* Strip on one token: up to `start` of its characters at the front, `stop` at the back. */
static int dec_strip_token(TokenDecoder *d, int k, const char *s, size_t n) {
    const DecStep *st = &d->t->bpe->dec[k];
    size_t a = 0, z = n, len;
    for (int i = 0; i < st->start && a < n && cp_at(s + a, n - a, &len) == st->ch; i++) a += len;
    for (int i = 0; i < st->stop && z > a; i++) {     /* a piece need not be valid UTF-8 */
        size_t j = cp_back(s, z);
        if (j < a || cp_at(s + j, z - j, &len) != st->ch || j + len != z) break;
        z = j;
    }
    return dec_feed(d, k + 1, s + a, z - a);
}

/* Strip after Fuse, where the text comes in pieces: its characters at the very start are
 * dropped, those at the end held until more text comes (dropped when none does). */
static int dec_strip_stream(TokenDecoder *d, int k, const char *s, size_t n) {
    const DecStep *st = &d->t->bpe->dec[k];
    Buf *o = &d->step_out[k];
    char c[5];
    size_t len;
    put_utf8(st->ch, c);
    o->len = 0;
    for (size_t i = 0; i < n; i += len) {
        int32_t cp = cp_at(s + i, n - i, &len);
        if (!d->stripped[k] && cp == st->ch && (int)d->seen[k] < st->start) {
            d->seen[k]++;                              /* counts the characters dropped */
            continue;
        }
        d->stripped[k] = 1;
        if (cp == st->ch && st->stop > 0) {
            if (d->held[k] < st->stop) {
                d->held[k]++;
                continue;
            }
            if (buf_add(o, c, strlen(c))) return -1;  /* one more than may go: the oldest goes on */
            continue;
        }
        for (; d->held[k] > 0; d->held[k]--)
            if (buf_add(o, c, strlen(c))) return -1;
        if (buf_add(o, s + i, len)) return -1;
    }
    return o->len ? dec_feed(d, k + 1, o->data, o->len) : 0;
}

/* Replace each match of the pattern in one token; Metaspace: the replacement character becomes
 * a space, or nothing in the first token. */
static int dec_map(TokenDecoder *d, int k, const char *s, size_t n, size_t index) {
    const DecStep *st = &d->t->bpe->dec[k];
    Buf *o = &d->step_out[k];
    size_t len;
    o->len = 0;
    if (buf_add(o, "", 0)) return -1;
    if (st->kind == DEC_METASPACE) {
        for (size_t i = 0; i < n; i += len) {
            if (cp_at(s + i, n - i, &len) != st->ch) {
                if (buf_add(o, s + i, len)) return -1;
            } else if (!(index == 0 && st->start) && buf_add(o, " ", 1)) return -1;
        }
    } else {                                            /* Replace; PCRE2 takes valid text only */
        Norm m = {.kind = NORM_REPLACE, .text = st->content, .pat = st->pat};
        const char *fail = NULL;
        if (!n || utf8_valid_prefix(s, n) != n) return dec_feed(d, k + 1, s, n);
        if (!d->md && !(d->md = pcre2_match_data_create(1, NULL))) return -1;
        if (norm_replace(&m, d->md, d->t->bpe->mctx, s, n, o, &fail)) return -1;   /* out of memory, or a
                                                                                       runaway pattern */
    }
    return dec_feed(d, k + 1, o->data, o->len);
}

/* A token (a piece, or what the decoders before made of it) enters decoder k of the chain;
 * what leaves the last one is the text. */
static int dec_feed(TokenDecoder *d, int k, const char *s, size_t n) {
    const Bpe *b = d->t->bpe;
    if (k == b->n_dec) return buf_add(&d->pend, s, n);
    const DecStep *st = &b->dec[k];
    const size_t index = st->fused ? 0 : d->seen[k]++;
    int byte;
    switch (st->kind) {
    case DEC_BYTE_FALLBACK:
        if ((byte = byte_piece(s, n)) >= 0) {
            char c = (char)byte;
            return buf_add(&d->run, &c, 1);
        }
        return dec_flush_run(d, k) || dec_feed(d, k + 1, s, n) ? -1 : 0;
    case DEC_STRIP:
        return st->fused ? dec_strip_stream(d, k, s, n) : dec_strip_token(d, k, s, n);
    case DEC_REPLACE:
    case DEC_METASPACE:
        return dec_map(d, k, s, n, index);
    default:                                            /* Fuse: one token from here on */
        return dec_feed(d, k + 1, s, n);
    }
}

/* The end of the pieces: byte runs still held go on; Strip's held characters are dropped. */
static int dec_finish_chain(TokenDecoder *d) {
    const Bpe *b = d->t->bpe;
    for (int k = 0; k < b->n_dec; k++)
        if (b->dec[k].kind == DEC_BYTE_FALLBACK && dec_flush_run(d, k)) return -1;
    return 0;
}

/* Bytes become text as soon as they complete a character; ill-formed ones become U+FFFD at
 * once, the same maximal subparts as decoding the whole text lossily. */
static const char *bpe_push(TokenDecoder *d, int id) {
    const Bpe *b = d->t->bpe;
    const char *p = b->piece[id];
    size_t used = 0, n = strlen(p);
    out_clear(d);
    int rc = b->dec_byte_level ? bpe_piece_bytes(b, id, &d->pend)
           : b->n_dec ? dec_feed(d, 0, p, n)
           : (d->tokens && buf_add(&d->pend, " ", 1)) || buf_add(&d->pend, p, n);   /* no decoder */
    d->tokens++;
    if (rc || !d->pend.len || utf8_lossy(d->pend.data, d->pend.len, &d->out, &used))
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
    size_t used = 0;
    if (d->t->sp) return sp_push(d, -1, 1);
    out_clear(d);
    if (!dec_finish_chain(d) && d->pend.len) {
        utf8_lossy(d->pend.data, d->pend.len, &d->out, &used);
        if (used < d->pend.len) buf_add(&d->out, REPLACEMENT, 3);
    }
    /* ready for the next text */
    d->pend.len = d->run.len = d->tokens = 0;
    memset(d->seen, 0, sizeof d->seen), memset(d->stripped, 0, sizeof d->stripped);
    memset(d->held, 0, sizeof d->held);
    return d->out.data;
}

/* Whether the tokenizer.json decoder chain has a ByteFallback step: its pending bytes are then
 * the run of byte pieces not yet joined, otherwise the start of a character at the end. */
static int chain_has_byte_fallback(const Bpe *b) {
    for (int k = 0; k < b->n_dec; k++)
        if (b->dec[k].kind == DEC_BYTE_FALLBACK) return 1;
    return 0;
}

int decoder_pending(const TokenDecoder *d, char *out, size_t cap) {
    size_t n = 0;
    if (d->t->sp) {
        /* the byte pieces not yet printed (only those can be held in mid-text) */
        for (size_t i = 1; i < d->ids.len; i++) {
            if (sp_piece_type(d->t->sp, d->ids.data[i]) != SP_BYTE) continue;
            if (n == cap) return -1;
            out[n++] = (char)strtol(sp_id_to_piece(d->t->sp, d->ids.data[i]) + 3, NULL, 16);
        }
        return (int)n;
    }
    const Buf *held = chain_has_byte_fallback(d->t->bpe) ? &d->run : &d->pend;
    if (held->len > cap || (held == &d->run && d->pend.len)) return -1;
    memcpy(out, held->data, held->len);
    return (int)held->len;
}

int decoder_resume(TokenDecoder *d, const char *bytes, size_t n) {
    if (d->t->sp) {
        /* in mid-text, after the anchor, with the bytes as their <0xXX> pieces */
        d->anchored = 1;
        for (size_t i = 0; i < n; i++) {
            char piece[8];
            snprintf(piece, sizeof piece, "<0x%02X>", (unsigned char)bytes[i]);
            int id = sp_piece_to_id(d->t->sp, piece);
            if (id < 0 || sp_piece_type(d->t->sp, id) != SP_BYTE || ivec_add(&d->ids, &id, 1)) return -1;
        }
        return 0;
    }
    /* past the start of the text for every decoder of the chain */
    d->tokens = 1;
    for (int k = 0; k < MAX_DECODERS; k++) d->seen[k] = 1, d->stripped[k] = 1;
    return buf_add(chain_has_byte_fallback(d->t->bpe) ? &d->run : &d->pend, bytes, n) ? -1 : 0;
}

void decoder_free(TokenDecoder *d) {
    if (!d) return;
    for (int k = 0; k < MAX_DECODERS; k++) free(d->step_out[k].data);
    free(d->run.data);
    pcre2_match_data_free(d->md);
    free(d->out.data);
    free(d->pend.data);
    free(d->ids.data);
    free(d);
}
