/* sampler.c: the next token from a row of logits: repetition penalty, then greedy or
 * temperature + top-k + top-p. */
#include "mamba.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* New settings and seed for a sampler (each sequence of a batch gets its own seed). */
void sampler_configure(Sampler *s, const SamplerConfig *cfg) {
    s->cfg = *cfg;
    if (s->cfg.rng == 0) s->cfg.rng = 0x9E3779B97F4A7C15ull;   /* xorshift must not start at 0 */
}

void sampler_init(Sampler *s, const SamplerConfig *cfg, int vocab) {
    s->vocab = vocab;
    s->scratch = xmalloc(vocab * sizeof *s->scratch);
    s->cand = xmalloc(vocab * sizeof *s->cand);
    sampler_configure(s, cfg);
}

void sampler_free(Sampler *s) { free(s->scratch), free(s->cand); }

static float random_f32(uint64_t *state) {   /* uniform in [0, 1) */
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (float)((*state * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f;
}

int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static int compare_candidates(const void *a, const void *b) {
    float pa = ((const Candidate *)a)->p, pb = ((const Candidate *)b)->p;
    if (pa != pb) return pa > pb ? -1 : 1;
    return ((const Candidate *)a)->id - ((const Candidate *)b)->id;
}

/* The k largest of x[n] into cand (unordered), through a min-heap of size k: O(n log k). */
static int top_k_candidates(Candidate *cand, const float *x, int n, int k) {
    for (int i = 0; i < n; i++) {
        if (i >= k && x[i] <= cand[0].p) continue;
        int at;
        if (i < k) {                                   /* grow the heap: sift up */
            at = i;
            while (at > 0 && cand[(at - 1) / 2].p > x[i]) cand[at] = cand[(at - 1) / 2], at = (at - 1) / 2;
        } else {                                       /* replace the root: sift down */
            at = 0;
            for (;;) {
                int child = 2 * at + 1;
                if (child >= k) break;
                if (child + 1 < k && cand[child + 1].p < cand[child].p) child++;
                if (cand[child].p >= x[i]) break;
                cand[at] = cand[child], at = child;
            }
        }
        cand[at] = (Candidate){x[i], i};
    }
    return k;
}

/* Picks the next id from logits[vocab] given the ids produced so far. */
int sample(Sampler *s, const float *logits, const int *history, int n_history) {
    float *x = s->scratch;
    int n = s->vocab;
    memcpy(x, logits, n * sizeof *x);
    /* repetition penalty (as in CTRL): push recently seen tokens down */
    if (s->cfg.repeat_penalty != 1.0f) {
        int from = n_history > s->cfg.repeat_last_n ? n_history - s->cfg.repeat_last_n : 0;
        for (int i = from; i < n_history; i++) {
            int id = history[i];
            if (id < 0 || id >= n) continue;
            /* a token seen twice is penalized once: mark it by comparing with the original */
            if (x[id] != logits[id]) continue;
            x[id] = x[id] > 0 ? x[id] / s->cfg.repeat_penalty : x[id] * s->cfg.repeat_penalty;
        }
    }
    if (s->cfg.temperature == 0.0f) return argmax(x, n);

    /* softmax of logits / temperature */
    float max = x[argmax(x, n)], sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = expf((x[i] - max) / s->cfg.temperature);
        sum += x[i];
    }
    int m = 0;
    int k = s->cfg.top_k > 0 && s->cfg.top_k < n ? s->cfg.top_k : n;
    if (k < n || s->cfg.top_p < 1.0f) {
        if (k < n) {
            m = top_k_candidates(s->cand, x, n, k);
        } else {
            /* top-p alone: a token below (1-p)/(n-1) of the mass cannot be in the nucleus */
            float cutoff = (1.0f - s->cfg.top_p) / (n - 1) * sum;
            for (int i = 0; i < n; i++)
                if (x[i] >= cutoff || x[i] == 1.0f) s->cand[m++] = (Candidate){x[i], i};   /* 1.0: the most likely */
        }
        qsort(s->cand, m, sizeof *s->cand, compare_candidates);
        float kept = 0.0f;
        for (int i = 0; i < m; i++) kept += s->cand[i].p;
        if (s->cfg.top_p < 1.0f) {
            float mass = 0.0f;
            for (int i = 0; i < m; i++) {
                mass += s->cand[i].p;
                if (mass >= s->cfg.top_p * kept) {
                    m = i + 1;
                    kept = mass;
                    break;
                }
            }
        }
        float r = random_f32(&s->cfg.rng) * kept, acc = 0.0f;
        for (int i = 0; i < m; i++) {
            acc += s->cand[i].p;
            if (r < acc) return s->cand[i].id;
        }
        return s->cand[m - 1].id;
    }
    float r = random_f32(&s->cfg.rng) * sum, acc = 0.0f;
    for (int i = 0; i < n; i++) {
        acc += x[i];
        if (r < acc) return i;
    }
    return n - 1;
}

