/* tests/fuzz/fuzz_common.h: shared by the libFuzzer targets that take in mamba's host files
 * (mamba_unity.h, included after this header).
 *
 * In that one translation unit exit() is fuzz_exit(), which longjmps to mamba_fuzz_jmp (set by
 * the target) instead of ending the process: die() still formats its message (so that bad
 * arguments show up under the sanitizers) and then returns to the harness; the messages go to
 * /dev/null. What the abandoned input had allocated would leak into the next run, so malloc &
 * co, strdup and mmap are redirected to the tracking versions below; fuzz_sweep() frees and
 * unmaps what is left after each input. An input that returned without dying must have left
 * nothing: fuzz_sweep() aborts then, as a leak. Normal builds have none of this. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
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
#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

static jmp_buf mamba_fuzz_jmp;

__attribute__((noreturn)) static void fuzz_exit(int status) {
    (void)status;
    longjmp(mamba_fuzz_jmp, 1);
}

/* Where the host files' stderr goes: nowhere (libFuzzer and the sanitizers write their own). */
static FILE *fuzz_stderr(void) {
    static FILE *null;
    if (!null && !(null = fopen("/dev/null", "w"))) abort();
    return null;
}

typedef struct FuzzBlock {
    struct FuzzBlock *prev, *next;
    size_t size, pad;                       /* 32 bytes: the payload stays 16-byte aligned */
} FuzzBlock;
static FuzzBlock fuzz_live = {&fuzz_live, &fuzz_live, 0, 0};

static void *fuzz_malloc(size_t n) {
    if (n > SIZE_MAX - sizeof(FuzzBlock)) return NULL;
    FuzzBlock *b = malloc(sizeof *b + n);
    if (!b) return NULL;
    b->size = n;
    b->next = fuzz_live.next, b->prev = &fuzz_live;
    fuzz_live.next->prev = b, fuzz_live.next = b;
    return b + 1;
}

static void fuzz_free(void *p) {
    if (!p) return;
    FuzzBlock *b = (FuzzBlock *)p - 1;
    b->prev->next = b->next, b->next->prev = b->prev;
    free(b);
}

static void *fuzz_calloc(size_t count, size_t size) {
    if (size && count > SIZE_MAX / size) return NULL;
    void *p = fuzz_malloc(count * size);
    if (p) memset(p, 0, count * size);
    return p;
}

static void *fuzz_realloc(void *p, size_t n) {
    if (!p) return fuzz_malloc(n);
    void *q = fuzz_malloc(n);
    if (!q) return NULL;
    size_t old = ((FuzzBlock *)p - 1)->size;
    memcpy(q, p, old < n ? old : n);
    fuzz_free(p);
    return q;
}

static char *fuzz_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = fuzz_malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

static struct { void *addr; size_t len; } fuzz_maps[512];

static void *fuzz_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    void *p = mmap(addr, len, prot, flags, fd, off);
    if (p == MAP_FAILED) return p;
    for (size_t i = 0; i < sizeof fuzz_maps / sizeof *fuzz_maps; i++)
        if (!fuzz_maps[i].addr) {
            fuzz_maps[i].addr = p, fuzz_maps[i].len = len;
            return p;
        }
    fprintf(stderr, "fuzz: more than 512 live mappings\n");
    abort();
}

static int fuzz_munmap(void *addr, size_t len) {
    for (size_t i = 0; i < sizeof fuzz_maps / sizeof *fuzz_maps; i++)
        if (fuzz_maps[i].addr == addr) fuzz_maps[i].addr = NULL;
    return munmap(addr, len);
}

/* After each input: died = whether die() was called (then leftovers are expected). */
static void fuzz_sweep(int died) {
    int leaked = 0;
    while (fuzz_live.next != &fuzz_live) {
        leaked++;
        fuzz_free(fuzz_live.next + 1);
    }
    for (size_t i = 0; i < sizeof fuzz_maps / sizeof *fuzz_maps; i++)
        if (fuzz_maps[i].addr) {
            leaked++;
            munmap(fuzz_maps[i].addr, fuzz_maps[i].len);
            fuzz_maps[i].addr = NULL;
        }
    if (leaked && !died) {
        fprintf(stderr, "fuzz: %d allocations or mappings leaked by an input that succeeded\n", leaked);
        abort();
    }
}

/* cJSON's allocations are tracked too (targets whose parse may be cut short by die()). */
__attribute__((unused)) static void fuzz_track_cjson(void) {
    cJSON_Hooks hooks = {fuzz_malloc, fuzz_free};
    cJSON_InitHooks(&hooks);
}

/* A file with these bytes, readable through the returned path; close(*fd) after use. */
__attribute__((unused)) static const char *fuzz_memfd(const uint8_t *data, size_t size, int *fd) {
    static char path[64];
    *fd = memfd_create("fuzz", 0);
    if (*fd < 0) abort();
    for (size_t done = 0; done < size;) {
        ssize_t n = write(*fd, data + done, size - done);
        if (n <= 0) abort();
        done += (size_t)n;
    }
    snprintf(path, sizeof path, "/proc/self/fd/%d", *fd);
    return path;
}

#define malloc fuzz_malloc
#define calloc fuzz_calloc
#define realloc fuzz_realloc
#define free fuzz_free
#define strdup fuzz_strdup
#define mmap fuzz_mmap
#define munmap fuzz_munmap
#define exit fuzz_exit
#undef stderr
#define stderr fuzz_stderr()
