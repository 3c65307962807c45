/* cmp_logits: compares two logits files (little-endian float32, rows of VOCAB floats).
 *
 *   cmp_logits GOT REF VOCAB TOL [MIN_TOP1 [MARGIN]]
 *
 * Passes when every row has max|got - ref| / max|ref| ≤ TOL, and (when MIN_TOP1 is given)
 * the argmax agrees on at least that fraction of rows. With MARGIN, rows where the reference's
 * best leads its second by less than MARGIN·max|ref| are near ties and left out of the top-1
 * count (a random model's flat logits have some whose order any rounding may swap). Prints the
 * worst row's error. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static float *read_floats(const char *path, long *n) {
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "cmp_logits: cannot open %s\n", path); exit(2); }
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    rewind(f);
    if (bytes <= 0 || bytes % 4) { fprintf(stderr, "cmp_logits: %s has %ld bytes\n", path, bytes); exit(2); }
    float *x = malloc(bytes);
    if (!x || fread(x, 1, bytes, f) != (size_t)bytes) { fprintf(stderr, "cmp_logits: cannot read %s\n", path); exit(2); }
    fclose(f);
    *n = bytes / 4;
    return x;
}

static long argmax(const float *x, long n) {
    long best = 0;
    for (long i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* A command-line number, the whole argument: anything else is a usage error (a misplaced
 * argument would otherwise turn into a loose tolerance). */
static double number(const char *s, const char *what) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v > 0)) {
        fprintf(stderr, "cmp_logits: %s must be a positive number, got '%s'\n", what, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv) {
    if (argc < 5 || argc > 7) { fprintf(stderr, "usage: cmp_logits GOT REF VOCAB TOL [MIN_TOP1 [MARGIN]]\n"); return 2; }
    const double vocab_arg = number(argv[3], "VOCAB");
    long n_got, n_ref, vocab = (long)vocab_arg;
    if (vocab != vocab_arg) { fprintf(stderr, "cmp_logits: VOCAB must be a whole number, got '%s'\n", argv[3]); return 2; }
    double tol = number(argv[4], "TOL"), min_top1 = argc >= 6 ? number(argv[5], "MIN_TOP1") : -1;
    double margin = argc == 7 ? number(argv[6], "MARGIN") : 0;
    float *got = read_floats(argv[1], &n_got), *ref = read_floats(argv[2], &n_ref);
    if (vocab <= 0 || n_ref % vocab || n_got != n_ref) {
        fprintf(stderr, "cmp_logits: %ld floats vs %ld reference floats (vocab %ld)\n", n_got, n_ref, vocab);
        return 1;
    }
    long rows = n_ref / vocab, same_top1 = 0, counted = 0, worst_row = 0;
    double worst = 0;
    for (long r = 0; r < rows; r++) {
        const float *g = got + r * vocab, *x = ref + r * vocab;
        double max_ref = 0, max_diff = 0;
        for (long i = 0; i < vocab; i++) {
            if (!isfinite(g[i]) || !isfinite(x[i])) {
                fprintf(stderr, "cmp_logits: row %ld has a non-finite value (in %s)\n", r, isfinite(g[i]) ? "REF" : "GOT");
                return 1;
            }
            max_ref = fmax(max_ref, fabs(x[i]));
            max_diff = fmax(max_diff, fabs((double)g[i] - x[i]));
        }
        double rel = max_ref > 0 ? max_diff / max_ref : max_diff;   /* an all-zero reference row: absolute */
        if (rel > worst) worst = rel, worst_row = r;
        const long best = argmax(x, vocab);
        double second = -INFINITY;
        for (long i = 0; i < vocab; i++)
            if (i != best && x[i] > second) second = x[i];
        if (vocab > 1 && x[best] - second < margin * max_ref) continue;   /* a near tie */
        counted++;
        same_top1 += argmax(g, vocab) == best;
    }
    double top1 = counted ? (double)same_top1 / counted : 1.0;
    printf("rows %ld  worst max|d|/max|ref| %.3g (row %ld)  top-1 agreement %.4f", rows, worst, worst_row, top1);
    if (counted < rows) printf(" (%ld rows, %ld near ties left out)", counted, rows - counted);
    printf("\n");
    if (worst > tol) { fprintf(stderr, "cmp_logits: error %.3g exceeds %.3g\n", worst, tol); return 1; }
    if (min_top1 >= 0 && top1 < min_top1) { fprintf(stderr, "cmp_logits: top-1 agreement %.4f below %.4f\n", top1, min_top1); return 1; }
    return 0;
}
