/* kernels.cu: the CUDA engine for Mamba-1 and Falcon-Mamba decoding (the C API is gpu.h; Falcon-Mamba
 * is Mamba-1 with dt, B and C normalised after x_proj, NORM_DBC below): the decode step, the
 * sampler and the engine's life cycle. The passes over many rows are in prefill.cu, the
 * benchmarks in gpu_bench.cu; what they share is in gpu_internal.cuh and gpu_device.cuh.
 *
 * A decode step reads every weight once and does about two flops per weight, so its speed
 * limit is memory bandwidth. The whole step is ONE persistent kernel, forward_token: one block
 * per multiprocessor, all resident at once. Block b owns a fixed slice of the d_inner channels
 * (and of the LM-head rows) and does all the work of those channels, so a layer needs only two
 * grid-wide barriers:
 *
 *   IN phase   xn = RMSNorm(residual)                      every block, redundantly (d_model)
 *              (x, z) = in_proj rows of my channels · xn
 *              u = SiLU(causal conv1d step of x)           conv state of my channels
 *              dbc += x_projᵀ[my channels]ᵀ · u            split over blocks: atomic adds
 *   ── barrier: dbc = (dt, B, C) is complete
 *   SSM phase  Δ = softplus(dt_proj rows of my channels · dt + bias)
 *              h = exp(Δ·A)·h + Δ·B·u,  y = (C·h + D·u)·SiLU(z)   state read and written once
 *              residual += out_projᵀ[my channels]ᵀ · y     split over blocks: atomic adds
 *   ── barrier: the residual is complete
 *
 * and after the last layer the final RMSNorm and the LM head, with the greedy argmax fused in
 * (the last block to finish reduces the blocks' maxima).
 *
 * The weights a block reads do not depend on the data, only the arithmetic does. So one warp
 * of each block (the producer) streams the block's whole sequence of weight tiles, layer after
 * layer, into a ring of shared-memory slots with the bulk-copy engine (cp.async.bulk, an
 * mbarrier per slot), as far ahead as the ring allows, while the other fifteen warps (the
 * consumers) compute from shared memory and wait at the grid barriers. DRAM keeps streaming
 * through the dependent steps of a layer (x_proj → barrier → scan → out_proj → barrier), which
 * used to read almost nothing. The tiles are, per layer: the norm weight with the block's slices
 * of the conv and SSM state and of the per-channel parameters, then the block's rows of in_proj
 * (x then z), x_proj and out_proj (both stored transposed so that a block's slice is
 * contiguous) and dt_proj; after the layers the final norm and the block's LM-head rows.
 *
 * The sampler (temperature, top-k, top-p, repetition penalty) is one more kernel; the step and
 * the sampler are captured in CUDA graphs and replayed, reading the token id from device
 * memory.
 *
 * Many tokens at once take another path (prefill.cu): the prompt pass and the batched step run
 * layer by layer as cuBLAS products over all the rows with small kernels between them.
 *
 * The architecture (Config.arch) is dispatched in one place, the table arches[] below: a row
 * holds an architecture's setup, decode-step launch and pass over many rows. */
#include <dlfcn.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <vector>

#include "gpu_device.cuh"
#include "gpu_internal.cuh"
#include "gpu_step.cuh"

/* ----------------------------------------------------------------------------------------
 * The decode step: every layer, the final norm, the LM head and the greedy argmax. */

/* The producer warp's lane 0: every tile of the step, in the order the consumers use them. */
template <typename T>
__device__ void produce_step(const StepArgs &a, Ring &r, int c0, int nc, int r0, int r1) {
    const int es = sizeof(T), in_row = a.dmp * es;
    for (int l = 0; l < a.n_layer; l++) {
        const Layer<T> L(a, l);
        /* the first tile: norm weight, conv state, SSM state, per-channel parameters */
        const unsigned conv_bytes = nc * a.kcp * 4, ssm_bytes = nc * a.nsp * 4, param_bytes = nc * a.pl.stride * 4;
        char *dst = ring_begin(r, a.dmp * 4 + conv_bytes + ssm_bytes + param_bytes);
        ring_copy(r, dst, L.norm, a.dmp * 4);
        if (nc > 0) {
            ring_copy(r, dst + a.small_conv, a.conv_state + ((size_t)l * a.di + c0) * a.kcp, conv_bytes);
            ring_copy(r, dst + a.small_ssm, a.ssm_state + ((size_t)l * a.di + c0) * a.nsp, ssm_bytes);
            ring_copy(r, dst + a.small_params, L.params + (size_t)c0 * a.pl.stride, param_bytes);
        }
        r.t++;
        produce_rows(r, L.in_proj + (size_t)c0 * a.dmp, nc, in_row, a.rows_per_tile_in);
        produce_rows(r, L.in_proj + (size_t)(a.di + c0) * a.dmp, nc, in_row, a.rows_per_tile_in);
        produce_rows(r, L.x_proj_t + (size_t)c0 * a.Rp, nc, a.Rp * es, a.rows_per_tile_x);
        produce_rows(r, L.dt_proj + (size_t)c0 * a.rkp, nc, a.rkp * es, a.rows_per_tile_dt);
        produce_rows(r, L.out_proj_t + (size_t)c0 * a.dmp, nc, in_row, a.rows_per_tile_out);
    }
    produce_rows(r, a.norm_f, 1, a.dmp * 4, 1);
    produce_rows(r, static_cast<const T *>(a.head) + (size_t)r0 * a.dmp, r1 - r0, in_row, a.rows_per_tile_head);
}

/* IN phase, the layer's first tile: the block's slices of the conv state, the SSM state and
 * the per-channel parameters, kept in shared memory for the layer. */
__device__ __forceinline__ void keep_block_slices(const StepArgs &a, const char *first, int nc, float *conv, float *ssm,
                                                  float *prm) {
    for (int i = threadIdx.x; i < nc * a.kcp; i += CONSUMERS) conv[i] = reinterpret_cast<const float *>(first + a.small_conv)[i];
    for (int i = threadIdx.x; i < nc * a.nsp; i += CONSUMERS) ssm[i] = reinterpret_cast<const float *>(first + a.small_ssm)[i];
    for (int i = threadIdx.x; i < nc * a.pl.stride; i += CONSUMERS)
        prm[i] = reinterpret_cast<const float *>(first + a.small_params)[i];
}

/* The layer's sums start from zero: in_proj's (x, z), dt_proj's, x_proj's share. */
__device__ __forceinline__ void clear_sums(const StepArgs &a, int nc, float *rows, float *dtr, float *acc) {
    for (int j = threadIdx.x; j < 2 * nc; j += CONSUMERS) rows[j] = 0.0f;
    for (int j = threadIdx.x; j < nc; j += CONSUMERS) dtr[j] = 0.0f;
    for (int i = threadIdx.x; i < a.Rp; i += CONSUMERS) acc[i] = 0.0f;
}

/* xn = the layer's input normalized with its norm weight. Layer 0 reads the token's embedding
 * and starts the residual stream from it (written by one block, writes_resid). */
template <typename T>
__device__ __forceinline__ void normalize_input(const StepArgs &a, const float *normw, int l, int token, bool writes_resid,
                                                float *xn, float *red) {
    if (l == 0) {
        const T *e = static_cast<const T *>(a.embedding) + (size_t)token * a.dmp;
        if (writes_resid)
            for (int i = threadIdx.x; i < a.dmp; i += CONSUMERS) __stcg(a.resid + i, to_f32(e[i]));
        rmsnorm_into(xn, [&](int i) { return to_f32(e[i]); }, normw, a.dm, a.dmp, a.eps, red);
    } else {
        rmsnorm_into(xn, [&](int i) { return __ldcg(a.resid + i); }, normw, a.dm, a.dmp, a.eps, red);
    }
}

/* IN phase: the causal depthwise conv1d over the last d_conv inputs of each of my nc channels
 * (from c0; x in rows[0:nc], the window in conv), then SiLU, into u; the window shifted by x
 * goes back to layer l's conv state, and z (rows[nc:2nc]) to zg for the gate. */
__device__ __forceinline__ void conv_step(const StepArgs &a, int l, int c0, int nc, const float *prm, const float *conv,
                                          const float *rows, float *u, float *zg) {
    for (int j = threadIdx.x; j < nc; j += CONSUMERS) {
        const float *p = prm + j * a.pl.stride, *window = conv + j * a.kcp;
        float *saved = a.conv_state + ((size_t)l * a.di + c0 + j) * a.kcp;
        const float x = rows[j];
        float s = p[a.pl.conv_b];
        for (int k = 0; k + 1 < a.d_conv; k++) {
            const float v = window[k + 1];
            __stcg(saved + k, v);
            s += p[k] * v;
        }
        __stcg(saved + a.d_conv - 1, x);
        s += p[a.d_conv - 1] * x;
        u[j] = silu(s);
        zg[j] = rows[nc + j];
    }
}

/* Falcon-Mamba: dt (the low-rank part), B and C each divided by its RMS (no weight), in place.
 * Every block has the whole (dt, B, C) after the barrier, so each normalises its own copy: no
 * barrier more. */
__device__ __forceinline__ void normalize_dbc(const StepArgs &a, float *dbc, float *red) {
    const int begin[3] = {0, a.dt_rank, a.dt_rank + a.ns}, len[3] = {a.dt_rank, a.ns, a.ns};
    for (int s = 0; s < 3; s++) {
        float ss = 0.0f;
        for (int i = threadIdx.x; i < len[s]; i += CONSUMERS) ss += dbc[begin[s] + i] * dbc[begin[s] + i];
        const float scale = 1.0f / sqrtf(block_sum<CONSUMERS>(ss, red) / len[s] + a.mixer_eps);
        for (int i = threadIdx.x; i < len[s]; i += CONSUMERS) dbc[begin[s] + i] *= scale;
    }
    team_sync<CONSUMERS>();
}

/* SSM phase: (dt, B, C), complete since the barrier, into shared memory (dt zero-padded to rkp
 * for dt_proj; NORM_DBC: normalised first, Falcon-Mamba), and the accumulator cleared for
 * out_proj. */
template <bool NORM_DBC>
__device__ __forceinline__ void take_dbc(const StepArgs &a, const float *dbc_l, float *dbc, float *dtv, float *acc,
                                         float *red) {
    for (int i = threadIdx.x; i < a.Rp; i += CONSUMERS) {
        const float v = __ldcg(dbc_l + i);
        dbc[i] = v;
        if (!NORM_DBC && i < a.rkp) dtv[i] = i < a.dt_rank ? v : 0.0f;
    }
    for (int i = threadIdx.x; i < a.dmp; i += CONSUMERS) acc[i] = 0.0f;
    team_sync<CONSUMERS>();
    if constexpr (NORM_DBC) {
        normalize_dbc(a, dbc, red);
        for (int i = threadIdx.x; i < a.rkp; i += CONSUMERS) dtv[i] = i < a.dt_rank ? dbc[i] : 0.0f;
        team_sync<CONSUMERS>();
    }
}

/* SSM phase: the selective scan, one step, for my nc channels (from c0): a group of lanes per
 * channel, one lane per state. Δ = softplus(dt_proj · dt + bias), h = exp(Δ·A)·h + Δ·B·u
 * (written back to layer l's SSM state), y = (C·h + D·u)·SiLU(z) into yv. */
__device__ __forceinline__ void ssm_step(const StepArgs &a, int l, int c0, int nc, const float *prm, const float *ssm,
                                         const float *dbc, const float *dtr, const float *u, const float *zg, float *yv) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float *B = dbc + a.dt_rank, *C = B + a.ns;
    const int group = a.ns >= 32 ? 32 : (a.ns > 16 ? 32 : a.ns > 8 ? 16 : a.ns > 4 ? 8 : a.ns > 2 ? 4 : 2);
    const int per_warp = 32 / group, sub = lane / group, n0 = lane % group;
    for (int j = warp * per_warp + sub; j - sub < nc; j += CONSUMER_WARPS * per_warp) {
        const bool active = j < nc;
        const int jj = active ? j : 0;
        const float *p = prm + jj * a.pl.stride, *A = p + a.pl.A, *h = ssm + jj * a.nsp;
        const float delta = active ? softplus(dtr[jj] + p[a.pl.dt_bias]) : 0.0f, x = active ? u[jj] : 0.0f;
        float *saved = a.ssm_state + ((size_t)l * a.di + c0 + jj) * a.nsp;
        float y = 0.0f;
        for (int n = n0; active && n < a.ns; n += group) {
            /* discretize (zero-order hold on A, Euler on B) and step: h = exp(Δ·A)·h + Δ·B·x */
            const float hn = expf(delta * A[n]) * h[n] + delta * B[n] * x;
            __stcg(saved + n, hn);
            /* read out: y = C·h */
            y += hn * C[n];
        }
        for (int o = group / 2; o > 0; o >>= 1) y += __shfl_xor_sync(FULL_MASK, y, o);
        /* skip connection D·x, then the gate SiLU(z) */
        if (active && n0 == 0) yv[j] = (y + p[a.pl.D] * x) * silu(zg[j]);
    }
}

/* The step. Its shared memory after the ring holds the arrays below (their pointers are passed
 * to the phases one by one: a struct of them, tried, made the f32 kernel spill more). */
template <typename T, bool NORM_DBC>
__global__ void __launch_bounds__(THREADS, 1) forward_token(const StepArgs a) {
    extern __shared__ __align__(128) char smem[];
    __shared__ uint64_t full[RING_SLOTS], empty[RING_SLOTS];
    __shared__ unsigned ticket;
    float *sm = reinterpret_cast<float *>(smem + (size_t)a.n_slots * a.slot_bytes);
    float *xn = sm + a.off_xn;         /* [dmp] normalized input of a layer or of the head */
    float *rows = sm + a.off_rows;     /* in_proj outputs (x, z), then the head's logits */
    float *dtr = sm + a.off_dt;        /* [channels] dt_proj outputs */
    float *u = sm + a.off_u;           /* [channels] SiLU(conv(x)), the SSM input */
    float *zg = sm + a.off_z;          /* [channels] the gate input z */
    float *yv = sm + a.off_y;          /* [channels] SSM output, gated */
    float *dbc = sm + a.off_dbc;       /* [Rp] (dt, B, C) */
    float *dtv = sm + a.off_dtv;       /* [rkp] dt, zero-padded */
    float *acc = sm + a.off_acc;       /* [max(Rp, dmp)] this block's share of a split product */
    float *red = sm + a.off_red;       /* [2 × CONSUMER_WARPS] reductions (values, then ids) */
    float *part = sm + a.off_part;     /* ColumnSums' group sums */
    float *prm = sm + a.off_params;    /* [channels, stride] per-channel parameters of the layer */
    float *conv = sm + a.off_conv;     /* [channels, kcp] conv state of the layer */
    float *ssm = sm + a.off_ssm;       /* [channels, nsp] SSM state of the layer */
    int *redi = reinterpret_cast<int *>(red + CONSUMER_WARPS);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, b = blockIdx.x;
    const int c0 = min(a.di, b * a.channels_per_block), nc = min(a.di, c0 + a.channels_per_block) - c0;
    const int r0 = min(a.vocab, b * a.head_rows_per_block), r1 = min(a.vocab, r0 + a.head_rows_per_block);
    Ring ring{smem, full, empty, a.n_slots, a.slot_bytes, 0};

    if (tid == 0) {
        for (int s = 0; s < a.n_slots; s++) mbar_init(&full[s], 1), mbar_init(&empty[s], CONSUMER_WARPS);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (warp == PRODUCER_WARP) {
        if (lane == 0) produce_step<T>(a, ring, c0, nc, r0, r1);
        return;
    }

    const int token = *a.token_in;
    unsigned barriers = 0;
    if (b == 0 && tid == 0) a.history[*a.n_run % HISTORY_CAP] = token, *a.n_run += 1;

    for (int l = 0; l < a.n_layer; l++) {
        float *dbc_l = a.dbc + (size_t)l * a.Rp;

        /* ---- IN phase ---- */
        {
            const char *first = ring_wait(ring);
            keep_block_slices(a, first, nc, conv, ssm, prm);
            clear_sums(a, nc, rows, dtr, acc);
            normalize_input<T>(a, reinterpret_cast<const float *>(first), l, token, b == 0, xn, red);
            ring_release(ring);
        }
        /* (x, z) = W_in · xn for my channels: x in rows[0:nc], z in rows[nc:2nc] */
        consume_rows<T>(ring, nc, a.rows_per_tile_in, a.dmp, xn, rows);
        consume_rows<T>(ring, nc, a.rows_per_tile_in, a.dmp, xn, rows + nc);
        team_sync<CONSUMERS>();
        conv_step(a, l, c0, nc, prm, conv, rows, u, zg);
        team_sync<CONSUMERS>();
        /* x_proj: (dt, B, C) = W_x · u, split over the blocks by channel: dbc += W_x[:, mine] · u[mine] */
        consume_cols<T>(ring, nc, a.rows_per_tile_x, a.Rp, u, acc, part);
        add_block_share(dbc_l, acc, a.Rp, nc);
        grid_barrier(a.arrivals, ++barriers);

        /* ---- SSM phase ---- */
        take_dbc<NORM_DBC>(a, dbc_l, dbc, dtv, acc, red);
        /* dt_proj: Δ before softplus = W_dt · dt for my channels */
        consume_rows<T>(ring, nc, a.rows_per_tile_dt, a.rkp, dtv, dtr);
        team_sync<CONSUMERS>();
        ssm_step(a, l, c0, nc, prm, ssm, dbc, dtr, u, zg, yv);
        team_sync<CONSUMERS>();
        /* out_proj, split over the blocks by channel: residual += W_out[:, mine] · y[mine] */
        consume_cols<T>(ring, nc, a.rows_per_tile_out, a.dmp, yv, acc, part);
        add_block_share(a.resid, acc, a.dmp, nc);
        grid_barrier(a.arrivals, ++barriers);
    }

    float best;
    int best_id;
    lm_head<T>(a, ring, [&](int i) { return __ldcg(a.resid + i); }, r0, r1, xn, rows, red, redi, best, best_id);
    finish_step(a, best, best_id, a.dbc, a.n_layer * a.Rp, red, redi, ticket);
}

/* Fault injection for the tests (MAMBA_GPU_TRAP_AT_TOKEN): a kernel put before the step in its
 * graphs only when that is set, so that the step itself has no such branch. It traps where the
 * step would run token number `at` (the first is 1). */
__global__ void trap_at_token(const unsigned long long *n_run, unsigned long long at) {
    if (*n_run + 1 == at) __trap();
}

/* ----------------------------------------------------------------------------------------
 * The sampler: one block over the logits. Semantics of the CPU sampler: repetition penalty,
 * then greedy, or softmax at a temperature restricted to the top-k and then to the top-p
 * nucleus (both taken in order of probability, ties by lower id), and a draw with the same
 * xorshift64* generator. The draw walks the kept tokens in id order rather than in order of
 * probability, so the same seed picks from the same distribution but not always the same id. */

/* One warp: among the 256 buckets scanned from digit 255 down, the first non-empty digit whose
 * inclusive running total reaches need; when rounding leaves need out of reach, the last
 * non-empty digit. Returns the digit and the total of the buckets above it. */
template <typename V>
__device__ void pick_digit(const int *count, const V *weight, V need, int *digit, V *above) {
    const int lane = threadIdx.x & 31;
    V local = 0;
    for (int j = 0; j < 8; j++) local += weight[255 - 8 * lane - j];
    V incl = local;
    for (int o = 1; o < 32; o <<= 1) {
        V y = __shfl_up_sync(FULL_MASK, incl, o);
        if (lane >= o) incl += y;
    }
    V run = __shfl_up_sync(FULL_MASK, incl, 1);
    if (lane == 0) run = 0;
    int found = -1, last = -1;
    V found_above = 0, last_above = 0;
    for (int j = 0; j < 8; j++) {
        const int d = 255 - 8 * lane - j;
        if (count[d] > 0) {
            if (found < 0 && run + weight[d] >= need) found = d, found_above = run;
            last = d, last_above = run;
        }
        run += weight[d];
    }
    const unsigned hit = __ballot_sync(FULL_MASK, found >= 0), any = __ballot_sync(FULL_MASK, last >= 0);
    const int src = hit ? __ffs(hit) - 1 : 31 - __clz(any);
    const int d = __shfl_sync(FULL_MASK, hit ? found : last, src);
    const V ab = __shfl_sync(FULL_MASK, hit ? found_above : last_above, src);
    if (lane == 0) *digit = d, *above = ab;
}

/* Radix select over the bits of p ≥ 0 (tokens marked out are negative): finds tau such that the
 * kept tokens are those with p > tau plus the first *take (by id) with p == tau, where the kept
 * set is the k largest (by_mass false, need = k) or the fewest largest whose mass reaches need. */
__device__ void radix_threshold(const float *x, int n, bool by_mass, float need, int *count, float *mass,
                                int *sh_digit, float *sh_mass, int *sh_count, unsigned *tau, int *take) {
    constexpr int NT = SAMPLE_THREADS;
    unsigned prefix = 0, mask = 0;
    int need_count = (int)need;
    float need_mass = need;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int d = threadIdx.x; d < 256; d += NT) count[d] = 0, mass[d] = 0.0f;
        __syncthreads();
        for (int i = threadIdx.x; i < n; i += NT) {
            const unsigned bits = __float_as_uint(x[i]);
            if (!(bits >> 31) && (bits & mask) == prefix) {
                const int d = (bits >> shift) & 255;
                atomicAdd(&count[d], 1);
                if (by_mass) atomicAdd(&mass[d], x[i]);
            }
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            if (by_mass) pick_digit<float>(count, mass, need_mass, sh_digit, sh_mass);
            else pick_digit<int>(count, count, need_count, sh_digit, sh_count);
        }
        __syncthreads();
        prefix |= (unsigned)*sh_digit << shift;
        mask |= 0xffu << shift;
        if (by_mass) need_mass -= *sh_mass;
        else need_count -= *sh_count;
        __syncthreads();
    }
    *tau = prefix;
    if (!by_mass) {
        *take = need_count;
    } else {
        const float t = __uint_as_float(prefix);
        *take = t > 0.0f ? (int)fminf(fmaxf(ceilf(need_mass / t), 1.0f), (float)n) : n;
    }
}

/* Marks out (with -1) every token of this thread's id range [lo, hi) that is not kept: kept are
 * p > tau, and p == tau among the first `take` such ids of the whole vocabulary. Returns the
 * kept mass of the whole block. */
__device__ float keep_top(float *x, int lo, int hi, unsigned tau, int take, int *redi, float *redf) {
    constexpr int NT = SAMPLE_THREADS;
    int equal = 0;
    for (int i = lo; i < hi; i++) equal += __float_as_uint(x[i]) == tau;
    int total_equal;
    int rank = block_exclusive_scan<NT, int>(equal, redi, &total_equal);
    float kept = 0.0f;
    for (int i = lo; i < hi; i++) {
        const unsigned bits = __float_as_uint(x[i]);
        if (!(bits >> 31) && (bits > tau || (bits == tau && rank++ < take))) kept += x[i];
        else x[i] = -1.0f;
    }
    return block_sum<NT>(kept, redf);
}

__global__ void __launch_bounds__(SAMPLE_THREADS) sample_token(const SampleArgs s) {
    constexpr int NT = SAMPLE_THREADS;
    extern __shared__ float4 sample_smem[];
    float *x = s.scratch ? s.scratch : reinterpret_cast<float *>(sample_smem);
    __shared__ int count[256];
    __shared__ float mass[256], redf[NT / 32];
    __shared__ int redi[NT / 32], sh_digit, sh_count, chosen, last_kept;
    __shared__ float sh_mass, draw;
    const int n = s.vocab, tid = threadIdx.x;

    /* working copy of the logits, with the repetition penalty (as in CTRL): each token among the
     * last last_n run is pushed toward lower probability once */
    for (int i = tid; i < n; i += NT) x[i] = s.logits[i];
    __syncthreads();
    if (s.penalty != 1.0f) {
        const unsigned long long run = *s.n_run;
        const int window = (int)min((unsigned long long)s.last_n, run);
        for (int j = tid; j < window; j += NT) {
            const int id = s.history[(run - 1 - j) % HISTORY_CAP];
            if (id < 0 || id >= n) continue;
            const float v = s.logits[id];
            x[id] = v > 0 ? v / s.penalty : v * s.penalty;     /* from the original: repeats write the same */
        }
        __syncthreads();
    }

    /* greedy: the largest, the lowest id on ties */
    if (s.temperature == 0.0f) {
        float v = -INFINITY;
        int id = -1;
        for (int i = tid; i < n; i += NT)
            if (x[i] == x[i] && (id < 0 || x[i] > v)) v = x[i], id = i;
        block_argmax<NT>(v, id, redf, redi);
        if (tid == 0) *s.token_out = id < 0 ? 0 : id;
        return;
    }

    /* softmax numerators at the temperature: p = exp((x - max) / T) */
    float mx = -INFINITY;
    for (int i = tid; i < n; i += NT) mx = fmaxf(mx, x[i]);
    mx = block_max<NT>(mx, redf);
    float sum = 0.0f;
    for (int i = tid; i < n; i += NT) {
        x[i] = expf((x[i] - mx) / s.temperature);
        sum += x[i];
    }
    float kept = block_sum<NT>(sum, redf);

    /* each thread owns a contiguous id range, so that thread order is id order in the scans */
    const int per = (n + NT - 1) / NT, lo = min(n, tid * per), hi = min(n, lo + per);
    unsigned tau;
    int take;
    /* top-k: keep the k most likely */
    if (s.top_k > 0 && s.top_k < n) {
        radix_threshold(x, n, false, (float)s.top_k, count, mass, &sh_digit, &sh_mass, &sh_count, &tau, &take);
        kept = keep_top(x, lo, hi, tau, take, redi, redf);
    }
    /* top-p: of those, the fewest most likely whose mass reaches top_p of the kept mass */
    if (s.top_p < 1.0f) {
        radix_threshold(x, n, true, s.top_p * kept, count, mass, &sh_digit, &sh_mass, &sh_count, &tau, &take);
        keep_top(x, lo, hi, tau, take, redi, redf);
    }

    /* draw r in [0, 1) and take the first kept id (in id order) whose cumulative mass exceeds r · total */
    float mine = 0.0f;
    for (int i = lo; i < hi; i++)
        if (!(__float_as_uint(x[i]) >> 31)) mine += x[i];
    float total;
    const float base = block_exclusive_scan<NT, float>(mine, redf, &total);
    if (tid == 0) {
        unsigned long long r = *s.rng;
        r ^= r >> 12;
        r ^= r << 25;
        r ^= r >> 27;
        *s.rng = r;
        draw = (float)((r * 0x2545F4914F6CDD1DULL) >> 40) / 16777216.0f;
        chosen = INT_MAX, last_kept = -1;
    }
    __syncthreads();
    const float target = draw * total;
    float cum = base;
    int pick = -1, last = -1;
    for (int i = lo; i < hi; i++) {
        if (__float_as_uint(x[i]) >> 31) continue;
        last = i;
        cum += x[i];
        if (pick < 0 && target < cum) pick = i;
    }
    if (pick >= 0) atomicMin(&chosen, pick);
    if (last >= 0) atomicMax(&last_kept, last);
    __syncthreads();
    if (tid == 0) *s.token_out = chosen != INT_MAX ? chosen : last_kept >= 0 ? last_kept : 0;
}

/* ----------------------------------------------------------------------------------------
 * Upload helpers. */

/* out[c * out_stride + r] = in[r * cols + c]: 32×32 tiles through shared memory. */
template <typename E>
__global__ void transpose_into(const E *in, int rows, int cols, E *out, int out_stride) {
    __shared__ E tile[32][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    for (int k = threadIdx.y; k < 32; k += 8) {
        const int r = blockIdx.y * 32 + k;
        if (r < rows && c < cols) tile[k][threadIdx.x] = in[(size_t)r * cols + c];
    }
    __syncthreads();
    const int r = blockIdx.y * 32 + threadIdx.x;
    for (int k = threadIdx.y; k < 32; k += 8) {
        const int cc = blockIdx.x * 32 + k;
        if (cc < cols && r < rows) out[(size_t)cc * out_stride + r] = tile[threadIdx.x][k];
    }
}

/* ----------------------------------------------------------------------------------------
 * The engine's host side. */

void die_in_flight(const GpuEngine *g, cudaError_t err) {
    fprintf(stderr, "mamba: error: CUDA error %s (%s) while running %s\n", cudaGetErrorName(err), cudaGetErrorString(err),
            g->in_flight);
    exit(1);
}

void sync_or_die(GpuEngine *g) {
    const cudaError_t err = cudaStreamSynchronize(g->stream);
    if (err != cudaSuccess) die_in_flight(g, err);
}

/* Uploads go through the engine's stream, in order: a copy from pageable memory may return
 * before its data reaches the device, so nothing on another stream may read what it writes. */
void upload(void *dst, const void *src, size_t bytes, cudaStream_t stream) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
}

/* A row-major [rows, K] matrix into rows of Kp elements (the rest stays zero). */
void upload_rows(void *dst, const void *src, size_t rows, int K, int Kp, size_t es, cudaStream_t stream) {
    CUDA_CHECK(cudaMemcpy2DAsync(dst, Kp * es, src, K * es, K * es, rows, cudaMemcpyHostToDevice, stream));
}

/* A row-major [rows, cols] matrix transposed: [cols, out_stride], through tmp on the device. */
void upload_transposed(void *dst, const void *src, int rows, int cols, int out_stride, size_t es, void *tmp,
                              cudaStream_t stream) {
    upload(tmp, src, (size_t)rows * cols * es, stream);
    dim3 grid((cols + 31) / 32, (rows + 31) / 32), block(32, 8);
    if (es == 4) transpose_into<uint32_t><<<grid, block, 0, stream>>>((const uint32_t *)tmp, rows, cols, (uint32_t *)dst, out_stride);
    else transpose_into<uint16_t><<<grid, block, 0, stream>>>((const uint16_t *)tmp, rows, cols, (uint16_t *)dst, out_stride);
    LAUNCH_CHECK("transpose_into");
}

/* ---- the step's graphs ---- */

static void launch_step(GpuEngine *g, int slot) {
    StepArgs a = g->step;
    a.token_in = g->tokens + slot;
    a.token_out = g->tokens + (1 - slot);
    void *params[] = {&a};
    CUDA_CHECK(cudaLaunchKernel((const void *)g->step_kernel, dim3(g->grid), dim3(THREADS), params, g->step_smem, g->stream));
}

static void launch_sampler(GpuEngine *g, int slot) {
    SampleArgs s = g->sample;
    s.token_out = g->tokens + slot;
    void *params[] = {&s};
    CUDA_CHECK(cudaLaunchKernel((const void *)sample_token, dim3(1), dim3(SAMPLE_THREADS), params, g->sample_smem, g->stream));
}

static void launch_trap(GpuEngine *g) {
    trap_at_token<<<1, 1, 0, g->stream>>>(g->sample.n_run, g->trap_at_run);
    LAUNCH_CHECK("trap_at_token");
}

static void destroy_graphs(GpuEngine *g) {
    if (!g->graphs_built) return;
    for (int x = 0; x < 2; x++) {
        CUDA_CHECK(cudaGraphExecDestroy(g->prompt_graph[x]));
        if (!g->greedy) CUDA_CHECK(cudaGraphExecDestroy(g->decode_graph[x]));
    }
    g->graphs_built = false;
}

/* Captures the step reading token slot x (a prompt step) and, unless sampling is greedy (the
 * step's own argmax), the sampler writing slot x followed by that step (a decode step). */
static void build_graphs(GpuEngine *g) {
    sync_or_die(g);
    destroy_graphs(g);
    for (int x = 0; x < 2; x++) {
        for (int with_sampler = 0; with_sampler <= !g->greedy; with_sampler++) {
            cudaGraph_t graph;
            CUDA_CHECK(cudaStreamBeginCapture(g->stream, cudaStreamCaptureModeThreadLocal));
            if (with_sampler) launch_sampler(g, x);
            if (g->trap_at_run) launch_trap(g);
            g->arch->launch_step(g, x);
            CUDA_CHECK(cudaStreamEndCapture(g->stream, &graph));
            CUDA_CHECK(cudaGraphInstantiate(with_sampler ? &g->decode_graph[x] : &g->prompt_graph[x], graph, 0));
            CUDA_CHECK(cudaGraphDestroy(graph));
        }
        if (g->greedy) g->decode_graph[x] = g->prompt_graph[x];
    }
    g->graphs_built = true;
}

/* ----------------------------------------------------------------------------------------
 * Mamba-1's setup, the steps of gpu_engine_create for it. */

/* The shapes the kernels handle. */
static bool mamba1_supports(const Config *c, char *err, size_t err_len) {
    if (c->d_conv > CONV_MAX || c->d_state > SCAN_MAX_STATES) {
        snprintf(err, err_len, "the GPU engine handles d_conv up to %d and d_state up to %d (this model: %d, %d)",
                 CONV_MAX, SCAN_MAX_STATES, c->d_conv, c->d_state);
        return false;
    }
    return true;
}

/* Padded sizes, the per-channel parameter record, the step kernel of the dtype; one block per
 * multiprocessor, each a slice of the channels and of the LM-head rows. */
static void plan_shapes(GpuEngine *g, int multiprocessors) {
    const Config *c = &g->c;
    StepArgs &a = g->step;
    g->grid = multiprocessors;
    g->dmp = round_up(c->d_model, PAD), g->rkp = round_up(c->dt_rank, PAD);
    g->R = c->dt_rank + 2 * c->d_state, g->Rp = round_up(g->R, PAD);
    g->kcp = round_up(c->d_conv, 4), g->nsp = round_up(c->d_state, 4);
    g->step_kernel = g->arch->step_kernel(c->dtype);
    a.pl.conv_b = g->kcp, a.pl.dt_bias = g->kcp + 1, a.pl.D = g->kcp + 2, a.pl.A = g->kcp + 4;
    a.pl.stride = a.pl.A + g->nsp;
    a.n_layer = c->n_layer, a.dm = c->d_model, a.dmp = g->dmp, a.di = c->d_inner, a.ns = c->d_state, a.nsp = g->nsp;
    a.mixer_eps = c->mixer_eps;
    a.d_conv = c->d_conv, a.kcp = g->kcp, a.dt_rank = c->dt_rank, a.rkp = g->rkp, a.Rp = g->Rp, a.vocab = c->vocab_size;
    a.eps = c->norm_eps;
    a.channels_per_block = (c->d_inner + g->grid - 1) / g->grid;
    a.head_rows_per_block = (c->vocab_size + g->grid - 1) / g->grid;
}

/* A step block's shared memory: the consumers' arrays (in floats, each piece a multiple of 4),
 * then the ring in the rest, RING_SLOTS slots, each at least a row of any matrix and the
 * layer's first tile. Measured on the H100 (bench/NOTES.md): the step gets faster as tiles grow
 * from 8 to 64 KB at the same bytes in flight, so a few large slots beat many small. */
static bool plan_step_smem(GpuEngine *g, const cudaDeviceProp &prop, char *err, size_t err_len) {
    StepArgs &a = g->step;
    const int es = (int)dtype_size(g->c.dtype), ch = a.channels_per_block, ch4 = round_up(ch, 4);
    const int head_rows = a.head_rows_per_block;
    int top_f = 0;
    auto take = [&top_f](int n) { const int at = top_f; top_f += round_up(n, 4); return at; };
    a.off_xn = take(g->dmp);
    a.off_rows = take(2 * ch4 > head_rows ? 2 * ch4 : head_rows);
    a.off_dt = take(ch4), a.off_u = take(ch4), a.off_z = take(ch4), a.off_y = take(ch4);
    a.off_dbc = take(g->Rp), a.off_dtv = take(g->rkp), a.off_acc = take(g->Rp > g->dmp ? g->Rp : g->dmp);
    a.off_red = take(2 * CONSUMER_WARPS), a.off_part = take(CONSUMERS * 8);
    a.off_params = take(ch * a.pl.stride), a.off_conv = take(ch * g->kcp), a.off_ssm = take(ch * g->nsp);
    a.small_conv = g->dmp * 4, a.small_ssm = a.small_conv + ch * g->kcp * 4, a.small_params = a.small_ssm + ch * g->nsp * 4;
    const int small_bytes = a.small_params + ch * a.pl.stride * 4, row_bytes = g->dmp * es;
    const size_t floats_bytes = (size_t)top_f * sizeof(float), reserve = 2048;   /* static shared memory and slack */
    const size_t ring_room = prop.sharedMemPerBlockOptin > floats_bytes + reserve ? prop.sharedMemPerBlockOptin - floats_bytes - reserve : 0;
    a.n_slots = RING_SLOTS;
    a.slot_bytes = (int)(ring_room / RING_SLOTS) / 128 * 128;
    int slot_need = small_bytes;
    for (int n : {row_bytes, g->Rp * es, g->rkp * es}) slot_need = slot_need > n ? slot_need : n;
    if (a.slot_bytes < slot_need || (g->dmp / (16 / es) + CONSUMERS - 1) / CONSUMERS > MAX_COL_ITEMS) {
        snprintf(err, err_len, "this model's shape (d_model %d, d_inner %d) does not fit the step kernel's shared memory on %s",
                 g->c.d_model, g->c.d_inner, prop.name);
        return false;
    }
    a.rows_per_tile_in = a.rows_per_tile_out = a.rows_per_tile_head = a.slot_bytes / row_bytes;
    a.rows_per_tile_x = a.slot_bytes / (g->Rp * es), a.rows_per_tile_dt = a.slot_bytes / (g->rkp * es);
    g->step_smem = (size_t)a.n_slots * a.slot_bytes + floats_bytes;
    return true;
}

/* The step needs all its blocks resident at once (its grid barriers wait for every block). */
bool step_fits_resident(GpuEngine *g, const char *device, char *err, size_t err_len) {
    CUDA_CHECK(cudaFuncSetAttribute((const void *)g->step_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)g->step_smem));
    int resident = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, (const void *)g->step_kernel, THREADS, g->step_smem));
    if (resident < 1) {
        snprintf(err, err_len, "the step kernel cannot be resident on %s", device);
        return false;
    }
    return true;
}

/* The sampler works on the logits in shared memory when the vocabulary fits, else in a copy in
 * global memory (the work allocation's scratch). */
void plan_sampler_smem(GpuEngine *g, const cudaDeviceProp &prop) {
    const size_t vocab_bytes = (size_t)g->c.vocab_size * sizeof(float);
    g->sample_smem = vocab_bytes + 8192 <= prop.sharedMemPerBlockOptin ? vocab_bytes : 0;
    if (g->sample_smem)
        CUDA_CHECK(cudaFuncSetAttribute((const void *)sample_token, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)vocab_bytes));
}

ModelEnds carve_model_ends(const GpuEngine *g, size_t *top) {
    const Config *c = &g->c;
    const size_t rows = (size_t)c->padded_vocab * g->dmp * dtype_size(c->dtype);
    ModelEnds m;
    m.emb = carve(top, rows);
    m.head = c->tied_head ? m.emb : carve(top, rows);
    m.norm_f = carve(top, g->dmp * sizeof(float));
    return m;
}

void upload_model_ends(GpuEngine *g, const Weights *w, const ModelEnds &m) {
    const Config *c = &g->c;
    const size_t es = dtype_size(c->dtype);
    char *W = g->weights;
    upload_rows(W + m.emb, w->embedding, c->padded_vocab, c->d_model, g->dmp, es, g->stream);
    if (!c->tied_head) upload_rows(W + m.head, w->lm_head, c->padded_vocab, c->d_model, g->dmp, es, g->stream);
    upload(W + m.norm_f, w->norm_f, c->d_model * sizeof(float), g->stream);
}

void bind_model_ends(GpuEngine *g, const ModelEnds &m) {
    StepArgs &a = g->step;
    a.embedding = g->weights + m.emb, a.norm_f = (const float *)(g->weights + m.norm_f), a.head = g->weights + m.head;
}

/* The work every architecture's step has after its state: the logits, the penalty's history,
 * the blocks' maxima, the counters, then (not zeroed by reset) the RNG and the sampler's
 * scratch. carve_step_work ends the work's plan (work_bytes, zeroed_bytes); bind_step_work sets
 * the step's and the sampler's pointers to it. */
StepWork carve_step_work(GpuEngine *g, size_t *top) {
    const size_t vocab_bytes = (size_t)g->c.vocab_size * sizeof(float);
    StepWork w;
    w.logits = carve(top, vocab_bytes), w.history = carve(top, HISTORY_CAP * sizeof(int));
    w.best = carve(top, g->grid * sizeof(float)), w.best_id = carve(top, g->grid * sizeof(int));
    w.counters = carve(top, 2 * sizeof(unsigned) + sizeof(unsigned long long) + 2 * sizeof(int));
    g->zeroed_bytes = *top;
    w.rng = carve(top, sizeof(unsigned long long));
    w.scratch = g->sample_smem ? 0 : carve(top, vocab_bytes);
    g->work_bytes = *top;
    return w;
}

void bind_step_work(GpuEngine *g, const StepWork &w) {
    StepArgs &a = g->step;
    char *K = g->work;
    a.logits = (float *)(K + w.logits), a.history = (int *)(K + w.history);
    a.block_best = (float *)(K + w.best), a.block_best_id = (int *)(K + w.best_id);
    a.arrivals = (unsigned *)(K + w.counters), a.finished = a.arrivals + 1;
    a.n_run = (unsigned long long *)(a.arrivals + 2);
    g->tokens = (int *)(a.n_run + 1);
    g->rng = (unsigned long long *)(K + w.rng);
    g->sample = SampleArgs{a.logits, g->sample_smem ? NULL : (float *)(K + w.scratch), g->c.vocab_size, a.history, a.n_run,
                           0.0f, 1.0f, 1.0f, 0, 0, g->rng, NULL};
}

/* Where everything lies in the engine's two allocations, in bytes: the weights (every row
 * padded to dmp / Rp / rkp elements) and the work (state and buffers; reset zeroes everything
 * before rng). */
struct DeviceLayout {
    ModelEnds ends;
    LayerOffsets layer0;          /* the first layer's tensors; layer l's lie l · layer_bytes further */
    size_t layer_bytes;
    size_t resid, dbc, conv, ssm;
    StepWork tail;
    size_t tmp_bytes;             /* the transposes go through a temporary buffer this large */
};

static DeviceLayout plan_device_memory(GpuEngine *g) {
    const Config *c = &g->c;
    const int L = c->n_layer, di = c->d_inner;
    const size_t es = dtype_size(c->dtype);
    DeviceLayout m;
    size_t top = 0;
    m.ends = carve_model_ends(g, &top);
    LayerOffsets &lo = m.layer0;
    lo.norm = carve(&top, g->dmp * sizeof(float));
    lo.in_proj = carve(&top, (size_t)2 * di * g->dmp * es);
    lo.params = carve(&top, (size_t)di * g->step.pl.stride * sizeof(float));
    lo.x_proj_t = carve(&top, (size_t)di * g->Rp * es);
    lo.dt_proj = carve(&top, (size_t)di * g->rkp * es);
    lo.out_proj_t = carve(&top, (size_t)di * g->dmp * es);
    m.layer_bytes = top - lo.norm;   /* every layer is carved alike */
    g->weight_bytes = top + (L - 1) * m.layer_bytes;

    top = 0;
    m.resid = carve(&top, g->dmp * sizeof(float)), m.dbc = carve(&top, (size_t)L * g->Rp * sizeof(float));
    g->conv_slot = (size_t)L * di * g->kcp, g->ssm_slot = (size_t)L * di * g->nsp;
    m.conv = carve(&top, (g->max_batch + 1) * g->conv_slot * sizeof(float));
    m.ssm = carve(&top, (g->max_batch + 1) * g->ssm_slot * sizeof(float));
    m.tail = carve_step_work(g, &top);
    m.tmp_bytes = (size_t)di * (c->d_model > g->R ? c->d_model : g->R) * es;
    return m;
}

/* Everything is checked against the free memory before anything is allocated, so that the
 * reason names the whole need. */
bool fits_free_memory(const GpuEngine *g, size_t tmp_bytes, const PassLayout &passes, const char *device, char *err,
                      size_t err_len) {
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    const size_t need = g->weight_bytes + g->work_bytes + tmp_bytes + passes.bytes;
    if (need > free_bytes) {
        snprintf(err, err_len, "out of GPU memory: the model needs %zu bytes on %s, %zu of %zu are free", need, device,
                 free_bytes, total_bytes);
        return false;
    }
    return true;
}

/* The stream, and the weights' and work's allocations, zeroed (the rows' padding stays zero). */
void allocate_device_memory(GpuEngine *g) {
    CUDA_CHECK(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking));
    g->weights = (char *)gpu_alloc(g->weight_bytes);
    g->work = (char *)gpu_alloc(g->work_bytes);
    CUDA_CHECK(cudaMemsetAsync(g->weights, 0, g->weight_bytes, g->stream));
    CUDA_CHECK(cudaMemsetAsync(g->work, 0, g->work_bytes, g->stream));
}

/* A layer's per-channel record: conv_w, conv_b, dt_bias, D and A = -exp(A_log). */
static void pack_params(const GpuEngine *g, const LayerWeights *src, float *params) {
    const ParamLayout &pl = g->step.pl;
    const int d_conv = g->c.d_conv, ns = g->c.d_state;
    for (int ch = 0; ch < g->c.d_inner; ch++) {
        float *p = &params[(size_t)ch * pl.stride];
        for (int k = 0; k < d_conv; k++) p[k] = src->conv_w[(size_t)ch * d_conv + k];
        p[pl.conv_b] = src->conv_b[ch], p[pl.dt_bias] = src->dt_bias[ch], p[pl.D] = src->D[ch];
        for (int n = 0; n < ns; n++) p[pl.A + n] = -expf(src->A_log[(size_t)ch * ns + n]);
    }
}

/* One layer's tensors to `base` in the layout of o: matrices padded, x_proj and out_proj
 * transposed (through tmp), the per-channel record packed (through params, staged by the copy
 * before it returns, so reusable). */
static void upload_layer(GpuEngine *g, const LayerWeights *src, char *base, const LayerOffsets &o, float *params,
                         void *tmp) {
    const Config *c = &g->c;
    const int dm = c->d_model, di = c->d_inner;
    const size_t es = dtype_size(c->dtype);
    cudaStream_t st = g->stream;
    upload(base + o.norm, src->norm, dm * sizeof(float), st);
    upload_rows(base + o.in_proj, src->in_proj, (size_t)2 * di, dm, g->dmp, es, st);
    pack_params(g, src, params);
    upload(base + o.params, params, (size_t)di * g->step.pl.stride * sizeof(float), st);
    upload_transposed(base + o.x_proj_t, src->x_proj, g->R, di, g->Rp, es, tmp, st);
    upload_rows(base + o.dt_proj, src->dt_proj, di, c->dt_rank, g->rkp, es, st);
    upload_transposed(base + o.out_proj_t, src->out_proj, dm, di, g->dmp, es, tmp, st);
}

static void upload_weights(GpuEngine *g, const Weights *w, const DeviceLayout &m) {
    const Config *c = &g->c;
    char *W = g->weights;
    void *tmp = gpu_alloc(m.tmp_bytes);
    upload_model_ends(g, w, m.ends);
    std::vector<float> params((size_t)c->d_inner * g->step.pl.stride);
    for (int l = 0; l < c->n_layer; l++)
        upload_layer(g, &w->layers[l], W + l * m.layer_bytes, m.layer0, params.data(), tmp);
    CUDA_CHECK(cudaStreamSynchronize(g->stream));
    CUDA_CHECK(cudaFree(tmp));
}

/* The step's and the sampler's pointers into the weights and the work. */
static void set_kernel_pointers(GpuEngine *g, const DeviceLayout &m) {
    StepArgs &a = g->step;
    char *W = g->weights, *K = g->work;
    const LayerOffsets &lo = m.layer0;
    a.layer0 = W + lo.norm, a.layer_stride = m.layer_bytes;
    a.lo = LayerOffsets{0, lo.in_proj - lo.norm, lo.params - lo.norm, lo.x_proj_t - lo.norm, lo.dt_proj - lo.norm,
                        lo.out_proj_t - lo.norm};
    bind_model_ends(g, m.ends);
    a.resid = (float *)(K + m.resid), a.dbc = (float *)(K + m.dbc);
    a.conv_state = (float *)(K + m.conv), a.ssm_state = (float *)(K + m.ssm);
    bind_step_work(g, m.tail);
}

/* Mamba-1's part of gpu_engine_create (GpuArch.setup). Nothing is allocated until everything
 * has been planned and found to fit; a false return leaves nothing on the device. */
static bool mamba1_setup(GpuEngine *g, const Weights *w, const cudaDeviceProp &prop, char *err, size_t err_len) {
    plan_shapes(g, prop.multiProcessorCount);
    /* the shared-memory plans */
    if (!plan_step_smem(g, prop, err, err_len) || !step_fits_resident(g, prop.name, err, err_len)) return false;
    plan_sampler_smem(g, prop);
    /* the device memory, carved */
    const DeviceLayout m = plan_device_memory(g);
    const PassLayout passes = plan_pass_buffers(g);
    if (!fits_free_memory(g, m.tmp_bytes, passes, prop.name, err, err_len)) return false;
    allocate_device_memory(g);
    upload_weights(g, w, m);     /* padded, transposed, the per-channel records packed */
    set_kernel_pointers(g, m);   /* the kernels' arguments */
    open_passes(g, passes);      /* the passes' buffers, their pinned staging, cuBLAS */
    prepare_mamba1_pass(g);
    return true;
}

/* ----------------------------------------------------------------------------------------
 * The architectures: the one place that dispatches on Config.arch. */

/* The decode step of Mamba-1 (NORM_DBC false) or Falcon-Mamba (true) for a dtype. */
template <bool NORM_DBC>
static StepKernel step_kernel_of(DType dtype) {
    return dtype == DTYPE_F32   ? forward_token<float, NORM_DBC>
           : dtype == DTYPE_F16 ? forward_token<__half, NORM_DBC>
                                : forward_token<__nv_bfloat16, NORM_DBC>;
}

static const GpuArch arches[] = {
    {ARCH_MAMBA1, mamba1_supports, mamba1_setup, step_kernel_of<false>, launch_step, mamba1_run_pass, mamba1_pass_scratch},
    {ARCH_FALCON_MAMBA, mamba1_supports, mamba1_setup, step_kernel_of<true>, launch_step, falcon_run_pass,
     mamba1_pass_scratch},
    {ARCH_MAMBA2, mamba2_supports, mamba2_setup, mamba2_step_kernel, launch_step, mamba2_run_pass, mamba2_pass_scratch},
};

static const GpuArch *arch_of(Arch arch) {
    for (const GpuArch &a : arches)
        if (a.arch == arch) return &a;
    return NULL;
}

extern "C" int gpu_runs_arch(Arch arch) { return arch_of(arch) != NULL; }

/* ----------------------------------------------------------------------------------------
 * The engine's life cycle and the single sequence's calls. */

/* A CUDA device is there at all (the reason a CPU fallback looks for, when not). */
static bool any_device(char *err, size_t err_len) {
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        snprintf(err, err_len, "no usable CUDA device (%s)", e != cudaSuccess ? cudaGetErrorName(e) : "none found");
        cudaGetLastError();
        return false;
    }
    return true;
}

/* The weights' dtype, the device (Hopper or later: the step's bulk copies) and the batch size. */
static bool supported(const Config *c, int max_batch, cudaDeviceProp *prop, char *err, size_t err_len) {
    if (c->dtype != DTYPE_F32 && c->dtype != DTYPE_F16 && c->dtype != DTYPE_BF16) {
        snprintf(err, err_len, "the GPU engine does not support weight dtype %d (f32, f16 and bf16 are)", (int)c->dtype);
        return false;
    }
    int dev;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaGetDeviceProperties(prop, dev));
    if (prop->major < 9) {
        snprintf(err, err_len, "%s has compute capability %d.%d; this GPU engine is built for 9.0 (Hopper)", prop->name,
                 prop->major, prop->minor);
        return false;
    }
    if (max_batch < 1 || max_batch > MAX_BATCH) {
        snprintf(err, err_len, "the GPU engine takes 1 to %d sequences at once, not %d", MAX_BATCH, max_batch);
        return false;
    }
    return true;
}

/* The engine on the host, with cuBLAS loaded; nothing on the device yet. */
static GpuEngine *new_engine(const Config *c, const GpuArch *arch, int max_batch, const char *device, char *err,
                             size_t err_len) {
    GpuEngine *g = (GpuEngine *)calloc(1, sizeof *g);
    if (!g) {
        snprintf(err, err_len, "out of host memory");
        return NULL;
    }
    if (!blas_load(&g->blas, err, err_len)) {
        free(g);
        return NULL;
    }
    g->c = *c;
    g->arch = arch;
    g->max_batch = max_batch;
    snprintf(g->name, sizeof g->name, "%s", device);
    const char *trap = getenv("MAMBA_GPU_TRAP_AT_TOKEN");   /* fault injection for the tests */
    g->trap_at_run = trap ? strtoull(trap, NULL, 10) : 0;
    return g;
}

/* gpu_engine_create's way out before anything is on the device: the engine and cuBLAS let go. */
static GpuEngine *abandon(GpuEngine *g) {
    dlclose(g->blas.lib);
    free(g);
    return NULL;
}

/* The pinned rings the single sequence's ids and logits cross PCIe through. */
static void open_host_rings(GpuEngine *g) {
    CUDA_CHECK(cudaMallocHost((void **)&g->host_in, INPUT_RING * sizeof(int)));
    CUDA_CHECK(cudaMallocHost((void **)&g->host_out, OUTPUT_RING * sizeof(int)));
    CUDA_CHECK(cudaMallocHost((void **)&g->host_logits, OUTPUT_RING * (size_t)g->c.vocab_size * sizeof(float)));
    for (int i = 0; i < OUTPUT_RING; i++) CUDA_CHECK(cudaEventCreateWithFlags(&g->out_ready[i], cudaEventDisableTiming));
}

extern "C" GpuEngine *gpu_engine_create(const Config *c, const Weights *w, int max_batch, char *err, size_t err_len) {
    const GpuArch *arch = arch_of(c->arch);
    if (!arch) {
        snprintf(err, err_len, "the GPU engine does not run this model's architecture (%d)", (int)c->arch);
        return NULL;
    }
    cudaDeviceProp prop;
    if (!any_device(err, err_len) || !supported(c, max_batch, &prop, err, err_len) || !arch->supports(c, err, err_len))
        return NULL;
    GpuEngine *g = new_engine(c, arch, max_batch, prop.name, err, err_len);
    if (!g) return NULL;
    if (!arch->setup(g, w, prop, err, err_len)) return abandon(g);   /* plans, memory, weights, arguments, cuBLAS */
    open_host_rings(g);                                              /* pinned memory */
    const GpuSampling greedy = {0.0f, 0, 1.0f, 1.0f, 64, 0x9E3779B97F4A7C15ull, c->vocab_size};
    gpu_engine_set_sampling(g, &greedy);                             /* captures the step's graphs */
    return g;
}

extern "C" void gpu_engine_free(GpuEngine *g) {
    if (!g) return;
    sync_or_die(g);
    destroy_graphs(g);
    for (int i = 0; i < OUTPUT_RING; i++) CUDA_CHECK(cudaEventDestroy(g->out_ready[i]));
    CUDA_CHECK(cudaFreeHost(g->host_in));
    CUDA_CHECK(cudaFreeHost(g->host_out));
    CUDA_CHECK(cudaFreeHost(g->host_logits));
    CUDA_CHECK(cudaFree(g->weights));
    CUDA_CHECK(cudaFree(g->work));
    close_passes(g);
    dlclose(g->blas.lib);
    CUDA_CHECK(cudaStreamDestroy(g->stream));
    free(g);
}

extern "C" void gpu_engine_reset(GpuEngine *g) {
    sync_or_die(g);
    CUDA_CHECK(cudaMemsetAsync(g->work, 0, g->zeroed_bytes, g->stream));
    sync_or_die(g);
    g->parity = 0, g->fed = g->launched = g->returned = 0;
}

extern "C" void gpu_engine_set_sampling(GpuEngine *g, const GpuSampling *s) {
    sync_or_die(g);
    g->sample.temperature = s->temperature, g->sample.top_k = s->top_k, g->sample.top_p = s->top_p;
    g->sample.vocab = g->step.argmax_vocab = s->vocab < 1 ? 1 : s->vocab < g->c.vocab_size ? s->vocab : g->c.vocab_size;
    g->sample.penalty = s->repeat_penalty;
    g->sample.last_n = s->repeat_last_n < HISTORY_CAP ? s->repeat_last_n : HISTORY_CAP;
    unsigned long long seed = s->rng ? s->rng : 0x9E3779B97F4A7C15ull;   /* xorshift must not start at 0 */
    upload(g->rng, &seed, sizeof seed, g->stream);
    const bool greedy = s->temperature == 0.0f && s->repeat_penalty == 1.0f;
    destroy_graphs(g);   /* under the old setting: it says which graphs are shared */
    g->greedy = greedy;
    build_graphs(g);
}

extern "C" const float *gpu_engine_feed(GpuEngine *g, int token, int want_logits) {
    const int slot = (int)(g->fed % INPUT_RING);
    if (slot == 0 && g->fed > 0) sync_or_die(g);   /* the ring's copies are done */
    g->host_in[slot] = token;
    CUDA_CHECK(cudaMemcpyAsync(g->tokens + g->parity, &g->host_in[slot], sizeof(int), cudaMemcpyHostToDevice, g->stream));
    g->in_flight = "forward_token (a step)";
    CUDA_CHECK(cudaGraphLaunch(g->prompt_graph[g->parity], g->stream));
    g->parity ^= 1, g->fed++;
    if (!want_logits) return NULL;
    CUDA_CHECK(cudaMemcpyAsync(g->host_logits, g->step.logits, g->c.vocab_size * sizeof(float), cudaMemcpyDeviceToHost,
                               g->stream));
    sync_or_die(g);
    return g->host_logits;
}

/* Queues one decode step: sample into the slot the step reads, run it, copy the id (and logits) out. */
static void launch_decode(GpuEngine *g, int want_logits) {
    const int out = (int)(g->launched % OUTPUT_RING);
    g->in_flight = g->greedy ? "forward_token (a step)" : "sample_token and forward_token (a decode step)";
    CUDA_CHECK(cudaGraphLaunch(g->decode_graph[g->parity], g->stream));
    CUDA_CHECK(cudaMemcpyAsync(&g->host_out[out], g->tokens + g->parity, sizeof(int), cudaMemcpyDeviceToHost, g->stream));
    if (want_logits)
        CUDA_CHECK(cudaMemcpyAsync(g->host_logits + (size_t)out * g->c.vocab_size, g->step.logits,
                                   g->c.vocab_size * sizeof(float), cudaMemcpyDeviceToHost, g->stream));
    CUDA_CHECK(cudaEventRecord(g->out_ready[out], g->stream));
    g->parity ^= 1, g->launched++;
}

extern "C" int gpu_engine_sample_feed(GpuEngine *g, int want_logits, const float **logits) {
    while (g->launched - g->returned < 2) launch_decode(g, want_logits);   /* one step stays queued ahead */
    const int out = (int)(g->returned % OUTPUT_RING);
    const cudaError_t err = cudaEventSynchronize(g->out_ready[out]);
    if (err != cudaSuccess) die_in_flight(g, err);
    g->returned++;
    if (logits) *logits = want_logits ? g->host_logits + (size_t)out * g->c.vocab_size : NULL;
    return g->host_out[out];
}

extern "C" void gpu_engine_sync(GpuEngine *g) { sync_or_die(g); }

extern "C" const char *gpu_engine_device_name(const GpuEngine *g) { return g->name; }

extern "C" size_t gpu_memory_used(void) {
    size_t free_bytes = 0, total = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
    return total - free_bytes;
}

