/* mamba2.cu: the CUDA engine's decode step for Mamba-2 and its setup (its passes over many rows
 * are in mamba2_pass.cu). The step is one persistent kernel like Mamba-1's (kernels.cu's opening
 * comment tells the design: a producer warp streams each block's weight tiles through a ring in
 * shared memory, fifteen consumer warps compute, grid barriers between the dependent phases).
 *
 * A Mamba-2 layer (cpu.c's mamba2_block):
 *   xn = RMSNorm(residual);  (z, x, B, C, dt) = in_proj · xn;  (x, B, C) = SiLU(causal conv)
 *   per head h of group g:  Δ = clamp(softplus(dt_h + dt_bias_h));  S = exp(Δ·A_h)·S + Δ·x ⊗ B_g
 *                           y = S·C_g + D_h·x,  y *= SiLU(z)
 *   per group: y = RMSNorm(y) ⊙ gate_norm;  residual += out_proj · y
 *
 * Block b owns a slice of the d_inner channels (all inside one group, so that the gated norm of
 * its channels has one scale) and a slice of the "shared" rows of in_proj, B, C and dt, that every
 * channel of a group or head reads. Two grid barriers a layer:
 *
 *   IN phase   xn = RMSNorm(residual)                   every block, redundantly
 *              z, x of my channels; my shared rows       in_proj rows · xn
 *              conv step of x and of my B, C rows; my B, C (after SiLU) and raw dt → global
 *   ── barrier: B, C and dt are complete
 *   SSM phase  my heads' Δ and decay; per channel S = decay·S + Δ·x·B, y = C·S + D·x, gated
 *              (the state tiles stream in behind in_proj's)
 *              out_acc[g] += out_projᵀ[my channels]ᵀ · (y ⊙ gate_norm);  out_ss[g] += Σ y²
 *   ── barrier: every group's sums are complete
 *
 * The gated norm's scale 1/RMS(y) of a group is known only when all its blocks are done, but it
 * is one number a group and out_proj is linear: so out_proj's sums are made unscaled, per group,
 * and the next layer's IN phase (or the LM head) takes residual + Σ_g scale_g · out_acc[g]
 * while it loads the residual; block 0 writes that sum as the layer's residual. The residual
 * and the sums alternate between two buffers by layer parity, so a layer never overwrites what
 * the layer before still reads. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "gpu_device.cuh"
#include "gpu_internal.cuh"
#include "gpu_step.cuh"

/* ----------------------------------------------------------------------------------------
 * The decode step. */

/* What block b owns: channels [c0, c0 + nc) of group g and their heads [h0, h0 + nheads);
 * shared rows [s0, s0 + n_shared) (B, C then dt; the first n_conv of them are conv channels,
 * B or C); LM-head rows [r0, r1). */
struct Mamba2Share {
    int g, c0, nc, h0, nheads, s0, n_shared, n_conv, r0, r1;
};

__device__ __forceinline__ Mamba2Share mamba2_share(const StepArgs &a, int b) {
    Mamba2Share k;
    const int g = b / a.blocks_per_group, begin = (b - g * a.blocks_per_group) * a.channels_per_block;
    k.nc = g < a.ng ? max(0, min(a.channels_per_block, a.group_size - begin)) : 0;
    k.g = k.nc > 0 ? g : 0;
    k.c0 = k.nc > 0 ? g * a.group_size + begin : 0;
    k.h0 = k.c0 / a.hd;
    k.nheads = k.nc > 0 ? (k.c0 + k.nc - 1) / a.hd - k.h0 + 1 : 0;
    k.s0 = min(a.n_shared, b * a.shared_per_block);
    k.n_shared = min(a.n_shared, k.s0 + a.shared_per_block) - k.s0;
    k.n_conv = max(0, min(k.s0 + k.n_shared, 2 * a.ng * a.ns) - k.s0);
    k.r0 = min(a.vocab, b * a.head_rows_per_block), k.r1 = min(a.vocab, k.r0 + a.head_rows_per_block);
    return k;
}

/* The producer warp's lane 0: every tile of the step, in the order the consumers use them. Per
 * layer: the norm weight with the conv state and parameter records of my channels and of my
 * conv rows; in_proj's z rows, x rows and shared rows; the SSM state of my channels; out_proj's
 * rows (transposed). Then the final norm and my LM-head rows. */
template <typename T>
__device__ void mamba2_produce_step(const StepArgs &a, Ring &r, const Mamba2Share &k) {
    const int es = sizeof(T), in_row = a.dmp * es;
    for (int l = 0; l < a.n_layer; l++) {
        const Layer<T> L(a, l);
        const size_t conv0 = (size_t)l * a.conv_dim;
        const unsigned conv_bytes = k.nc * a.kcp * 4, conv_shared_bytes = k.n_conv * a.kcp * 4;
        const unsigned param_bytes = k.nc * a.pl.stride * 4, param_shared_bytes = k.n_conv * a.pl.stride * 4;
        char *dst = ring_begin(r, a.dmp * 4 + conv_bytes + conv_shared_bytes + param_bytes + param_shared_bytes);
        ring_copy(r, dst, L.norm, a.dmp * 4);
        if (k.nc > 0) {
            ring_copy(r, dst + a.small_conv, a.conv_state + (conv0 + k.c0) * a.kcp, conv_bytes);
            ring_copy(r, dst + a.small_params, L.params + (size_t)k.c0 * a.pl.stride, param_bytes);
        }
        if (k.n_conv > 0) {
            ring_copy(r, dst + a.small_conv_shared, a.conv_state + (conv0 + a.di + k.s0) * a.kcp, conv_shared_bytes);
            ring_copy(r, dst + a.small_params_shared, L.params + (size_t)(a.di + k.s0) * a.pl.stride, param_shared_bytes);
        }
        r.t++;
        produce_rows(r, L.in_proj + (size_t)k.c0 * a.dmp, k.nc, in_row, a.rows_per_tile_in);
        produce_rows(r, L.in_proj + (size_t)(a.di + k.c0) * a.dmp, k.nc, in_row, a.rows_per_tile_in);
        produce_rows(r, L.in_proj + (size_t)(2 * a.di + k.s0) * a.dmp, k.n_shared, in_row, a.rows_per_tile_in);
        produce_rows(r, a.ssm_state + ((size_t)l * a.di + k.c0) * a.nsp, k.nc, a.nsp * 4, a.rows_per_tile_state);
        produce_rows(r, L.out_proj_t + (size_t)k.c0 * a.dmp, k.nc, in_row, a.rows_per_tile_out);
    }
    produce_rows(r, a.norm_f, 1, a.dmp * 4, 1);
    produce_rows(r, static_cast<const T *>(a.head) + (size_t)k.r0 * a.dmp, k.r1 - k.r0, in_row, a.rows_per_tile_head);
}

/* The residual entering layer l (or the LM head, l = n_layer), element i: the embedding at layer
 * 0, else the previous layer's input plus Σ_g scale_g · out_acc[g] of the previous layer. */
struct Mamba2Residual {
    const float *prev, *acc, *scale;
    int ng, dmp;
    __device__ float operator()(int i) const {
        float v = __ldcg(prev + i);
        for (int g = 0; g < ng; g++) v += scale[g] * __ldcg(acc + (size_t)g * dmp + i);
        return v;
    }
};

/* The scales of layer l's gated norms, 1/sqrt(mean(y²) + eps) a group, into scale[ng]. */
__device__ __forceinline__ Mamba2Residual mamba2_residual_after(const StepArgs &a, int l, float *scale) {
    const int parity = l & 1;
    const float *ss = a.out_ss + (size_t)parity * a.ng;
    for (int g = threadIdx.x; g < a.ng; g += CONSUMERS) scale[g] = 1.0f / sqrtf(__ldcg(ss + g) / a.group_size + a.eps);
    team_sync<CONSUMERS>();
    return Mamba2Residual{a.resid + (size_t)parity * a.dmp, a.out_acc + (size_t)parity * a.ng * a.dmp, scale, a.ng, a.dmp};
}

/* One channel's conv step: the window (the last d_conv - 1 inputs and x) dotted with its taps
 * plus the bias; the shifted window goes back to the channel's saved state. */
__device__ __forceinline__ float mamba2_conv(const StepArgs &a, const float *p, const float *window, float x, float *saved) {
    float s = p[a.pl.conv_b];
    for (int k = 0; k + 1 < a.d_conv; k++) {
        const float v = window[k + 1];
        __stcg(saved + k, v);
        s += p[k] * v;
    }
    __stcg(saved + a.d_conv - 1, x);
    return s + p[a.d_conv - 1] * x;
}

/* IN phase after the products: u = SiLU(conv(x)) and z of my channels (x in rows[nc:2nc], z in
 * rows[0:nc]); my shared rows to global: B and C through their conv and SiLU, dt as it is. */
__device__ __forceinline__ void mamba2_conv_step(const StepArgs &a, int l, const Mamba2Share &k, const float *prm,
                                                 const float *conv, const float *prm_shared, const float *conv_shared,
                                                 const float *rows, const float *shared, float *u, float *zg) {
    const size_t conv0 = (size_t)l * a.conv_dim;
    for (int j = threadIdx.x; j < k.nc; j += CONSUMERS) {
        float *saved = a.conv_state + (conv0 + k.c0 + j) * a.kcp;
        u[j] = silu(mamba2_conv(a, prm + j * a.pl.stride, conv + j * a.kcp, rows[k.nc + j], saved));
        zg[j] = rows[j];
    }
    for (int j = threadIdx.x; j < k.n_shared; j += CONSUMERS) {
        float v = shared[j];
        if (j < k.n_conv)
            v = silu(mamba2_conv(a, prm_shared + j * a.pl.stride, conv_shared + j * a.kcp, v,
                                 a.conv_state + (conv0 + a.di + k.s0 + j) * a.kcp));
        __stcg(a.dbc + k.s0 + j, v);
    }
}

/* SSM phase, first: B and C of my group into bc[0:ns] and bc[nsp:nsp+ns]; each of my heads' Δ
 * (softplus, clamped to the limits) and decay exp(Δ·A) into heads[i] and heads[max_heads + i]. */
__device__ __forceinline__ void mamba2_take_shared(const StepArgs &a, const Mamba2Share &k, const float *prm, int max_heads,
                                                   float *bc, float *heads) {
    const float *B = a.dbc + (size_t)k.g * a.ns, *C = a.dbc + (size_t)(a.ng + k.g) * a.ns;
    for (int i = threadIdx.x; i < a.ns; i += CONSUMERS) bc[i] = __ldcg(B + i), bc[a.nsp + i] = __ldcg(C + i);
    for (int i = threadIdx.x; i < k.nheads; i += CONSUMERS) {
        const int h = k.h0 + i;
        const float *p = prm + (max(h * a.hd, k.c0) - k.c0) * a.pl.stride;
        const float dt = fminf(fmaxf(softplus(__ldcg(a.dbc + 2 * a.ng * a.ns + h) + p[a.pl.dt_bias]), a.dt_lo), a.dt_hi);
        heads[i] = dt, heads[max_heads + i] = expf(dt * p[a.pl.A]);
    }
}

/* SSM phase: the recurrence of my channels, their states streaming in as tiles: a warp a
 * channel, a lane a state. S = decay·S + Δ·x·B (written back), y = C·S + D·x, times SiLU(z). */
__device__ __forceinline__ void mamba2_ssm_step(const StepArgs &a, Ring &ring, int l, const Mamba2Share &k, const float *prm,
                                                const float *bc, const float *heads, int max_heads, const float *u,
                                                const float *zg, float *yv) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int i = 0; i < k.nc; i += a.rows_per_tile_state) {
        const float *tile = reinterpret_cast<const float *>(ring_wait(ring));
        const int n = min(a.rows_per_tile_state, k.nc - i);
        for (int j = i + warp; j < i + n; j += CONSUMER_WARPS) {
            const int head = (k.c0 + j) / a.hd - k.h0;
            const float x = u[j], dx = heads[head] * x, decay = heads[max_heads + head];
            const float *S = tile + (size_t)(j - i) * a.nsp;
            float *saved = a.ssm_state + ((size_t)l * a.di + k.c0 + j) * a.nsp;
            float y = 0.0f;
            for (int s = lane; s < a.ns; s += 32) {
                const float h = decay * S[s] + dx * bc[s];
                __stcg(saved + s, h);
                y += h * bc[a.nsp + s];
            }
            y = warp_sum(y);
            if (lane == 0) yv[j] = (y + prm[j * a.pl.stride + a.pl.D] * x) * silu(zg[j]);
        }
        ring_release(ring);
    }
}

template <typename T>
__global__ void __launch_bounds__(THREADS, 1) mamba2_forward_token(const StepArgs a) {
    extern __shared__ __align__(128) char smem[];
    __shared__ uint64_t full[RING_SLOTS], empty[RING_SLOTS];
    __shared__ unsigned ticket;
    float *sm = reinterpret_cast<float *>(smem + (size_t)a.n_slots * a.slot_bytes);
    float *xn = sm + a.off_xn;              /* [dmp] normalized input of a layer or of the head */
    float *rows = sm + a.off_rows;          /* in_proj's z then x of my channels; then the head's logits */
    float *shared = sm + a.off_shared;      /* [shared_per_block] in_proj's shared rows of mine */
    float *u = sm + a.off_u;                /* [channels] SiLU(conv(x)) */
    float *zg = sm + a.off_z;               /* [channels] the gate input z */
    float *yv = sm + a.off_y;               /* [channels] the gated output, then times gate_norm */
    float *bc = sm + a.off_dbc;             /* [2 nsp] B and C of my group */
    float *heads = sm + a.off_heads;        /* [2 max_heads] Δ and decay of my heads */
    float *acc = sm + a.off_acc;            /* [dmp] this block's share of out_proj */
    float *red = sm + a.off_red;            /* [2 × CONSUMER_WARPS] reductions */
    float *part = sm + a.off_part;          /* ColumnSums' group sums */
    float *prm = sm + a.off_params;         /* [channels, stride] parameter records of my channels */
    float *prm_shared = sm + a.off_params_shared;
    float *conv = sm + a.off_conv;          /* [channels, kcp] conv state of my channels */
    float *conv_shared = sm + a.off_conv_shared;
    float *scale = sm + a.off_scale;        /* [ng] the previous layer's gated-norm scales */
    int *redi = reinterpret_cast<int *>(red + CONSUMER_WARPS);
    const int max_heads = a.max_heads;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, b = blockIdx.x;
    const Mamba2Share k = mamba2_share(a, b);
    Ring ring{smem, full, empty, a.n_slots, a.slot_bytes, 0};

    if (tid == 0) {
        for (int s = 0; s < a.n_slots; s++) mbar_init(&full[s], 1), mbar_init(&empty[s], CONSUMER_WARPS);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (warp == PRODUCER_WARP) {
        if (lane == 0) mamba2_produce_step<T>(a, ring, k);
        return;
    }

    const int token = *a.token_in;
    unsigned barriers = 0;
    if (b == 0 && tid == 0) a.history[*a.n_run % HISTORY_CAP] = token, *a.n_run += 1;

    for (int l = 0; l < a.n_layer; l++) {
        /* ---- IN phase ---- */
        {
            const char *first = ring_wait(ring);
            for (int i = tid; i < k.nc * a.kcp; i += CONSUMERS) conv[i] = reinterpret_cast<const float *>(first + a.small_conv)[i];
            for (int i = tid; i < k.n_conv * a.kcp; i += CONSUMERS)
                conv_shared[i] = reinterpret_cast<const float *>(first + a.small_conv_shared)[i];
            for (int i = tid; i < k.nc * a.pl.stride; i += CONSUMERS)
                prm[i] = reinterpret_cast<const float *>(first + a.small_params)[i];
            for (int i = tid; i < k.n_conv * a.pl.stride; i += CONSUMERS)
                prm_shared[i] = reinterpret_cast<const float *>(first + a.small_params_shared)[i];
            for (int j = tid; j < 2 * k.nc; j += CONSUMERS) rows[j] = 0.0f;
            for (int j = tid; j < k.n_shared; j += CONSUMERS) shared[j] = 0.0f;
            /* xn = RMSNorm(this layer's residual); block 0 writes the residual down */
            const float *normw = reinterpret_cast<const float *>(first);
            float *mine = a.resid + (size_t)(l & 1) * a.dmp;
            if (l == 0) {
                const T *e = static_cast<const T *>(a.embedding) + (size_t)token * a.dmp;
                rmsnorm_into(xn, [&](int i) { const float v = to_f32(e[i]); if (b == 0) __stcg(mine + i, v); return v; },
                             normw, a.dm, a.dmp, a.eps, red);
            } else {
                const Mamba2Residual resid = mamba2_residual_after(a, l - 1, scale);
                rmsnorm_into(xn, [&](int i) { const float v = resid(i); if (b == 0) __stcg(mine + i, v); return v; },
                             normw, a.dm, a.dmp, a.eps, red);
            }
            ring_release(ring);
        }
        /* z, x and the shared rows = in_proj · xn */
        consume_rows<T>(ring, k.nc, a.rows_per_tile_in, a.dmp, xn, rows);
        consume_rows<T>(ring, k.nc, a.rows_per_tile_in, a.dmp, xn, rows + k.nc);
        consume_rows<T>(ring, k.n_shared, a.rows_per_tile_in, a.dmp, xn, shared);
        team_sync<CONSUMERS>();
        mamba2_conv_step(a, l, k, prm, conv, prm_shared, conv_shared, rows, shared, u, zg);
        grid_barrier(a.arrivals, ++barriers);

        /* ---- SSM phase ---- */
        mamba2_take_shared(a, k, prm, max_heads, bc, heads);
        for (int i = tid; i < a.dmp; i += CONSUMERS) acc[i] = 0.0f;
        if (b == 0) {   /* the sums of the layer before the previous one, read by now, start again from zero */
            float *old = a.out_acc + (size_t)((l + 1) & 1) * a.ng * a.dmp, *old_ss = a.out_ss + (size_t)((l + 1) & 1) * a.ng;
            for (int i = tid; i < a.ng * a.dmp; i += CONSUMERS) old[i] = 0.0f;
            for (int i = tid; i < a.ng; i += CONSUMERS) old_ss[i] = 0.0f;
        }
        team_sync<CONSUMERS>();
        mamba2_ssm_step(a, ring, l, k, prm, bc, heads, max_heads, u, zg, yv);
        team_sync<CONSUMERS>();
        /* the gated norm: Σ y² of my channels into the group's sum; y ⊙ gate_norm for out_proj */
        float ss = 0.0f;
        for (int j = tid; j < k.nc; j += CONSUMERS) ss += yv[j] * yv[j];
        ss = block_sum<CONSUMERS>(ss, red);
        if (tid == 0 && k.nc > 0) atomicAdd(a.out_ss + (size_t)(l & 1) * a.ng + k.g, ss);
        for (int j = tid; j < k.nc; j += CONSUMERS) yv[j] *= prm[j * a.pl.stride + a.pl.gate];
        team_sync<CONSUMERS>();
        /* out_proj, split over the blocks by channel, unscaled: out_acc[g] += W_out[:, mine] · y[mine] */
        consume_cols<T>(ring, k.nc, a.rows_per_tile_out, a.dmp, yv, acc, part);
        add_block_share(a.out_acc + ((size_t)(l & 1) * a.ng + k.g) * a.dmp, acc, a.dmp, k.nc);
        grid_barrier(a.arrivals, ++barriers);
    }

    float best;
    int best_id;
    const Mamba2Residual resid = mamba2_residual_after(a, a.n_layer - 1, scale);
    lm_head<T>(a, ring, resid, k.r0, k.r1, xn, rows, red, redi, best, best_id);
    finish_step(a, best, best_id, a.out_acc, 2 * a.ng * (a.dmp + 1), red, redi, ticket);
}

StepKernel mamba2_step_kernel(DType dtype) {
    return dtype == DTYPE_F32   ? mamba2_forward_token<float>
           : dtype == DTYPE_F16 ? mamba2_forward_token<__half>
                                : mamba2_forward_token<__nv_bfloat16>;
}

/* ----------------------------------------------------------------------------------------
 * Setup: the steps of gpu_engine_create for Mamba-2. */

bool mamba2_supports(const Config *c, char *err, size_t err_len) {
    if (c->d_conv > CONV_MAX) {
        snprintf(err, err_len, "the GPU engine handles d_conv up to %d (this model: %d)", CONV_MAX, c->d_conv);
        return false;
    }
    return true;
}

/* Padded sizes, the parameter record, the step kernel of the dtype; one block per
 * multiprocessor, the channels split group by group, the shared rows and LM-head rows evenly. */
static bool mamba2_plan_shapes(GpuEngine *g, int multiprocessors, char *err, size_t err_len) {
    const Config *c = &g->c;
    StepArgs &a = g->step;
    g->grid = multiprocessors;
    if (c->n_groups > g->grid) {
        snprintf(err, err_len, "the GPU engine handles up to %d groups on this GPU (this model: %d)", g->grid, c->n_groups);
        return false;
    }
    g->dmp = round_up(c->d_model, PAD), g->kcp = round_up(c->d_conv, 4), g->nsp = round_up(c->d_state, 4);
    g->step_kernel = g->arch->step_kernel(c->dtype);
    a.pl.conv_b = g->kcp, a.pl.dt_bias = g->kcp + 1, a.pl.D = g->kcp + 2, a.pl.A = g->kcp + 3, a.pl.gate = g->kcp + 4;
    a.pl.stride = round_up(a.pl.gate + 1, 4);
    a.n_layer = c->n_layer, a.dm = c->d_model, a.dmp = g->dmp, a.di = c->d_inner, a.ns = c->d_state, a.nsp = g->nsp;
    a.d_conv = c->d_conv, a.kcp = g->kcp, a.vocab = c->vocab_size, a.eps = c->norm_eps;
    a.nh = c->n_heads, a.hd = c->head_dim, a.ng = c->n_groups, a.group_size = c->d_inner / c->n_groups;
    a.conv_dim = c->d_inner + 2 * c->n_groups * c->d_state, a.n_shared = 2 * c->n_groups * c->d_state + c->n_heads;
    a.in_rows = c->d_inner + a.conv_dim + c->n_heads;
    a.dt_lo = c->dt_limit_lo, a.dt_hi = c->dt_limit_hi;
    a.blocks_per_group = g->grid / c->n_groups;
    a.channels_per_block = (a.group_size + a.blocks_per_group - 1) / a.blocks_per_group;
    a.shared_per_block = (a.n_shared + g->grid - 1) / g->grid;
    a.head_rows_per_block = (c->vocab_size + g->grid - 1) / g->grid;
    a.max_heads = a.channels_per_block / a.hd + 2;   /* the most heads a block's channels can touch */
    return true;
}

/* A step block's shared memory: the consumers' arrays, then the ring (as Mamba-1's plan). */
static bool mamba2_plan_smem(GpuEngine *g, const cudaDeviceProp &prop, char *err, size_t err_len) {
    StepArgs &a = g->step;
    const int es = (int)dtype_size(g->c.dtype), ch = a.channels_per_block, ch4 = round_up(ch, 4);
    const int sh = a.shared_per_block, stride = a.pl.stride;
    int top_f = 0;
    auto take = [&top_f](int n) { const int at = top_f; top_f += round_up(n, 4); return at; };
    a.off_xn = take(g->dmp);
    a.off_rows = take(2 * ch4 > a.head_rows_per_block ? 2 * ch4 : a.head_rows_per_block);
    a.off_shared = take(sh), a.off_u = take(ch4), a.off_z = take(ch4), a.off_y = take(ch4);
    a.off_dbc = take(2 * g->nsp), a.off_acc = take(g->dmp);
    a.off_red = take(2 * CONSUMER_WARPS), a.off_part = take(CONSUMERS * 8);
    a.off_params = take(ch * stride), a.off_params_shared = take(sh * stride);
    a.off_conv = take(ch * g->kcp), a.off_conv_shared = take(sh * g->kcp);
    a.off_heads = take(2 * a.max_heads), a.off_scale = take(a.ng);
    a.small_conv = g->dmp * 4, a.small_conv_shared = a.small_conv + ch * g->kcp * 4;
    a.small_params = a.small_conv_shared + sh * g->kcp * 4, a.small_params_shared = a.small_params + ch * stride * 4;
    const int first_bytes = a.small_params_shared + sh * stride * 4, row_bytes = g->dmp * es, state_bytes = g->nsp * 4;
    const size_t floats_bytes = (size_t)top_f * sizeof(float), reserve = 2048;   /* static shared memory and slack */
    const size_t ring_room = prop.sharedMemPerBlockOptin > floats_bytes + reserve ? prop.sharedMemPerBlockOptin - floats_bytes - reserve : 0;
    a.n_slots = RING_SLOTS;
    a.slot_bytes = (int)(ring_room / RING_SLOTS) / 128 * 128;
    const int slot_need = std::max(first_bytes, std::max(row_bytes, state_bytes));
    if (a.slot_bytes < slot_need || (g->dmp / (16 / es) + CONSUMERS - 1) / CONSUMERS > MAX_COL_ITEMS) {
        snprintf(err, err_len, "this model's shape (d_model %d, d_inner %d, d_state %d) does not fit the step kernel's shared memory on %s",
                 g->c.d_model, g->c.d_inner, g->c.d_state, prop.name);
        return false;
    }
    a.rows_per_tile_in = a.rows_per_tile_out = a.rows_per_tile_head = a.slot_bytes / row_bytes;
    a.rows_per_tile_state = a.slot_bytes / state_bytes;
    g->step_smem = (size_t)a.n_slots * a.slot_bytes + floats_bytes;
    return true;
}

/* Where everything lies in the engine's two allocations, in bytes: the weights (rows padded to
 * dmp) and the work. */
struct Mamba2Layout {
    ModelEnds ends;
    LayerOffsets layer0;          /* layer l's tensors lie l · layer_bytes further */
    size_t layer_bytes;
    size_t resid, shared, sums, conv, ssm;
    StepWork tail;
    size_t tmp_bytes;             /* out_proj's transpose goes through a temporary buffer this large */
};

static Mamba2Layout mamba2_plan_memory(GpuEngine *g) {
    const Config *c = &g->c;
    const StepArgs &a = g->step;
    const size_t es = dtype_size(c->dtype);
    Mamba2Layout m;
    size_t top = 0;
    m.ends = carve_model_ends(g, &top);
    LayerOffsets &lo = m.layer0;
    lo = LayerOffsets{};
    lo.norm = carve(&top, g->dmp * sizeof(float));
    lo.in_proj = carve(&top, (size_t)a.in_rows * g->dmp * es);
    lo.params = carve(&top, (size_t)a.conv_dim * a.pl.stride * sizeof(float));
    lo.out_proj_t = carve(&top, (size_t)a.di * g->dmp * es);
    lo.x_proj_t = lo.dt_proj = lo.out_proj_t;   /* Mamba-2 has neither */
    m.layer_bytes = top - lo.norm;
    g->weight_bytes = top + (c->n_layer - 1) * m.layer_bytes;

    top = 0;
    m.resid = carve(&top, 2 * g->dmp * sizeof(float));
    m.shared = carve(&top, a.n_shared * sizeof(float));
    m.sums = carve(&top, 2 * (size_t)a.ng * (g->dmp + 1) * sizeof(float));   /* out_acc [2][ng][dmp], out_ss [2][ng] */
    g->conv_slot = (size_t)c->n_layer * a.conv_dim * g->kcp, g->ssm_slot = (size_t)c->n_layer * a.di * g->nsp;
    m.conv = carve(&top, (g->max_batch + 1) * g->conv_slot * sizeof(float));
    m.ssm = carve(&top, (g->max_batch + 1) * g->ssm_slot * sizeof(float));
    m.tail = carve_step_work(g, &top);
    m.tmp_bytes = (size_t)c->d_model * c->d_inner * es;
    return m;
}

/* A layer's parameter records: per conv channel its taps and bias; an x channel also its head's
 * dt_bias, D and A = -exp(A_log), and its gate_norm weight. */
static void mamba2_pack_params(const GpuEngine *g, const LayerWeights *src, float *params) {
    const StepArgs &a = g->step;
    const ParamLayout &pl = a.pl;
    memset(params, 0, (size_t)a.conv_dim * pl.stride * sizeof(float));
    for (int ch = 0; ch < a.conv_dim; ch++) {
        float *p = params + (size_t)ch * pl.stride;
        for (int k = 0; k < a.d_conv; k++) p[k] = src->conv_w[(size_t)ch * a.d_conv + k];
        p[pl.conv_b] = src->conv_b[ch];
        if (ch >= a.di) continue;
        const int h = ch / a.hd;
        p[pl.dt_bias] = src->dt_bias[h], p[pl.D] = src->D[h], p[pl.A] = -expf(src->A_log[h]), p[pl.gate] = src->gate_norm[ch];
    }
}

static void mamba2_upload_weights(GpuEngine *g, const Weights *w, const Mamba2Layout &m) {
    const Config *c = &g->c;
    const StepArgs &a = g->step;
    const size_t es = dtype_size(c->dtype);
    char *W = g->weights;
    cudaStream_t st = g->stream;
    void *tmp = gpu_alloc(m.tmp_bytes);
    upload_model_ends(g, w, m.ends);
    std::vector<float> params((size_t)a.conv_dim * a.pl.stride);
    for (int l = 0; l < c->n_layer; l++) {
        const LayerWeights *src = &w->layers[l];
        char *base = W + l * m.layer_bytes;
        upload(base + m.layer0.norm, src->norm, c->d_model * sizeof(float), st);
        upload_rows(base + m.layer0.in_proj, src->in_proj, a.in_rows, c->d_model, g->dmp, es, st);
        mamba2_pack_params(g, src, params.data());
        upload(base + m.layer0.params, params.data(), params.size() * sizeof(float), st);
        upload_transposed(base + m.layer0.out_proj_t, src->out_proj, c->d_model, c->d_inner, g->dmp, es, tmp, st);
        CUDA_CHECK(cudaStreamSynchronize(st));   /* the records' staging is reused by the next layer */
    }
    CUDA_CHECK(cudaFree(tmp));
}

/* The step's and the sampler's pointers into the weights and the work. */
static void mamba2_set_pointers(GpuEngine *g, const Mamba2Layout &m) {
    StepArgs &a = g->step;
    char *W = g->weights, *K = g->work;
    const LayerOffsets &lo = m.layer0;
    a.layer0 = W + lo.norm, a.layer_stride = m.layer_bytes;
    a.lo = LayerOffsets{0, lo.in_proj - lo.norm, lo.params - lo.norm, 0, 0, lo.out_proj_t - lo.norm};
    bind_model_ends(g, m.ends);
    a.resid = (float *)(K + m.resid), a.dbc = (float *)(K + m.shared);
    a.out_acc = (float *)(K + m.sums), a.out_ss = a.out_acc + 2 * (size_t)a.ng * g->dmp;
    a.conv_state = (float *)(K + m.conv), a.ssm_state = (float *)(K + m.ssm);
    bind_step_work(g, m.tail);
}

/* Mamba-2's part of gpu_engine_create (GpuArch.setup): everything planned and found to fit
 * before anything is allocated, as Mamba-1's. */
bool mamba2_setup(GpuEngine *g, const Weights *w, const cudaDeviceProp &prop, char *err, size_t err_len) {
    if (!mamba2_plan_shapes(g, prop.multiProcessorCount, err, err_len)) return false;
    if (!mamba2_plan_smem(g, prop, err, err_len) || !step_fits_resident(g, prop.name, err, err_len)) return false;
    plan_sampler_smem(g, prop);
    const Mamba2Layout m = mamba2_plan_memory(g);
    const PassLayout passes = plan_pass_buffers(g);
    if (!fits_free_memory(g, m.tmp_bytes, passes, prop.name, err, err_len)) return false;
    allocate_device_memory(g);
    mamba2_upload_weights(g, w, m);
    mamba2_set_pointers(g, m);
    open_passes(g, passes);
    return true;
}
