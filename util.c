/* util.c: errors, memory, numbers, files, stdout, Ctrl-C and progress lines — what every
 * command leans on. */
#include "mamba.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- errors: one line on stderr and a non-zero exit ---- */

volatile sig_atomic_t g_progress_shown;

void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (g_progress_shown) fputs("\r\033[K", stderr);   /* the message starts a clean line */
    fputs("mamba: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory allocating %zu bytes", n);
    return p;
}

void *xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) die("out of memory allocating %zu × %zu bytes", count, size);
    return p;
}

void *reserve(void *p, size_t *cap, size_t need, size_t elem_size) {
    if (need <= *cap) return p;
    size_t grown = *cap ? *cap : 16;
    while (grown < need) grown *= 2;
    if (!(p = realloc(p, grown * elem_size))) die("out of memory");
    *cap = grown;
    return p;
}

double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- numbers and names ---- */

long parse_long(const char *flag, const char *s, long lo, long hi) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        die("%s expects an integer in [%ld, %ld], got '%s'", flag, lo, hi, s);
    return v;
}

double parse_double(const char *flag, const char *s, double lo, double hi) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        die("%s expects a number in [%g, %g], got '%s'", flag, lo, hi, s);
    return v;
}

const char *dtype_name(DType t) {
    static const char *const names[] = {"f32", "f16", "bf16", "q8", "q4"};
    return (unsigned)t < sizeof names / sizeof *names ? names[t] : "unknown";
}

int parse_dtype(const char *s, DType *out) {
    if (!strcmp(s, "f32")) *out = DTYPE_F32;
    else if (!strcmp(s, "f16")) *out = DTYPE_F16;
    else if (!strcmp(s, "bf16")) *out = DTYPE_BF16;
    else if (!strcmp(s, "q8")) *out = DTYPE_Q8;
    else if (!strcmp(s, "q4")) *out = DTYPE_Q4;
    else return -1;
    return 0;
}

/* ---- files and stdout ---- */

/* Refuses more than max_bytes, so that nothing outside can make us allocate without limit. */
char *read_file(const char *path, size_t max_bytes, size_t *len_out, const char *limit_note) {
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

void emit(const char *s, size_t n) {
    if ((n && fwrite(s, 1, n, stdout) != n) || fflush(stdout)) {
        if (errno == EPIPE) exit(0);
        die("cannot write to stdout: %s", strerror(errno));
    }
}

void emit_json_line(cJSON *o) {
    char *s = cJSON_PrintUnformatted(o);
    if (!s) die("out of memory printing JSON");
    emit(s, strlen(s));
    emit("\n", 1);
    free(s);
    cJSON_Delete(o);
}

void write_logits_row(FILE *f, const float *logits, int vocab, const char *path) {
    if (f && fwrite(logits, sizeof(float), vocab, f) != (size_t)vocab) die("cannot write %s: %s", path, strerror(errno));
}

/* ---- fingerprints ---- */

static uint64_t fold_word(uint64_t lane, uint64_t word) {
    lane = (lane ^ word) * 0x9E3779B97F4A7C15ull;
    return lane ^ (lane >> 29);
}

uint64_t fingerprint_bytes(uint64_t h, const void *data, size_t n) {
    const uint8_t *p = data;
    uint64_t lane[4] = {h, h + 1, h + 2, h + 3}, word;
    /* four independent lanes over 32-byte blocks, so the loop runs at memory speed */
    for (; n >= 32; p += 32, n -= 32)
        for (int k = 0; k < 4; k++) memcpy(&word, p + 8 * k, 8), lane[k] = fold_word(lane[k], word);
    /* the lanes, then the tail byte by byte, then the length of the tail, folded into one */
    for (int k = 0; k < 4; k++) h = fold_word(h, lane[k]);
    for (; n; p++, n--) h = fold_word(h, *p);
    /* splitmix64's finalizer: every input bit reaches every output bit */
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
    return h ^ (h >> 31);
}

/* ---- Ctrl-C ---- */

volatile sig_atomic_t g_interrupted;

static void on_sigint_stop(int sig) {
    (void)sig;
    g_interrupted = 1;
}

void catch_sigint(struct sigaction *old) {
    struct sigaction stop = {.sa_handler = on_sigint_stop, .sa_flags = SA_RESETHAND};
    sigaction(SIGINT, &stop, old);
}

void exit_if_interrupted(void) {
    if (!g_interrupted) return;
    if (fflush(stdout) && errno != EPIPE) die("cannot write to stdout: %s", strerror(errno));
    exit(130);
}

/* ---- progress lines ---- */

void progress_begin(Progress *p, const char *what, double total, const char *unit) {
    *p = (Progress){.what = what, .unit = unit, .total = total, .on = total > 1 && isatty(STDERR_FILENO)};
    p->start = p->last_draw = now_seconds();   /* the first line comes after a quarter second: quick jobs show none */
}

void progress_update(Progress *p, double done) {
    if (!p->on) return;
    double t = now_seconds();
    if (t - p->last_draw < 0.25) return;
    p->last_draw = t;
    fprintf(stderr, "\r\033[K%s: %.0f/%.0f %s (%.0f%%, %.0f %s/s)", p->what, done, p->total, p->unit,
            100 * done / p->total, done / (t - p->start), p->unit);
    g_progress_shown = 1;
}

void progress_end(Progress *p) {
    if (p->on && g_progress_shown) fputs("\r\033[K", stderr);
    p->on = 0;
    g_progress_shown = 0;
}
