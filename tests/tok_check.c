/* tests/tok_check.c: the test driver of tokenizer.c, run by tests/test_tokenizer.sh.
 *
 *   tok_check info TOKENIZER               load; print kind, vocab size and special ids
 *   tok_check bytes json|sp FILE           the same through tokenizer_load_bytes
 *   tok_check cases TOKENIZER CASES.tsv    rows: text, ids, ids with BOS as the tokenizer wants
 *                                          it, decoded text (texts escaped, see unescape)
 *   tok_check decode TOKENIZER IDS.tsv     rows: ids, decoded text (escaped)
 *   tok_check lines TOKENIZER TEXT|- IDS DECODED [--roundtrip]
 *                                          line-parallel files, as spm_encode / spm_decode write
 *                                          them; --roundtrip: valid UTF-8 lines decode to themselves
 *   tok_check random TOKENIZER N SEED      N lines of random ids, byte pieces favoured
 *   tok_check mutate FILE N SEED           load N truncated or corrupted copies: must not crash
 *   tok_check bench TOKENIZER FILE         encode speed
 * Every decode goes through decoder_push one id at a time, and each push must return valid
 * UTF-8. Load errors print one line on stderr and exit 1. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L   /* clock_gettime */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenizer.h"

static void die(const char *msg) {
    fprintf(stderr, "tok_check: %s\n", msg);
    exit(1);
}

static char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "tok_check: cannot open %s\n", path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)size + 1);
    if (!s || fread(s, 1, (size_t)size, f) != (size_t)size) die("read error");
    fclose(f);
    s[size] = 0;
    *n = (size_t)size;
    return s;
}

/* Splits s in place into lines, their lengths in *lens (lines may hold NUL bytes); a final
 * newline ends the last line, it does not start one. */
static char **split_lines(char *s, size_t n, size_t *count, size_t **lens) {
    size_t cap = 16, k = 0;
    char **lines = malloc(cap * sizeof(char *));
    *lens = malloc(cap * sizeof(size_t));
    for (size_t i = 0; i < n;) {
        if (k == cap) {
            lines = realloc(lines, (cap *= 2) * sizeof(char *));
            *lens = realloc(*lens, cap * sizeof(size_t));
        }
        lines[k] = s + i;
        char *nl = memchr(s + i, '\n', n - i);
        size_t end = nl ? (size_t)(nl - s) : n;
        (*lens)[k++] = end - i;
        s[end] = 0;
        i = end + 1;
    }
    *count = k;
    return lines;
}

/* The fixtures' escapes: \\ \n \r \t and \xNN for any other byte; the rest is literal. */
static char *unescape(const char *s, size_t *n) {
    char *out = malloc(strlen(s) + 1);
    size_t k = 0;
    for (; *s; s++) {
        if (*s != '\\') {
            out[k++] = *s;
            continue;
        }
        s++;
        if (*s == 'n') out[k++] = '\n';
        else if (*s == 'r') out[k++] = '\r';
        else if (*s == 't') out[k++] = '\t';
        else if (*s == '\\') out[k++] = '\\';
        else if (*s == 'x' && s[1] && s[2]) {
            char hex[3] = {s[1], s[2], 0};
            out[k++] = (char)strtol(hex, NULL, 16);
            s += 2;
        } else die("bad escape in fixture");
    }
    out[k] = 0;
    *n = k;
    return out;
}

static int *parse_ids(const char *s, size_t *n) {
    size_t cap = 16;
    int *ids = malloc(cap * sizeof(int));
    char *end;
    *n = 0;
    for (;;) {
        long v = strtol(s, &end, 10);
        if (end == s) break;
        if (*n == cap) ids = realloc(ids, (cap *= 2) * sizeof(int));
        ids[(*n)++] = (int)v;
        s = end;
    }
    return ids;
}

/* Strict UTF-8: no overlong forms, surrogates, or code points past U+10FFFF. */
static int valid_utf8(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = s[i], lo = 0x80, hi = 0xBF;
        int need = c < 0x80 ? 0 : c < 0xC2 ? -1 : c < 0xE0 ? 1 : c < 0xF0 ? 2 : c < 0xF5 ? 3 : -1;
        if (need < 0) return 0;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
        for (int k = 1; k <= need; k++, lo = 0x80, hi = 0xBF)
            if (i + k >= n || s[i + k] < lo || s[i + k] > hi) return 0;
        i += need + 1;
    }
    return 1;
}

static Tokenizer *load(const char *path) {
    char err[512];
    Tokenizer *t = tokenizer_load_file(path, err, sizeof err);
    if (!t) die(err);
    return t;
}

/* Decodes through the streaming API; NULL when a push returned broken UTF-8. */
static char *stream_decode(TokenDecoder *d, const int *ids, size_t n, size_t *len) {
    size_t cap = 64, k = 0;
    char *out = malloc(cap);
    for (size_t i = 0; i <= n; i++) {
        const char *piece = i < n ? decoder_push(d, ids[i]) : decoder_finish(d);
        size_t m = decoder_len(d);
        if (!valid_utf8((const unsigned char *)piece, m)) {
            free(out);
            return NULL;
        }
        while (k + m + 1 > cap) out = realloc(out, cap *= 2);
        memcpy(out + k, piece, m);
        k += m;
    }
    out[k] = 0;
    *len = k;
    return out;
}

static int same_ids(const int *a, size_t na, const int *b, size_t nb) {
    return na == nb && (na == 0 || !memcmp(a, b, na * sizeof(int)));
}

static void print_ids(const char *label, const int *ids, size_t n) {
    fprintf(stderr, "    %s:", label);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

static int failures;
static void failed(size_t line, const char *what) {
    if (++failures <= 10) fprintf(stderr, "line %zu: %s\n", line + 1, what);
}

static void check_encode(Tokenizer *t, size_t line, const char *text, size_t len, int add_bos,
                         const int *want, size_t n_want) {
    char err[512];
    int *ids;
    size_t n;
    if (tokenizer_encode(t, text, len, add_bos, &ids, &n, err, sizeof err)) {
        failed(line, err);
        return;
    }
    if (!same_ids(ids, n, want, n_want)) {
        failed(line, add_bos ? "ids with BOS differ" : "ids differ");
        if (failures <= 10) print_ids("want", want, n_want), print_ids("got ", ids, n);
    }
    free(ids);
}

static void check_decode(TokenDecoder *d, size_t line, const int *ids, size_t n, const char *want,
                         size_t n_want) {
    size_t len;
    char *got = stream_decode(d, ids, n, &len);
    if (!got) failed(line, "a decoder_push returned broken UTF-8");
    else if (len != n_want || memcmp(got, want, len)) {
        failed(line, "decoded text differs");
        if (failures <= 10) fprintf(stderr, "    want: %.*s\n    got:  %s\n", (int)n_want, want, got);
    }
    free(got);
}

static int cmd_cases(const char *tok, const char *path) {
    Tokenizer *t = load(tok);
    TokenDecoder *d = decoder_new(t);
    size_t n, count, same = 0, *lens;
    char *file = read_file(path, &n);
    char **rows = split_lines(file, n, &count, &lens);
    for (size_t r = 0; r < count; r++) {
        char *col[4] = {rows[r]};
        for (int c = 1; c < 4; c++) {
            char *tab = col[c - 1] ? strchr(col[c - 1], '\t') : NULL;
            col[c] = tab ? (*tab = 0, tab + 1) : NULL;
        }
        if (!col[3]) die("a cases row needs 4 tab-separated columns");
        size_t len, n_ids, n_bos, n_dec;
        char *text = unescape(col[0], &len), *dec = unescape(col[3], &n_dec);
        int *ids = parse_ids(col[1], &n_ids), *bos = parse_ids(col[2], &n_bos);
        check_encode(t, r, text, len, 0, ids, n_ids);
        check_encode(t, r, text, len, tokenizer_wants_bos(t), bos, n_bos);
        check_decode(d, r, ids, n_ids, dec, n_dec);
        same += len == n_dec && !memcmp(text, dec, len);
        free(text), free(dec), free(ids), free(bos);
    }
    printf("%zu cases, %d failures; %zu decode to exactly their input\n", count, failures, same);
    decoder_free(d), tokenizer_free(t), free(rows), free(lens), free(file);
    return failures != 0;
}

static int cmd_decode(const char *tok, const char *path) {
    Tokenizer *t = load(tok);
    TokenDecoder *d = decoder_new(t);
    size_t n, count, *lens;
    char *file = read_file(path, &n);
    char **rows = split_lines(file, n, &count, &lens);
    for (size_t r = 0; r < count; r++) {
        char *tab = strchr(rows[r], '\t');
        if (!tab) die("a decode row needs 2 tab-separated columns");
        *tab = 0;
        size_t n_ids, n_dec;
        int *ids = parse_ids(rows[r], &n_ids);
        char *dec = unescape(tab + 1, &n_dec);
        check_decode(d, r, ids, n_ids, dec, n_dec);
        free(ids), free(dec);
    }
    printf("%zu id sequences, %d failures\n", count, failures);
    decoder_free(d), tokenizer_free(t), free(rows), free(lens), free(file);
    return failures != 0;
}

static int cmd_lines(const char *tok, const char *text_path, const char *ids_path,
                     const char *dec_path, int roundtrip) {
    Tokenizer *t = load(tok);
    TokenDecoder *d = decoder_new(t);
    size_t n1 = 0, n2, n3, c1 = 0, c2, c3, same = 0, valid = 0, *len1 = NULL, *len2, *len3;
    char *text = strcmp(text_path, "-") ? read_file(text_path, &n1) : NULL;
    char *ids_file = read_file(ids_path, &n2), *dec_file = read_file(dec_path, &n3);
    char **texts = text ? split_lines(text, n1, &c1, &len1) : NULL;
    char **id_rows = split_lines(ids_file, n2, &c2, &len2), **decs = split_lines(dec_file, n3, &c3, &len3);
    if ((text && c1 != c2) || c2 != c3) die("the line-parallel files differ in length");
    for (size_t r = 0; r < c2; r++) {
        size_t n_ids;
        int *ids = parse_ids(id_rows[r], &n_ids);
        if (text) {
            size_t len = len1[r];
            check_encode(t, r, texts[r], len, 0, ids, n_ids);
            if (tokenizer_bos_id(t) >= 0) {     /* with BOS: the same ids behind it */
                int *with = malloc((n_ids + 1) * sizeof(int));
                with[0] = tokenizer_bos_id(t);
                if (n_ids) memcpy(with + 1, ids, n_ids * sizeof(int));
                check_encode(t, r, texts[r], len, 1, with, n_ids + 1);
                free(with);
            }
            if (roundtrip && valid_utf8((const unsigned char *)texts[r], len)) {
                valid++;
                check_decode(d, r, ids, n_ids, texts[r], len);
            }
            same += len == len3[r] && !memcmp(texts[r], decs[r], len);
        }
        check_decode(d, r, ids, n_ids, decs[r], len3[r]);
        free(ids);
    }
    printf("%zu lines, %d failures", c2, failures);
    if (text) printf("; %zu decode to exactly their input%s", same, roundtrip ? "" : " (by spm_decode)");
    if (roundtrip) printf("; round trip checked on %zu valid UTF-8 lines", valid);
    printf("\n");
    decoder_free(d), tokenizer_free(t);
    free(texts), free(id_rows), free(decs), free(text), free(ids_file), free(dec_file);
    free(len1), free(len2), free(len3);
    return failures != 0;
}

/* Random ids, half of them byte-like pieces ("<0xNN>" or one byte-level character), which is
 * where streaming decode can split a character. Newline bytes are left out: the output is
 * line-parallel. */
static int cmd_random(const char *tok, int n, unsigned seed) {
    Tokenizer *t = load(tok);
    int vocab = tokenizer_vocab_size(t), n_bytes = 0;
    int *bytes = malloc((size_t)vocab * sizeof(int));
    for (int id = 0; id < vocab; id++) {
        const char *p = tokenizer_id_to_piece(t, id);
        if (p && strlen(p) == 6 && !strncmp(p, "<0x", 3) && strcmp(p, "<0x0A>") && strcmp(p, "<0x0D>"))
            bytes[n_bytes++] = id;
    }
    srand(seed);
    for (int i = 0; i < n; i++) {
        int len = 1 + rand() % 24;
        for (int k = 0; k < len; k++) {
            int id = n_bytes && rand() % 2 ? bytes[rand() % n_bytes] : rand() % vocab;
            const char *p = tokenizer_id_to_piece(t, id);
            if (!p || !strcmp(p, "<0x0A>") || !strcmp(p, "<0x0D>")) continue;
            printf(k ? " %d" : "%d", id);
        }
        printf("\n");
    }
    free(bytes), tokenizer_free(t);
    return 0;
}

/* Truncations and byte flips of a tokenizer file: each must load or fail cleanly. */
static int cmd_mutate(const char *path, int n, unsigned seed) {
    size_t size, loaded = 0;
    char *orig = read_file(path, &size), err[512];
    TokenizerKind kind = orig[0] == '{' ? TOKENIZER_HF_JSON : TOKENIZER_SENTENCEPIECE;
    srand(seed);
    for (int i = 0; i < n; i++) {
        char *copy = malloc(size + 1);
        size_t len = size;
        memcpy(copy, orig, size);
        if (i % 2) len = (size_t)rand() % size;
        else for (int k = 0; k < 1 + i % 8; k++) copy[(size_t)rand() % size] = (char)rand();
        Tokenizer *t = tokenizer_load_bytes(kind, copy, len, err, sizeof err);
        if (t) {                                     /* still loads: it must still work */
            const char *s = "Hello, wörld! 東京 🙂  x\xff";
            int *ids;
            size_t n_ids, n_out;
            if (!tokenizer_encode(t, s, strlen(s), 1, &ids, &n_ids, err, sizeof err)) {
                TokenDecoder *d = decoder_new(t);
                free(stream_decode(d, ids, n_ids, &n_out));
                decoder_free(d);
                free(ids);
            }
            tokenizer_free(t);
            loaded++;
        } else if (strchr(err, '\n') || !err[0]) die("a load error is not one line");
        free(copy);
    }
    printf("%d corrupted copies: %zu still load, %zu rejected\n", n, loaded, (size_t)n - loaded);
    free(orig);
    return 0;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmd_bench(const char *tok, const char *path) {
    Tokenizer *t = load(tok);
    size_t n, n_ids;
    char *text = read_file(path, &n), err[512];
    int *ids;
    double t0 = now();
    if (tokenizer_encode(t, text, n, 0, &ids, &n_ids, err, sizeof err)) die(err);
    double dt = now() - t0;
    printf("encoded %.2f MB into %zu ids in %.2f s: %.2f MB/s\n", n / 1e6, n_ids, dt, n / 1e6 / dt);
    free(ids), free(text), tokenizer_free(t);
    return 0;
}

int main(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "info") && argc == 3) {
        Tokenizer *t = load(argv[2]);
        printf("kind=%d vocab=%d bos=%d eos=%d pad=%d wants_bos=%d\n", tokenizer_kind(t),
               tokenizer_vocab_size(t), tokenizer_bos_id(t), tokenizer_eos_id(t),
               tokenizer_pad_id(t), tokenizer_wants_bos(t));
        tokenizer_free(t);
        return 0;
    }
    if (!strcmp(cmd, "bytes") && argc == 4) {
        size_t n;
        char *data = read_file(argv[3], &n), err[512];
        TokenizerKind kind = strcmp(argv[2], "sp") ? TOKENIZER_HF_JSON : TOKENIZER_SENTENCEPIECE;
        Tokenizer *t = tokenizer_load_bytes(kind, data, n, err, sizeof err);
        free(data);
        if (!t) die(err);
        printf("kind=%d vocab=%d\n", tokenizer_kind(t), tokenizer_vocab_size(t));
        tokenizer_free(t);
        return 0;
    }
    if (!strcmp(cmd, "cases") && argc == 4) return cmd_cases(argv[2], argv[3]);
    if (!strcmp(cmd, "decode") && argc == 4) return cmd_decode(argv[2], argv[3]);
    if (!strcmp(cmd, "lines") && (argc == 6 || (argc == 7 && !strcmp(argv[6], "--roundtrip"))))
        return cmd_lines(argv[2], argv[3], argv[4], argv[5], argc == 7);
    if (!strcmp(cmd, "random") && argc == 5)
        return cmd_random(argv[2], atoi(argv[3]), (unsigned)atoi(argv[4]));
    if (!strcmp(cmd, "mutate") && argc == 5)
        return cmd_mutate(argv[2], atoi(argv[3]), (unsigned)atoi(argv[4]));
    if (!strcmp(cmd, "bench") && argc == 4) return cmd_bench(argv[2], argv[3]);
    fprintf(stderr, "usage: tok_check info|bytes|cases|decode|lines|random|mutate|bench ...\n");
    return 2;
}
