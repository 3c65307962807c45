/* mamba2_pass.cu: Mamba-2's pass over many rows (GpuArch.run_pass; mamba2.cu has the one-token
 * decode step and the setup): the prompt (one sequence, L tokens) by the chunked state-space
 * dual (SSD) algorithm of the Mamba-2 paper, its matrix products on cuBLAS; the batched step
 * (S sequences, one token each) one recurrent step a row. Both run per layer
 *     xn = RMSNorm(X);  ZX = in_proj · xn   (z, x, B, C, dt: row-major [rows, in_rows], fp32)
 *     ... the mixer, from ZX to YN = the gated, group-normalized y (row-major [rows, di], T) ...
 *     X += out_proj · YN
 * with the math of cpu.c's mamba2_block (Δ clamped at every token, as the CPU does).
 *
 * The SSD decomposition. Within a head h (group g) the recurrence S_t = e^{a_t}·S_{t-1} + Δ_t·x_t ⊗
 * B_t, y_t = S_t·C_t + D·x_t, with a_t = Δ_t·A_h ≤ 0, is cut into chunks of Q = SSD_CHUNK tokens.
 * With cs_t the cumulative sum of a inside t's chunk (cs_t - cs_s ≤ 0 for s ≤ t, so every
 * exponential below is of a non-positive number: no overflow, whatever the decays), and S_k the
 * state entering chunk k:
 *     y_t = Σ_{s ≤ t in the chunk} (C_t·B_s)·e^{cs_t - cs_s}·Δ_s·x_s + D·x_t   (the diagonal block)
 *         + e^{cs_t}·S_k·C_t                                                  (the entering state)
 *     S_{k+1} = e^{cs_end}·S_k + Σ_s e^{cs_end - cs_s}·Δ_s·x_s ⊗ B_s          (the chunk's own part)
 * Per layer, in order (12 launches with the norm and the two projections):
 *   ssd_chunk_decays         Δ, cs and e^{cs_end - cs} per (head, token)       DELTA, CS, ED [nh][Lp] f32
 *   ssd_conv_tokens          conv + SiLU of x, B, C; the slot's conv state;
 *                            x, and x scaled by Δ_s·e^{cs_end - cs_s} (XW)      X [nh][Lp][hd] T,
 *                                                                             XW [ng][Lp][gs] T, BC [ng][Lp][B | C] T
 *   cuBLAS (g, k)            G = C·Bᵀ per chunk                                G [ng][chunk][Q][Q] f32
 *   ssd_intra_chunk_weights  M[t][s] = G·e^{cs_t - cs_s}·Δ_s (s ≤ t), + D on the diagonal
 *                                                                             M [nh][chunk][Q][Q] T
 *   cuBLAS (h, k)            YD = M · x (the diagonal blocks, D·x included)    YD [nh][Lp][hd] f32
 *   cuBLAS (g, k)            ST = XWᵀ · B: each chunk's own state              ST [ng][chunk][ns][gs] f32
 *   ssd_pass_states          S_0 = the slot's state, S_{k+1} = e^{cs_end}·S_k + ST_k, sequential over
 *                            chunks; every S_k out for the next product, the last one to the slot
 *                                                                             SE [ng][chunk][ns][gs] T
 *   cuBLAS (g, k)            YO = C · S_kᵀ (the entering states)               YO [ng][Lp][gs] f32
 *   mamba2_gated_norm_rows   y = YD + e^{cs_t}·YO, ·SiLU(z), RMSNorm per group · gate_norm → YN
 * Lp is L rounded up to whole chunks; the padding tokens get x = B = C = 0 and Δ = 0 (the identity
 * step), so they add nothing. The layouts are chosen so that each product is one strided-batched
 * call over (head, chunk) or (group, chunk) with one stride: head-major for what is per head (x,
 * M, YD), group-major for what a group's heads share or what spans all of a group's channels (B,
 * C, XW, ST, SE, YO: the chunk states and the entering states' contribution are products with N =
 * a group's channels, not per head). Intermediate products are stored in fp32 except their inputs,
 * which are in the weights' dtype (tensor cores for 16-bit models; fp32 models stay fp32).
 *
 * The batched step: mamba2_conv_rows (conv of each row's new input with its slot's window, which it
 * shifts), mamba2_scan_rows (one recurrent step per (row, channel), a few lanes each, on the slot's
 * SSM state), mamba2_gated_norm_rows; no host synchronization, so it can be captured in a graph.
 *
 * The gate_norm weights and per-head dt_bias, A, D lie in per-channel records 4·stride bytes
 * apart; mamba2_gather_params copies them into dense arrays once a pass (for every layer). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "gpu_device.cuh"
#include "gpu_internal.cuh"

constexpr int SSD_CHUNK = 128;        /* Q, tokens a chunk: balances the chunk states (∝ L/Q) against M (∝ L·Q) */
constexpr int SSD_CONV_SPAN = 16;     /* consecutive tokens of a channel one ssd_conv_tokens thread convolves */
constexpr int SSD_CONV_THREADS = 128;
constexpr int SSD_TILE = 32;          /* ssd_pass_states: a block's tile of 32 channels × 32 states */
constexpr int SSD_TILE_ROWS = 8;      /*   its threads: 32 × 8, four states each */
constexpr int M2_SCAN_LANES = 8;      /* mamba2_scan_rows: lanes per (row, channel) */
constexpr int M2_NORM_THREADS = 512;
constexpr int M2_NORM_ITEMS = 16;     /* mamba2_gated_norm_rows: gated values a thread keeps (groups to 8,192 channels) */
static_assert(SSD_CONV_SPAN >= CONV_MAX - 1, "only a channel's first span reaches back into the conv state");
static_assert(SSD_CHUNK % SSD_CONV_SPAN == 0 && SSD_CHUNK % 32 == 0, "spans and warps tile a chunk");

/* What the kernels of a pass see. */
struct Mamba2PassArgs {
    int S, L, rows;
    int Lp, n_chunks;                 /* the prompt: L rounded up to whole chunks, and their count */
    int layer;
    int di, ns, nsp, nh, hd, ng, gs, heads_per_group, conv_dim, in_rows, d_conv, kcp;
    float dt_lo, dt_hi, eps;
    ParamLayout pl;
    const float *params;              /* the layer's records [conv_dim, pl.stride]: conv taps and bias */
    const float *gate, *dt_bias, *A, *D;   /* the layer's gate_norm [di] and per-head values [nh], gathered */
    const int *slots;                 /* [S] */
    float *conv_state, *ssm_state;    /* slot 0, layer 0 */
    size_t conv_slot, ssm_slot;       /* floats per slot */
};

/* Δ = softplus(dt + dt_bias) clamped to the time-step limits, as the CPU. */
__device__ __forceinline__ float mamba2_delta(const Mamba2PassArgs &p, int h, float dt_raw) {
    return fminf(fmaxf(softplus(dt_raw + p.dt_bias[h]), p.dt_lo), p.dt_hi);
}

/* Once a pass: every layer's gate_norm weights into gate [n_layer][di] and its heads' dt_bias,
 * A, D into heads [n_layer][3][nh], out of the channel records (head h's are channel h·hd's). */
__global__ void mamba2_gather_params(const StepArgs a, float *gate, float *heads) {
    const int per_layer = a.di + 3 * a.nh, i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= a.n_layer * per_layer) return;
    const int l = i / per_layer, k = i - l * per_layer;
    const float *params = (const float *)(a.layer0 + (size_t)l * a.layer_stride + a.lo.params);
    if (k < a.di) {
        gate[(size_t)l * a.di + k] = params[(size_t)k * a.pl.stride + a.pl.gate];
    } else {
        const int what = (k - a.di) / a.nh, h = k - a.di - what * a.nh;
        const int at = what == 0 ? a.pl.dt_bias : what == 1 ? a.pl.A : a.pl.D;
        heads[((size_t)l * 3 + what) * a.nh + h] = params[(size_t)h * a.hd * a.pl.stride + at];
    }
}

/* ----------------------------------------------------------------------------------------
 * The prompt: the SSD kernels. */

/* Per (head, token): Δ, cs = the inclusive cumulative sum of Δ·A inside the token's chunk (the
 * log of the decay from the chunk's start through the token), and ED = e^{cs_end - cs} (the
 * decay from the token to its chunk's end). Padding tokens: Δ = 0.
 * Grid: (chunks, nh); a thread a token. */
__global__ void __launch_bounds__(SSD_CHUNK) ssd_chunk_decays(const Mamba2PassArgs p, const float *ZX, float *DELTA,
                                                              float *CS, float *ED) {
    __shared__ float red[SSD_CHUNK / 32];
    const int h = blockIdx.y, t = blockIdx.x * SSD_CHUNK + threadIdx.x;
    const float delta = t < p.L ? mamba2_delta(p, h, ZX[(size_t)t * p.in_rows + p.di + p.conv_dim + h]) : 0.0f;
    const float a = delta * p.A[h];
    float total;
    const float cs = block_exclusive_scan<SSD_CHUNK>(a, red, &total) + a;
    DELTA[(size_t)h * p.Lp + t] = delta;
    CS[(size_t)h * p.Lp + t] = cs;
    __shared__ float cs_end;
    if (threadIdx.x == SSD_CHUNK - 1) cs_end = cs;
    __syncthreads();
    ED[(size_t)h * p.Lp + t] = expf(cs_end - cs);
}

/* The causal depthwise conv1d over the pass's tokens of each conv channel (x, B, C), then SiLU:
 * u_t = SiLU(b + Σ_k w[k]·in[t - (d_conv-1) + k]), the inputs before the pass from the slot's conv
 * state (its last d_conv inputs, oldest first), which the channel's first span then replaces by
 * the pass's last d_conv inputs (it alone reads the state). u goes out by channel kind: x to X
 * (head-major) and, scaled by Δ_t·ED_t (what token t's input is worth in its chunk's final state),
 * to XW (group-major); B and C to BC. Padding tokens get zeros. Grid: (conv channel
 * blocks, Lp / SSD_CONV_SPAN); a thread a channel (coalesced across the row), a span of tokens
 * through a sliding window. */
template <typename T>
__global__ void __launch_bounds__(SSD_CONV_THREADS) ssd_conv_tokens(const Mamba2PassArgs p, const float *ZX,
                                                                    const float *DELTA, const float *ED, T *X, T *XW,
                                                                    T *BC) {
    const int j = blockIdx.x * SSD_CONV_THREADS + threadIdx.x, t0 = blockIdx.y * SSD_CONV_SPAN, K = p.d_conv;
    if (j >= p.conv_dim) return;
    const float *w = p.params + (size_t)j * p.pl.stride, *in = ZX + p.di + j;   /* token t's input: in[t · in_rows] */
    float *state = p.conv_state + p.slots[0] * p.conv_slot + ((size_t)p.layer * p.conv_dim + j) * p.kcp;
    float win[CONV_MAX - 1 + SSD_CONV_SPAN];   /* inputs t0 - (K-1) … t0 + SSD_CONV_SPAN - 1 */
#pragma unroll
    for (int i = 0; i < CONV_MAX - 1 + SSD_CONV_SPAN; i++) {
        const int tau = t0 - (K - 1) + i;
        win[i] = i >= K - 1 + SSD_CONV_SPAN ? 0.0f : tau < 0 ? state[K + tau] : tau < p.L ? in[(size_t)tau * p.in_rows] : 0.0f;
    }
    if (t0 == 0) {   /* the state becomes the pass's last K inputs (older ones from the state when L < K) */
        float last[CONV_MAX];
#pragma unroll
        for (int k = 0; k < CONV_MAX; k++) {
            const int tau = p.L - K + k;
            last[k] = k >= K ? 0.0f : tau >= 0 ? in[(size_t)tau * p.in_rows] : state[K + tau];
        }
#pragma unroll
        for (int k = 0; k < CONV_MAX; k++)
            if (k < K) state[k] = last[k];
    }
    /* where this channel's outputs go, token t0's (a span's tokens are consecutive rows) */
    const bool is_x = j < p.di;
    const int h = is_x ? j / p.hd : 0, g = is_x ? h / p.heads_per_group : 0;
    const int bc = j - p.di, part = is_x ? 0 : bc / (p.ng * p.ns), bg = is_x ? 0 : (bc - part * p.ng * p.ns) / p.ns;
    const int n = is_x ? 0 : bc - part * p.ng * p.ns - bg * p.ns;
    T *out = is_x ? X + ((size_t)h * p.Lp + t0) * p.hd + (j - h * p.hd) : BC + ((size_t)bg * p.Lp + t0) * 2 * p.ns + part * p.ns + n;
    T *out_w = is_x ? XW + ((size_t)g * p.Lp + t0) * p.gs + (j - g * p.gs) : XW;
    const int stride = is_x ? p.hd : 2 * p.ns;
    const float *delta = DELTA + (size_t)h * p.Lp + t0, *ed = ED + (size_t)h * p.Lp + t0;
    const float bias = w[p.pl.conv_b];
    float taps[CONV_MAX];
#pragma unroll
    for (int k = 0; k < CONV_MAX; k++) taps[k] = k < K ? w[k] : 0.0f;
#pragma unroll
    for (int i = 0; i < SSD_CONV_SPAN; i++) {
        float acc = bias;
#pragma unroll
        for (int k = 0; k < CONV_MAX; k++)
            if (k < K) acc += taps[k] * win[i + k];
        const float u = t0 + i < p.L ? silu(acc) : 0.0f;
        out[(size_t)i * stride] = T(u);
        if (is_x) out_w[(size_t)i * p.gs] = T(u * delta[i] * ed[i]);
    }
}

/* Eight consecutive values out with one 16-byte store (two for fp32). */
__device__ __forceinline__ void store8(float *dst, const float *v) {
    reinterpret_cast<float4 *>(dst)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4 *>(dst)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
template <typename T>
__device__ __forceinline__ unsigned pack_pair(float a, float b);
template <>
__device__ __forceinline__ unsigned pack_pair<__nv_bfloat16>(float a, float b) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<const unsigned *>(&h);
}
template <>
__device__ __forceinline__ unsigned pack_pair<__half>(float a, float b) {
    const __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<const unsigned *>(&h);
}
template <typename T>
__device__ __forceinline__ void store8(T *dst, const float *v) {
    *reinterpret_cast<uint4 *>(dst) =
        make_uint4(pack_pair<T>(v[0], v[1]), pack_pair<T>(v[2], v[3]), pack_pair<T>(v[4], v[5]), pack_pair<T>(v[6], v[7]));
}

/* The weights of the diagonal blocks, per (head, chunk): M[t][s] = G[t][s]·e^{cs_t - cs_s}·Δ_s for
 * s ≤ t (token s's input as token t reads it), 0 above the diagonal (causality), plus D on the
 * diagonal (the skip connection D·x_t, so that YD = M·x holds it). G = C·Bᵀ is the group's.
 * A thread makes eight consecutive s of a row t (one store; eights wholly above the diagonal
 * read nothing). Grid: (chunks, nh). */
template <typename T>
__global__ void __launch_bounds__(256) ssd_intra_chunk_weights(const Mamba2PassArgs p, const float *G, const float *DELTA,
                                                               const float *CS, T *M) {
    constexpr int EIGHTS = SSD_CHUNK / 8;
    __shared__ float cs[SSD_CHUNK], delta[SSD_CHUNK];
    const int k = blockIdx.x, h = blockIdx.y, g = h / p.heads_per_group;
    const size_t first = (size_t)h * p.Lp + (size_t)k * SSD_CHUNK;
    for (int i = threadIdx.x; i < SSD_CHUNK; i += blockDim.x) cs[i] = CS[first + i], delta[i] = DELTA[first + i];
    __syncthreads();
    const float D = p.D[h];
    const float *Gk = G + ((size_t)g * p.n_chunks + k) * SSD_CHUNK * SSD_CHUNK;
    T *Mk = M + ((size_t)h * p.n_chunks + k) * SSD_CHUNK * SSD_CHUNK;
    for (int i = threadIdx.x; i < SSD_CHUNK * EIGHTS; i += blockDim.x) {
        const int t = i / EIGHTS, s0 = (i - t * EIGHTS) * 8;
        float m[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        if (s0 <= t) {
            const float4 g0 = reinterpret_cast<const float4 *>(Gk + (size_t)t * SSD_CHUNK + s0)[0];
            const float4 g1 = reinterpret_cast<const float4 *>(Gk + (size_t)t * SSD_CHUNK + s0)[1];
            const float gv[8] = {g0.x, g0.y, g0.z, g0.w, g1.x, g1.y, g1.z, g1.w};
#pragma unroll
            for (int e = 0; e < 8; e++) {
                const int s = s0 + e;
                if (s <= t) m[e] = gv[e] * expf(cs[t] - cs[s]) * delta[s];
                if (s == t) m[e] += D;
            }
        }
        store8(Mk + (size_t)t * SSD_CHUNK + s0, m);
    }
}

/* The states between chunks, sequential over the chunks: S_0 = the slot's state, S_{k+1} =
 * e^{cs_end(k)}·S_k + ST_k; S_k goes out (in the weights' dtype) to SE for the product with C,
 * the last state back to the slot. A block owns a tile of 32 channels × 32 states of a group and
 * keeps it in registers; the slot's layout ([channel][state]) is transposed through shared memory
 * so that both it and ST/SE ([state][channel]) are read and written coalesced. Grid: (group
 * channels / 32, ns / 32, ng); block 32 × 8. */
template <typename T>
__global__ void __launch_bounds__(SSD_TILE * SSD_TILE_ROWS) ssd_pass_states(const Mamba2PassArgs p, const float *ST,
                                                                            const float *CS, T *SE) {
    constexpr int PER_THREAD = SSD_TILE / SSD_TILE_ROWS;
    __shared__ float tile[SSD_TILE][SSD_TILE + 1];   /* [channel][state], padded against bank conflicts */
    const int tx = threadIdx.x, ty = threadIdx.y, g = blockIdx.z;
    const int c0 = blockIdx.x * SSD_TILE, n0 = blockIdx.y * SSD_TILE;   /* channel (in the group), state */
    float *saved = p.ssm_state + p.slots[0] * p.ssm_slot + ((size_t)p.layer * p.di + (size_t)g * p.gs) * p.nsp;
    for (int r = ty; r < SSD_TILE; r += SSD_TILE_ROWS)
        tile[r][tx] = c0 + r < p.gs && n0 + tx < p.ns ? saved[(size_t)(c0 + r) * p.nsp + n0 + tx] : 0.0f;
    __syncthreads();
    const int c = c0 + tx;
    const bool on = c < p.gs;
    const int h = (g * p.gs + (on ? c : 0)) / p.hd;
    float S[PER_THREAD];
#pragma unroll
    for (int q = 0; q < PER_THREAD; q++) S[q] = tile[tx][ty + SSD_TILE_ROWS * q];
#pragma unroll 4
    for (int k = 0; k < p.n_chunks; k++) {
        const float decay = expf(CS[(size_t)h * p.Lp + (size_t)k * SSD_CHUNK + SSD_CHUNK - 1]);
        const size_t chunk = ((size_t)g * p.n_chunks + k) * p.ns;
#pragma unroll
        for (int q = 0; q < PER_THREAD; q++) {
            const int n = n0 + ty + SSD_TILE_ROWS * q;
            if (on && n < p.ns) {
                const size_t at = (chunk + n) * p.gs + c;
                SE[at] = T(S[q]);
                S[q] = decay * S[q] + ST[at];
            }
        }
    }
    __syncthreads();   /* every thread has taken its states out of the tile */
#pragma unroll
    for (int q = 0; q < PER_THREAD; q++) tile[tx][ty + SSD_TILE_ROWS * q] = S[q];
    __syncthreads();
    for (int r = ty; r < SSD_TILE; r += SSD_TILE_ROWS)
        if (c0 + r < p.gs && n0 + tx < p.ns) saved[(size_t)(c0 + r) * p.nsp + n0 + tx] = tile[r][tx];
}

/* ----------------------------------------------------------------------------------------
 * The batched step: one token a row, row-major. */

/* Per (row, conv channel): the slot's window shifts in the row's input; u = SiLU(b + Σ w·window). */
__global__ void mamba2_conv_rows(const Mamba2PassArgs p, const float *ZX, float *U) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)p.rows * p.conv_dim) return;
    const int r = (int)(i / p.conv_dim), j = (int)(i - (size_t)r * p.conv_dim);
    const float *w = p.params + (size_t)j * p.pl.stride;
    float *window = p.conv_state + p.slots[r] * p.conv_slot + ((size_t)p.layer * p.conv_dim + j) * p.kcp;
    const float fresh = ZX[(size_t)r * p.in_rows + p.di + j];
    float acc = w[p.pl.conv_b];
    for (int k = 0; k < p.d_conv; k++) {
        const float v = k + 1 < p.d_conv ? window[k + 1] : fresh;
        window[k] = v;
        acc += w[k] * v;
    }
    U[i] = silu(acc);
}

/* One recurrent step per (row, channel c = h·hd + p), M2_SCAN_LANES lanes splitting the states
 * (16-byte units, so a group's lanes read 128 contiguous bytes of the slot's state):
 * S = e^{Δ·A}·S + Δ·x·B, y = S·C + D·x (the gate comes with the norm). Padding states are left. */
__global__ void __launch_bounds__(256) mamba2_scan_rows(const Mamba2PassArgs p, const float *ZX, const float *U, float *Y) {
    const int q = (blockIdx.x * blockDim.x + threadIdx.x) / M2_SCAN_LANES, lane = threadIdx.x % M2_SCAN_LANES;
    const int s = q / p.di;
    const bool active = s < p.rows;
    const int r = active ? s : 0, c = active ? q - s * p.di : 0, h = c / p.hd, g = h / p.heads_per_group;
    const float *u = U + (size_t)r * p.conv_dim, *B = u + p.di + g * p.ns, *C = B + p.ng * p.ns;
    const float delta = mamba2_delta(p, h, ZX[(size_t)r * p.in_rows + p.di + p.conv_dim + h]);
    const float decay = expf(delta * p.A[h]), x = u[c], dx = delta * x;
    float4 *state = (float4 *)(p.ssm_state + p.slots[r] * p.ssm_slot + ((size_t)p.layer * p.di + c) * p.nsp);
    float y = 0.0f;
    for (int unit = lane; unit < p.nsp / 4; unit += M2_SCAN_LANES) {
        const float4 v = state[unit];
        float e[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int n = 4 * unit + i;
            if (n < p.ns) {
                e[i] = decay * e[i] + dx * B[n];
                y += e[i] * C[n];
            }
        }
        if (active) state[unit] = make_float4(e[0], e[1], e[2], e[3]);
    }
#pragma unroll
    for (int o = M2_SCAN_LANES / 2; o > 0; o >>= 1) y += __shfl_xor_sync(FULL_MASK, y, o);
    if (active && lane == 0) Y[(size_t)r * p.di + c] = y + p.D[h] * x;
}

/* ----------------------------------------------------------------------------------------
 * Both: the gate and the gated norm. */

/* y before the gate, for (row t, group g, channel cl of the group): the prompt's diagonal blocks
 * plus the entering state decayed to t (e^{cs_t}: cs_t is the log-decay from the chunk's start). */
struct SsdChunkOutput {
    const float *YD, *YO, *CS;
    int Lp, hd, gs, heads_per_group;
    __device__ float operator()(int t, int g, int cl) const {
        const int j = cl / hd, h = g * heads_per_group + j;
        return YD[((size_t)h * Lp + t) * hd + (cl - j * hd)] + expf(CS[(size_t)h * Lp + t]) * YO[((size_t)g * Lp + t) * gs + cl];
    }
};

/* The batched step's y, row-major. */
struct RowOutput {
    const float *Y;
    int di, gs;
    __device__ float operator()(int t, int g, int cl) const { return Y[(size_t)t * di + g * gs + cl]; }
};

/* YN[t, c] = RMSNorm over the group of y·SiLU(z), times gate_norm, in the weights' dtype (out_proj's
 * input). A thread keeps its first M2_NORM_ITEMS values of the gated y in registers between the
 * sum of squares and the output, so y, z and the decays are read once; a group wider than
 * M2_NORM_THREADS · M2_NORM_ITEMS channels makes the rest twice. Grid: (rows, ng). */
template <typename T, typename Source>
__global__ void __launch_bounds__(M2_NORM_THREADS) mamba2_gated_norm_rows(const Mamba2PassArgs p, const Source y_of,
                                                                          const float *ZX, T *YN) {
    __shared__ float red[M2_NORM_THREADS / 32];
    const int t = blockIdx.x, g = blockIdx.y, kept = M2_NORM_THREADS * M2_NORM_ITEMS;
    const float *z = ZX + (size_t)t * p.in_rows + (size_t)g * p.gs;
    auto gated = [&](int cl) { return y_of(t, g, cl) * silu(z[cl]); };
    float v[M2_NORM_ITEMS], ss = 0.0f;
#pragma unroll
    for (int k = 0; k < M2_NORM_ITEMS; k++) {
        const int cl = threadIdx.x + k * M2_NORM_THREADS;
        v[k] = cl < p.gs ? gated(cl) : 0.0f;
        ss += v[k] * v[k];
    }
    for (int cl = kept + threadIdx.x; cl < p.gs; cl += M2_NORM_THREADS) {
        const float y = gated(cl);
        ss += y * y;
    }
    const float scale = 1.0f / sqrtf(block_sum<M2_NORM_THREADS>(ss, red) / p.gs + p.eps);
    T *out = YN + (size_t)t * p.di + (size_t)g * p.gs;
    const float *gate = p.gate + (size_t)g * p.gs;
#pragma unroll
    for (int k = 0; k < M2_NORM_ITEMS; k++) {
        const int cl = threadIdx.x + k * M2_NORM_THREADS;
        if (cl < p.gs) out[cl] = T(gate[cl] * (v[k] * scale));
    }
    for (int cl = kept + threadIdx.x; cl < p.gs; cl += M2_NORM_THREADS) out[cl] = T(gate[cl] * (gated(cl) * scale));
}

/* ----------------------------------------------------------------------------------------
 * The host side: the scratch, the steps of a layer, the pass. */

/* The activations, carved from the pass scratch: what both kinds of pass use, then the prompt's
 * and the batched step's buffers overlaid (a pass uses one of them). */
struct Mamba2Buffers {
    float *ZX;                 /* [rows, in_rows] in_proj's outputs */
    void *YN;                  /* [rows, di] T, out_proj's input */
    float *gate, *heads;       /* gathered: [n_layer, di]; [n_layer, 3 (dt_bias, A, D), nh] */
    /* the prompt (see the top of the file) */
    float *DELTA, *CS, *ED, *G, *YD, *ST, *YO;
    void *X, *XW, *BC, *M, *SE;
    /* the batched step */
    float *U, *Y;              /* [rows, conv_dim] the conv's outputs; [rows, di] y before the gate */
};

static size_t mamba2_buffers(const GpuEngine *g, size_t cap, char *base, Mamba2Buffers *b) {
    const StepArgs &a = g->step;
    const size_t es = dtype_size(g->c.dtype), f = sizeof(float), di = a.di, ns = a.ns;
    const size_t Lp = (cap + SSD_CHUNK - 1) / SSD_CHUNK * SSD_CHUNK, chunks = Lp / SSD_CHUNK;
    size_t top = 0;
    const size_t zx = carve(&top, cap * a.in_rows * f), yn = carve(&top, cap * di * es);
    const size_t gate = carve(&top, (size_t)a.n_layer * di * f), heads = carve(&top, (size_t)a.n_layer * 3 * a.nh * f);
    const size_t common = top;
    const size_t delta = carve(&top, a.nh * Lp * f), cs = carve(&top, a.nh * Lp * f), ed = carve(&top, a.nh * Lp * f);
    const size_t x = carve(&top, di * Lp * es), xw = carve(&top, di * Lp * es), bc = carve(&top, a.ng * Lp * 2 * ns * es);
    const size_t G = carve(&top, a.ng * Lp * SSD_CHUNK * f), M = carve(&top, a.nh * Lp * SSD_CHUNK * es);
    const size_t yd = carve(&top, di * Lp * f), st = carve(&top, chunks * ns * di * f), se = carve(&top, chunks * ns * di * es);
    const size_t yo = carve(&top, di * Lp * f);
    const size_t prompt_end = top;
    top = common;
    const size_t u = carve(&top, cap * a.conv_dim * f), y = carve(&top, cap * di * f);
    if (base) {
        auto F = [base](size_t at) { return (float *)(base + at); };
        *b = Mamba2Buffers{F(zx), base + yn, F(gate), F(heads), F(delta), F(cs), F(ed), F(G), F(yd), F(st), F(yo),
                           base + x, base + xw, base + bc, base + M, base + se, F(u), F(y)};
    }
    return prompt_end > top ? prompt_end : top;
}

size_t mamba2_pass_scratch(const GpuEngine *g, size_t cap) { return mamba2_buffers(g, cap, NULL, NULL); }

static Mamba2PassArgs mamba2_pass_args(const GpuEngine *g, int S, int L) {
    const StepArgs &a = g->step;
    Mamba2PassArgs p;
    p.S = S, p.L = L, p.rows = S * L;
    p.Lp = round_up(L, SSD_CHUNK), p.n_chunks = p.Lp / SSD_CHUNK, p.layer = 0;
    p.di = a.di, p.ns = a.ns, p.nsp = a.nsp, p.nh = a.nh, p.hd = a.hd, p.ng = a.ng, p.gs = a.group_size;
    p.heads_per_group = a.nh / a.ng, p.conv_dim = a.conv_dim, p.in_rows = a.in_rows, p.d_conv = a.d_conv, p.kcp = a.kcp;
    p.dt_lo = a.dt_lo, p.dt_hi = a.dt_hi, p.eps = a.eps, p.pl = a.pl;
    p.params = p.gate = p.dt_bias = p.A = p.D = NULL;
    p.slots = g->pass.slots, p.conv_state = a.conv_state, p.ssm_state = a.ssm_state;
    p.conv_slot = g->conv_slot, p.ssm_slot = g->ssm_slot;
    return p;
}

static void mamba2_bind_layer(const GpuEngine *g, const Mamba2Buffers &b, int l, Mamba2PassArgs *p) {
    const StepArgs &a = g->step;
    p->layer = l;
    p->params = (const float *)(a.layer0 + (size_t)l * a.layer_stride + a.lo.params);
    p->gate = b.gate + (size_t)l * a.di;
    p->dt_bias = b.heads + (size_t)l * 3 * a.nh, p->A = p->dt_bias + a.nh, p->D = p->A + a.nh;
}

static void launch_gather_params(GpuEngine *g, const Mamba2Buffers &b) {
    const StepArgs &a = g->step;
    const int n = a.n_layer * (a.di + 3 * a.nh);
    mamba2_gather_params<<<(n + 255) / 256, 256, 0, g->stream>>>(a, b.gate, b.heads);
    LAUNCH_CHECK("mamba2_gather_params");
}

static cudaDataType mamba2_input_type(const GpuEngine *g) {
    return g->c.dtype == DTYPE_F32 ? CUDA_R_32F : g->c.dtype == DTYPE_F16 ? CUDA_R_16F : CUDA_R_16BF;
}

/* C_i = op(A_i) · op(B_i) for i < batch (column-major, X_i = X + i·stride_X elements), A and B in
 * the weights' dtype, C in fp32, fp32 accumulation. */
static void ssd_gemm(GpuEngine *g, bool transpose_a, bool transpose_b, int m, int n, int k, const void *A, int lda,
                     long long stride_a, const void *B, int ldb, long long stride_b, float *C, int ldc, long long stride_c,
                     int batch) {
    const float one = 1.0f, zero = 0.0f;
    const cudaDataType t = mamba2_input_type(g);
    BLAS_CHECK(g, g->blas.gemm_strided_batched(g->blas_handle, transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                                               transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &one, A, t, lda, stride_a, B,
                                               t, ldb, stride_b, &zero, C, CUDA_R_32F, ldc, stride_c, batch,
                                               CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/* The steps of the SSD mixer, in order (the top of the file); each a function so that the
 * benchmark can time it alone. In the products' column-major terms a row-major [rows][cols]
 * block is a cols × rows matrix with leading dimension cols. */
template <typename T>
static void ssd_step_decays(GpuEngine *g, const Mamba2PassArgs &p, const Mamba2Buffers &b) {
    ssd_chunk_decays<<<dim3(p.n_chunks, p.nh), SSD_CHUNK, 0, g->stream>>>(p, b.ZX, b.DELTA, b.CS, b.ED);
    LAUNCH_CHECK("ssd_chunk_decays");
}

template <typename T>
static void ssd_step_conv(GpuEngine *g, const Mamba2PassArgs &p, const Mamba2Buffers &b) {
    const dim3 grid((p.conv_dim + SSD_CONV_THREADS - 1) / SSD_CONV_THREADS, p.Lp / SSD_CONV_SPAN);
    ssd_conv_tokens<T><<<grid, SSD_CONV_THREADS, 0, g->stream>>>(p, b.ZX, b.DELTA, b.ED, (T *)b.X, (T *)b.XW, (T *)b.BC);
    LAUNCH_CHECK("ssd_conv_tokens");
}

/* G[s, t] = B_s · C_t per (group, chunk): stored [t][s], the row of token t. */
template <typename T>
static void ssd_step_cb(GpuEngine *g, const Mamba2PassArgs &p, const Mamba2Buffers &b) {
    const int Q = SSD_CHUNK, ld = 2 * p.ns;
    const T *BC = (const T *)b.BC;
    ssd_gemm(g, true, false, Q, Q, p.ns, BC, ld, (long long)Q * ld, BC + p.ns, ld, (long long)Q * ld, b.G, Q, (long long)Q * Q,
             p.ng * p.n_chunks);
}

template <typename T>
static void ssd_step_weights(GpuEngine *g, const Mamba2PassArgs &p, const Mamba2Buffers &b) {
    ssd_intra_chunk_weights<T><<<dim3(p.n_chunks, p.nh), 256, 0, g->stream>>>(p, b.G, b.DELTA, b.CS, (T *)b.M);
    LAUNCH_CHECK("ssd_intra_chunk_weights");
}

/* YD[t][:] = Σ_s M[t][s] · x_s per (head, chunk): hd × Q = (hd × Q) · (Q × Q). */
template <typename T>
static void ssd_step_diagonal(GpuEngine *g, const Mamba2PassArgs &p, const Mamba2Buffers &b) {
    const int Q = SSD_CHUNK;
    ssd_gemm(g, false, false, p.hd, Q, Q, b.X, p.hd, (long long)Q * p.hd, b.M, Q, (long long)Q * Q, b.YD, p.hd,
             (long long)Q * p.hd, p.nh * p.n_chunks);
}

/* ST[n][c] = Σ_s XW[s][c] · B_s[n] per (group, chunk): gs × ns = (gs × Q) · (Q × ns). */
template <typename T>
static void ssd_step_chunk_states(GpuEngine *g, const Mamba2PassArgs &p, const Mamba2Buffers &b) {
    const int Q = SSD_CHUNK, ld = 2 * p.ns;
    ssd_gemm(g, false, true, p.gs, p.ns, Q, b.XW, p.gs, (long long)Q * p.gs, b.BC, ld, (long long)Q * ld, b.ST, p.gs,
             (long long)p.ns * p.gs, p.ng * p.n_chunks);
}

template <typename T>
static void ssd_step_pass_states(GpuEngine *g, const Mamba2PassArgs &p, const Mamba2Buffers &b) {
    const dim3 grid((p.gs + SSD_TILE - 1) / SSD_TILE, (p.ns + SSD_TILE - 1) / SSD_TILE, p.ng);
    ssd_pass_states<T><<<grid, dim3(SSD_TILE, SSD_TILE_ROWS), 0, g->stream>>>(p, b.ST, b.CS, (T *)b.SE);
    LAUNCH_CHECK("ssd_pass_states");
}

/* YO[t][c] = Σ_n S_k[n][c] · C_t[n] per (group, chunk): gs × Q = (gs × ns) · (ns × Q). */
template <typename T>
static void ssd_step_entering_states(GpuEngine *g, const Mamba2PassArgs &p, const Mamba2Buffers &b) {
    const int Q = SSD_CHUNK, ld = 2 * p.ns;
    const T *BC = (const T *)b.BC;
    ssd_gemm(g, false, false, p.gs, Q, p.ns, b.SE, p.gs, (long long)p.ns * p.gs, BC + p.ns, ld, (long long)Q * ld, b.YO, p.gs,
             (long long)Q * p.gs, p.ng * p.n_chunks);
}

template <typename T, typename Source>
static void launch_gated_norm(GpuEngine *g, const Mamba2PassArgs &p, const Mamba2Buffers &b, const Source &y_of) {
    mamba2_gated_norm_rows<T, Source><<<dim3(p.rows, p.ng), M2_NORM_THREADS, 0, g->stream>>>(p, y_of, b.ZX, (T *)b.YN);
    LAUNCH_CHECK("mamba2_gated_norm_rows");
}

template <typename T>
static void ssd_step_gated_norm(GpuEngine *g, const Mamba2PassArgs &p, const Mamba2Buffers &b) {
    launch_gated_norm<T>(g, p, b, SsdChunkOutput{b.YD, b.YO, b.CS, p.Lp, p.hd, p.gs, p.heads_per_group});
}

/* The prompt's mixer, ZX → YN (S = 1). */
template <typename T>
static void ssd_mixer(GpuEngine *g, const Mamba2PassArgs &p, const Mamba2Buffers &b) {
    ssd_step_decays<T>(g, p, b);
    ssd_step_conv<T>(g, p, b);
    ssd_step_cb<T>(g, p, b);
    ssd_step_weights<T>(g, p, b);
    ssd_step_diagonal<T>(g, p, b);
    ssd_step_chunk_states<T>(g, p, b);
    ssd_step_pass_states<T>(g, p, b);
    ssd_step_entering_states<T>(g, p, b);
    ssd_step_gated_norm<T>(g, p, b);
}

/* The batched step's mixer, ZX → YN (L = 1). */
template <typename T>
static void recurrent_mixer(GpuEngine *g, const Mamba2PassArgs &p, const Mamba2Buffers &b) {
    const size_t conv_threads = (size_t)p.rows * p.conv_dim, scan_threads = (size_t)p.rows * p.di * M2_SCAN_LANES;
    mamba2_conv_rows<<<(unsigned)((conv_threads + 255) / 256), 256, 0, g->stream>>>(p, b.ZX, b.U);
    LAUNCH_CHECK("mamba2_conv_rows");
    mamba2_scan_rows<<<(unsigned)((scan_threads + 255) / 256), 256, 0, g->stream>>>(p, b.ZX, b.U, b.Y);
    LAUNCH_CHECK("mamba2_scan_rows");
    launch_gated_norm<T>(g, p, b, RowOutput{b.Y, p.di, p.gs});
}

/* One layer on the pass's rows: X += out_proj · mixer(in_proj · RMSNorm(X)). */
template <typename T>
static void enqueue_mamba2_layer(GpuEngine *g, const Mamba2PassArgs &p, const Mamba2Buffers &b, bool ssd) {
    const StepArgs &a = g->step;
    const char *base = a.layer0 + (size_t)p.layer * a.layer_stride;
    norm_pass_rows(g, p.rows, (const float *)(base + a.lo.norm));
    gemm(g, true, false, a.in_rows, p.rows, a.dmp, base + a.lo.in_proj, a.dmp, g->pass.XN, a.dmp, b.ZX, a.in_rows, false);
    if (ssd) ssd_mixer<T>(g, p, b);
    else recurrent_mixer<T>(g, p, b);
    gemm(g, false, false, a.dmp, p.rows, a.di, base + a.lo.out_proj_t, a.dmp, b.YN, a.di, g->pass.X, a.dmp, true);
}

/* The pass over all layers, by the SSD algorithm (S = 1) or one recurrent step a row (L = 1). */
template <typename T>
static void enqueue_mamba2_pass(GpuEngine *g, int S, int L, bool want_logits, bool ssd) {
    Mamba2Buffers b;
    mamba2_buffers(g, g->pass.cap, g->pass.scratch, &b);
    Mamba2PassArgs p = mamba2_pass_args(g, S, L);
    embed_pass_rows(g, p.rows);
    launch_gather_params(g, b);
    for (int l = 0; l < g->step.n_layer; l++) {
        mamba2_bind_layer(g, b, l, &p);
        enqueue_mamba2_layer<T>(g, p, b, ssd);
    }
    if (want_logits) pass_logits(g, p.rows);
}

void mamba2_run_pass(GpuEngine *g, int S, int L, bool want_logits) {
    if (S < 1 || L < 1 || (S > 1 && L > 1) || (size_t)S * L > (size_t)g->pass.cap ||
        (want_logits && S * L > g->pass.logit_rows)) {
        fprintf(stderr, "mamba: error: internal: a Mamba-2 pass of %d sequences x %d tokens (one sequence or one token each, "
                        "at most %d rows)\n", S, L, g->pass.cap);
        exit(1);
    }
    const bool ssd = L > 1;
    if (g->c.dtype == DTYPE_F32) enqueue_mamba2_pass<float>(g, S, L, want_logits, ssd);
    else if (g->c.dtype == DTYPE_F16) enqueue_mamba2_pass<__half>(g, S, L, want_logits, ssd);
    else enqueue_mamba2_pass<__nv_bfloat16>(g, S, L, want_logits, ssd);
}
