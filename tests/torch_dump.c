/* tests/torch_dump.c: what torch_archive.c reads from a torch.save file, for
 * tests/test_torch_archive.sh.
 *
 *   torch_dump [--bytes] FILE
 *
 * prints one line a tensor, in the file's order:
 *   NAME DTYPE [D0,D1,...] HASH
 * DTYPE is f32, f16, bf16 or other; HASH the 64-bit FNV-1a of the tensor's bytes, in hex.
 * --bytes reads FILE into memory and opens it with torch_archive_open_bytes. An error prints one
 * line on stderr and exits 1. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "torch_archive.h"

static uint64_t fnv1a64(const uint8_t *p, uint64_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint64_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static void *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0;
    char *b = malloc(cap);
    for (size_t r; b && (r = fread(b + len, 1, cap - len, f)) > 0;) {
        len += r;
        if (len == cap) {
            char *nb = realloc(b, cap *= 2);
            if (!nb) free(b);
            b = nb;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(b);
        return NULL;
    }
    *n = len;
    return b;
}

int main(int argc, char **argv) {
    int bytes = argc == 3 && !strcmp(argv[1], "--bytes");
    if (argc != 2 + bytes) {
        fprintf(stderr, "usage: torch_dump [--bytes] FILE\n");
        return 2;
    }
    const char *path = argv[1 + bytes];
    char err[512];
    void *data = NULL;
    size_t n = 0;
    if (bytes && !(data = read_all(path, &n))) {
        fprintf(stderr, "torch_dump: cannot read %s\n", path);
        return 1;
    }
    TorchArchive *a = bytes ? torch_archive_open_bytes(data, n, err, sizeof err) : torch_archive_open(path, err, sizeof err);
    const char *name = bytes ? path : NULL;   /* reasons about bytes come without the file's name */
    if (!a) {
        fprintf(stderr, "torch_dump: %s%s%s\n", name ? name : "", name ? ": " : "", err);
        free(data);
        return 1;
    }
    /* every tensor read before anything is printed: a failure leaves stdout empty */
    int n_tensors = torch_archive_count(a);
    uint64_t *hash = malloc((n_tensors + 1) * sizeof *hash);
    if (!hash) {
        fprintf(stderr, "torch_dump: out of memory\n");
        return 1;
    }
    for (int i = 0; i < n_tensors; i++) {
        const void *p = torch_archive_data(a, i, err, sizeof err);
        if (!p) {
            fprintf(stderr, "torch_dump: %s%s%s\n", name ? name : "", name ? ": " : "", err);
            torch_archive_close(a);
            free(data);
            free(hash);
            return 1;
        }
        hash[i] = fnv1a64(p, torch_archive_tensor(a, i)->bytes);
    }
    static const char *const DTYPES[] = {"f32", "f16", "bf16"};
    for (int i = 0; i < n_tensors; i++) {
        const TorchTensor *t = torch_archive_tensor(a, i);
        printf("%s %s [", t->name, t->dtype >= 0 && t->dtype <= DTYPE_BF16 ? DTYPES[t->dtype] : "other");
        for (int d = 0; d < t->ndim; d++) printf("%s%llu", d ? "," : "", (unsigned long long)t->shape[d]);
        printf("] %016llx\n", (unsigned long long)hash[i]);
    }
    free(hash);
    torch_archive_close(a);
    free(data);
    return fflush(stdout) ? 1 : 0;
}
