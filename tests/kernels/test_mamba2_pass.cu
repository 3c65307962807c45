/* tests/kernels/test_mamba2_pass.cu: Mamba-2's pass over many rows (mamba2_pass.cu) on small
 * random models against a plain double-precision CPU forward pass written here, token by token
 * with the recurrence (not the SSD algorithm): the prompt pass (several lengths, a length not a
 * multiple of the chunk, L = 1 through the SSD path, passes that continue each other, groups,
 * odd d_state and head_dim, time-step limits), the state it leaves (then a batched step from
 * it), and the batched step (sequences in slots out of order, a padded batch class, the CUDA
 * graph). One PASS/FAIL line each. Then a micro-benchmark of one layer at mamba2-2.7b's shape,
 * L = 2048, bf16: the SSD part step by step, beside the projections' FLOP/s. A unity build (the
 * engine's files are included, so their static kernels and steps are in reach); the engine is
 * built here from the layout gpu_internal.cuh documents, not by mamba2.cu's setup, so that the
 * pass is tested alone. Exits non-zero on any FAIL; `--no-bench` skips the benchmark. Needs
 * cuBLAS at run time (tests/cuda_env.sh finds it). */
#include "kernels.cu"
#include "prefill.cu"
#include "mamba2.cu"
#include "mamba2_pass.cu"
#include "gpu_bench.cu"

#include "kernel_test.cuh"

/* ----------------------------------------------------------------------------------------
 * A random Mamba-2 model: the values the engine sees (matrices rounded to the dtype), for the
 * reference; then an engine over a copy of them in the device layout. */

struct Shape {
    int n_layer, dm, nh, hd, ng, ns, d_conv, vocab;
    float dt_lo, dt_hi;
};

struct RefLayer {
    std::vector<float> norm, in_proj, conv_w, conv_b, dt_bias, A, D, gate, out_proj;   /* A = -exp(A_log) */
};

struct RefModel {
    Shape s;
    DType dtype;
    int di, gs, conv_dim, in_rows;
    float eps;
    std::vector<float> emb, norm_f;   /* the LM head is the embedding (tied) */
    std::vector<RefLayer> layers;
};

/* Scales that keep the activations near 1; Δ about 0.03-0.3 and A in [-15, -1], so that decays
 * over a chunk range from nearly 1 to nearly 0. */
static RefModel random_model(const Shape &s, DType t) {
    RefModel m;
    m.s = s, m.dtype = t, m.eps = 1e-5f;
    m.di = s.nh * s.hd, m.gs = m.di / s.ng, m.conv_dim = m.di + 2 * s.ng * s.ns, m.in_rows = m.di + m.conv_dim + s.nh;
    const float sm = 1.0f / sqrtf((float)s.dm), si = 1.0f / sqrtf((float)m.di);
    m.emb = randoms((size_t)s.vocab * s.dm, -0.3f, 0.3f, t);
    m.norm_f = randoms(s.dm, 0.8f, 1.2f);
    for (int l = 0; l < s.n_layer; l++) {
        RefLayer L;
        L.norm = randoms(s.dm, 0.8f, 1.2f);
        L.in_proj = randoms((size_t)m.in_rows * s.dm, -sm, sm, t);
        L.conv_w = randoms((size_t)m.conv_dim * s.d_conv, -0.5f, 0.5f), L.conv_b = randoms(m.conv_dim, -0.2f, 0.2f);
        L.dt_bias = randoms(s.nh, -3.5f, -1.0f), L.D = randoms(s.nh, 0.5f, 1.5f), L.gate = randoms(m.di, 0.5f, 1.5f);
        L.A.resize(s.nh);
        for (float &a : L.A) a = -expf(uniform(0.0f, 2.7f));
        L.out_proj = randoms((size_t)s.dm * m.di, -si, si, t);
        m.layers.push_back(L);
    }
    return m;
}

/* A sequence's state: conv [layer][conv channel][d_conv] (oldest input first), SSM [layer][di][ns]. */
struct RefState {
    std::vector<double> conv, ssm;
};

static std::vector<double> rmsnorm_ref(const std::vector<double> &x, const float *w, double eps) {
    double ss = 0.0;
    for (double v : x) ss += v * v;
    const double scale = 1.0 / sqrt(ss / x.size() + eps);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); i++) y[i] = w[i] * (x[i] * scale);
    return y;
}

/* One Mamba-2 block on the residual x, one recurrent step from and into layer l's state. */
static void block_ref(const RefModel &m, int l, RefState &st, std::vector<double> &x) {
    const RefLayer &W = m.layers[l];
    const int dm = m.s.dm, di = m.di, ns = m.s.ns, K = m.s.d_conv, ng = m.s.ng, hd = m.s.hd, hpg = m.s.nh / ng;
    const std::vector<double> xn = rmsnorm_ref(x, W.norm.data(), m.eps);
    std::vector<double> proj(m.in_rows, 0.0), u(m.conv_dim), y(di);
    for (int r = 0; r < m.in_rows; r++)
        for (int i = 0; i < dm; i++) proj[r] += (double)W.in_proj[(size_t)r * dm + i] * xn[i];
    for (int j = 0; j < m.conv_dim; j++) {   /* the window shifts in the new input */
        double *win = &st.conv[((size_t)l * m.conv_dim + j) * K], acc = W.conv_b[j];
        for (int k = 0; k + 1 < K; k++) win[k] = win[k + 1];
        win[K - 1] = proj[di + j];
        for (int k = 0; k < K; k++) acc += W.conv_w[(size_t)j * K + k] * win[k];
        u[j] = silu_ref(acc);
    }
    for (int h = 0; h < m.s.nh; h++) {
        const int g = h / hpg;
        const double delta = fmin(fmax(softplus_ref(proj[di + m.conv_dim + h] + W.dt_bias[h]), m.s.dt_lo), m.s.dt_hi);
        const double decay = exp(delta * W.A[h]);
        for (int p = 0; p < hd; p++) {
            const int c = h * hd + p;
            double *S = &st.ssm[((size_t)l * di + c) * ns], acc = 0.0;
            for (int n = 0; n < ns; n++) {
                S[n] = decay * S[n] + delta * u[c] * u[di + g * ns + n];
                acc += S[n] * u[di + ng * ns + g * ns + n];
            }
            y[c] = (acc + W.D[h] * u[c]) * silu_ref(proj[c]);
        }
    }
    for (int g = 0; g < ng; g++) {   /* the gated norm per group */
        double ss = 0.0;
        for (int c = g * m.gs; c < (g + 1) * m.gs; c++) ss += y[c] * y[c];
        const double scale = 1.0 / sqrt(ss / m.gs + m.eps);
        for (int c = g * m.gs; c < (g + 1) * m.gs; c++) y[c] = W.gate[c] * (y[c] * scale);
    }
    for (int i = 0; i < dm; i++) {
        double acc = 0.0;
        for (int c = 0; c < di; c++) acc += (double)W.out_proj[(size_t)i * di + c] * y[c];
        x[i] += acc;
    }
}

/* One token through the model: the residual after the last layer into x, the logits. */
static void forward_ref(const RefModel &m, RefState &st, int token, std::vector<double> &x, std::vector<double> &logits) {
    const int dm = m.s.dm;
    x.assign(m.emb.begin() + (size_t)token * dm, m.emb.begin() + (size_t)(token + 1) * dm);
    for (int l = 0; l < m.s.n_layer; l++) block_ref(m, l, st, x);
    const std::vector<double> xn = rmsnorm_ref(x, m.norm_f.data(), m.eps);
    logits.assign(m.s.vocab, 0.0);
    for (int v = 0; v < m.s.vocab; v++)
        for (int i = 0; i < dm; i++) logits[v] += (double)m.emb[(size_t)v * dm + i] * xn[i];
}

/* The engine: a GpuEngine with what the passes read (prefill.cu's pass buffers and cuBLAS, the
 * layout of StepArgs), its weights and its slots' states (random: every pass starts from a state). */
static const GpuArch test_arch = {ARCH_MAMBA2, NULL, NULL, NULL, NULL, mamba2_run_pass, mamba2_pass_scratch};

struct TestEngine {
    GpuEngine *g;
    char *weights;
    std::vector<float> conv0, ssm0;   /* the states the engine started from, every slot */
};

static TestEngine make_engine(const RefModel &m, int max_batch) {
    TestEngine e;
    GpuEngine *g = e.g = (GpuEngine *)calloc(1, sizeof(GpuEngine));
    const Shape &s = m.s;
    Config &c = g->c;
    c.arch = ARCH_MAMBA2, c.n_layer = s.n_layer, c.d_model = s.dm, c.d_inner = m.di, c.d_state = s.ns, c.d_conv = s.d_conv;
    c.vocab_size = c.padded_vocab = s.vocab, c.norm_eps = m.eps, c.dtype = m.dtype, c.tied_head = 1;
    c.n_heads = s.nh, c.head_dim = s.hd, c.n_groups = s.ng, c.dt_limit_lo = s.dt_lo, c.dt_limit_hi = s.dt_hi;
    g->arch = &test_arch, g->max_batch = max_batch;
    g->dmp = round_up(s.dm, PAD), g->kcp = round_up(s.d_conv, 4), g->nsp = round_up(s.ns, 4);
    CUDA_CHECK(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking));
    StepArgs &a = g->step;
    a.n_layer = s.n_layer, a.dm = s.dm, a.dmp = g->dmp, a.di = m.di, a.ns = s.ns, a.nsp = g->nsp, a.d_conv = s.d_conv;
    a.kcp = g->kcp, a.vocab = s.vocab, a.eps = m.eps, a.nh = s.nh, a.hd = s.hd, a.ng = s.ng, a.group_size = m.gs;
    a.conv_dim = m.conv_dim, a.in_rows = m.in_rows, a.dt_lo = s.dt_lo, a.dt_hi = s.dt_hi;
    a.pl.conv_b = g->kcp, a.pl.dt_bias = g->kcp + 1, a.pl.D = g->kcp + 2, a.pl.A = g->kcp + 3, a.pl.gate = g->kcp + 4;
    a.pl.stride = round_up(a.pl.gate + 1, 4);

    /* the weights: the embedding (also the head), the final norm, then the layers, each alike */
    const DType t = m.dtype;
    const size_t es = dtype_size(t), dmp = g->dmp;
    size_t top = 0;
    const size_t emb = carve(&top, (size_t)s.vocab * dmp * es), norm_f = carve(&top, dmp * 4);
    const size_t layer0 = top;
    LayerOffsets &lo = a.lo;
    lo = LayerOffsets{};
    lo.norm = carve(&top, dmp * 4) - layer0, lo.in_proj = carve(&top, (size_t)m.in_rows * dmp * es) - layer0;
    lo.params = carve(&top, (size_t)m.conv_dim * a.pl.stride * 4) - layer0, lo.out_proj_t = carve(&top, (size_t)m.di * dmp * es) - layer0;
    a.layer_stride = top - layer0;
    std::vector<uint8_t> bytes(layer0 + s.n_layer * a.layer_stride, 0);
    for (int v = 0; v < s.vocab; v++)
        for (int i = 0; i < s.dm; i++) put(bytes, emb, (size_t)v * dmp + i, m.emb[(size_t)v * s.dm + i], t);
    for (int i = 0; i < s.dm; i++) put(bytes, norm_f, i, m.norm_f[i], DTYPE_F32);
    for (int l = 0; l < s.n_layer; l++) {
        const RefLayer &W = m.layers[l];
        const size_t base = layer0 + l * a.layer_stride;
        for (int i = 0; i < s.dm; i++) put(bytes, base + lo.norm, i, W.norm[i], DTYPE_F32);
        for (int r = 0; r < m.in_rows; r++)
            for (int i = 0; i < s.dm; i++) put(bytes, base + lo.in_proj, (size_t)r * dmp + i, W.in_proj[(size_t)r * s.dm + i], t);
        for (int j = 0; j < m.conv_dim; j++) {
            const size_t rec = (size_t)j * a.pl.stride;
            for (int k = 0; k < s.d_conv; k++) put(bytes, base + lo.params, rec + k, W.conv_w[(size_t)j * s.d_conv + k], DTYPE_F32);
            put(bytes, base + lo.params, rec + a.pl.conv_b, W.conv_b[j], DTYPE_F32);
            if (j >= m.di) continue;
            const int h = j / s.hd;
            put(bytes, base + lo.params, rec + a.pl.dt_bias, W.dt_bias[h], DTYPE_F32);
            put(bytes, base + lo.params, rec + a.pl.D, W.D[h], DTYPE_F32);
            put(bytes, base + lo.params, rec + a.pl.A, W.A[h], DTYPE_F32);
            put(bytes, base + lo.params, rec + a.pl.gate, W.gate[j], DTYPE_F32);
        }
        for (int c2 = 0; c2 < m.di; c2++)
            for (int i = 0; i < s.dm; i++)
                put(bytes, base + lo.out_proj_t, (size_t)c2 * dmp + i, W.out_proj[(size_t)i * m.di + c2], t);
    }
    e.weights = (char *)gpu_alloc(bytes.size());
    CUDA_CHECK(cudaMemcpy(e.weights, bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
    a.layer0 = e.weights + layer0, a.embedding = e.weights + emb, a.head = a.embedding;
    a.norm_f = (const float *)(e.weights + norm_f);

    /* every slot (and the scratch slot the batch padding uses) starts from a random state */
    g->conv_slot = (size_t)s.n_layer * m.conv_dim * g->kcp, g->ssm_slot = (size_t)s.n_layer * m.di * g->nsp;
    const size_t slots = max_batch + 1;
    e.conv0 = randoms(slots * g->conv_slot, -1.0f, 1.0f), e.ssm0 = randoms(slots * g->ssm_slot, -0.5f, 0.5f);
    a.conv_state = (float *)gpu_alloc(e.conv0.size() * 4), a.ssm_state = (float *)gpu_alloc(e.ssm0.size() * 4);
    CUDA_CHECK(cudaMemcpy(a.conv_state, e.conv0.data(), e.conv0.size() * 4, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(a.ssm_state, e.ssm0.data(), e.ssm0.size() * 4, cudaMemcpyHostToDevice));

    char err[256] = "";
    if (!blas_load(&g->blas, err, sizeof err)) {
        fprintf(stderr, "test_mamba2_pass: %s\n", err);
        exit(1);
    }
    open_passes(g, plan_pass_buffers(g));
    CUDA_CHECK(cudaDeviceSynchronize());   /* the copies from pageable memory have landed */
    return e;
}

/* A pass's token ids and its one sequence's slot, in the engine's stream (whose work is done). */
static void stage_prompt(GpuEngine *g, const std::vector<int> &tokens, const int *slot) {
    CUDA_CHECK(cudaMemcpyAsync(g->pass.tokens, tokens.data(), tokens.size() * sizeof(int), cudaMemcpyHostToDevice, g->stream));
    CUDA_CHECK(cudaMemcpyAsync(g->pass.slots, slot, sizeof(int), cudaMemcpyHostToDevice, g->stream));
    CUDA_CHECK(cudaStreamSynchronize(g->stream));
}

static void free_engine(TestEngine &e) {
    GpuEngine *g = e.g;
    close_passes(g);
    CUDA_CHECK(cudaFree(e.weights));
    CUDA_CHECK(cudaFree(g->step.conv_state));
    CUDA_CHECK(cudaFree(g->step.ssm_state));
    CUDA_CHECK(cudaStreamDestroy(g->stream));
    dlclose(g->blas.lib);
    free(g);
}

/* The reference state of a slot, from the engine's starting state. */
static RefState ref_state_of(const RefModel &m, const TestEngine &e, int slot) {
    const GpuEngine *g = e.g;
    const int K = m.s.d_conv, ns = m.s.ns;
    RefState st;
    st.conv.resize((size_t)m.s.n_layer * m.conv_dim * K), st.ssm.resize((size_t)m.s.n_layer * m.di * ns);
    for (size_t j = 0; j < (size_t)m.s.n_layer * m.conv_dim; j++)
        for (int k = 0; k < K; k++) st.conv[j * K + k] = e.conv0[slot * g->conv_slot + j * g->kcp + k];
    for (size_t c = 0; c < (size_t)m.s.n_layer * m.di; c++)
        for (int n = 0; n < ns; n++) st.ssm[c * ns + n] = e.ssm0[slot * g->ssm_slot + c * g->nsp + n];
    return st;
}

/* How far the engine's states of `slots` are from the references; and whether every other slot
 * (but the batch's scratch slot, `spare`) still holds its starting state exactly. */
static double state_err(const RefModel &m, const TestEngine &e, const std::vector<int> &slots,
                        const std::vector<RefState> &want, int spare, bool *others_kept) {
    const GpuEngine *g = e.g;
    const std::vector<float> conv = to_host(g->step.conv_state, e.conv0.size()), ssm = to_host(g->step.ssm_state, e.ssm0.size());
    const int K = m.s.d_conv, ns = m.s.ns;
    double err = 0.0;
    for (size_t i = 0; i < slots.size(); i++) {
        const int s = slots[i];
        for (size_t j = 0; j < (size_t)m.s.n_layer * m.conv_dim; j++)
            for (int k = 0; k < K; k++) err = fmax(err, rel_err(conv[s * g->conv_slot + j * g->kcp + k], want[i].conv[j * K + k]));
        for (size_t c = 0; c < (size_t)m.s.n_layer * m.di; c++)
            for (int n = 0; n < ns; n++) err = fmax(err, rel_err(ssm[s * g->ssm_slot + c * g->nsp + n], want[i].ssm[c * ns + n]));
    }
    *others_kept = true;
    for (int s = 0; s <= g->max_batch; s++) {
        bool used = s == spare;
        for (int u : slots) used |= u == s;
        if (used) continue;
        *others_kept &= memcmp(&conv[s * g->conv_slot], &e.conv0[s * g->conv_slot], g->conv_slot * 4) == 0;
        *others_kept &= memcmp(&ssm[s * g->ssm_slot], &e.ssm0[s * g->ssm_slot], g->ssm_slot * 4) == 0;
    }
    return err;
}

/* The passes' tolerances. fp32: the SSD sums in another order than the recurrence (and cuBLAS's
 * products), about 1e-6; 16-bit: the pass rounds the products' inputs (xn, x, B, C, M, the chunk
 * states, y) to the dtype; the worst cases measured on the H200 were 3.7e-2 (bf16, a batched step
 * after a 1,000-token prompt) and 5.3e-3 (f16), on these random models' logits of size ~1. */
static double tolerance(DType t) { return t == DTYPE_F32 ? 1e-4 : t == DTYPE_F16 ? 1e-2 : 5e-2; }

/* ----------------------------------------------------------------------------------------
 * The tests. */

/* Prompt passes of the given lengths, one after the other, in slot 2 of 4, all by the SSD path
 * (mamba2_run_pass's for L > 1; L = 1, which mamba2_run_pass gives the recurrent step, through
 * enqueue_mamba2_pass's SSD branch); each pass's residual after the last layer (every row) and
 * logits (when the pass's rows fit the logit buffer) against the reference; the state they
 * leave; then a batched step from it. */
template <typename T>
static void test_prompt(const char *label, const Shape &s, DType t, const std::vector<int> &lengths) {
    const RefModel m = random_model(s, t);
    TestEngine e = make_engine(m, 4);
    GpuEngine *g = e.g;
    const int slot = 2, dm = s.dm, dmp = g->dmp, V = s.vocab;
    std::vector<RefState> want(1, ref_state_of(m, e, slot));
    std::vector<double> x, logits;
    double err_x = 0.0, err_logits = 0.0;
    int fed = 0, logit_rows = 0;
    char lens[128] = "";
    for (int L : lengths) {
        snprintf(lens + strlen(lens), sizeof lens - strlen(lens), "%s%d", lens[0] ? "+" : "", L);
        std::vector<int> tokens(L);
        for (int i = 0; i < L; i++) tokens[i] = token_at(fed + i, V);
        stage_prompt(g, tokens, &slot);
        const bool with_logits = L <= g->pass.logit_rows;
        if (L > 1) mamba2_run_pass(g, 1, L, with_logits);
        else enqueue_mamba2_pass<T>(g, 1, 1, with_logits, true);
        logit_rows += with_logits ? L : 0;
        const std::vector<float> X = to_host(g->pass.X, (size_t)L * dmp);
        const std::vector<float> got = with_logits ? to_host(g->pass.logits, (size_t)L * V) : std::vector<float>();
        for (int i = 0; i < L; i++) {
            forward_ref(m, want[0], tokens[i], x, logits);
            for (int k = 0; k < dm; k++) err_x = fmax(err_x, rel_err(X[(size_t)i * dmp + k], x[k]));
            if (with_logits)
                for (int v = 0; v < V; v++) err_logits = fmax(err_logits, rel_err(got[(size_t)i * V + v], logits[v]));
        }
        fed += L;
    }
    const double tol = tolerance(t);
    char name[256];
    snprintf(name, sizeof name, "SSD prompt %s %s, L %s: residual after the last layer = CPU recurrence", dtype_label(t), label, lens);
    report(name, err_x, tol);
    if (logit_rows > 0) {
        snprintf(name, sizeof name, "SSD prompt %s %s, L %s: logits of %d rows = CPU", dtype_label(t), label, lens, logit_rows);
        report(name, err_logits, tol);
    }
    bool others_kept;
    const double err_state = state_err(m, e, {slot}, want, -1, &others_kept);
    snprintf(name, sizeof name, "SSD prompt %s %s, L %s: the slot's final conv and SSM state = CPU", dtype_label(t), label, lens);
    report(name, err_state, tol);
    snprintf(name, sizeof name, "SSD prompt %s %s, L %s: the other slots untouched (err: 1 if not)", dtype_label(t), label, lens);
    report(name, others_kept ? 0 : 1, 0);

    const int next = token_at(fed, V);
    const float *out = gpu_engine_forward_batch(g, 1, &slot, &next);
    forward_ref(m, want[0], next, x, logits);
    double err_next = 0.0;
    for (int v = 0; v < V; v++) err_next = fmax(err_next, rel_err(out[v], logits[v]));
    snprintf(name, sizeof name, "batched step %s %s after the prompt (L %s): logits = CPU from the state it left", dtype_label(t),
             label, lens);
    report(name, err_next, tol);
    free_engine(e);
}

/* Five sequences in slots 6, 1, 4, 0, 3 of 8 (a batch class of 8: three rows padded into the
 * scratch slot), four steps through gpu_engine_forward_batch (stage_batch, the captured graph);
 * then one sequence alone (class 1). Logits and states against the reference. */
template <typename T>
static void test_batch(const char *label, const Shape &s, DType t) {
    const RefModel m = random_model(s, t);
    TestEngine e = make_engine(m, 8);
    GpuEngine *g = e.g;
    const std::vector<int> slots = {6, 1, 4, 0, 3};
    const int n = (int)slots.size(), V = s.vocab;
    std::vector<RefState> want;
    for (int slot : slots) want.push_back(ref_state_of(m, e, slot));
    std::vector<double> x, logits;
    double err = 0.0;
    for (int step = 0; step < 4; step++) {
        std::vector<int> tokens(n);
        for (int b = 0; b < n; b++) tokens[b] = token_at(100 * b + step, V);
        const float *out = gpu_engine_forward_batch(g, n, slots.data(), tokens.data());
        for (int b = 0; b < n; b++) {
            forward_ref(m, want[b], tokens[b], x, logits);
            for (int v = 0; v < V; v++) err = fmax(err, rel_err(out[(size_t)b * V + v], logits[v]));
        }
    }
    const int alone = token_at(999, V);
    const float *out = gpu_engine_forward_batch(g, 1, &slots[2], &alone);
    forward_ref(m, want[2], alone, x, logits);
    for (int v = 0; v < V; v++) err = fmax(err, rel_err(out[v], logits[v]));
    const double tol = tolerance(t);
    char name[256];
    snprintf(name, sizeof name, "batched step %s %s: 5 sequences (slots 6, 1, 4, 0, 3) x 4 steps, then one alone: logits = CPU",
             dtype_label(t), label);
    report(name, err, tol);
    bool others_kept;
    const double err_state = state_err(m, e, slots, want, g->max_batch, &others_kept);
    snprintf(name, sizeof name, "batched step %s %s: the sequences' conv and SSM states = CPU", dtype_label(t), label);
    report(name, err_state, tol);
    snprintf(name, sizeof name, "batched step %s %s: the slots of no sequence untouched (err: 1 if not)", dtype_label(t), label);
    report(name, others_kept ? 0 : 1, 0);
    free_engine(e);
}

/* Shapes: groups of several heads (ng 3, 2), d_state 12, 16 and 5 (padded to 8), head_dim 16, 8 and
 * 12, d_conv 4, 3 and 2, d_model not a multiple of 8, time-step limits that clamp; and the
 * published models' d_state 128 and head_dim 64 (several tiles of the state passing). */
static void run_tests() {
    const float inf = INFINITY;
    const Shape A = {2, 100, 6, 16, 3, 12, 4, 300, 0.0f, inf};
    const Shape B = {2, 70, 10, 8, 2, 16, 3, 200, 0.02f, 0.2f};
    const Shape C = {1, 256, 8, 64, 1, 128, 4, 256, 0.0f, inf};
    const Shape D = {1, 48, 3, 12, 1, 5, 2, 100, 0.0f, inf};
    const char *a = "(ng 3, hd 16, ns 12, d_conv 4, d_model 100)", *b = "(ng 2, hd 8, ns 16, d_conv 3, dt in [0.02, 0.2])";
    const char *c = "(ng 1, hd 64, ns 128)", *d = "(hd 12, ns 5, d_conv 2)";
    test_prompt<float>(a, A, DTYPE_F32, {300});
    test_prompt<float>(a, A, DTYPE_F32, {1, 2, 1, 130});
    test_prompt<float>(a, A, DTYPE_F32, {4096});
    test_prompt<float>(b, B, DTYPE_F32, {150, 77});
    test_prompt<float>(c, C, DTYPE_F32, {257});
    test_prompt<float>(d, D, DTYPE_F32, {128, 3});
    test_prompt<__nv_bfloat16>(a, A, DTYPE_BF16, {300});
    test_prompt<__nv_bfloat16>(c, C, DTYPE_BF16, {1000});
    test_prompt<__half>(b, B, DTYPE_F16, {200});
    test_batch<float>(a, A, DTYPE_F32);
    test_batch<float>(b, B, DTYPE_F32);
    test_batch<float>(c, C, DTYPE_F32);
    test_batch<float>(d, D, DTYPE_F32);
    test_batch<__nv_bfloat16>(b, B, DTYPE_BF16);
    test_batch<__half>(c, C, DTYPE_F16);
}

/* ----------------------------------------------------------------------------------------
 * The benchmark: one layer of mamba2-2.7b's shape (d_model 2560, d_inner 5120, d_state 128,
 * head_dim 64, 80 heads, 1 group) on a 2048-token prompt in bf16: the layer, its SSD part (all
 * between the two projections) and each of its steps, beside the projections alone. */

static void run_benchmark() {
    typedef __nv_bfloat16 T;
    const Shape s = {1, 2560, 80, 64, 1, 128, 4, 256, 0.0f, INFINITY};
    const int L = 2048;
    const RefModel m = random_model(s, DTYPE_BF16);
    TestEngine e = make_engine(m, 1);
    GpuEngine *g = e.g;
    const StepArgs &a = g->step;
    std::vector<int> tokens(L);
    for (int i = 0; i < L; i++) tokens[i] = token_at(i, s.vocab);
    const int slot = 0;
    stage_prompt(g, tokens, &slot);
    Mamba2Buffers b;
    mamba2_buffers(g, g->pass.cap, g->pass.scratch, &b);
    Mamba2PassArgs p = mamba2_pass_args(g, 1, L);
    mamba2_bind_layer(g, b, 0, &p);
    embed_pass_rows(g, L);
    launch_gather_params(g, b);
    norm_pass_rows(g, L, (const float *)(a.layer0 + a.lo.norm));
    printf("bench mamba2 pass scratch at cap %d for this shape: %zu bytes\n", g->pass.cap, mamba2_pass_scratch(g, g->pass.cap));

    const char *base = a.layer0;
    const double proj_flops = 2.0 * L * (double)a.dm * (a.in_rows + a.di);
    const double in_us = time_us(g->stream, [&] {
        gemm(g, true, false, a.in_rows, L, a.dmp, base + a.lo.in_proj, a.dmp, g->pass.XN, a.dmp, b.ZX, a.in_rows, false);
    });
    const double out_us = time_us(g->stream, [&] {
        gemm(g, false, false, a.dmp, L, a.di, base + a.lo.out_proj_t, a.dmp, b.YN, a.di, g->pass.X, a.dmp, true);
    });
    const double ssd_us = time_us(g->stream, [&] { ssd_mixer<T>(g, p, b); });
    const double layer_us = time_us(g->stream, [&] { enqueue_mamba2_layer<T>(g, p, b, true); });
    const double proj_us = in_us + out_us;
    printf("bench mamba2-2.7b layer, L %d, bf16: %.1f us (norm, projections, SSD part)\n", L, layer_us);
    printf("bench   projections: in_proj %.1f us + out_proj %.1f us = %.1f us, %.1f TFLOP/s\n", in_us, out_us, proj_us,
           proj_flops / proj_us * 1e-6);
    printf("bench   SSD part (conv .. gated norm): %.1f us = %.0f%% of the projections' time\n", ssd_us, 100.0 * ssd_us / proj_us);
    printf("bench   the layer at %.1f TFLOP/s counted as 2 x parameters x tokens (%.0f%% of the projections' rate)\n",
           proj_flops / layer_us * 1e-6, 100.0 * proj_us / layer_us);
    typedef void (*Step)(GpuEngine *, const Mamba2PassArgs &, const Mamba2Buffers &);
    const struct {
        const char *name;
        Step step;
    } steps[] = {
        {"ssd_chunk_decays", ssd_step_decays<T>},
        {"ssd_conv_tokens", ssd_step_conv<T>},
        {"cuBLAS G = C.B^T", ssd_step_cb<T>},
        {"ssd_intra_chunk_weights", ssd_step_weights<T>},
        {"cuBLAS YD = M.x", ssd_step_diagonal<T>},
        {"cuBLAS ST = XW^T.B", ssd_step_chunk_states<T>},
        {"ssd_pass_states", ssd_step_pass_states<T>},
        {"cuBLAS YO = C.S^T", ssd_step_entering_states<T>},
        {"mamba2_gated_norm_rows", ssd_step_gated_norm<T>},
    };
    for (const auto &st : steps) printf("bench     %-26s %8.1f us\n", st.name, time_us(g->stream, [&] { st.step(g, p, b); }));
    free_engine(e);
}

int main(int argc, char **argv) {
    cudaDeviceProp prop;
    if (!open_device("test_mamba2_pass", &prop)) return 1;
    seed_uniform(0x9E3779B97F4A7C15ull);
    run_tests();
    if (bench_wanted(argc, argv)) run_benchmark();
    return summary();
}
