/* tests/kernels/test_kernels.cu: each CUDA kernel of the engine that can run alone, and the
 * decode step's phases, on random inputs against a plain CPU reference written here; then the
 * engine as a whole (gpu.h) on small random models against a CPU forward pass written here,
 * which covers the step's phases that cannot run alone (one PASS/FAIL line each). Then a
 * micro-benchmark of each kernel at a 1.4b model's shape: time a launch and the bytes it moves
 * a second, beside the device's read bandwidth. A unity build: the engine's files are included,
 * so their static kernels are in reach. Exits non-zero on any FAIL. `--no-bench` skips the
 * benchmarks. Needs cuBLAS at run time (the engine opens it; tests/cuda_env.sh finds it). */
#include "kernels.cu"
#include "prefill.cu"
#include "mamba2.cu"
#include "mamba2_pass.cu"
#include "gpu_bench.cu"

#include "kernel_test.cuh"

#include <algorithm>
#include <list>

/* ----------------------------------------------------------------------------------------
 * Host helpers: a type's storage, device copies, the errors, random per-channel records. */

/* How the host stores and reads a weight of type T. */
template <typename T>
struct Host;
template <>
struct Host<float> {
    typedef float E;
    static E encode(float v) { return v; }
    static float decode(E v) { return v; }
    static const char *name() { return dtype_label(DTYPE_F32); }
};
template <>
struct Host<__nv_bfloat16> {
    typedef uint16_t E;
    static E encode(float v) { return bf16_bits(v); }
    static float decode(E v) { return bf16_to_f32(v); }
    static const char *name() { return dtype_label(DTYPE_BF16); }
};
template <>
struct Host<__half> {
    typedef uint16_t E;
    static E encode(float v) { return f16_bits(v); }
    static float decode(E v) { return f16_to_f32(v); }
    static const char *name() { return dtype_label(DTYPE_F16); }
};

/* v in T's storage, and back to float: the values the kernel sees. */
template <typename T>
static std::vector<typename Host<T>::E> encode_all(const std::vector<float> &v) {
    std::vector<typename Host<T>::E> e(v.size());
    for (size_t i = 0; i < v.size(); i++) e[i] = Host<T>::encode(v[i]);
    return e;
}
template <typename T>
static std::vector<float> rounded(const std::vector<float> &v) {
    std::vector<float> r(v.size());
    for (size_t i = 0; i < v.size(); i++) r[i] = Host<T>::decode(Host<T>::encode(v[i]));
    return r;
}

static std::vector<void *> allocations;

template <typename E>
static E *to_device(const std::vector<E> &h) {
    E *d = (E *)gpu_alloc((h.size() ? h.size() : 1) * sizeof(E));
    allocations.push_back(d);
    CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(E), cudaMemcpyHostToDevice));
    return d;
}

template <typename E>
static E *device_zeros(size_t n) {
    return to_device(std::vector<E>(n));
}

template <typename T>
static std::vector<float> to_host_floats(const T *d, size_t n) {
    const std::vector<typename Host<T>::E> e = to_host((const typename Host<T>::E *)d, n);
    std::vector<float> f(n);
    for (size_t i = 0; i < n; i++) f[i] = Host<T>::decode(e[i]);
    return f;
}

static void free_all() {
    for (void *p : allocations) CUDA_CHECK(cudaFree(p));
    allocations.clear();
}

/* The largest rel_err; NaN and a length mismatch count as infinite. */
static double max_err(const std::vector<float> &got, const std::vector<float> &want) {
    if (got.size() != want.size()) return INFINITY;
    double worst = 0.0;
    for (size_t i = 0; i < got.size(); i++) worst = fmax(worst, rel_err(got[i], want[i]));
    return worst;
}

/* The per-channel record of a model with d_conv and d_state (as plan_shapes lays it out). */
static ParamLayout param_layout(int d_conv, int ns) {
    const int kcp = round_up(d_conv, 4), nsp = round_up(ns, 4);
    return ParamLayout{kcp, kcp + 1, kcp + 2, kcp + 4, kcp + 4 + nsp, 0};
}

/* Random per-channel records: conv weights and bias, dt bias, D, A < 0. */
static std::vector<float> random_params(int channels, int d_conv, int ns, const ParamLayout &pl) {
    std::vector<float> p((size_t)channels * pl.stride, 0.0f);
    for (int c = 0; c < channels; c++) {
        float *r = &p[(size_t)c * pl.stride];
        for (int k = 0; k < d_conv; k++) r[k] = uniform(-0.6f, 0.6f);
        r[pl.conv_b] = uniform(-0.3f, 0.3f), r[pl.dt_bias] = uniform(-2.0f, 0.0f), r[pl.D] = uniform(0.5f, 1.5f);
        for (int n = 0; n < ns; n++) r[pl.A + n] = -uniform(0.5f, 4.0f);
    }
    return p;
}

/* ----------------------------------------------------------------------------------------
 * The decode step's phases (kernels.cu), each run by one block of forward_token's consumers. */

__global__ void run_rmsnorm_into(const float *x, const float *w, int dm, int dmp, float eps, float *xn) {
    __shared__ float red[2 * CONSUMER_WARPS];
    rmsnorm_into(xn, [&](int i) { return x[i]; }, w, dm, dmp, eps, red);
}

template <typename T>
__global__ void run_tile_rows_dot(const uint4 *tile, int n, int chunks, const float *x, float *out) {
    tile_rows_dot<T>(tile, n, chunks, x, out);
}

/* Two tiles of n0 and n1 channels, as consume_cols adds them up. */
template <typename T>
__global__ void run_column_sums(const uint4 *tile0, int n0, const uint4 *tile1, int n1, int N, const float *v, float *out) {
    extern __shared__ float part[];
    ColumnSums<T> sums(N);
    sums.add(tile0, 0, n0, v);
    sums.add(tile1, n0, n1, v);
    sums.finish(out, part);
}

__global__ void run_conv_step(const StepArgs a, int l, int c0, int nc, const float *prm, const float *conv,
                              const float *rows, float *u, float *zg) {
    conv_step(a, l, c0, nc, prm, conv, rows, u, zg);
}

__global__ void run_ssm_step(const StepArgs a, int l, int c0, int nc, const float *prm, const float *ssm, const float *dbc,
                             const float *dtr, const float *u, const float *zg, float *yv) {
    ssm_step(a, l, c0, nc, prm, ssm, dbc, dtr, u, zg, yv);
}

static void test_rmsnorm_into() {
    const int dm = 771, dmp = round_up(dm, PAD);
    std::vector<float> x = randoms(dmp, -2.0f, 2.0f), w = randoms(dmp, 0.5f, 1.5f);
    for (int i = dm; i < dmp; i++) x[i] = w[i] = 0.0f;
    float *xn = device_zeros<float>(dmp);
    run_rmsnorm_into<<<1, CONSUMERS>>>(to_device(x), to_device(w), dm, dmp, 1e-5f, xn);
    LAUNCH_CHECK("run_rmsnorm_into");
    double ss = 0.0;
    for (int i = 0; i < dm; i++) ss += (double)x[i] * x[i];
    const double scale = 1.0 / sqrt(ss / dm + 1e-5);
    std::vector<float> want(dmp);
    for (int i = 0; i < dmp; i++) want[i] = (float)(w[i] * (x[i] * scale));
    report("rmsnorm_into (decode: RMSNorm over a consumer team)", max_err(to_host(xn, dmp), want), 1e-5);
}

/* A row split into parts when there are few rows (n = 3), whole rows when many (n = 64). */
template <typename T>
static void test_tile_rows_dot(int n, int K) {
    const int V = 16 / sizeof(T), chunks = K / V;
    const std::vector<float> w = rounded<T>(randoms((size_t)n * K, -1.0f, 1.0f)), x = randoms(K, -1.0f, 1.0f);
    float *out = device_zeros<float>(n);
    run_tile_rows_dot<T><<<1, CONSUMERS>>>((const uint4 *)to_device(encode_all<T>(w)), n, chunks, to_device(x), out);
    LAUNCH_CHECK("run_tile_rows_dot");
    std::vector<float> want(n);
    for (int i = 0; i < n; i++) {
        double s = 0.0;
        for (int k = 0; k < K; k++) s += (double)w[(size_t)i * K + k] * x[k];
        want[i] = (float)s;
    }
    char name[128];
    snprintf(name, sizeof name, "tile_rows_dot %s (decode: row-split product, %d rows of %d)", Host<T>::name(), n, K);
    report(name, max_err(to_host(out, n), want), 2e-5);
}

template <typename T>
static void test_column_sums(int n0, int n1, int N) {
    const int n = n0 + n1;
    const std::vector<float> w = rounded<T>(randoms((size_t)n * N, -1.0f, 1.0f)), v = randoms(n, -1.0f, 1.0f);
    const typename Host<T>::E *tiles = to_device(encode_all<T>(w));
    float *out = device_zeros<float>(N);
    run_column_sums<T><<<1, CONSUMERS, CONSUMERS * 8 * sizeof(float)>>>((const uint4 *)tiles, n0,
                                                                      (const uint4 *)(tiles + (size_t)n0 * N), n1, N,
                                                                      to_device(v), out);
    LAUNCH_CHECK("run_column_sums");
    std::vector<float> want(N);
    for (int j = 0; j < N; j++) {
        double s = 0.0;
        for (int c = 0; c < n; c++) s += (double)v[c] * w[(size_t)c * N + j];
        want[j] = (float)s;
    }
    char name[128];
    snprintf(name, sizeof name, "ColumnSums %s (decode: column-split product, %d channels to %d)", Host<T>::name(), n, N);
    report(name, max_err(to_host(out, N), want), 2e-5);
}

/* A StepArgs with the shape fields the phases read. */
static StepArgs phase_args(int di, int d_conv, int ns, int dt_rank, float *conv_state, float *ssm_state) {
    StepArgs a;
    memset(&a, 0, sizeof a);
    a.pl = param_layout(d_conv, ns);
    a.di = di, a.d_conv = d_conv, a.kcp = round_up(d_conv, 4), a.ns = ns, a.nsp = round_up(ns, 4);
    a.dt_rank = dt_rank, a.rkp = round_up(dt_rank, PAD), a.Rp = round_up(dt_rank + 2 * ns, PAD);
    a.conv_state = conv_state, a.ssm_state = ssm_state;
    return a;
}

static void test_conv_step(int d_conv) {
    const int L = 2, l = 1, c0 = 7, nc = 500, di = c0 + nc + 3;
    const ParamLayout pl = param_layout(d_conv, 16);
    const int kcp = round_up(d_conv, 4);
    const std::vector<float> prm = random_params(nc, d_conv, 16, pl), window = randoms((size_t)nc * kcp, -1.0f, 1.0f);
    const std::vector<float> rows = randoms(2 * nc, -2.0f, 2.0f);
    float *state = device_zeros<float>((size_t)L * di * kcp), *u = device_zeros<float>(nc), *zg = device_zeros<float>(nc);
    const StepArgs a = phase_args(di, d_conv, 16, 8, state, NULL);
    run_conv_step<<<1, CONSUMERS>>>(a, l, c0, nc, to_device(prm), to_device(window), to_device(rows), u, zg);
    LAUNCH_CHECK("run_conv_step");
    std::vector<float> want_u(nc), want_z(nc), want_state((size_t)L * di * kcp, 0.0f);
    for (int j = 0; j < nc; j++) {
        const float *p = &prm[(size_t)j * pl.stride], *win = &window[(size_t)j * kcp];
        float *saved = &want_state[((size_t)l * di + c0 + j) * kcp];
        double s = p[pl.conv_b];
        for (int k = 0; k + 1 < d_conv; k++) s += (double)p[k] * win[k + 1], saved[k] = win[k + 1];
        s += (double)p[d_conv - 1] * rows[j], saved[d_conv - 1] = rows[j];
        want_u[j] = (float)silu_ref(s), want_z[j] = rows[nc + j];
    }
    const double err = fmax(max_err(to_host(u, nc), want_u),
                            fmax(max_err(to_host(zg, nc), want_z), max_err(to_host(state, want_state.size()), want_state)));
    char name[96];
    snprintf(name, sizeof name, "conv_step (decode: causal conv step and its state, d_conv %d)", d_conv);
    report(name, err, 1e-5);
}

static void test_ssm_step(int ns) {
    const int L = 2, l = 1, c0 = 5, nc = 333, di = c0 + nc + 2, dt_rank = 6;
    const StepArgs shape = phase_args(di, 4, ns, dt_rank, NULL, NULL);
    const ParamLayout pl = shape.pl;
    const int nsp = shape.nsp;
    const std::vector<float> prm = random_params(nc, 4, ns, pl), h = randoms((size_t)nc * nsp, -1.0f, 1.0f);
    const std::vector<float> dbc = randoms(shape.Rp, -1.0f, 1.0f), dtr = randoms(nc, -3.0f, 1.0f);
    const std::vector<float> u = randoms(nc, -1.0f, 1.0f), zg = randoms(nc, -2.0f, 2.0f);
    float *state = device_zeros<float>((size_t)L * di * nsp), *yv = device_zeros<float>(nc);
    const StepArgs a = phase_args(di, 4, ns, dt_rank, NULL, state);
    run_ssm_step<<<1, CONSUMERS>>>(a, l, c0, nc, to_device(prm), to_device(h), to_device(dbc), to_device(dtr), to_device(u),
                                   to_device(zg), yv);
    LAUNCH_CHECK("run_ssm_step");
    std::vector<float> want_y(nc), want_state((size_t)L * di * nsp, 0.0f);
    for (int j = 0; j < nc; j++) {
        const float *p = &prm[(size_t)j * pl.stride];
        const double delta = softplus_ref((double)dtr[j] + p[pl.dt_bias]);
        double y = 0.0;
        for (int n = 0; n < ns; n++) {
            const double hn = exp(delta * p[pl.A + n]) * h[(size_t)j * nsp + n] + delta * dbc[dt_rank + n] * u[j];
            want_state[((size_t)l * di + c0 + j) * nsp + n] = (float)hn;
            y += hn * dbc[dt_rank + ns + n];
        }
        want_y[j] = (float)((y + p[pl.D] * u[j]) * silu_ref(zg[j]));
    }
    const double err = fmax(max_err(to_host(yv, nc), want_y), max_err(to_host(state, want_state.size()), want_state));
    char name[96];
    snprintf(name, sizeof name, "ssm_step (decode: selective scan step and its state, d_state %d)", ns);
    report(name, err, 2e-5);
}

/* ----------------------------------------------------------------------------------------
 * The sampler (kernels.cu). */

/* The CPU sampler's semantics: the penalized logits, then greedy or the kept set (top-k, then
 * top-p, by probability, ties by lower id) and the draw over it in id order. */
struct SampleCase {
    const char *name;
    float temperature, top_p, penalty;
    int top_k, last_n;
    bool scratch;     /* the working copy in global memory, not shared */
};

static std::vector<double> penalized(const std::vector<float> &logits, const std::vector<int> &history, const SampleCase &k) {
    std::vector<double> x(logits.begin(), logits.end());
    if (k.penalty == 1.0f) return x;
    const int run = (int)history.size(), window = k.last_n < run ? k.last_n : run;
    for (int j = 0; j < window; j++) {
        const int id = history[run - 1 - j];
        if (id >= 0 && id < (int)logits.size())
            x[id] = logits[id] > 0 ? (float)(logits[id] / k.penalty) : (float)(logits[id] * k.penalty);
    }
    return x;
}

static int argmax_ref(const std::vector<double> &x) {
    int best = -1;
    for (int i = 0; i < (int)x.size(); i++)
        if (x[i] == x[i] && (best < 0 || x[i] > x[best])) best = i;
    return best < 0 ? 0 : best;
}

/* The kept set (kept[i]) and the probabilities p (not normalized). */
static void kept_set(const std::vector<double> &x, const SampleCase &k, std::vector<double> &p, std::vector<char> &kept) {
    const int n = (int)x.size();
    double mx = -INFINITY;
    for (double v : x) mx = fmax(mx, v);
    p.assign(n, 0.0), kept.assign(n, 1);
    for (int i = 0; i < n; i++) p[i] = exp((x[i] - mx) / k.temperature);
    std::vector<int> order(n);
    for (int i = 0; i < n; i++) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
    int keep = n;
    if (k.top_k > 0 && k.top_k < n) keep = k.top_k;
    if (k.top_p < 1.0f) {
        double mass = 0.0, run = 0.0;
        for (int r = 0; r < keep; r++) mass += p[order[r]];
        int r = 0;
        while (r < keep && run < k.top_p * mass) run += p[order[r++]];
        keep = r > 0 ? r : 1;
    }
    for (int r = keep; r < n; r++) kept[order[r]] = 0;
}

static unsigned long long xorshift_ref(unsigned long long r) {
    r ^= r >> 12, r ^= r << 25, r ^= r >> 27;
    return r;
}

/* Whether the GPU's pick is the draw's: kept, and its span of the cumulative mass (in id order)
 * holds the target, within rounding. */
static bool draw_matches(const std::vector<double> &p, const std::vector<char> &kept, unsigned long long r, int pick) {
    const double draw = (double)(float)((r * 0x2545F4914F6CDD1DULL) >> 40) / 16777216.0;
    double total = 0.0;
    for (size_t i = 0; i < p.size(); i++)
        if (kept[i]) total += p[i];
    if (pick < 0 || pick >= (int)p.size() || !kept[pick]) return false;
    double before = 0.0;
    for (int i = 0; i < pick; i++)
        if (kept[i]) before += p[i];
    const double target = draw * total, slack = 1e-5 * total;
    return before <= target + slack && target < before + p[pick] + slack;
}

static void test_sampler(const SampleCase &k) {
    const int vocab = 50280, draws = 16;
    /* distinct logits far enough apart (2e-4) that no rounding reorders them */
    std::vector<float> logits(vocab);
    for (int i = 0; i < vocab; i++) logits[i] = (float)((i * 7919LL) % vocab) * (10.0f / vocab) - 5.0f;
    std::vector<int> history;
    for (int i = 0; i < 300; i++) history.push_back((int)((i * 104729LL) % vocab));
    history.push_back(argmax_ref(std::vector<double>(logits.begin(), logits.end())));   /* the penalty moves the argmax */
    std::vector<int> ring(HISTORY_CAP, 0);
    for (size_t i = 0; i < history.size(); i++) ring[i] = history[i];
    const unsigned long long n_run = history.size();
    unsigned long long *rng = to_device(std::vector<unsigned long long>{0x9E3779B97F4A7C15ull});
    int *token = device_zeros<int>(1);
    const SampleArgs s{to_device(logits), k.scratch ? device_zeros<float>(vocab) : NULL, vocab, to_device(ring),
                       to_device(std::vector<unsigned long long>{n_run}), k.temperature, k.top_p, k.penalty, k.top_k, k.last_n,
                       rng, token};
    const size_t smem = k.scratch ? 0 : vocab * sizeof(float);
    if (smem) CUDA_CHECK(cudaFuncSetAttribute((const void *)sample_token, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const std::vector<double> x = penalized(logits, history, k);
    std::vector<double> p;
    std::vector<char> kept;
    if (k.temperature != 0.0f) kept_set(x, k, p, kept);
    unsigned long long r = 0x9E3779B97F4A7C15ull;
    int wrong = 0;
    for (int d = 0; d < draws; d++) {
        sample_token<<<1, SAMPLE_THREADS, smem>>>(s);
        LAUNCH_CHECK("sample_token");
        const int pick = to_host(token, 1)[0];
        if (k.temperature == 0.0f) {
            wrong += pick != argmax_ref(x);
        } else {
            r = xorshift_ref(r);
            wrong += !draw_matches(p, kept, r, pick) || to_host(rng, 1)[0] != r;
        }
    }
    char name[160];
    snprintf(name, sizeof name, "sample_token %s (%d draws; err: draws off the CPU sampler's)", k.name, draws);
    report(name, wrong, 0);
}

/* ----------------------------------------------------------------------------------------
 * The passes over many rows (prefill.cu) and the upload's transpose (kernels.cu). */

/* A PassArgs of S sequences × L tokens, the activations channel-major when L > 1 (as
 * enqueue_pass lays them out), with two layers of state in `slots` slots. */
static PassArgs pass_args(int S, int L, int di, int d_conv, int ns, int dt_rank, const int *slots, const float *params,
                          float *conv_state, float *ssm_state) {
    const int rows = S * L;
    const ParamLayout pl = param_layout(d_conv, ns);
    const int kcp = round_up(d_conv, 4), nsp = round_up(ns, 4);
    return PassArgs{S, L, rows, L > 1, round_up(rows, 8), slots, 1, di, 0, 0, d_conv, kcp, ns, nsp, dt_rank,
                    round_up(dt_rank, PAD), round_up(dt_rank + 2 * ns, PAD), pl, params, conv_state, ssm_state,
                    (size_t)2 * di * kcp, (size_t)2 * di * nsp};
}

/* Host mirror of at(). */
static size_t host_at(const PassArgs &p, int c, int r, int width) {
    return p.by_channel ? (size_t)c * p.ld + r : (size_t)r * width + c;
}

template <typename T>
static void test_embed_rows() {
    const int vocab = 97, dmp = 40, rows = 13;
    const std::vector<float> emb = rounded<T>(randoms((size_t)vocab * dmp, -1.0f, 1.0f));
    std::vector<int> tokens(rows);
    for (int r = 0; r < rows; r++) tokens[r] = (r * 37 + 5) % vocab;
    float *X = device_zeros<float>((size_t)rows * dmp);
    embed_rows<T><<<rows, 256>>>((const T *)to_device(encode_all<T>(emb)), to_device(tokens), dmp, X);
    LAUNCH_CHECK("embed_rows");
    std::vector<float> want((size_t)rows * dmp);
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < dmp; i++) want[(size_t)r * dmp + i] = emb[(size_t)tokens[r] * dmp + i];
    char name[64];
    snprintf(name, sizeof name, "embed_rows %s", Host<T>::name());
    report(name, max_err(to_host(X, want.size()), want), 0.0);
}

template <typename T>
static void test_rmsnorm_rows() {
    const int dm = 771, dmp = round_up(dm, PAD), rows = 5;
    std::vector<float> X = randoms((size_t)rows * dmp, -2.0f, 2.0f), w = randoms(dmp, 0.5f, 1.5f);
    for (int r = 0; r < rows; r++)
        for (int i = dm; i < dmp; i++) X[(size_t)r * dmp + i] = 0.0f;
    T *XN = (T *)device_zeros<typename Host<T>::E>((size_t)rows * dmp);
    rmsnorm_rows<T><<<rows, 256>>>(to_device(X), to_device(w), dm, dmp, 1e-5f, XN);
    LAUNCH_CHECK("rmsnorm_rows");
    std::vector<float> want((size_t)rows * dmp);
    for (int r = 0; r < rows; r++) {
        double ss = 0.0;
        for (int i = 0; i < dmp; i++) ss += (double)X[(size_t)r * dmp + i] * X[(size_t)r * dmp + i];
        const double scale = 1.0 / sqrt(ss / dm + 1e-5);
        for (int i = 0; i < dmp; i++) want[(size_t)r * dmp + i] = (float)(w[i] * (X[(size_t)r * dmp + i] * scale));
    }
    char name[64];
    snprintf(name, sizeof name, "rmsnorm_rows %s", Host<T>::name());
    report(name, max_err(to_host_floats<T>(XN, want.size()), want), sizeof(T) == 4 ? 1e-5 : 8e-3);
}

/* conv_tokens (channel-major, the prompt pass) or conv_rows (row-major, the batched step), then
 * conv_state_update, against the conv over each sequence with its slot's state before it. */
template <typename T>
static void test_conv(int S, int L, int d_conv) {
    const int di = 24, slot_count = S + 1, kcp = round_up(d_conv, 4);
    std::vector<int> slots(S);
    for (int s = 0; s < S; s++) slots[s] = S - s;   /* distinct, not in order, slot 0 unused */
    const ParamLayout pl = param_layout(d_conv, 16);
    const std::vector<float> params = random_params(di, d_conv, 16, pl);
    const std::vector<float> state0 = randoms((size_t)slot_count * 2 * di * kcp, -1.0f, 1.0f);
    float *state = to_device(state0);
    const PassArgs p = pass_args(S, L, di, d_conv, 16, 8, to_device(slots), to_device(params), state, NULL);
    const size_t act = p.by_channel ? (size_t)2 * di * p.ld : (size_t)p.rows * 2 * di;
    const std::vector<float> xz = randoms(act, -2.0f, 2.0f);
    const float *XZ = to_device(xz);
    const size_t u_len = p.by_channel ? (size_t)di * p.ld : (size_t)p.rows * di;
    float *U = device_zeros<float>(u_len);
    T *U16 = (T *)device_zeros<typename Host<T>::E>(u_len);
    if (p.by_channel) {
        conv_tokens<T><<<dim3(((L + CONV_ITEMS - 1) / CONV_ITEMS + 255) / 256, di, S), 256>>>(p, XZ, U, U16);
        LAUNCH_CHECK("conv_tokens");
    } else {
        conv_rows<T><<<(p.rows * di + 255) / 256, 256>>>(p, XZ, U, U16);
        LAUNCH_CHECK("conv_rows");
    }
    conv_state_update<<<(S * di + 255) / 256, 256>>>(p, XZ);
    LAUNCH_CHECK("conv_state_update");

    std::vector<float> want_u(u_len, 0.0f), want_state = state0;
    for (int s = 0; s < S; s++)
        for (int c = 0; c < di; c++) {
            const float *w = &params[(size_t)c * pl.stride];
            const size_t at_state = slots[s] * p.conv_slot + ((size_t)p.layer * di + c) * kcp;
            auto input = [&](int tau) {   /* token tau of the sequence; before 0, from the state */
                return tau >= 0 ? xz[host_at(p, c, s * L + tau, 2 * di)] : state0[at_state + d_conv + tau];
            };
            for (int t = 0; t < L; t++) {
                double acc = w[pl.conv_b];
                for (int k = 0; k < d_conv; k++) acc += (double)w[k] * input(t - (d_conv - 1) + k);
                want_u[host_at(p, c, s * L + t, di)] = (float)silu_ref(acc);
            }
            for (int k = 0; k < d_conv; k++) want_state[at_state + k] = input(L - d_conv + k);
        }
    const double err_u = fmax(max_err(to_host(U, u_len), want_u), max_err(to_host_floats<T>(U16, u_len), rounded<T>(want_u)));
    char name[128];
    snprintf(name, sizeof name, "%s %s (S %d, L %d, d_conv %d)", p.by_channel ? "conv_tokens" : "conv_rows", Host<T>::name(), S,
             L, d_conv);
    report(name, err_u, sizeof(T) == 4 ? 1e-5 : 8e-3);
    snprintf(name, sizeof name, "conv_state_update (%s, S %d, L %d, d_conv %d)", p.by_channel ? "channel-major" : "row-major",
             S, L, d_conv);
    report(name, max_err(to_host(state, want_state.size()), want_state), 0.0);
}

template <typename T>
static void test_dt_rows() {
    const int L = 37, di = 16, dt_rank = 6;
    const PassArgs p = pass_args(1, L, di, 4, 16, dt_rank, NULL, NULL, NULL, NULL);
    const std::vector<float> dbc = randoms((size_t)p.Rp * p.ld, -1.0f, 1.0f);
    T *DT = (T *)device_zeros<typename Host<T>::E>((size_t)p.rkp * p.ld);
    dt_rows<T><<<dim3((p.rows + 255) / 256, p.rkp), 256>>>(p, to_device(dbc), DT);
    LAUNCH_CHECK("dt_rows");
    std::vector<float> want((size_t)p.rkp * p.ld, 0.0f);
    for (int k = 0; k < p.rkp; k++)
        for (int r = 0; r < p.rows; r++) want[host_at(p, k, r, p.rkp)] = k < dt_rank ? dbc[host_at(p, k, r, p.Rp)] : 0.0f;
    char name[64];
    snprintf(name, sizeof name, "dt_rows %s", Host<T>::name());
    report(name, max_err(to_host_floats<T>(DT, want.size()), rounded<T>(want)), 0.0);
}

/* The CPU's selective scan of one sequence's channel from its state h (updated), token by token. */
static void scan_ref(const float *w, const ParamLayout &pl, int ns, int L, const std::function<float(int, int)> &in,
                     float *h, const std::function<void(int, float)> &out) {
    enum { DELTA, U, Z, B, C };
    for (int t = 0; t < L; t++) {
        const double delta = softplus_ref((double)in(DELTA, t) + w[pl.dt_bias]), u = in(U, t);
        double y = 0.0;
        for (int n = 0; n < ns; n++) {
            h[n] = (float)(exp(delta * w[pl.A + n]) * h[n] + delta * in(B, t * 64 + n) * u);
            y += (double)h[n] * in(C, t * 64 + n);
        }
        out(t, (float)((y + w[pl.D] * u) * silu_ref(in(Z, t))));
    }
}

/* selective_scan (chunked, channel-major: the prompt pass) over S sequences of L tokens, or
 * scan_step (one token, row-major: the batched step) when L is 1, from random slot states. */
template <typename T>
static void test_scan(int S, int L, int ns) {
    const int di = 20, dt_rank = 5, slot_count = S + 1;
    std::vector<int> slots(S);
    for (int s = 0; s < S; s++) slots[s] = S - s;   /* distinct, not in order, slot 0 unused */
    const ParamLayout pl = param_layout(4, ns);
    const std::vector<float> params = random_params(di, 4, ns, pl);
    const int nsp = round_up(ns, 4);
    const std::vector<float> state0 = randoms((size_t)slot_count * 2 * di * nsp, -1.0f, 1.0f);
    float *state = to_device(state0);
    const PassArgs p = pass_args(S, L, di, 4, ns, dt_rank, to_device(slots), to_device(params), NULL, state);
    const size_t n1 = p.by_channel ? (size_t)di * p.ld : (size_t)p.rows * di;
    const std::vector<float> delta = randoms(n1, -3.0f, 1.0f), u = randoms(n1, -1.0f, 1.0f);
    const std::vector<float> xz = randoms(2 * n1, -2.0f, 2.0f);
    const std::vector<float> dbc = randoms(p.by_channel ? (size_t)p.Rp * p.ld : (size_t)p.rows * p.Rp, -1.0f, 1.0f);
    const float *DELTA = to_device(delta), *Ud = to_device(u), *XZ = to_device(xz), *DBC = to_device(dbc);
    T *Y = (T *)device_zeros<typename Host<T>::E>(n1);
    if (p.by_channel) {
        CUDA_CHECK(cudaFuncSetAttribute((const void *)selective_scan<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)scan_smem_bytes(ns)));
        selective_scan<T><<<dim3((di + SCAN_WARPS - 1) / SCAN_WARPS, S), SCAN_WARPS * 32, scan_smem_bytes(ns)>>>(p, DELTA, Ud,
                                                                                                             XZ, DBC, Y);
        LAUNCH_CHECK("selective_scan");
    } else {
        void *args[] = {(void *)&p, &DELTA, &Ud, &XZ, &DBC, &Y};
        CUDA_CHECK(cudaLaunchKernel(scan_step_for<T>(ns), dim3((S * di * SCAN_LANES + 255) / 256), dim3(256), args, 0, 0));
        LAUNCH_CHECK("scan_step");
    }

    std::vector<float> want_y(n1, 0.0f), want_state = state0;
    for (int s = 0; s < S; s++)
        for (int c = 0; c < di; c++) {
            float *h = &want_state[slots[s] * p.ssm_slot + ((size_t)p.layer * di + c) * nsp];
            auto in = [&](int what, int tn) -> float {   /* tn: t, or t · 64 + n for B and C */
                const int t = what >= 3 ? tn / 64 : tn, n = tn % 64, r = s * L + t;
                switch (what) {
                case 0: return delta[host_at(p, c, r, di)];
                case 1: return u[host_at(p, c, r, di)];
                case 2: return xz[host_at(p, di + c, r, 2 * di)];
                case 3: return dbc[host_at(p, dt_rank + n, r, p.Rp)];
                default: return dbc[host_at(p, dt_rank + ns + n, r, p.Rp)];
                }
            };
            scan_ref(&params[(size_t)c * pl.stride], pl, ns, L, in, h,
                     [&](int t, float y) { want_y[host_at(p, c, s * L + t, di)] = y; });
        }
    /* the prompt pass's scan uses the fast exponentials: about 1e-6 a step, over hundreds of steps */
    const double tol = sizeof(T) == 2 ? 8e-3 : p.by_channel ? 5e-4 : 2e-5;
    char name[128];
    snprintf(name, sizeof name, "%s %s (S %d, L %d, d_state %d; y and the state)", p.by_channel ? "selective_scan" : "scan_step",
             Host<T>::name(), S, L, ns);
    report(name, fmax(max_err(to_host_floats<T>(Y, n1), want_y), max_err(to_host(state, want_state.size()), want_state)), tol);
}

static void test_append_history() {
    const int n = 3000;
    const unsigned long long start = HISTORY_CAP - 1000;   /* the ring wraps */
    std::vector<int> tokens(n);
    for (int i = 0; i < n; i++) tokens[i] = (i * 31 + 7) % 50280;
    int *history = device_zeros<int>(HISTORY_CAP);
    unsigned long long *n_run = to_device(std::vector<unsigned long long>{start});
    append_history<<<1, 1024>>>(to_device(tokens), n, history, n_run);
    LAUNCH_CHECK("append_history");
    const std::vector<int> got = to_host(history, HISTORY_CAP);
    int wrong = to_host(n_run, 1)[0] != start + n;
    for (int i = 0; i < n; i++) wrong += got[(start + i) % HISTORY_CAP] != tokens[i];
    report("append_history (the ring wraps; err: ids misplaced)", wrong, 0);
}

static void test_argmax_rows() {
    const int rows = 7, vocab = 1000, limit = 900;
    std::vector<float> logits = randoms((size_t)rows * vocab, -5.0f, 5.0f);
    logits[0 * vocab + 950] = 100.0f;                                  /* past the limit: not picked */
    logits[1 * vocab + 10] = logits[1 * vocab + 20] = 50.0f;           /* a tie: the lower id */
    logits[2 * vocab + 3] = NAN;                                       /* NaN never wins */
    int *out = device_zeros<int>(rows);
    argmax_rows<<<rows, 256>>>(to_device(logits), vocab, limit, out);
    LAUNCH_CHECK("argmax_rows");
    const std::vector<int> got = to_host(out, rows);
    int wrong = 0;
    for (int r = 0; r < rows; r++) {
        int best = -1;
        for (int i = 0; i < limit; i++) {
            const float v = logits[(size_t)r * vocab + i];
            if (v == v && (best < 0 || v > logits[(size_t)r * vocab + best])) best = i;
        }
        wrong += got[r] != best;
    }
    report("argmax_rows (limit, ties, NaN; err: rows wrong)", wrong, 0);
}

template <typename E>
static void test_transpose() {
    const int rows = 45, cols = 70, stride = 48;
    std::vector<E> in((size_t)rows * cols);
    for (size_t i = 0; i < in.size(); i++) in[i] = (E)(i * 2654435761u);
    E *out = device_zeros<E>((size_t)cols * stride);
    transpose_into<E><<<dim3((cols + 31) / 32, (rows + 31) / 32), dim3(32, 8)>>>(to_device(in), rows, cols, out, stride);
    LAUNCH_CHECK("transpose_into");
    const std::vector<E> got = to_host(out, (size_t)cols * stride);
    int wrong = 0;
    for (int c = 0; c < cols; c++)
        for (int r = 0; r < stride; r++) wrong += got[(size_t)c * stride + r] != (r < rows ? in[(size_t)r * cols + c] : 0);
    char name[96];
    snprintf(name, sizeof name, "transpose_into %d-bit (the upload's; err: elements wrong)", (int)sizeof(E) * 8);
    report(name, wrong, 0);
}

/* ----------------------------------------------------------------------------------------
 * The engine as a whole (gpu.h) on small random models, against a CPU forward pass written
 * here: the decode step (forward_token's weight ring, grid barriers, LM head and fused argmax,
 * which cannot run alone), its graph with the sampler, the prompt pass and the batched step
 * (prefill.cu, with cuBLAS). */

/* A random Mamba-1 model: the values the engine sees (matrices rounded to the dtype), for the
 * reference, and the engine's Weights over copies of them in the dtype. With fewer distinct
 * layers than n_layer, layer l is layer l % distinct (for the benchmark's large model). */
struct RefLayer {
    std::vector<float> norm, in_proj, conv_w, conv_b, x_proj, dt_proj, dt_bias, A_log, D, out_proj;
};

struct RandomModel {
    Config c;
    std::vector<float> emb, head, norm_f;   /* head empty when tied */
    std::vector<RefLayer> layers;
    std::list<std::vector<uint8_t>> stored;
    std::vector<LayerWeights> lw;
    Weights w;
    const std::vector<float> &lm_head() const { return c.tied_head ? emb : head; }
    const RefLayer &layer(int l) const { return layers[l % layers.size()]; }
};

/* A copy of v in dtype t's storage, kept by the model. */
static const void *store(RandomModel &m, const std::vector<float> &v) {
    const DType t = m.c.dtype;
    m.stored.emplace_back(v.size() * dtype_size(t));
    for (size_t i = 0; i < v.size(); i++) put(m.stored.back(), 0, i, v[i], t);
    return m.stored.back().data();
}

/* Scales that keep the activations near 1: rows of n inputs get weights of about 1/sqrt(n). */
static RefLayer random_layer(const Config &c) {
    const DType t = c.dtype;
    const int dm = c.d_model, di = c.d_inner, ns = c.d_state, R = c.dt_rank + 2 * ns;
    const float sm = 1.0f / sqrtf((float)dm), si = 1.0f / sqrtf((float)di), sr = 1.0f / sqrtf((float)c.dt_rank);
    RefLayer L;
    L.norm = randoms(dm, 0.8f, 1.2f);
    L.in_proj = randoms((size_t)2 * di * dm, -sm, sm, t);
    L.conv_w = randoms((size_t)di * c.d_conv, -0.5f, 0.5f), L.conv_b = randoms(di, -0.2f, 0.2f);
    L.x_proj = randoms((size_t)R * di, -si, si, t);
    L.dt_proj = randoms((size_t)di * c.dt_rank, -sr, sr, t);
    L.dt_bias = randoms(di, -4.5f, -2.0f);
    L.A_log.resize((size_t)di * ns);
    for (int ch = 0; ch < di; ch++)
        for (int n = 0; n < ns; n++) L.A_log[(size_t)ch * ns + n] = logf((float)(n + 1)) + uniform(-0.1f, 0.1f);
    L.D = randoms(di, 0.5f, 1.5f);
    L.out_proj = randoms((size_t)dm * di, -si, si, t);
    return L;
}

static void random_model(RandomModel &m, const Config &c, int distinct_layers) {
    m.c = c;
    const size_t emb_n = (size_t)c.padded_vocab * c.d_model;
    const float se = 1.0f / sqrtf((float)c.d_model);   /* logits near 1 */
    m.emb = randoms(emb_n, -se, se, c.dtype);
    if (!c.tied_head) m.head = randoms(emb_n, -se, se, c.dtype);
    m.norm_f = randoms(c.d_model, 0.8f, 1.2f);
    for (int l = 0; l < distinct_layers; l++) m.layers.push_back(random_layer(c));
    std::vector<LayerWeights> distinct;
    for (const RefLayer &L : m.layers) {
        LayerWeights lw;
        lw.norm = L.norm.data(), lw.in_proj = store(m, L.in_proj), lw.conv_w = L.conv_w.data(), lw.conv_b = L.conv_b.data();
        lw.x_proj = store(m, L.x_proj), lw.dt_proj = store(m, L.dt_proj), lw.dt_bias = L.dt_bias.data();
        lw.A_log = L.A_log.data(), lw.D = L.D.data(), lw.out_proj = store(m, L.out_proj);
        distinct.push_back(lw);
    }
    for (int l = 0; l < c.n_layer; l++) m.lw.push_back(distinct[l % distinct_layers]);
    m.w.embedding = store(m, m.emb);
    m.w.layers = m.lw.data();
    m.w.norm_f = m.norm_f.data();
    m.w.lm_head = c.tied_head ? m.w.embedding : store(m, m.head);
}

/* A sequence's state in the reference: conv [layer, channel, d_conv] (oldest input first) and
 * SSM [layer, channel, d_state]. */
struct RefState {
    std::vector<double> conv, ssm;
    explicit RefState(const Config &c)
        : conv((size_t)c.n_layer * c.d_inner * c.d_conv, 0.0), ssm((size_t)c.n_layer * c.d_inner * c.d_state, 0.0) {}
};

static std::vector<double> rmsnorm_ref(const std::vector<double> &x, const float *w, double eps) {
    double ss = 0.0;
    for (double v : x) ss += v * v;
    const double scale = 1.0 / sqrt(ss / x.size() + eps);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); i++) y[i] = w[i] * x[i] * scale;
    return y;
}

/* out[r] = Σ_i W[r, i] · x[i] for the first `rows` rows of the row-major W. */
static std::vector<double> matvec_ref(const std::vector<float> &W, int rows, const std::vector<double> &x) {
    const size_t n = x.size();
    std::vector<double> out(rows, 0.0);
    for (int r = 0; r < rows; r++)
        for (size_t i = 0; i < n; i++) out[r] += (double)W[r * n + i] * x[i];
    return out;
}

/* One Mamba block on the residual stream x, from and into the state of layer l. */
static void block_ref(const Config &c, const RefLayer &L, int l, RefState &s, std::vector<double> &x) {
    const int di = c.d_inner, ns = c.d_state, K = c.d_conv, dr = c.dt_rank;
    const std::vector<double> xz = matvec_ref(L.in_proj, 2 * di, rmsnorm_ref(x, L.norm.data(), c.norm_eps));
    std::vector<double> u(di), y(di);
    for (int ch = 0; ch < di; ch++) {   /* the causal conv: the window shifts in x */
        double *win = &s.conv[((size_t)l * di + ch) * K], acc = L.conv_b[ch];
        for (int k = 0; k + 1 < K; k++) win[k] = win[k + 1];
        win[K - 1] = xz[ch];
        for (int k = 0; k < K; k++) acc += L.conv_w[(size_t)ch * K + k] * win[k];
        u[ch] = silu_ref(acc);
    }
    const std::vector<double> dbc = matvec_ref(L.x_proj, dr + 2 * ns, u);   /* (dt, B, C) */
    for (int ch = 0; ch < di; ch++) {   /* the selective scan, one step */
        double dt = L.dt_bias[ch];
        for (int k = 0; k < dr; k++) dt += L.dt_proj[(size_t)ch * dr + k] * dbc[k];
        const double delta = softplus_ref(dt);
        double acc = 0.0;
        for (int n = 0; n < ns; n++) {
            double &h = s.ssm[((size_t)l * di + ch) * ns + n];
            h = exp(-delta * exp((double)L.A_log[(size_t)ch * ns + n])) * h + delta * dbc[dr + n] * u[ch];
            acc += h * dbc[dr + ns + n];
        }
        y[ch] = (acc + L.D[ch] * u[ch]) * silu_ref(xz[di + ch]);
    }
    const std::vector<double> out = matvec_ref(L.out_proj, c.d_model, y);
    for (int i = 0; i < c.d_model; i++) x[i] += out[i];
}

/* One token through the model from the state s (updated): its vocab_size logits. */
static std::vector<float> forward_ref(const RandomModel &m, RefState &s, int token) {
    const Config &c = m.c;
    std::vector<double> x(m.emb.begin() + (size_t)token * c.d_model, m.emb.begin() + (size_t)(token + 1) * c.d_model);
    for (int l = 0; l < c.n_layer; l++) block_ref(c, m.layer(l), l, s, x);
    const std::vector<double> logits = matvec_ref(m.lm_head(), c.vocab_size, rmsnorm_ref(x, m.norm_f.data(), c.norm_eps));
    return std::vector<float>(logits.begin(), logits.end());
}

/* The largest of n, the lowest id on ties (the engine's greedy pick). */
static int argmax_of(const std::vector<float> &x) {
    int best = 0;
    for (int i = 1; i < (int)x.size(); i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Greedy steps (gpu_engine_sample_feed): each id must be the argmax of the logits before it,
 * its logits the reference's. Returns the worst error (infinite for a wrong id). */
static double decode_steps(GpuEngine *g, const RandomModel &m, RefState &s, std::vector<float> last, int steps) {
    double e = 0.0;
    for (int i = 0; i < steps; i++) {
        const float *logits = NULL;
        const int id = gpu_engine_sample_feed(g, 1, &logits);
        if (id != argmax_of(last)) return INFINITY;
        last.assign(logits, logits + m.c.vocab_size);
        e = fmax(e, max_err(last, forward_ref(m, s, id)));
    }
    return e;
}

static void test_engine(const char *label, const Config &c) {
    RandomModel m;
    random_model(m, c, c.n_layer);
    char err[256] = "", name[192];
    GpuEngine *g = gpu_engine_create(&m.c, &m.w, 4, err, sizeof err);
    if (!g) {
        snprintf(name, sizeof name, "gpu_engine_create %s: %s", label, err);
        report(name, INFINITY, 0.0);
        return;
    }
    const int V = c.vocab_size;
    /* The step computes in fp32 whatever the weights' dtype. The passes round their
     * activations to it (the inputs of the products: normalized rows, u, dt, y), which moves
     * these models' logits by up to about 1e-2 in bf16 and 1e-3 in f16 (measured with the
     * reference rounding the same values); the tolerances are 4-6 times that. */
    const double tol = 1e-4, pass_tol = c.dtype == DTYPE_F32 ? 1e-4 : c.dtype == DTYPE_BF16 ? 4e-2 : 5e-3;
    auto token = [V](int i) { return token_at(i, V); };
    auto row = [V](const float *p) { return std::vector<float>(p, p + V); };

    RefState s(c);
    std::vector<float> last;
    double e = 0.0;
    for (int i = 0; i < 6; i++) {
        last = row(gpu_engine_feed(g, token(i), 1));
        e = fmax(e, max_err(last, forward_ref(m, s, token(i))));
    }
    snprintf(name, sizeof name, "forward_token %s: 6 steps' logits = the CPU forward pass", label);
    report(name, e, tol);
    snprintf(name, sizeof name, "forward_token %s: 5 greedy steps, ids = argmax (fused), logits = CPU", label);
    report(name, decode_steps(g, m, s, last, 5), tol);

    const int n = 13;
    std::vector<int> prompt(n);
    for (int i = 0; i < n; i++) prompt[i] = token(20 + i);
    std::vector<float> logits((size_t)n * V);
    gpu_engine_reset(g);
    s = RefState(c);
    gpu_engine_prefill(g, 0, prompt.data(), n, 5, logits.data());
    e = 0.0;
    for (int i = 0; i < n; i++) e = fmax(e, max_err(row(&logits[(size_t)i * V]), forward_ref(m, s, prompt[i])));
    snprintf(name, sizeof name, "prompt pass %s: 13 tokens in chunks of 5, logits = CPU", label);
    report(name, e, pass_tol);
    snprintf(name, sizeof name, "forward_token %s after the prompt pass: from the state it left = CPU", label);
    report(name, max_err(row(gpu_engine_feed(g, token(99), 1)), forward_ref(m, s, token(99))), pass_tol);

    const int slots[3] = {2, 0, 3};
    std::vector<RefState> seqs(3, RefState(c));
    gpu_engine_reset(g);
    e = 0.0;
    for (int step = 0; step < 4; step++) {
        const int tokens[3] = {token(40 + step), token(50 + step), token(60 + step)};
        const float *out = gpu_engine_forward_batch(g, 3, slots, tokens);
        for (int b = 0; b < 3; b++) e = fmax(e, max_err(row(out + (size_t)b * V), forward_ref(m, seqs[b], tokens[b])));
    }
    snprintf(name, sizeof name, "batched step %s: 3 sequences (slots 2, 0, 3) x 4 steps, logits = CPU", label);
    report(name, e, pass_tol);

    const GpuSampling top1 = {1.0f, 1, 1.0f, 1.0f, 64, 12345, V};
    gpu_engine_reset(g);
    gpu_engine_set_sampling(g, &top1);
    s = RefState(c);
    last = row(gpu_engine_feed(g, token(7), 1));
    e = max_err(last, forward_ref(m, s, token(7)));
    e = fmax(e, decode_steps(g, m, s, last, 4));
    snprintf(name, sizeof name, "sample_token + forward_token graph %s: top-k 1 = greedy, logits = CPU", label);
    report(name, e, tol);
    gpu_engine_free(g);
}

static Config mamba1_config(int n_layer, int dm, int di, int ns, int d_conv, int dt_rank, int vocab, int padded, DType t,
                            int tied) {
    Config c;
    memset(&c, 0, sizeof c);
    c.arch = ARCH_MAMBA1, c.n_layer = n_layer, c.d_model = dm, c.d_inner = di, c.d_state = ns, c.d_conv = d_conv;
    c.dt_rank = dt_rank, c.vocab_size = vocab, c.padded_vocab = padded, c.norm_eps = 1e-5f, c.dtype = t, c.tied_head = tied;
    return c;
}

/* Shapes with padded rows (d_model 2044), with matrices of several ring tiles a block (on a
 * 132-multiprocessor GPU: 17 channels and 31 LM-head rows a block), with blocks left without
 * channels (d_inner 400: 4 a block), and at the limits of d_conv and d_state. */
static void test_engines() {
    test_engine("f32 (2 layers, d_model 2044, d_inner 2200, vocab 4000, untied)",
                mamba1_config(2, 2044, 2200, 16, 4, 128, 4000, 4008, DTYPE_F32, 0));
    test_engine("bf16 (3 layers, d_model 200, d_inner 400, d_state 12, d_conv 3, tied)",
                mamba1_config(3, 200, 400, 12, 3, 13, 1000, 1000, DTYPE_BF16, 1));
    test_engine("f16 (1 layer, d_model 96, d_inner 192, d_state 64, d_conv 8, untied)",
                mamba1_config(1, 96, 192, 64, 8, 6, 520, 528, DTYPE_F16, 0));
}

static void run_tests() {
    test_rmsnorm_into();
    test_tile_rows_dot<float>(3, 2048), test_tile_rows_dot<float>(64, 776);
    test_tile_rows_dot<__nv_bfloat16>(3, 2048), test_tile_rows_dot<__nv_bfloat16>(64, 776);
    /* four rows a warp (12 of 2560), two (9 of 1024), and a tail of rows that is not a multiple */
    test_tile_rows_dot<__nv_bfloat16>(12, 2560), test_tile_rows_dot<__nv_bfloat16>(9, 1024), test_tile_rows_dot<float>(13, 4096);
    test_column_sums<float>(50, 37, 48), test_column_sums<float>(30, 11, 776);
    test_column_sums<__nv_bfloat16>(50, 37, 48), test_column_sums<__nv_bfloat16>(20, 21, 2048);
    test_column_sums<__nv_bfloat16>(12, 27, 2560), test_column_sums<__nv_bfloat16>(7, 40, 4096);   /* several groups a chunk */
    test_conv_step(4), test_conv_step(3);
    test_ssm_step(16), test_ssm_step(12), test_ssm_step(64);
    const SampleCase cases[] = {
        {"greedy", 0.0f, 1.0f, 1.0f, 0, 64, false},
        {"greedy, repetition penalty 1.5", 0.0f, 1.0f, 1.5f, 0, 400, false},
        {"T 1.3, top-k 1", 1.3f, 1.0f, 1.0f, 1, 64, false},
        {"T 0.8, top-k 40, top-p 0.9", 0.8f, 0.9f, 1.0f, 40, 64, false},
        {"T 1, top-p 0.5, penalty 1.2", 1.0f, 0.5f, 1.2f, 0, 400, false},
        {"T 1.2, no top-k or top-p, scratch in global memory", 1.2f, 1.0f, 1.0f, 0, 64, true},
    };
    for (const SampleCase &k : cases) test_sampler(k);
    test_embed_rows<float>(), test_embed_rows<__nv_bfloat16>();
    test_rmsnorm_rows<float>(), test_rmsnorm_rows<__nv_bfloat16>();
    test_conv<float>(2, 37, 4), test_conv<float>(1, 2, 3), test_conv<__nv_bfloat16>(2, 37, 4);
    test_conv<float>(5, 1, 4), test_conv<__nv_bfloat16>(5, 1, 3);
    test_dt_rows<float>(), test_dt_rows<__nv_bfloat16>();
    test_scan<float>(2, 600, 16), test_scan<float>(1, 300, 40), test_scan<float>(1, 7, 12);
    test_scan<__nv_bfloat16>(1, 600, 16);
    test_scan<float>(9, 1, 16), test_scan<float>(9, 1, 5), test_scan<float>(9, 1, 64), test_scan<__nv_bfloat16>(9, 1, 12);
    test_append_history();
    test_argmax_rows();
    test_transpose<uint16_t>(), test_transpose<uint32_t>();
    free_all();
    test_engines();
}

/* ----------------------------------------------------------------------------------------
 * Micro-benchmarks at a 1.4b model's shape (d_model 2048, d_inner 4096, d_state 16, dt_rank
 * 128, bf16 weights): a prompt chunk of 4096 tokens, a batch of 1024. bytes: what the launch
 * reads and writes once each (data reread from L2 not counted). */

/* A launch's time and its bytes a second; a launch that failed (the last error, which the
 * timing's successful calls leave in place) ends the program. */
static void bench(const char *name, double bytes, double read_bandwidth, const std::function<void()> &launch,
                  cudaStream_t stream = 0) {
    const double seconds = time_us(stream, launch) * 1e-6;
    cuda_check(cudaGetLastError(), name, __FILE__, __LINE__);
    const double gbs = bytes / seconds / 1e9;
    printf("bench %-52s %9.1f us/launch %8.1f GB/s (%5.1f%% of read bandwidth)\n", name, seconds * 1e6, gbs,
           100.0 * gbs / (read_bandwidth / 1e9));
}

/* The decode step (forward_token, a greedy graph replay) of the 1.4b shape, on random weights
 * (every layer the same values: the step's speed does not depend on them). bytes: every weight
 * once (the head is the tied embedding) and the state read and written. */
static void bench_decode_step(double read_bandwidth) {
    const Config c = mamba1_config(48, 2048, 4096, 16, 4, 128, 50280, 50280, DTYPE_BF16, 1);
    RandomModel m;
    random_model(m, c, 1);
    char err[256] = "";
    GpuEngine *g = gpu_engine_create(&m.c, &m.w, 1, err, sizeof err);
    if (!g) {
        printf("bench forward_token: no engine: %s\n", err);
        failed++;
        return;
    }
    gpu_engine_feed(g, 1, 0);
    const double state = 2.0 * c.n_layer * c.d_inner * (g->kcp + g->nsp) * sizeof(float);
    bench("forward_token (1.4b bf16, one decode step)", (double)g->weight_bytes + state, read_bandwidth, [g] {
        CUDA_CHECK(cudaGraphLaunch(g->decode_graph[g->parity], g->stream));
        g->parity ^= 1;
    }, g->stream);
    gpu_engine_free(g);
}

static void run_benchmarks(const cudaDeviceProp &prop) {
    typedef __nv_bfloat16 T;
    const int dm = 2048, di = 4096, ns = 16, dt_rank = 128, vocab = 50280, L = PREFILL_CHUNK, B = MAX_BATCH;
    const double bw = measure_read_bandwidth(0, prop.multiProcessorCount);
    printf("bench read bandwidth (read_probe): %.1f GB/s\n", bw / 1e9);
    const ParamLayout pl = param_layout(4, ns);
    const float *params = to_device(random_params(di, 4, ns, pl));
    std::vector<int> slot_ids(B);
    for (int i = 0; i < B; i++) slot_ids[i] = i;
    const int *slots = to_device(slot_ids);
    float *conv_state = device_zeros<float>((size_t)(B + 1) * 2 * di * 4);
    float *ssm_state = device_zeros<float>((size_t)(B + 1) * 2 * di * ns);
    const PassArgs chunk = pass_args(1, L, di, 4, ns, dt_rank, slots, params, conv_state, ssm_state);
    const PassArgs batch = pass_args(B, 1, di, 4, ns, dt_rank, slots, params, conv_state, ssm_state);
    const size_t big = (size_t)L * 2 * di;   /* the largest activation: XZ */
    float *F0 = device_zeros<float>(big), *F1 = device_zeros<float>(big), *F2 = device_zeros<float>(big);
    float *F3 = device_zeros<float>((size_t)L * chunk.Rp);
    T *H0 = (T *)device_zeros<uint16_t>(big), *H1 = (T *)device_zeros<uint16_t>(big);
    int *tokens = device_zeros<int>(L);
    const double f = 4, h = 2, rows_dm = (double)L * dm, act = (double)L * di;

    bench("embed_rows (4096 rows)", rows_dm * (h + f), bw, [&] { embed_rows<T><<<L, 256>>>(H0, tokens, dm, F0); });
    bench("rmsnorm_rows (4096 rows)", rows_dm * (f + h), bw,
          [&] { rmsnorm_rows<T><<<L, 256>>>(F0, params, dm, dm, 1e-5f, H0); });
    bench("conv_tokens (4096 tokens)", act * (f + f + h), bw, [&] {
        conv_tokens<T><<<dim3((L / CONV_ITEMS + 255) / 256, di, 1), 256>>>(chunk, F0, F1, H0);
    });
    bench("conv_rows (1024 rows)", (double)B * di * (4 * f + f + f + h), bw,
          [&] { conv_rows<T><<<(B * di + 255) / 256, 256>>>(batch, F0, F1, H0); });
    bench("conv_state_update (1024 rows)", (double)B * di * (4 * f + f + 4 * f), bw,
          [&] { conv_state_update<<<(B * di + 255) / 256, 256>>>(batch, F0); });
    bench("dt_rows (4096 rows)", (double)L * dt_rank * (f + h), bw,
          [&] { dt_rows<T><<<dim3((L + 255) / 256, chunk.rkp), 256>>>(chunk, F3, H0); });
    CUDA_CHECK(cudaFuncSetAttribute((const void *)selective_scan<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)scan_smem_bytes(ns)));
    bench("selective_scan (4096 tokens)", act * (f + f + f + h) + (double)L * 2 * ns * f, bw, [&] {
        selective_scan<T><<<dim3(di / SCAN_WARPS, 1), SCAN_WARPS * 32, scan_smem_bytes(ns)>>>(chunk, F1, F2, F0, F3, H1);
    });
    bench("scan_step (1024 rows)", (double)B * di * (2 * ns * f + 4 * f + h) + (double)B * 2 * ns * f, bw, [&] {
        const float *delta = F1, *u = F2, *xz = F0, *dbc = F3;
        void *args[] = {(void *)&batch, &delta, &u, &xz, &dbc, &H1};
        CUDA_CHECK(cudaLaunchKernel(scan_step_for<T>(ns), dim3((B * di * SCAN_LANES + 255) / 256), dim3(256), args, 0, 0));
    });
    bench("transpose_into 16-bit (4096 x 2048)", (double)di * dm * 2 * h, bw, [&] {
        transpose_into<uint16_t><<<dim3(dm / 32, di / 32), dim3(32, 8)>>>((const uint16_t *)H0, di, dm, (uint16_t *)H1, di);
    });
    int *history = device_zeros<int>(HISTORY_CAP);
    unsigned long long *n_run = device_zeros<unsigned long long>(1);
    bench("append_history (4096 ids)", (double)L * 2 * 4, bw, [&] { append_history<<<1, 1024>>>(tokens, L, history, n_run); });
    float *logits = to_device(randoms((size_t)B * vocab, -5.0f, 5.0f));
    bench("argmax_rows (1024 rows of 50280)", (double)B * vocab * f, bw,
          [&] { argmax_rows<<<B, 256>>>(logits, vocab, vocab, tokens); });
    unsigned long long *rng = to_device(std::vector<unsigned long long>{1});
    const SampleArgs s{logits, NULL, vocab, history, n_run, 0.8f, 0.95f, 1.1f, 40, 64, rng, tokens};
    const size_t smem = vocab * sizeof(float);
    CUDA_CHECK(cudaFuncSetAttribute((const void *)sample_token, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    bench("sample_token (50280, T 0.8, top-k 40, top-p 0.95)", vocab * f, bw,
          [&] { sample_token<<<1, SAMPLE_THREADS, smem>>>(s); });
    CUDA_CHECK(cudaDeviceSynchronize());
    free_all();
    bench_decode_step(bw);
}

int main(int argc, char **argv) {
    cudaDeviceProp prop;
    if (!open_device("test_kernels", &prop)) return 1;
    seed_uniform(0x2545F4914F6CDD1Dull);
    run_tests();
    if (bench_wanted(argc, argv)) run_benchmarks(prop);
    return summary();
}
