/* prefill.cu: the CUDA engine's path for many tokens at once (kernels.cu has the one-token
 * decode step): the prompt pass and the batched step, their kernels and their cuBLAS products
 * (cuBLAS is opened at run time, with dlopen). */
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>

#include "gpu_device.cuh"
#include "gpu_internal.cuh"

/* ----------------------------------------------------------------------------------------
 * Many tokens at once: the prompt pass (one sequence, L tokens) and the batched step (B
 * sequences, one token each) share one layout, S sequences × L tokens = rows, row r = s·L + t.
 * The projections are matrix products over all rows (cuBLAS, fp32 accumulation); the kernels
 * below do what lies between them. The residual X and its norm XN are row-major [rows, d_model].
 * The activations inside a block (XZ, U, DBC, DT, DELTA, Y) are channel-major [channel, ld] in
 * the prompt pass (ld = rows rounded up to 8), so a channel's tokens lie together for the conv
 * and the scan, and row-major [rows, width] in the batched step, whose products cuBLAS runs
 * faster that way round. State lives in slots: conv [slot, layer, di, kcp] and SSM [slot, layer,
 * di, nsp]; sequence s of a pass uses slot slots[s]. */

struct PassArgs {
    int S, L, rows;
    bool by_channel;          /* the activations' layout: channel-major (ld apart), else row-major */
    int ld;
    const int *slots;         /* [S] */
    int layer;
    int di, dm, dmp, d_conv, kcp, ns, nsp, dt_rank, rkp, Rp;
    ParamLayout pl;
    const float *params;      /* the layer's [di, stride] */
    float *conv_state, *ssm_state;   /* slot 0, layer 0 */
    size_t conv_slot, ssm_slot;      /* floats per slot */
};

/* Where (row r, channel c) of an activation `width` channels wide lies. */
__device__ __forceinline__ size_t at(const PassArgs &p, int c, int r, int width) {
    return p.by_channel ? (size_t)c * p.ld + r : (size_t)r * width + c;
}

/* X[r] = embedding row of tokens[r], in fp32. */
template <typename T>
__global__ void embed_rows(const T *emb, const int *tokens, int dmp, float *X) {
    const T *e = emb + (size_t)tokens[blockIdx.x] * dmp;
    for (int i = threadIdx.x; i < dmp; i += blockDim.x) X[(size_t)blockIdx.x * dmp + i] = to_f32(e[i]);
}

/* XN[r] = RMSNorm(X[r]) · w in the weights' dtype (the next product's input); one block a row. */
template <typename T>
__global__ void __launch_bounds__(256) rmsnorm_rows(const float *X, const float *w, int dm, int dmp, float eps, T *XN) {
    __shared__ float red[8];
    const float *x = X + (size_t)blockIdx.x * dmp;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dmp; i += 256) ss += x[i] * x[i];
    const float scale = 1.0f / sqrtf(block_sum<256>(ss, red) / dm + eps);
    for (int i = threadIdx.x; i < dmp; i += 256) XN[(size_t)blockIdx.x * dmp + i] = T(w[i] * (x[i] * scale));
}

/* The causal depthwise conv1d over each sequence's tokens, then SiLU: u = SiLU(b + Σ_k w[k] ·
 * x[t - (d_conv-1) + k]), where inputs before the pass come from the slot's conv state (which
 * holds the last d_conv inputs, oldest first); u goes out both in fp32 (the scan) and in the
 * weights' dtype (x_proj's input). conv_rows: one (row, channel) a thread, for the batched step;
 * conv_tokens: CONV_ITEMS consecutive tokens of a channel a thread, for the prompt pass. */
template <typename T>
__global__ void conv_rows(const PassArgs p, const float *XZ, float *U, T *U16) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)p.rows * p.di) return;
    const int r = (int)(i / p.di), c = (int)(i - (size_t)r * p.di), s = r / p.L, t = r - s * p.L;
    const float *w = p.params + (size_t)c * p.pl.stride;
    const float *state = p.conv_state + p.slots[s] * p.conv_slot + ((size_t)p.layer * p.di + c) * p.kcp;
    float acc = w[p.pl.conv_b];
    for (int k = 0; k < p.d_conv; k++) {
        const int tau = t - (p.d_conv - 1) + k;
        acc += w[k] * (tau >= 0 ? XZ[at(p, c, r - t + tau, 2 * p.di)] : state[p.d_conv + tau]);
    }
    const float u = silu(acc);
    U[at(p, c, r, p.di)] = u;
    U16[at(p, c, r, p.di)] = T(u);
}

/* Store N values, converted to T, at dst: as 8-byte words when all N are wanted and dst allows,
 * else the first `count` one by one. */
template <int N, typename T>
__device__ __forceinline__ void store_converted(T *dst, const float *v, int count) {
    union {
        T e[N];
        uint2 q[N * sizeof(T) / 8];
    } out;
#pragma unroll
    for (int i = 0; i < N; i++) out.e[i] = T(v[i]);
    if (count >= N && ((uintptr_t)dst & 7) == 0) {
#pragma unroll
        for (int k = 0; k < (int)(N * sizeof(T) / 8); k++) ((uint2 *)dst)[k] = out.q[k];
    } else {
#pragma unroll
        for (int i = 0; i < N; i++)
            if (i < count) dst[i] = out.e[i];
    }
}

constexpr int CONV_ITEMS = 4;

/* Grid: (token groups, channels, S); channel-major. The thread's inputs are a sliding window. */
template <typename T>
__global__ void conv_tokens(const PassArgs p, const float *XZ, float *U, T *U16) {
    const int t0 = (blockIdx.x * blockDim.x + threadIdx.x) * CONV_ITEMS, c = blockIdx.y, s = blockIdx.z, K = p.d_conv;
    if (t0 >= p.L) return;
    const float *w = p.params + (size_t)c * p.pl.stride;
    const float *state = p.conv_state + p.slots[s] * p.conv_slot + ((size_t)p.layer * p.di + c) * p.kcp;
    const size_t row = (size_t)c * p.ld + (size_t)s * p.L;
    float win[CONV_MAX - 1 + CONV_ITEMS];   /* inputs t0 - (K-1) … t0 + CONV_ITEMS - 1 */
#pragma unroll
    for (int j = 0; j < CONV_MAX - 1 + CONV_ITEMS; j++) {
        const int tau = t0 - (K - 1) + j;
        win[j] = j >= K - 1 + CONV_ITEMS ? 0.0f : tau < 0 ? state[K + tau] : tau < p.L ? XZ[row + tau] : 0.0f;
    }
    float u[CONV_ITEMS];
#pragma unroll
    for (int i = 0; i < CONV_ITEMS; i++) {
        float acc = w[p.pl.conv_b];
#pragma unroll
        for (int k = 0; k < CONV_MAX; k++)
            if (k < K) acc += w[k] * win[i + k];
        u[i] = silu(acc);
    }
    store_converted<CONV_ITEMS>(U + row + t0, u, p.L - t0);
    store_converted<CONV_ITEMS>(U16 + row + t0, u, p.L - t0);
}

/* After conv_rows: each slot's conv state becomes its last d_conv inputs. */
__global__ void conv_state_update(const PassArgs p, const float *XZ) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.S * p.di) return;
    const int s = i / p.di, c = i - s * p.di;
    float *state = p.conv_state + p.slots[s] * p.conv_slot + ((size_t)p.layer * p.di + c) * p.kcp;
    float old[CONV_MAX], in[CONV_MAX];
    for (int k = 0; k < p.d_conv; k++) old[k] = state[k];
    for (int k = 0; k < p.d_conv; k++) {
        const int tau = p.L - p.d_conv + k;
        in[k] = tau >= 0 ? XZ[at(p, c, s * p.L + tau, 2 * p.di)] : old[p.d_conv + tau];
    }
    for (int k = 0; k < p.d_conv; k++) state[k] = in[k];
}

/* DT = dt (the first dt_rank outputs of x_proj) in the weights' dtype, padded to rkp with zeros:
 * dt_proj's input. Grid: (row blocks, rkp). */
template <typename T>
__global__ void dt_rows(const PassArgs p, const float *DBC, T *DT) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x, k = blockIdx.y;
    if (r < p.rows) DT[at(p, k, r, p.rkp)] = T(k < p.dt_rank ? DBC[at(p, k, r, p.Rp)] : 0.0f);
}

/* Falcon-Mamba: dt (its first dt_rank outputs), B and C of each row of DBC divided by their
 * RMS (no weight), in place. Grid: (rows, 3 parts); a warp each. */
__global__ void normalize_dbc_rows(const PassArgs p, float *DBC, float eps) {
    const int r = blockIdx.x, part = blockIdx.y, lane = threadIdx.x;
    const int begin = part == 0 ? 0 : p.dt_rank + (part - 1) * p.ns, len = part == 0 ? p.dt_rank : p.ns;
    float ss = 0.0f;
    for (int k = lane; k < len; k += 32) ss += DBC[at(p, begin + k, r, p.Rp)] * DBC[at(p, begin + k, r, p.Rp)];
    const float scale = 1.0f / sqrtf(warp_sum(ss) / len + eps);
    for (int k = lane; k < len; k += 32) DBC[at(p, begin + k, r, p.Rp)] *= scale;
}

constexpr int SCAN_WARPS = 8;                  /* channels a block, a warp each; they share the staged B and C */
constexpr int SCAN_ITEMS = 8;                  /* consecutive tokens a lane holds */
constexpr int SCAN_CHUNK = 32 * SCAN_ITEMS;    /* tokens a warp scans at once */
constexpr int SCAN_LANES = 8;                  /* scan_step: lanes per (sequence, channel), */
constexpr float LOG2E = 1.4426950408889634f;

/* Shared memory of selective_scan: B and C for a chunk. */
static size_t scan_smem_bytes(int ns) { return (size_t)2 * ns * SCAN_CHUNK * sizeof(float); }

/* 2^x in one instruction (the step and the CPU use expf; the two differ by about 1e-7 relative). */
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* A staged row of B or C holds SCAN_CHUNK/4 float4 units; unit u is kept at u ^ bit 3 of u, so
 * that the eight lanes of a quarter warp, each reading units 2l and 2l + 1, hit eight banks. */
__device__ __forceinline__ int swizzle_unit(int u) { return u ^ ((u >> 3) & 1); }

/* A lane's SCAN_ITEMS values of a channel's row from token `first`, those at or past n zero. */
__device__ __forceinline__ void load_span(const float *row, int first, int n, float *v) {
    if (first + SCAN_ITEMS <= n && ((uintptr_t)(row + first) & 15) == 0) {
#pragma unroll
        for (int i = 0; i < SCAN_ITEMS; i += 4) {
            const float4 q = *(const float4 *)(row + first + i);
            v[i] = q.x, v[i + 1] = q.y, v[i + 2] = q.z, v[i + 3] = q.w;
        }
    } else {
#pragma unroll
        for (int i = 0; i < SCAN_ITEMS; i++) v[i] = first + i < n ? row[first + i] : 0.0f;
    }
}

/* 16 bytes from global to shared memory without passing through registers (Ampere's cp.async). */
__device__ __forceinline__ void copy16_async(float *dst, const float *src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(dst)), "l"(__cvta_generic_to_global(src))
                 : "memory");
}
__device__ __forceinline__ void wait_async_copies() { asm volatile("cp.async.wait_all;" ::: "memory"); }

/* A lane's SCAN_ITEMS values of a staged (swizzled) row of B or C. */
__device__ __forceinline__ void load_staged(const float *row, int lane, float *v) {
#pragma unroll
    for (int q = 0; q < SCAN_ITEMS / 4; q++) {
        const float4 f = ((const float4 *)row)[swizzle_unit(lane * (SCAN_ITEMS / 4) + q)];
        v[4 * q] = f.x, v[4 * q + 1] = f.y, v[4 * q + 2] = f.z, v[4 * q + 3] = f.w;
    }
}

/* The selective scan over each sequence's tokens, as the Mamba paper's hardware-aware algorithm
 * (h stays on chip, only y is written), parallel over channels and over time. A block takes
 * SCAN_WARPS channels, a warp one channel, and walks the sequence SCAN_CHUNK tokens at a time;
 * each lane holds SCAN_ITEMS consecutive tokens: its Δ = softplus(dt_proj·dt + bias), u and z
 * straight from the channel's rows, B and C from shared memory (the block's channels share them;
 * reading them from L1 instead, with no block synchronization, measured 45% slower).
 * The recurrence h_t = a_t·h_{t-1} + b_t, with a_t = exp(Δ_t·A) and b_t = Δ_t·u_t·B_t, composes
 * affine maps, which is associative; so for each state:
 *   1. each lane runs its tokens from h = 0, giving its span's map h ↦ Πa·h + h_local,
 *   2. a warp scan (shuffles) composes the lanes' maps in order: each lane learns the state before
 *      its span from the state before the chunk, and lane 31 the state after the chunk,
 *   3. each lane runs its tokens again from that state, adding C_t·h_t to y_t.
 * Then y = (Σ_n C·h + D·u)·SiLU(z). Grid: (channel groups, S); shared memory scan_smem_bytes(ns). */
template <typename T>
__global__ void __launch_bounds__(SCAN_WARPS * 32, 4) selective_scan(const PassArgs p, const float *DELTA, const float *U,
                                                                     const float *XZ, const float *DBC, T *Y) {
    extern __shared__ __align__(16) float scan_smem[];
    float *sB = scan_smem, *sC = scan_smem + p.ns * SCAN_CHUNK;   /* [ns][SCAN_CHUNK] each */
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, ns = p.ns, first = lane * SCAN_ITEMS;
    const int c = blockIdx.x * SCAN_WARPS + warp, s = blockIdx.y;
    const bool active = c < p.di;
    const int cc = active ? c : 0;
    const float *w = p.params + (size_t)cc * p.pl.stride;
    const float dt_bias = w[p.pl.dt_bias], Dc = w[p.pl.D];
    float *saved = p.ssm_state + p.slots[s] * p.ssm_slot + ((size_t)p.layer * p.di + cc) * p.nsp;
    /* per state n, in lane n % 32, register n / 32: A·log2(e) (exp(Δ·A) = 2^(Δ·A2)), and the state
     * carried between chunks */
    float A2[2], carry[2];
#pragma unroll
    for (int k = 0; k < 2; k++) {
        const int n = lane + 32 * k;
        A2[k] = n < ns ? w[p.pl.A + n] * LOG2E : 0.0f;
        carry[k] = active && n < ns ? saved[n] : 0.0f;
    }
    const size_t row0 = (size_t)s * p.L, mine = (size_t)cc * p.ld + row0;
    for (int t0 = 0; t0 < p.L; t0 += SCAN_CHUNK) {
        const int nt = min(SCAN_CHUNK, p.L - t0);
        /* B and C of the chunk into shared memory, copied while this lane's Δ and u load */
        __syncthreads();   /* the previous chunk's B and C are used up */
        for (int i = threadIdx.x; i < 2 * ns * (SCAN_CHUNK / 4); i += blockDim.x) {
            const int n = i / (SCAN_CHUNK / 4), u = i % (SCAN_CHUNK / 4);
            const float *src = DBC + (size_t)(p.dt_rank + n) * p.ld + row0 + t0 + 4 * u;
            float *dst = scan_smem + n * SCAN_CHUNK + 4 * swizzle_unit(u);
            if (4 * u + 4 <= nt && ((uintptr_t)src & 15) == 0)
                copy16_async(dst, src);
            else
                for (int k = 0; k < 4; k++) dst[k] = 4 * u + k < nt ? src[k] : 0.0f;
        }
        /* tokens past the end get Δ = 0 and u = 0: a = 1, b = 0, the identity */
        float delta[SCAN_ITEMS], du[SCAN_ITEMS], y[SCAN_ITEMS];
        load_span(DELTA + mine + t0, first, nt, delta);
        load_span(U + mine + t0, first, nt, du);
        float delta_sum = 0.0f;
#pragma unroll
        for (int i = 0; i < SCAN_ITEMS; i++) {
            delta[i] = first + i < nt ? softplus_fast(delta[i] + dt_bias) : 0.0f;
            du[i] *= delta[i];
            delta_sum += delta[i];
            y[i] = 0.0f;
        }
        wait_async_copies();
        __syncthreads();
        for (int n = 0; n < ns; n++) {
            const float a2 = __shfl_sync(FULL_MASK, n < 32 ? A2[0] : A2[1], n % 32);
            float a[SCAN_ITEMS], b[SCAN_ITEMS];
            load_staged(sB + n * SCAN_CHUNK, lane, b);
            /* 1. my span from h = 0: h_local and Πa = 2^(A2·ΣΔ) */
            float h = 0.0f, prod = fast_exp2(a2 * delta_sum);
#pragma unroll
            for (int i = 0; i < SCAN_ITEMS; i++) {
                a[i] = fast_exp2(delta[i] * a2);
                b[i] *= du[i];
                h = a[i] * h + b[i];
            }
            /* 2. compose the spans' maps, earlier lanes first: (P, H) after (p, q) is (P·p, P·q + H) */
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const float p_up = __shfl_up_sync(FULL_MASK, prod, o), h_up = __shfl_up_sync(FULL_MASK, h, o);
                if (lane >= o) {
                    h = prod * h_up + h;
                    prod *= p_up;
                }
            }
            const float before_chunk = __shfl_sync(FULL_MASK, n < 32 ? carry[0] : carry[1], n % 32);
            const float after_me = prod * before_chunk + h;
            const float after_left = __shfl_up_sync(FULL_MASK, after_me, 1);   /* every lane takes part */
            const float after_chunk = __shfl_sync(FULL_MASK, after_me, 31);
            if (lane == n % 32) carry[n / 32] = after_chunk;
            /* 3. my tokens' states from the one before my span, and their part of y */
            float cv[SCAN_ITEMS];
            load_staged(sC + n * SCAN_CHUNK, lane, cv);
            h = lane ? after_left : before_chunk;
#pragma unroll
            for (int i = 0; i < SCAN_ITEMS; i++) {
                h = a[i] * h + b[i];
                y[i] += cv[i] * h;
            }
        }
        /* y = (C·h + D·u)·SiLU(z) */
        float u[SCAN_ITEMS], z[SCAN_ITEMS];
        load_span(U + mine + t0, first, nt, u);
        load_span(XZ + (size_t)p.di * p.ld + mine + t0, first, nt, z);
#pragma unroll
        for (int i = 0; i < SCAN_ITEMS; i++) y[i] = (y[i] + Dc * u[i]) * silu_fast(z[i]);
        if (active) store_converted<SCAN_ITEMS>(Y + mine + t0 + first, y, nt - first);
    }
#pragma unroll
    for (int k = 0; k < 2; k++)
        if (active && lane + 32 * k < ns) saved[lane + 32 * k] = carry[k];
}

/* One step of the scan for each of S sequences (a pass of one token a sequence: the batched
 * decode step, row-major): a group of SCAN_LANES lanes per (sequence, channel), no staging,
 * every group independent, so the whole batch runs at once. */
template <typename T, int PL>
__global__ void __launch_bounds__(256) scan_step(const PassArgs p, const float *DELTA, const float *U, const float *XZ,
                                                 const float *DBC, T *Y) {
    const int g = (blockIdx.x * blockDim.x + threadIdx.x) / SCAN_LANES, lane_n = threadIdx.x % SCAN_LANES;
    const int s = g / p.di, c = g - s * p.di;
    const bool active = s < p.S;
    const int r = active ? s : 0, cc = active ? c : 0;
    const float *w = p.params + (size_t)cc * p.pl.stride, *B = DBC + (size_t)r * p.Rp + p.dt_rank, *C = B + p.ns;
    const float delta = softplus(DELTA[(size_t)r * p.di + cc] + w[p.pl.dt_bias]), u = U[(size_t)r * p.di + cc];
    float *saved = p.ssm_state + p.slots[r] * p.ssm_slot + ((size_t)p.layer * p.di + cc) * p.nsp;
    float y = 0.0f;
#pragma unroll
    for (int q = 0; q < PL; q++) {
        const int n = lane_n * PL + q;
        if (active && n < p.ns) {
            const float h = expf(delta * w[p.pl.A + n]) * saved[n] + delta * u * B[n];
            saved[n] = h;
            y += h * C[n];
        }
    }
#pragma unroll
    for (int o = SCAN_LANES / 2; o > 0; o >>= 1) y += __shfl_xor_sync(FULL_MASK, y, o);
    if (active && lane_n == 0)
        Y[(size_t)r * p.di + cc] = T((y + w[p.pl.D] * u) * silu(XZ[(size_t)r * 2 * p.di + p.di + cc]));
}

/* The instance of scan_step for a number of states: PL, a power of two, per lane. */
template <typename T>
static const void *scan_step_for(int ns) {
    const int per_lane = (ns + SCAN_LANES - 1) / SCAN_LANES;
    if (per_lane <= 1) return (const void *)scan_step<T, 1>;
    if (per_lane <= 2) return (const void *)scan_step<T, 2>;
    if (per_lane <= 4) return (const void *)scan_step<T, 4>;
    return (const void *)scan_step<T, 8>;
}

/* Appends n prompt tokens to the repetition penalty's history (the single sequence's). */
__global__ void append_history(const int *tokens, int n, int *history, unsigned long long *n_run) {
    const unsigned long long run = *n_run;
    for (int i = threadIdx.x; i < n; i += blockDim.x) history[(run + i) % HISTORY_CAP] = tokens[i];
    __syncthreads();
    if (threadIdx.x == 0) *n_run = run + n;
}

/* ----------------------------------------------------------------------------------------
 * The host side: cuBLAS (loaded when the engine starts), the pass buffers, the pass over all
 * layers, the prompt pass chunk by chunk, and the batched step, one CUDA graph per batch size
 * class (powers of two; unused rows run token 0 in a scratch slot). */

constexpr size_t BLAS_WORKSPACE = 32u << 20; /* cuBLAS's workspace, set so that graphs can capture it */

bool blas_load(Blas *b, char *err, size_t err_len) {
    const char *names[] = {"libcublas.so.13", "libcublas.so"};
    for (const char *name : names)
        if ((b->lib = dlopen(name, RTLD_NOW | RTLD_LOCAL))) break;
    if (!b->lib) {
        snprintf(err, err_len, "cuBLAS (libcublas.so.13) was not found: add the CUDA toolkit's lib64 to LD_LIBRARY_PATH");
        return false;
    }
    b->create = (decltype(b->create))dlsym(b->lib, "cublasCreate_v2");
    b->destroy = (decltype(b->destroy))dlsym(b->lib, "cublasDestroy_v2");
    b->set_stream = (decltype(b->set_stream))dlsym(b->lib, "cublasSetStream_v2");
    b->set_workspace = (decltype(b->set_workspace))dlsym(b->lib, "cublasSetWorkspace_v2");
    b->set_math_mode = (decltype(b->set_math_mode))dlsym(b->lib, "cublasSetMathMode");
    b->gemm = (decltype(b->gemm))dlsym(b->lib, "cublasGemmEx");
    b->gemm_strided_batched = (decltype(b->gemm_strided_batched))dlsym(b->lib, "cublasGemmStridedBatchedEx");
    b->gemm_batched = (decltype(b->gemm_batched))dlsym(b->lib, "cublasGemmBatchedEx");
    b->status_name = (decltype(b->status_name))dlsym(b->lib, "cublasGetStatusName");
    if (!b->create || !b->destroy || !b->set_stream || !b->set_workspace || !b->set_math_mode || !b->gemm ||
        !b->gemm_strided_batched || !b->gemm_batched || !b->status_name) {
        snprintf(err, err_len, "the cuBLAS library found lacks a function the engine needs");
        dlclose(b->lib);
        b->lib = NULL;
        return false;
    }
    return true;
}

/* The smallest batch size class (a power of two) that holds n rows. */
static int batch_class(int n) {
    int k = 0;
    while ((1 << k) < n) k++;
    return k;
}

void blas_check(const Blas &b, cublasStatus_t st, const char *call, const char *file, int line) {
    if (st == CUBLAS_STATUS_SUCCESS) return;
    fprintf(stderr, "mamba: error: cuBLAS call %s failed at %s:%d: %s\n", call, file, line, b.status_name(st));
    exit(1);
}

/* The buffers of the passes: for the prompt's chunks or a batch, whichever is larger. */
PassLayout plan_pass_buffers(const GpuEngine *g) {
    const StepArgs &a = g->step;
    const size_t es = dtype_size(g->c.dtype), vocab_bytes = (size_t)a.vocab * sizeof(float);
    PassLayout pl;
    pl.max_rows = 1 << batch_class(g->max_batch);
    pl.cap = PREFILL_CHUNK > pl.max_rows ? PREFILL_CHUNK : pl.max_rows;
    pl.logit_rows = pl.max_rows > PREFILL_LOGIT_ROWS ? pl.max_rows : PREFILL_LOGIT_ROWS;
    const size_t cap = pl.cap;
    size_t top = 0;
    pl.X = carve(&top, cap * a.dmp * 4), pl.logits = carve(&top, (size_t)pl.logit_rows * vocab_bytes);
    pl.XN = carve(&top, cap * a.dmp * es), pl.scratch = carve(&top, g->arch->pass_scratch(g, cap));
    pl.ints = carve(&top, 2 * cap * sizeof(int)), pl.workspace = carve(&top, BLAS_WORKSPACE);
    pl.bytes = top;
    return pl;
}

/* The pass buffers in one allocation, their pinned staging, cuBLAS's handle on the engine's
 * stream with its workspace (set, so that graphs can capture the products). */
void open_passes(GpuEngine *g, const PassLayout &pl) {
    char *P = (char *)gpu_alloc(pl.bytes);
    PassBuffers &pb = g->pass;
    pb.cap = pl.cap, pb.logit_rows = pl.logit_rows;
    pb.X = (float *)(P + pl.X), pb.logits = (float *)(P + pl.logits), pb.XN = P + pl.XN, pb.scratch = P + pl.scratch;
    pb.tokens = (int *)(P + pl.ints), pb.slots = pb.tokens + pl.cap;
    g->blas_workspace = P + pl.workspace;
    g->pass_mem = P;
    CUDA_CHECK(cudaMallocHost((void **)&pb.host_tokens, 2 * (size_t)pl.cap * sizeof(int)));
    pb.host_slots = pb.host_tokens + pl.cap;
    CUDA_CHECK(cudaMallocHost((void **)&pb.host_logits, (size_t)pl.max_rows * g->c.vocab_size * sizeof(float)));
    BLAS_CHECK(g, g->blas.create(&g->blas_handle));
    BLAS_CHECK(g, g->blas.set_stream(g->blas_handle, g->stream));
    BLAS_CHECK(g, g->blas.set_workspace(g->blas_handle, g->blas_workspace, BLAS_WORKSPACE));
    BLAS_CHECK(g, g->blas.set_math_mode(g->blas_handle, CUBLAS_DEFAULT_MATH));   /* fp32 stays fp32: no TF32 */
}

/* Mamba-1's activations inside a block, carved from the pass scratch (base NULL: only sized). */
struct Mamba1Activations {
    float *XZ, *U, *DBC, *DELTA;   /* fp32 */
    void *U16, *DT, *Y;            /* in the weights' dtype */
};

static size_t mamba1_activations(const GpuEngine *g, size_t cap, char *base, Mamba1Activations *m) {
    const StepArgs &a = g->step;
    const size_t es = dtype_size(g->c.dtype);
    size_t top = 0, xz = carve(&top, cap * 2 * a.di * 4), u = carve(&top, cap * a.di * 4), dbc = carve(&top, cap * a.Rp * 4);
    size_t delta = carve(&top, cap * a.di * 4), u16 = carve(&top, cap * a.di * es), dt = carve(&top, cap * a.rkp * es);
    size_t y = carve(&top, cap * a.di * es);
    if (base)
        *m = Mamba1Activations{(float *)(base + xz), (float *)(base + u), (float *)(base + dbc), (float *)(base + delta),
                               base + u16, base + dt, base + y};
    return top;
}

size_t mamba1_pass_scratch(const GpuEngine *g, size_t cap) { return mamba1_activations(g, cap, NULL, NULL); }

/* The prompt pass's scan takes more shared memory than the default allows. */
void prepare_mamba1_pass(GpuEngine *g) {
    const void *scan = g->c.dtype == DTYPE_F32 ? (const void *)selective_scan<float>
                       : g->c.dtype == DTYPE_F16 ? (const void *)selective_scan<__half> : (const void *)selective_scan<__nv_bfloat16>;
    CUDA_CHECK(cudaFuncSetAttribute(scan, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)scan_smem_bytes(g->c.d_state)));
}

void close_passes(GpuEngine *g) {
    for (cudaGraphExec_t &x : g->batch_graph)
        if (x) CUDA_CHECK(cudaGraphExecDestroy(x));
    BLAS_CHECK(g, g->blas.destroy(g->blas_handle));
    CUDA_CHECK(cudaFree(g->pass_mem));
    CUDA_CHECK(cudaFreeHost(g->pass.host_tokens));
    CUDA_CHECK(cudaFreeHost(g->pass.host_logits));
}

/* ----------------------------------------------------------------------------------------
 * Many tokens at once: the pass over all layers, the prompt in chunks, the batched step. */

static cudaDataType weight_type(const GpuEngine *g) {
    return g->c.dtype == DTYPE_F32 ? CUDA_R_32F : g->c.dtype == DTYPE_F16 ? CUDA_R_16F : CUDA_R_16BF;
}

/* C[m, n] (column-major, fp32) = op(A) · op(B) (+ C when accumulate), A and B in the weights'
 * dtype, fp32 accumulation. */
void gemm(GpuEngine *g, bool transpose_a, bool transpose_b, int m, int n, int k, const void *A, int lda, const void *B,
          int ldb, float *C, int ldc, bool accumulate) {
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    const cudaDataType t = weight_type(g);
    BLAS_CHECK(g, g->blas.gemm(g->blas_handle, transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N, transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                               m, n, k, &one, A, t, lda, B, t, ldb, &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
}

/* The steps every architecture's pass shares, on the pass's rows: X = the tokens' embeddings;
 * XN = RMSNorm(X)·w in the weights' dtype; the logits (the final norm, then the LM head). */
template <typename T>
static void launch_embed_rows(GpuEngine *g, int rows) {
    embed_rows<T><<<rows, 256, 0, g->stream>>>((const T *)g->step.embedding, g->pass.tokens, g->step.dmp, g->pass.X);
    LAUNCH_CHECK("embed_rows");
}

template <typename T>
static void launch_rmsnorm_rows(GpuEngine *g, int rows, const float *w) {
    const StepArgs &a = g->step;
    rmsnorm_rows<T><<<rows, 256, 0, g->stream>>>(g->pass.X, w, a.dm, a.dmp, a.eps, (T *)g->pass.XN);
    LAUNCH_CHECK("rmsnorm_rows");
}

void embed_pass_rows(GpuEngine *g, int rows) {
    if (g->c.dtype == DTYPE_F32) launch_embed_rows<float>(g, rows);
    else if (g->c.dtype == DTYPE_F16) launch_embed_rows<__half>(g, rows);
    else launch_embed_rows<__nv_bfloat16>(g, rows);
}

void norm_pass_rows(GpuEngine *g, int rows, const float *w) {
    if (g->c.dtype == DTYPE_F32) launch_rmsnorm_rows<float>(g, rows, w);
    else if (g->c.dtype == DTYPE_F16) launch_rmsnorm_rows<__half>(g, rows, w);
    else launch_rmsnorm_rows<__nv_bfloat16>(g, rows, w);
}

void pass_logits(GpuEngine *g, int rows) {
    const StepArgs &a = g->step;
    norm_pass_rows(g, rows, a.norm_f);
    gemm(g, true, false, a.vocab, rows, a.dmp, a.head, a.dmp, g->pass.XN, a.dmp, g->pass.logits, a.vocab, false);
}

template <typename T, bool NORM_DBC>
static void enqueue_pass(GpuEngine *g, int S, int L, bool want_logits) {
    const PassBuffers &pb = g->pass;
    Mamba1Activations b;
    mamba1_activations(g, pb.cap, pb.scratch, &b);
    const StepArgs &a = g->step;
    const int rows = S * L, di = a.di, dmp = a.dmp, Rp = a.Rp, rkp = a.rkp;
    const bool by_channel = L > 1;
    const int ld = round_up(rows, 8);
    cudaStream_t st = g->stream;
    PassArgs p{S, L, rows, by_channel, ld, pb.slots, 0, di, a.dm, dmp, a.d_conv, a.kcp, a.ns, a.nsp, a.dt_rank, rkp, Rp, a.pl,
               NULL, a.conv_state, a.ssm_state, g->conv_slot, g->ssm_slot};
    T *XN = (T *)pb.XN, *U16 = (T *)b.U16, *DT = (T *)b.DT, *Y = (T *)b.Y;
    embed_pass_rows(g, rows);
    const int row_blocks = (rows + 255) / 256;
    for (int l = 0; l < a.n_layer; l++) {
        const char *base = a.layer0 + (size_t)l * a.layer_stride;
        const void *in_proj = base + a.lo.in_proj, *x_proj_t = base + a.lo.x_proj_t, *dt_proj = base + a.lo.dt_proj;
        p.layer = l, p.params = (const float *)(base + a.lo.params);
        norm_pass_rows(g, rows, (const float *)(base + a.lo.norm));
        /* XZ = in_proj · XN: x then z */
        if (by_channel) gemm(g, true, false, rows, 2 * di, dmp, XN, dmp, in_proj, dmp, b.XZ, ld, false);
        else gemm(g, true, false, 2 * di, rows, dmp, in_proj, dmp, XN, dmp, b.XZ, 2 * di, false);
        if (by_channel) {
            const int groups = (L + CONV_ITEMS - 1) / CONV_ITEMS;
            conv_tokens<T><<<dim3((groups + 255) / 256, di, S), 256, 0, st>>>(p, b.XZ, b.U, U16);
            LAUNCH_CHECK("conv_tokens");
        } else {
            conv_rows<T><<<(rows * di + 255) / 256, 256, 0, st>>>(p, b.XZ, b.U, U16);
            LAUNCH_CHECK("conv_rows");
        }
        conv_state_update<<<(S * di + 255) / 256, 256, 0, st>>>(p, b.XZ);
        LAUNCH_CHECK("conv_state_update");
        /* DBC = x_proj · u: dt, B, C */
        if (by_channel) gemm(g, false, true, rows, Rp, di, U16, ld, x_proj_t, Rp, b.DBC, ld, false);
        else gemm(g, false, false, Rp, rows, di, x_proj_t, Rp, U16, di, b.DBC, Rp, false);
        if constexpr (NORM_DBC) {
            normalize_dbc_rows<<<dim3(rows, 3), 32, 0, st>>>(p, b.DBC, a.mixer_eps);
            LAUNCH_CHECK("normalize_dbc_rows");
        }
        dt_rows<T><<<dim3(row_blocks, rkp), 256, 0, st>>>(p, b.DBC, DT);
        LAUNCH_CHECK("dt_rows");
        /* DELTA = dt_proj · dt (softplus and bias come in the scan) */
        if (by_channel) gemm(g, false, false, rows, di, rkp, DT, ld, dt_proj, rkp, b.DELTA, ld, false);
        else gemm(g, true, false, di, rows, rkp, dt_proj, rkp, DT, rkp, b.DELTA, di, false);
        if (by_channel) {
            selective_scan<T><<<dim3((di + SCAN_WARPS - 1) / SCAN_WARPS, S), SCAN_WARPS * 32, scan_smem_bytes(a.ns), st>>>(
                p, b.DELTA, b.U, b.XZ, b.DBC, Y);
            LAUNCH_CHECK("selective_scan");
        } else {
            const float *delta = b.DELTA, *u = b.U, *xz = b.XZ, *dbc = b.DBC;
            void *args[] = {&p, &delta, &u, &xz, &dbc, &Y};
            CUDA_CHECK(cudaLaunchKernel(scan_step_for<T>(a.ns), dim3((S * di * SCAN_LANES + 255) / 256), dim3(256), args, 0, st));
            LAUNCH_CHECK("scan_step");
        }
        /* X += out_proj · y */
        gemm(g, false, by_channel, dmp, rows, di, base + a.lo.out_proj_t, dmp, Y, by_channel ? ld : di, pb.X, dmp, true);
    }
    if (want_logits) pass_logits(g, rows);
}

template <bool NORM_DBC>
static void run_pass_of(GpuEngine *g, int S, int L, bool want_logits) {
    if (g->c.dtype == DTYPE_F32) enqueue_pass<float, NORM_DBC>(g, S, L, want_logits);
    else if (g->c.dtype == DTYPE_F16) enqueue_pass<__half, NORM_DBC>(g, S, L, want_logits);
    else enqueue_pass<__nv_bfloat16, NORM_DBC>(g, S, L, want_logits);
}

void mamba1_run_pass(GpuEngine *g, int S, int L, bool want_logits) { run_pass_of<false>(g, S, L, want_logits); }

void falcon_run_pass(GpuEngine *g, int S, int L, bool want_logits) { run_pass_of<true>(g, S, L, want_logits); }

static void check_slot(const GpuEngine *g, int slot) {
    if (slot < 0 || slot >= g->max_batch) {
        fprintf(stderr, "mamba: error: internal: sequence slot %d outside 0..%d\n", slot, g->max_batch - 1);
        exit(1);
    }
}

extern "C" void gpu_engine_reset_slot(GpuEngine *g, int slot) {
    check_slot(g, slot);
    CUDA_CHECK(cudaMemsetAsync(g->step.conv_state + slot * g->conv_slot, 0, g->conv_slot * sizeof(float), g->stream));
    CUDA_CHECK(cudaMemsetAsync(g->step.ssm_state + slot * g->ssm_slot, 0, g->ssm_slot * sizeof(float), g->stream));
}

/* A slot's state on the device is [n_layer, channels, kcp] and [n_layer, d_inner, nsp] (rows padded
 * to 4 floats); the host's is unpadded: d_conv and d_state floats a row. */
extern "C" void gpu_engine_read_state(GpuEngine *g, int slot, float *conv, float *ssm) {
    check_slot(g, slot);
    const size_t conv_rows = g->conv_slot / g->kcp, ssm_rows = g->ssm_slot / g->nsp;
    g->in_flight = "copying a state to the host";
    CUDA_CHECK(cudaMemcpy2DAsync(conv, g->c.d_conv * sizeof(float), g->step.conv_state + slot * g->conv_slot,
                                 g->kcp * sizeof(float), g->c.d_conv * sizeof(float), conv_rows, cudaMemcpyDeviceToHost,
                                 g->stream));
    CUDA_CHECK(cudaMemcpy2DAsync(ssm, g->c.d_state * sizeof(float), g->step.ssm_state + slot * g->ssm_slot,
                                 g->nsp * sizeof(float), g->c.d_state * sizeof(float), ssm_rows, cudaMemcpyDeviceToHost,
                                 g->stream));
    sync_or_die(g);
}

/* The padding of each row stays zero, as the kernels expect (reset_slot zeroes it first). */
extern "C" void gpu_engine_write_state(GpuEngine *g, int slot, const float *conv, const float *ssm) {
    gpu_engine_reset_slot(g, slot);
    const size_t conv_rows = g->conv_slot / g->kcp, ssm_rows = g->ssm_slot / g->nsp;
    g->in_flight = "copying a state to the device";
    CUDA_CHECK(cudaMemcpy2DAsync(g->step.conv_state + slot * g->conv_slot, g->kcp * sizeof(float), conv,
                                 g->c.d_conv * sizeof(float), g->c.d_conv * sizeof(float), conv_rows, cudaMemcpyHostToDevice,
                                 g->stream));
    CUDA_CHECK(cudaMemcpy2DAsync(g->step.ssm_state + slot * g->ssm_slot, g->nsp * sizeof(float), ssm,
                                 g->c.d_state * sizeof(float), g->c.d_state * sizeof(float), ssm_rows, cudaMemcpyHostToDevice,
                                 g->stream));
    sync_or_die(g);   /* the host's buffers may go once this returns */
}

extern "C" void gpu_engine_prefill(GpuEngine *g, int slot, const int *tokens, long n, int chunk, float *logits) {
    check_slot(g, slot);
    PassBuffers &b = g->pass;
    if (chunk < 1 || chunk > PREFILL_CHUNK) chunk = PREFILL_CHUNK;
    if (logits && chunk > b.logit_rows) chunk = b.logit_rows;
    for (long at = 0; at < n; at += chunk) {
        const int len = (int)(n - at < chunk ? n - at : chunk);
        sync_or_die(g);   /* the pinned staging is free again */
        memcpy(b.host_tokens, tokens + at, len * sizeof(int));
        b.host_slots[0] = slot;
        CUDA_CHECK(cudaMemcpyAsync(b.tokens, b.host_tokens, len * sizeof(int), cudaMemcpyHostToDevice, g->stream));
        CUDA_CHECK(cudaMemcpyAsync(b.slots, b.host_slots, sizeof(int), cudaMemcpyHostToDevice, g->stream));
        g->in_flight = "the prompt pass (embed_rows, rmsnorm_rows, cuBLAS, conv_tokens, selective_scan)";
        g->arch->run_pass(g, 1, len, logits != NULL);
        if (logits)
            CUDA_CHECK(cudaMemcpyAsync(logits + at * g->c.vocab_size, b.logits, (size_t)len * g->c.vocab_size * sizeof(float),
                                       cudaMemcpyDeviceToHost, g->stream));
        if (slot == 0) {   /* the single sequence's repetition penalty sees its prompt */
            append_history<<<1, 1024, 0, g->stream>>>(b.tokens, len, g->step.history, g->step.n_run);
            LAUNCH_CHECK("append_history");
        }
    }
    sync_or_die(g);
}

/* The graph of one batched step of class k, captured on first use. */
cudaGraphExec_t batch_graph(GpuEngine *g, int k) {
    if (!g->batch_graph[k]) {
        cudaGraph_t graph;
        CUDA_CHECK(cudaStreamBeginCapture(g->stream, cudaStreamCaptureModeThreadLocal));
        g->arch->run_pass(g, 1 << k, 1, true);
        CUDA_CHECK(cudaStreamEndCapture(g->stream, &graph));
        CUDA_CHECK(cudaGraphInstantiate(&g->batch_graph[k], graph, 0));
        CUDA_CHECK(cudaGraphDestroy(graph));
    }
    return g->batch_graph[k];
}

/* Stages n (token, slot) pairs, padded to the class with token 0 in the scratch slot. */
int stage_batch(GpuEngine *g, int n, const int *slots, const int *tokens) {
    PassBuffers &b = g->pass;
    const int k = batch_class(n), rows = 1 << k;
    sync_or_die(g);
    for (int i = 0; i < rows; i++) {
        if (i < n) check_slot(g, slots[i]);
        b.host_tokens[i] = i < n ? tokens[i] : 0;
        b.host_slots[i] = i < n ? slots[i] : g->max_batch;   /* the scratch slot */
    }
    CUDA_CHECK(cudaMemcpyAsync(b.tokens, b.host_tokens, rows * sizeof(int), cudaMemcpyHostToDevice, g->stream));
    CUDA_CHECK(cudaMemcpyAsync(b.slots, b.host_slots, rows * sizeof(int), cudaMemcpyHostToDevice, g->stream));
    return k;
}

extern "C" const float *gpu_engine_forward_batch(GpuEngine *g, int n, const int *slots, const int *tokens) {
    if (n < 1 || n > g->max_batch) {
        fprintf(stderr, "mamba: error: internal: a batch of %d sequences, the engine holds %d\n", n, g->max_batch);
        exit(1);
    }
    const int k = stage_batch(g, n, slots, tokens);
    g->in_flight = "a batched step (embed_rows, rmsnorm_rows, cuBLAS, conv_rows, scan_step)";
    CUDA_CHECK(cudaGraphLaunch(batch_graph(g, k), g->stream));
    CUDA_CHECK(cudaMemcpyAsync(g->pass.host_logits, g->pass.logits, (size_t)n * g->c.vocab_size * sizeof(float),
                               cudaMemcpyDeviceToHost, g->stream));
    sync_or_die(g);
    return g->pass.host_logits;
}

