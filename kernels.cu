/* kernels.cu: the CUDA engine for Mamba-1 decoding (the C API is gpu.h).
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
 * Many tokens at once take another path (further down): the prompt pass (one sequence, up to
 * 4096 tokens a pass) and the batched step (B sequences, one token each) run layer by layer as
 * cuBLAS products over all the rows with small kernels between them (norm, conv, a selective
 * scan that keeps h in registers), on sequence slots that each hold one sequence's state. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <vector>

#include "gpu.h"

/* ----------------------------------------------------------------------------------------
 * Errors: every CUDA call is checked; a failure prints one line (the call, where, the error)
 * and exits. */

static void cuda_check(cudaError_t err, const char *call, const char *file, int line) {
    if (err == cudaSuccess) return;
    fprintf(stderr, "mamba: error: CUDA call %s failed at %s:%d: %s (%s)\n", call, file, line, cudaGetErrorName(err),
            cudaGetErrorString(err));
    exit(1);
}
#define CUDA_CHECK(call) cuda_check((call), #call, __FILE__, __LINE__)

/* cudaMalloc that says how much was asked for and how much is free when the GPU is full. */
static void *gpu_alloc(size_t bytes) {
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes);
    if (err == cudaErrorMemoryAllocation) {
        size_t free_bytes = 0, total = 0;
        cudaGetLastError();
        CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
        fprintf(stderr, "mamba: error: out of GPU memory: needed %zu bytes, %zu of %zu are free\n", bytes, free_bytes,
                total);
        exit(1);
    }
    CUDA_CHECK(err);
    return p;
}

/* ----------------------------------------------------------------------------------------
 * Sizes. */

constexpr int THREADS = 512;                 /* forward_token's block: */
constexpr int CONSUMER_WARPS = 15;           /*   warps 0-14 compute, */
constexpr int CONSUMERS = CONSUMER_WARPS * 32;
constexpr int PRODUCER_WARP = 15;            /*   warp 15 streams the weights in */
constexpr int RING_SLOTS = 3;                /* shared-memory ring slots of a block */
constexpr int MAX_COL_ITEMS = 4;             /* column chunks a consumer thread sums, at most */
constexpr int SAMPLE_THREADS = 1024;         /* sample_token's single block */
constexpr int PAD = 8;                       /* rows are padded to 8 elements: 16-byte aligned for every dtype */
constexpr int HISTORY_CAP = 1 << 20;         /* tokens the repetition penalty can look back at */
constexpr int INPUT_RING = 64;               /* pinned slots for prompt ids in flight */
constexpr int OUTPUT_RING = 3;               /* pinned slots for sampled ids (and logits) in flight */
constexpr unsigned FULL_MASK = 0xffffffffu;
constexpr long long WAIT_TIMEOUT_CYCLES = 20000000000LL;   /* ~10 s: a wait that never ends is a bug */

static int round_up(int x, int m) { return (x + m - 1) / m * m; }

/* ----------------------------------------------------------------------------------------
 * What the kernels see. */

/* Where a layer's tensors lie, in bytes from the layer's start; every layer has the same layout,
 * layer_stride bytes apart, so the kernel computes its pointers instead of loading them. */
struct LayerOffsets {
    size_t norm;        /* f32 [dmp] RMSNorm weight, zero-padded */
    size_t in_proj;     /* T [2*di, dmp] → (x, z) */
    size_t params;      /* f32 [di, cpf] per channel: conv_w[kcp], conv_b, dt_bias, D, 0, A[nsp] (A = -exp(A_log)) */
    size_t x_proj_t;    /* T [di, Rp] x_proj transposed: row c = channel c's weights for (dt, B, C) */
    size_t dt_proj;     /* T [di, rkp] */
    size_t out_proj_t;  /* T [di, dmp] out_proj transposed: row c = channel c's column */
};

/* Offsets of the per-channel parameter record, in floats. */
struct ParamLayout {
    int conv_b, dt_bias, D, A, stride;
};

struct StepArgs {
    const char *layer0;       /* the first layer's tensors */
    size_t layer_stride;
    LayerOffsets lo;
    ParamLayout pl;
    const void *embedding;    /* [padded_vocab, dmp] */
    const float *norm_f;      /* [dmp] */
    const void *head;         /* [vocab, dmp]; the embedding when tied */
    int n_layer, dm, dmp, di, ns, nsp, d_conv, kcp, dt_rank, rkp, Rp, vocab;
    float eps;
    int channels_per_block, head_rows_per_block;
    int argmax_vocab;         /* the argmax looks at ids below this only */
    /* the ring: n_slots slots of slot_bytes; a tile of a matrix holds rows_per_tile_* rows */
    int n_slots, slot_bytes, rows_per_tile_in, rows_per_tile_x, rows_per_tile_dt, rows_per_tile_out, rows_per_tile_head;
    int small_conv, small_ssm, small_params;   /* byte offsets in a layer's first tile (the norm is at 0) */
    unsigned long long trap_at_run;   /* fault injection: the step that runs token number trap_at_run traps (0: never) */
    int off_xn, off_rows, off_dt, off_u, off_z, off_y, off_dbc, off_dtv, off_acc, off_red, off_part, off_params,
        off_conv, off_ssm;    /* shared-memory layout after the ring, in floats */
    float *resid;             /* [dmp] the residual stream */
    float *dbc;               /* [n_layer, Rp] x_proj outputs, accumulated by all blocks */
    float *conv_state;        /* [n_layer, di, kcp] */
    float *ssm_state;         /* [n_layer, di, nsp] */
    float *logits;            /* [vocab] */
    const int *token_in;
    int *token_out;           /* receives the argmax of the logits */
    int *history;             /* [HISTORY_CAP] ring of the tokens run, for the repetition penalty */
    unsigned long long *n_run;
    unsigned *arrivals;       /* grid barrier: blocks arrived in this step */
    unsigned *finished;       /* blocks done with the step */
    float *block_best;        /* [grid] each block's largest logit */
    int *block_best_id;
};

struct SampleArgs {
    const float *logits;
    float *scratch;           /* [vocab] working copy in global memory, or NULL: shared memory */
    int vocab;
    const int *history;
    const unsigned long long *n_run;
    float temperature, top_p, penalty;
    int top_k, last_n;
    unsigned long long *rng;
    int *token_out;
};

/* Layer l's tensors, from the layout. */
template <typename T>
struct Layer {
    const float *norm, *params;
    const T *in_proj, *x_proj_t, *dt_proj, *out_proj_t;
    __device__ Layer(const StepArgs &a, int l) {
        const char *base = a.layer0 + (size_t)l * a.layer_stride;
        norm = reinterpret_cast<const float *>(base + a.lo.norm);
        in_proj = reinterpret_cast<const T *>(base + a.lo.in_proj);
        params = reinterpret_cast<const float *>(base + a.lo.params);
        x_proj_t = reinterpret_cast<const T *>(base + a.lo.x_proj_t);
        dt_proj = reinterpret_cast<const T *>(base + a.lo.dt_proj);
        out_proj_t = reinterpret_cast<const T *>(base + a.lo.out_proj_t);
    }
};

/* ----------------------------------------------------------------------------------------
 * Small device helpers. */

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

/* Keeps the larger logit, the lower id on ties; id < 0 is empty. */
__device__ __forceinline__ void argmax_merge(float &v, int &id, float ov, int oid) {
    if (oid >= 0 && (id < 0 || ov > v || (ov == v && oid < id))) v = ov, id = oid;
}

__device__ __forceinline__ void warp_argmax(float &v, int &id) {
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(FULL_MASK, v, o);
        int oid = __shfl_xor_sync(FULL_MASK, id, o);
        argmax_merge(v, id, ov, oid);
    }
}

/* The threads 0 .. NT-1 of a block meet: all of them, or forward_token's consumers (named
 * barrier 1; the producer warp never waits there). */
template <int NT>
__device__ __forceinline__ void team_sync() {
    if constexpr (NT == CONSUMERS) asm volatile("bar.sync 1, %0;" ::"n"(CONSUMERS) : "memory");
    else __syncthreads();
}

/* Reductions over a team of NT threads; every thread gets the result. red holds NT/32 values. */
template <int NT>
__device__ float block_sum(float v, float *red) {
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    team_sync<NT>();
    float total = 0.0f;
    for (int w = 0; w < NT / 32; w++) total += red[w];
    team_sync<NT>();
    return total;
}

template <int NT>
__device__ float block_max(float v, float *red) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    team_sync<NT>();
    float m = -INFINITY;
    for (int w = 0; w < NT / 32; w++) m = fmaxf(m, red[w]);
    team_sync<NT>();
    return m;
}

template <int NT>
__device__ void block_argmax(float &v, int &id, float *redv, int *redi) {
    warp_argmax(v, id);
    if ((threadIdx.x & 31) == 0) redv[threadIdx.x >> 5] = v, redi[threadIdx.x >> 5] = id;
    team_sync<NT>();
    v = -INFINITY, id = -1;
    for (int w = 0; w < NT / 32; w++) argmax_merge(v, id, redv[w], redi[w]);
    team_sync<NT>();
}

/* Exclusive prefix sum in thread order; *total gets the sum over the block. */
template <int NT, typename V>
__device__ V block_exclusive_scan(V v, V *red, V *total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    V incl = v;
    for (int o = 1; o < 32; o <<= 1) {
        V y = __shfl_up_sync(FULL_MASK, incl, o);
        if (lane >= o) incl += y;
    }
    if (lane == 31) red[warp] = incl;
    team_sync<NT>();
    V before = 0, all = 0;
    for (int w = 0; w < NT / 32; w++) {
        if (w < warp) before += red[w];
        all += red[w];
    }
    team_sync<NT>();
    V in_warp = __shfl_up_sync(FULL_MASK, incl, 1);
    *total = all;
    return before + (lane ? in_warp : 0);
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

/* PyTorch's softplus, linear above 20. */
__device__ __forceinline__ float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* The same with the fast intrinsics (about 1e-7 relative apart), for the prompt pass's scan. */
__device__ __forceinline__ float silu_fast(float x) { return __fdividef(x, 1.0f + __expf(-x)); }
__device__ __forceinline__ float softplus_fast(float x) { return x > 20.0f ? x : log1pf(__expf(x)); }

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }

/* The two values of a 32-bit word holding a pair, first element in the low half. */
__device__ __forceinline__ float2 pair_f32(unsigned w, __nv_bfloat16) {
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
}
__device__ __forceinline__ float2 pair_f32(unsigned w, __half) {
    __half2 h = *reinterpret_cast<__half2 *>(&w);
    return __half22float2(h);
}

/* One 16-byte chunk of weights (4 floats or 8 halves) dotted with x[0 .. 4 or 8), x 16-byte aligned. */
template <typename T>
__device__ __forceinline__ float chunk_dot(uint4 w, const float *x) {
    const float4 a = reinterpret_cast<const float4 *>(x)[0], b = reinterpret_cast<const float4 *>(x)[1];
    const float2 p = pair_f32(w.x, T()), q = pair_f32(w.y, T()), r = pair_f32(w.z, T()), s = pair_f32(w.w, T());
    return p.x * a.x + p.y * a.y + q.x * a.z + q.y * a.w + r.x * b.x + r.y * b.y + s.x * b.z + s.y * b.w;
}
template <>
__device__ __forceinline__ float chunk_dot<float>(uint4 w, const float *x) {
    const float4 a = *reinterpret_cast<const float4 *>(x);
    return __uint_as_float(w.x) * a.x + __uint_as_float(w.y) * a.y + __uint_as_float(w.z) * a.z +
           __uint_as_float(w.w) * a.w;
}

/* acc[0 .. 4 or 8) += s · chunk */
template <typename T>
__device__ __forceinline__ void chunk_axpy(uint4 w, float s, float *acc) {
    const float2 p = pair_f32(w.x, T()), q = pair_f32(w.y, T()), r = pair_f32(w.z, T()), t = pair_f32(w.w, T());
    acc[0] += p.x * s, acc[1] += p.y * s, acc[2] += q.x * s, acc[3] += q.y * s;
    acc[4] += r.x * s, acc[5] += r.y * s, acc[6] += t.x * s, acc[7] += t.y * s;
}
template <>
__device__ __forceinline__ void chunk_axpy<float>(uint4 w, float s, float *acc) {
    acc[0] += __uint_as_float(w.x) * s, acc[1] += __uint_as_float(w.y) * s;
    acc[2] += __uint_as_float(w.z) * s, acc[3] += __uint_as_float(w.w) * s;
}

/* ----------------------------------------------------------------------------------------
 * The weight ring: shared-memory slots filled by the bulk-copy engine, one mbarrier per slot
 * saying "full" (the copy's bytes have landed) and one saying "empty" (every consumer warp is
 * done with it). Tile t goes to slot t % n_slots; its fill is the (t / n_slots)-th of that slot,
 * which gives the parity to wait for. */

__device__ __forceinline__ unsigned smem_addr(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(uint64_t *bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint64_t *bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}

__device__ __forceinline__ void mbar_expect_bytes(uint64_t *bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}

/* Waits until the barrier's phase of the given parity has completed; traps rather than hang. */
__device__ __forceinline__ void mbar_wait(uint64_t *bar, unsigned parity) {
    unsigned done;
    const long long start = clock64();
    for (;;) {
        asm volatile(
            "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
            : "=r"(done)
            : "r"(smem_addr(bar)), "r"(parity)
            : "memory");
        if (done) return;
        if (clock64() - start > WAIT_TIMEOUT_CYCLES) __trap();
    }
}

/* bytes (a multiple of 16) from global src to shared dst, completing on bar. */
__device__ __forceinline__ void bulk_copy(void *dst, const void *src, unsigned bytes, uint64_t *bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(smem_addr(dst)),
                 "l"(__cvta_generic_to_global(src)), "r"(bytes), "r"(smem_addr(bar))
                 : "memory");
}

struct Ring {
    char *slots;
    uint64_t *full, *empty;
    int n_slots, slot_bytes;
    unsigned t;   /* the next tile */
    __device__ char *slot(unsigned tile) const { return slots + (size_t)(tile % n_slots) * slot_bytes; }
};

/* Producer: the next tile's slot, once free, armed for `bytes` of copies. */
__device__ char *ring_begin(Ring &r, unsigned bytes) {
    const unsigned s = r.t % r.n_slots, fill = r.t / r.n_slots;
    if (fill > 0) mbar_wait(&r.empty[s], (fill - 1) & 1);
    mbar_expect_bytes(&r.full[s], bytes);
    return r.slot(r.t);
}

__device__ void ring_copy(Ring &r, void *dst, const void *src, unsigned bytes) {
    bulk_copy(dst, src, bytes, &r.full[r.t % r.n_slots]);
}

/* Producer: n rows of row_bytes from src, rows_per_tile to a tile. */
__device__ void produce_rows(Ring &r, const void *src, int n, int row_bytes, int rows_per_tile) {
    const char *p = static_cast<const char *>(src);
    for (int i = 0; i < n; i += rows_per_tile) {
        const unsigned bytes = (unsigned)(min(rows_per_tile, n - i) * row_bytes);
        ring_copy(r, ring_begin(r, bytes), p + (size_t)i * row_bytes, bytes);
        r.t++;
    }
}

/* Consumer: waits for the next tile and returns it. One lane of each warp polls the barrier;
 * __syncwarp passes the ordering on to the others. */
__device__ const char *ring_wait(const Ring &r) {
    if ((threadIdx.x & 31) == 0) mbar_wait(&r.full[r.t % r.n_slots], (r.t / r.n_slots) & 1);
    __syncwarp();
    return r.slot(r.t);
}

/* Consumer: this warp is done with the tile. */
__device__ void ring_release(Ring &r) {
    __syncwarp();
    if ((threadIdx.x & 31) == 0) mbar_arrive(&r.empty[r.t % r.n_slots]);
    r.t++;
}

/* ----------------------------------------------------------------------------------------
 * Products of one block's consumers with tiles in shared memory. */

/* out[i] += row i of the tile · x for i < n, rows of `chunks` 16-byte chunks (x in shared
 * memory, padded like the rows). Work units are (row, part) pairs spread over the warps; a row
 * is split into parts when the tile has fewer rows than twice the warps. */
template <typename T>
__device__ void tile_rows_dot(const uint4 *tile, int n, int chunks, const float *x, float *out) {
    constexpr int V = 16 / sizeof(T);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int parts = max(1, min((2 * CONSUMER_WARPS + n - 1) / n, (chunks + 31) / 32));
    const int len = (chunks + parts - 1) / parts;
    for (int unit = warp; unit < n * parts; unit += CONSUMER_WARPS) {
        const int i = unit / parts, c0 = (unit - i * parts) * len, c1 = min(chunks, c0 + len);
        const uint4 *row = tile + (size_t)i * chunks;
        float acc = 0.0f;
        for (int c = c0 + lane; c < c1; c += 32) acc += chunk_dot<T>(row[c], x + c * V);
        acc = warp_sum(acc);
        if (lane == 0) {
            if (parts == 1) out[i] += acc;
            else atomicAdd(out + i, acc);
        }
    }
}

/* Σ_c v[c] · Wt[c, 0:N] over the rows (channels) of several tiles: the product of a block of
 * columns of the original matrix with v. A thread owns 16-byte column chunks j of a group g of
 * the channels (c ≡ g mod G) and keeps its sums in registers across the tiles; finish() adds
 * the groups up through shared memory. */
template <typename T>
struct ColumnSums {
    static constexpr int V = 16 / sizeof(T);
    int J, G;
    float acc[MAX_COL_ITEMS][V];

    __device__ explicit ColumnSums(int N) {
        J = N / V;
        G = J >= CONSUMERS ? 1 : CONSUMERS / J;
#pragma unroll
        for (int k = 0; k < MAX_COL_ITEMS; k++)
#pragma unroll
            for (int e = 0; e < V; e++) acc[k][e] = 0.0f;
    }

    /* A tile of n channels starting at channel k0 of v. */
    __device__ void add(const uint4 *tile, int k0, int n, const float *v) {
#pragma unroll
        for (int k = 0; k < MAX_COL_ITEMS; k++) {
            const int q = threadIdx.x + k * CONSUMERS;
            if (q >= G * J) break;
            const int g = q / J, j = q - g * J;
            for (int c = ((g - k0) % G + G) % G; c < n; c += G) chunk_axpy<T>(tile[(size_t)c * J + j], v[k0 + c], acc[k]);
        }
    }

    /* out[0:N] += the sums; part holds G × N floats. Ends with the consumers met. */
    __device__ void finish(float *out, float *part) {
        const int N = J * V;
#pragma unroll
        for (int k = 0; k < MAX_COL_ITEMS; k++) {
            const int q = threadIdx.x + k * CONSUMERS;
            if (q >= G * J) break;
            const int g = q / J, j = q - g * J;
#pragma unroll
            for (int e = 0; e < V; e++) {
                if (G == 1) out[j * V + e] += acc[k][e];
                else part[(size_t)g * N + j * V + e] = acc[k][e];
            }
        }
        team_sync<CONSUMERS>();
        if (G > 1) {
            for (int i = threadIdx.x; i < N; i += CONSUMERS) {
                float s = 0.0f;
                for (int g = 0; g < G; g++) s += part[(size_t)g * N + i];
                out[i] += s;
            }
            team_sync<CONSUMERS>();
        }
    }
};

/* All the tiles of a row-split matrix: out[i] += row i · x for the n rows, rows_per_tile a tile. */
template <typename T>
__device__ void consume_rows(Ring &r, int n, int rows_per_tile, int K, const float *x, float *out) {
    const int chunks = K / (16 / (int)sizeof(T));
    for (int i = 0; i < n; i += rows_per_tile) {
        tile_rows_dot<T>(reinterpret_cast<const uint4 *>(ring_wait(r)), min(rows_per_tile, n - i), chunks, x, out + i);
        ring_release(r);
    }
}

/* All the tiles of a column-split matrix: out[0:N] += Σ_{c < n} v[c] · Wt[c, :]. */
template <typename T>
__device__ void consume_cols(Ring &r, int n, int rows_per_tile, int N, const float *v, float *out, float *part) {
    ColumnSums<T> sums(N);
    for (int i = 0; i < n; i += rows_per_tile) {
        sums.add(reinterpret_cast<const uint4 *>(ring_wait(r)), i, min(rows_per_tile, n - i), v);
        ring_release(r);
    }
    sums.finish(out, part);
}

/* xn = w ⊙ x / sqrt(mean(x²) + eps) over d_model; the padding up to dmp stays zero. */
template <typename Load>
__device__ void rmsnorm_into(float *xn, Load load, const float *w, int dm, int dmp, float eps, float *red) {
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dmp; i += CONSUMERS) {
        const float v = load(i);
        xn[i] = v;
        ss += v * v;
    }
    const float scale = 1.0f / sqrtf(block_sum<CONSUMERS>(ss, red) / dm + eps);
    for (int i = threadIdx.x; i < dmp; i += CONSUMERS) xn[i] = w[i] * (xn[i] * scale);
    team_sync<CONSUMERS>();
}

/* ----------------------------------------------------------------------------------------
 * Grid barrier. */

__device__ __forceinline__ unsigned load_acquire(const unsigned *p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

/* Barrier k (1, 2, ... within a step) of the consumers of the whole grid, all of whose blocks
 * are resident. Once the block's consumers are done (named barrier), its thread 0 adds one to
 * *count with release semantics, which publishes the block's writes and atomics (release is
 * cumulative over what the block barrier ordered before it), then polls the same counter with
 * acquire loads until all k · gridDim.x arrivals are in. One fence in one thread per block:
 * a fence in every thread cost a microsecond more per barrier on the H100, and a separate
 * flag set by the last block one more round trip. The last block of the step zeroes it. */
__device__ void grid_barrier(unsigned *count, unsigned k) {
    team_sync<CONSUMERS>();
    if (threadIdx.x == 0) {
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(count) : "memory");
        const unsigned target = k * gridDim.x;
        const long long start = clock64();
        while (load_acquire(count) < target)
            if (clock64() - start > WAIT_TIMEOUT_CYCLES) __trap();   /* fail rather than hang */
    }
    team_sync<CONSUMERS>();
}

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

template <typename T>
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

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nb = gridDim.x, b = blockIdx.x;
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
    if (b == 0 && tid == 0) {
        if (*a.n_run + 1 == a.trap_at_run) __trap();
        a.history[*a.n_run % HISTORY_CAP] = token, *a.n_run += 1;
    }

    for (int l = 0; l < a.n_layer; l++) {
        float *dbc_l = a.dbc + (size_t)l * a.Rp;

        /* ---- IN phase ---- */
        /* the first tile: keep the state and parameters, normalize the input with its weight
         * (layer 0 starts the residual stream from the token's embedding) */
        {
            const char *first = ring_wait(ring);
            const float *normw = reinterpret_cast<const float *>(first);
            for (int i = tid; i < nc * a.kcp; i += CONSUMERS) conv[i] = reinterpret_cast<const float *>(first + a.small_conv)[i];
            for (int i = tid; i < nc * a.nsp; i += CONSUMERS) ssm[i] = reinterpret_cast<const float *>(first + a.small_ssm)[i];
            for (int i = tid; i < nc * a.pl.stride; i += CONSUMERS) prm[i] = reinterpret_cast<const float *>(first + a.small_params)[i];
            for (int j = tid; j < 2 * nc; j += CONSUMERS) rows[j] = 0.0f;
            for (int j = tid; j < nc; j += CONSUMERS) dtr[j] = 0.0f;
            for (int i = tid; i < a.Rp; i += CONSUMERS) acc[i] = 0.0f;
            if (l == 0) {
                const T *e = static_cast<const T *>(a.embedding) + (size_t)token * a.dmp;
                if (b == 0)
                    for (int i = tid; i < a.dmp; i += CONSUMERS) __stcg(a.resid + i, to_f32(e[i]));
                rmsnorm_into(xn, [&](int i) { return to_f32(e[i]); }, normw, a.dm, a.dmp, a.eps, red);
            } else {
                rmsnorm_into(xn, [&](int i) { return __ldcg(a.resid + i); }, normw, a.dm, a.dmp, a.eps, red);
            }
            ring_release(ring);
        }
        /* (x, z) = W_in · xn for my channels: x in rows[0:nc], z in rows[nc:2nc] */
        consume_rows<T>(ring, nc, a.rows_per_tile_in, a.dmp, xn, rows);
        consume_rows<T>(ring, nc, a.rows_per_tile_in, a.dmp, xn, rows + nc);
        team_sync<CONSUMERS>();
        /* causal depthwise conv1d over the last d_conv inputs of each channel, then SiLU */
        for (int j = tid; j < nc; j += CONSUMERS) {
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
        team_sync<CONSUMERS>();
        /* x_proj: (dt, B, C) = W_x · u, split over the blocks by channel: dbc += W_x[:, mine] · u[mine] */
        consume_cols<T>(ring, nc, a.rows_per_tile_x, a.Rp, u, acc, part);
        if (nc > 0)
            for (int i = tid; i < a.Rp / 4; i += CONSUMERS)
                atomicAdd(reinterpret_cast<float4 *>(dbc_l) + i, reinterpret_cast<const float4 *>(acc)[i]);
        grid_barrier(a.arrivals, ++barriers);

        /* ---- SSM phase ---- */
        for (int i = tid; i < a.Rp; i += CONSUMERS) {
            const float v = __ldcg(dbc_l + i);
            dbc[i] = v;
            if (i < a.rkp) dtv[i] = i < a.dt_rank ? v : 0.0f;
        }
        for (int i = tid; i < a.dmp; i += CONSUMERS) acc[i] = 0.0f;
        team_sync<CONSUMERS>();
        /* dt_proj: Δ before softplus = W_dt · dt for my channels */
        consume_rows<T>(ring, nc, a.rows_per_tile_dt, a.rkp, dtv, dtr);
        team_sync<CONSUMERS>();
        /* the selective scan, one step: a group of lanes per channel, one lane per state */
        {
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
        team_sync<CONSUMERS>();
        /* out_proj, split over the blocks by channel: residual += W_out[:, mine] · y[mine] */
        consume_cols<T>(ring, nc, a.rows_per_tile_out, a.dmp, yv, acc, part);
        if (nc > 0)
            for (int i = tid; i < a.dmp / 4; i += CONSUMERS)
                atomicAdd(reinterpret_cast<float4 *>(a.resid) + i, reinterpret_cast<const float4 *>(acc)[i]);
        grid_barrier(a.arrivals, ++barriers);
    }

    /* ---- the final RMSNorm and the LM head over my rows [r0, r1) ---- */
    for (int j = tid; j < r1 - r0; j += CONSUMERS) rows[j] = 0.0f;
    rmsnorm_into(xn, [&](int i) { return __ldcg(a.resid + i); }, reinterpret_cast<const float *>(ring_wait(ring)), a.dm,
                 a.dmp, a.eps, red);
    ring_release(ring);
    consume_rows<T>(ring, r1 - r0, a.rows_per_tile_head, a.dmp, xn, rows);
    team_sync<CONSUMERS>();
    float best = -INFINITY;
    int best_id = -1;
    for (int j = tid; j < r1 - r0; j += CONSUMERS) {
        const float v = rows[j];
        a.logits[r0 + j] = v;
        if (r0 + j < a.argmax_vocab && v == v && (best_id < 0 || v > best)) best = v, best_id = r0 + j;   /* NaN never wins */
    }
    block_argmax<CONSUMERS>(best, best_id, red, redi);

    /* the last block to finish reduces the blocks' maxima and readies the next step */
    if (tid == 0) {
        a.block_best[b] = best, a.block_best_id[b] = best_id;
        __threadfence();
        ticket = atomicAdd(a.finished, 1u);
    }
    team_sync<CONSUMERS>();
    if (ticket != (unsigned)nb - 1) return;
    __threadfence();
    float v = -INFINITY;
    int id = -1;
    for (int i = tid; i < nb; i += CONSUMERS) argmax_merge(v, id, __ldcg(a.block_best + i), __ldcg(a.block_best_id + i));
    block_argmax<CONSUMERS>(v, id, red, redi);
    if (tid == 0) {
        *a.token_out = id < 0 ? 0 : id;
        *a.arrivals = 0;
        *a.finished = 0;
    }
    for (int i = tid; i < a.n_layer * a.Rp; i += CONSUMERS) a.dbc[i] = 0.0f;
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
constexpr int CONV_MAX = 8;   /* d_conv at most */

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

constexpr int SCAN_WARPS = 8;                  /* channels a block, a warp each; they share the staged B and C */
constexpr int SCAN_ITEMS = 8;                  /* consecutive tokens a lane holds */
constexpr int SCAN_CHUNK = 32 * SCAN_ITEMS;    /* tokens a warp scans at once */
constexpr int SCAN_MAX_STATES = 64;            /* the carried states: two a lane */
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

/* The largest logit of each row (ids below vocab_limit, lowest id on ties): the batched
 * benchmark's greedy step, and the tokens it feeds back. */
__global__ void argmax_rows(const float *logits, int vocab, int vocab_limit, int *out) {
    __shared__ float redv[8];
    __shared__ int redi[8];
    const float *x = logits + (size_t)blockIdx.x * vocab;
    float v = -INFINITY;
    int id = -1;
    for (int i = threadIdx.x; i < vocab_limit; i += 256)
        if (x[i] == x[i] && (id < 0 || x[i] > v)) v = x[i], id = i;
    block_argmax<256>(v, id, redv, redi);
    if (threadIdx.x == 0) out[blockIdx.x] = id < 0 ? 0 : id;
}

/* Appends n prompt tokens to the repetition penalty's history (the single sequence's). */
__global__ void append_history(const int *tokens, int n, int *history, unsigned long long *n_run) {
    const unsigned long long run = *n_run;
    for (int i = threadIdx.x; i < n; i += blockDim.x) history[(run + i) % HISTORY_CAP] = tokens[i];
    __syncthreads();
    if (threadIdx.x == 0) *n_run = run + n;
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

/* Streams a large buffer once with 16-byte loads: the read bandwidth the step is compared to. */
__global__ void read_probe(const uint4 *p, size_t n, unsigned *sink) {
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned acc = 0;
    for (; i + 3 * stride < n; i += 4 * stride) {
        const uint4 a = __ldg(p + i), b = __ldg(p + i + stride), c = __ldg(p + i + 2 * stride), d = __ldg(p + i + 3 * stride);
        acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
    }
    for (; i < n; i += stride) {
        const uint4 a = __ldg(p + i);
        acc ^= a.x ^ a.y ^ a.z ^ a.w;
    }
    if (acc == 0x2545F491u) *sink = acc;   /* keeps the loads; practically never taken */
}

/* ----------------------------------------------------------------------------------------
 * Many tokens at once, the host side: cuBLAS (loaded when the engine starts), the pass over
 * all layers, the prompt pass chunk by chunk, and the batched step, one CUDA graph per batch
 * size class (powers of two; unused rows run token 0 in a scratch slot). */

constexpr int BATCH_CLASSES = 11;            /* 2^0 .. 2^10 = MAX_BATCH rows (gpu.h) */
static_assert(1 << (BATCH_CLASSES - 1) == MAX_BATCH, "a batch class for every batch size");
constexpr size_t BLAS_WORKSPACE = 32u << 20; /* cuBLAS's workspace, set so that graphs can capture it */

/* The cuBLAS functions the engine calls, looked up in libcublas at run time so that a binary
 * built with CUDA starts on machines without the toolkit (and then runs on the CPU). */
struct Blas {
    void *lib;
    decltype(&cublasCreate_v2) create;
    decltype(&cublasDestroy_v2) destroy;
    decltype(&cublasSetStream_v2) set_stream;
    decltype(&cublasSetWorkspace_v2) set_workspace;
    decltype(&cublasSetMathMode) set_math_mode;
    cublasStatus_t (*gemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void *, const void *,
                           cudaDataType, int, const void *, cudaDataType, int, const void *, void *, cudaDataType, int,
                           cublasComputeType_t, cublasGemmAlgo_t);
    decltype(&cublasGetStatusName) status_name;
};

static bool blas_load(Blas *b, char *err, size_t err_len) {
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
    b->status_name = (decltype(b->status_name))dlsym(b->lib, "cublasGetStatusName");
    if (!b->create || !b->destroy || !b->set_stream || !b->set_workspace || !b->set_math_mode || !b->gemm || !b->status_name) {
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

static void blas_check(const Blas &b, cublasStatus_t st, const char *call, const char *file, int line) {
    if (st == CUBLAS_STATUS_SUCCESS) return;
    fprintf(stderr, "mamba: error: cuBLAS call %s failed at %s:%d: %s\n", call, file, line, b.status_name(st));
    exit(1);
}
#define BLAS_CHECK(g, call) blas_check((g)->blas, (call), #call, __FILE__, __LINE__)

/* Kernel launches are checked where they are made; a fault while one runs surfaces at the next
 * synchronization, which names the work that was in flight (see sync_or_die). */
#define LAUNCH_CHECK(name) cuda_check(cudaGetLastError(), "launching " name, __FILE__, __LINE__)

/* What the engine needs for passes over many rows. */
struct PassBuffers {
    int logit_rows;          /* rows of logits a pass can make */
    float *X, *XZ, *U, *DBC, *DELTA, *logits;
    void *XN, *U16, *DT, *Y; /* in the weights' dtype */
    int *tokens, *slots;     /* [cap] each: the pass's token ids (the batched benchmark's argmax writes them) and slots */
    int *host_tokens, *host_slots;   /* pinned */
    float *host_logits;              /* pinned [max class, vocab] */
};


/* ----------------------------------------------------------------------------------------
 * The engine. */

struct GpuEngine {
    Config c;
    char name[256];
    int grid, dmp, rkp, R, Rp, kcp, nsp;
    int max_batch;                                   /* sequence slots (one more, the scratch slot, pads batches) */
    size_t conv_slot, ssm_slot;                      /* floats of state per slot */
    Blas blas;
    cublasHandle_t blas_handle;
    void *blas_workspace;
    PassBuffers pass;
    char *pass_mem;
    cudaGraphExec_t batch_graph[BATCH_CLASSES];      /* batched step of 2^k rows */
    const char *in_flight;                           /* the work a failed synchronization reports */
    size_t step_smem, sample_smem;
    void (*step_kernel)(StepArgs);
    cudaStream_t stream;
    char *weights, *work;
    size_t weight_bytes, work_bytes, zeroed_bytes;   /* reset zeroes work[0, zeroed_bytes) */
    StepArgs step;
    SampleArgs sample;
    int *tokens;                                     /* [2] device: the step reads one, the argmax writes the other */
    unsigned long long *rng;
    bool greedy, graphs_built;
    cudaGraphExec_t prompt_graph[2], decode_graph[2];
    int parity;                                      /* the token slot the next step reads */
    long long fed, launched, returned;
    int *host_in, *host_out;                         /* pinned rings */
    float *host_logits;                              /* pinned [OUTPUT_RING, vocab] */
    cudaEvent_t out_ready[OUTPUT_RING];
};

/* A fault in a kernel surfaces at the next synchronization, which names the work in flight. */
static void die_in_flight(const GpuEngine *g, cudaError_t err) {
    fprintf(stderr, "mamba: error: CUDA error %s (%s) while running %s\n", cudaGetErrorName(err), cudaGetErrorString(err),
            g->in_flight);
    exit(1);
}

static void sync_or_die(GpuEngine *g) {
    const cudaError_t err = cudaStreamSynchronize(g->stream);
    if (err != cudaSuccess) die_in_flight(g, err);
}

/* Offsets of one allocation carved in 256-byte-aligned pieces. */
static size_t carve(size_t *top, size_t bytes) {
    size_t at = *top;
    *top += (bytes + 255) / 256 * 256;
    return at;
}

static double host_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Uploads go through the engine's stream, in order: a copy from pageable memory may return
 * before its data reaches the device, so nothing on another stream may read what it writes. */
static void upload(void *dst, const void *src, size_t bytes, cudaStream_t stream) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
}

/* A row-major [rows, K] matrix into rows of Kp elements (the rest stays zero). */
static void upload_rows(void *dst, const void *src, size_t rows, int K, int Kp, size_t es, cudaStream_t stream) {
    CUDA_CHECK(cudaMemcpy2DAsync(dst, Kp * es, src, K * es, K * es, rows, cudaMemcpyHostToDevice, stream));
}

/* A row-major [rows, cols] matrix transposed: [cols, out_stride], through tmp on the device. */
static void upload_transposed(void *dst, const void *src, int rows, int cols, int out_stride, size_t es, void *tmp,
                              cudaStream_t stream) {
    upload(tmp, src, (size_t)rows * cols * es, stream);
    dim3 grid((cols + 31) / 32, (rows + 31) / 32), block(32, 8);
    if (es == 4) transpose_into<uint32_t><<<grid, block, 0, stream>>>((const uint32_t *)tmp, rows, cols, (uint32_t *)dst, out_stride);
    else transpose_into<uint16_t><<<grid, block, 0, stream>>>((const uint16_t *)tmp, rows, cols, (uint16_t *)dst, out_stride);
    CUDA_CHECK(cudaGetLastError());
}

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
            launch_step(g, x);
            CUDA_CHECK(cudaStreamEndCapture(g->stream, &graph));
            CUDA_CHECK(cudaGraphInstantiate(with_sampler ? &g->decode_graph[x] : &g->prompt_graph[x], graph, 0));
            CUDA_CHECK(cudaGraphDestroy(graph));
        }
        if (g->greedy) g->decode_graph[x] = g->prompt_graph[x];
    }
    g->graphs_built = true;
}

/* gpu_engine_create's way out before anything is on the device: the engine and cuBLAS let go. */
static GpuEngine *abandon(GpuEngine *g) {
    dlclose(g->blas.lib);
    free(g);
    return NULL;
}

extern "C" GpuEngine *gpu_engine_create(const Config *c, const Weights *w, int max_batch, char *err, size_t err_len) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        snprintf(err, err_len, "no usable CUDA device (%s)", e != cudaSuccess ? cudaGetErrorName(e) : "none found");
        cudaGetLastError();
        return NULL;
    }
    if (c->dtype != DTYPE_F32 && c->dtype != DTYPE_F16 && c->dtype != DTYPE_BF16) {
        snprintf(err, err_len, "the GPU engine does not support weight dtype %d (f32, f16 and bf16 are)", (int)c->dtype);
        return NULL;
    }
    int dev;
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    if (prop.major < 9) {
        snprintf(err, err_len, "%s has compute capability %d.%d; this GPU engine is built for 9.0 (Hopper)", prop.name,
                 prop.major, prop.minor);
        return NULL;
    }

    if (max_batch < 1 || max_batch > MAX_BATCH) {
        snprintf(err, err_len, "the GPU engine takes 1 to %d sequences at once, not %d", MAX_BATCH, max_batch);
        return NULL;
    }
    if (c->d_conv > 8 || c->d_state > SCAN_MAX_STATES) {
        snprintf(err, err_len, "the GPU engine handles d_conv up to 8 and d_state up to %d (this model: %d, %d)",
                 SCAN_MAX_STATES, c->d_conv, c->d_state);
        return NULL;
    }
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
    g->max_batch = max_batch;
    snprintf(g->name, sizeof g->name, "%s", prop.name);
    const int L = c->n_layer, dm = c->d_model, di = c->d_inner, ns = c->d_state;
    const size_t es = c->dtype == DTYPE_F32 ? 4 : 2;
    g->grid = prop.multiProcessorCount;
    g->dmp = round_up(dm, PAD), g->rkp = round_up(c->dt_rank, PAD);
    g->R = c->dt_rank + 2 * ns, g->Rp = round_up(g->R, PAD);
    g->step_kernel = c->dtype == DTYPE_F32 ? forward_token<float>
                     : c->dtype == DTYPE_F16 ? forward_token<__half> : forward_token<__nv_bfloat16>;

    /* shared memory of a step block, in floats, each piece a multiple of 4 */
    g->kcp = round_up(c->d_conv, 4), g->nsp = round_up(ns, 4);
    StepArgs &a = g->step;
    a.pl.conv_b = g->kcp, a.pl.dt_bias = g->kcp + 1, a.pl.D = g->kcp + 2, a.pl.A = g->kcp + 4;
    a.pl.stride = a.pl.A + g->nsp;
    const int ch = (di + g->grid - 1) / g->grid, ch4 = round_up(ch, 4);
    const int head_rows = (c->vocab_size + g->grid - 1) / g->grid;
    a.channels_per_block = ch, a.head_rows_per_block = head_rows;
    /* shared memory after the ring, in floats, each piece a multiple of 4 */
    int top_f = 0;
    auto take = [&top_f](int n) { const int at = top_f; top_f += round_up(n, 4); return at; };
    a.off_xn = take(g->dmp);
    a.off_rows = take(2 * ch4 > head_rows ? 2 * ch4 : head_rows);
    a.off_dt = take(ch4), a.off_u = take(ch4), a.off_z = take(ch4), a.off_y = take(ch4);
    a.off_dbc = take(g->Rp), a.off_dtv = take(g->rkp), a.off_acc = take(g->Rp > g->dmp ? g->Rp : g->dmp);
    a.off_red = take(2 * CONSUMER_WARPS), a.off_part = take(CONSUMERS * 8);
    a.off_params = take(ch * a.pl.stride), a.off_conv = take(ch * g->kcp), a.off_ssm = take(ch * g->nsp);
    /* the ring takes the rest, in RING_SLOTS slots, each at least a row of any matrix and the
     * layer's first tile. Measured on the H100 (bench/NOTES.md): the step gets faster as tiles
     * grow from 8 to 64 KB at the same bytes in flight, so a few large slots beat many small. */
    a.small_conv = g->dmp * 4, a.small_ssm = a.small_conv + ch * g->kcp * 4, a.small_params = a.small_ssm + ch * g->nsp * 4;
    const int small_bytes = a.small_params + ch * a.pl.stride * 4, row_bytes = g->dmp * (int)es;
    const size_t floats_bytes = (size_t)top_f * sizeof(float), reserve = 2048;   /* static shared memory and slack */
    const size_t ring_room = prop.sharedMemPerBlockOptin > floats_bytes + reserve ? prop.sharedMemPerBlockOptin - floats_bytes - reserve : 0;
    a.n_slots = RING_SLOTS;
    a.slot_bytes = (int)(ring_room / RING_SLOTS) / 128 * 128;
    int slot_need = small_bytes;
    for (int n : {row_bytes, g->Rp * (int)es, g->rkp * (int)es}) slot_need = slot_need > n ? slot_need : n;
    if (a.slot_bytes < slot_need || (g->dmp / (16 / (int)es) + CONSUMERS - 1) / CONSUMERS > MAX_COL_ITEMS) {
        snprintf(err, err_len, "this model's shape (d_model %d, d_inner %d) does not fit the step kernel's shared memory on %s",
                 dm, di, prop.name);
        return abandon(g);
    }
    a.rows_per_tile_in = a.rows_per_tile_out = a.rows_per_tile_head = a.slot_bytes / row_bytes;
    a.rows_per_tile_x = a.slot_bytes / (g->Rp * (int)es), a.rows_per_tile_dt = a.slot_bytes / (g->rkp * (int)es);
    g->step_smem = (size_t)a.n_slots * a.slot_bytes + floats_bytes;
    CUDA_CHECK(cudaFuncSetAttribute((const void *)g->step_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)g->step_smem));
    int resident = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, (const void *)g->step_kernel, THREADS, g->step_smem));
    if (resident < 1) {
        snprintf(err, err_len, "the step kernel cannot be resident on %s", prop.name);
        return abandon(g);
    }
    /* the sampler works in shared memory when the vocabulary fits */
    const size_t vocab_bytes = (size_t)c->vocab_size * sizeof(float);
    const bool sample_in_smem = vocab_bytes + 8192 <= prop.sharedMemPerBlockOptin;
    g->sample_smem = sample_in_smem ? vocab_bytes : 0;
    if (sample_in_smem)
        CUDA_CHECK(cudaFuncSetAttribute((const void *)sample_token, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)vocab_bytes));
    const void *scan = c->dtype == DTYPE_F32 ? (const void *)selective_scan<float>
                       : c->dtype == DTYPE_F16 ? (const void *)selective_scan<__half> : (const void *)selective_scan<__nv_bfloat16>;
    CUDA_CHECK(cudaFuncSetAttribute(scan, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)scan_smem_bytes(ns)));

    /* weights: one allocation, every row padded to dmp / Rp / rkp elements */
    size_t top = 0;
    const size_t emb = carve(&top, (size_t)c->padded_vocab * g->dmp * es);
    const size_t head = c->tied_head ? emb : carve(&top, (size_t)c->padded_vocab * g->dmp * es);
    const size_t norm_f = carve(&top, g->dmp * sizeof(float));
    std::vector<LayerOffsets> lo(L);
    for (int l = 0; l < L; l++) {
        lo[l].norm = carve(&top, g->dmp * sizeof(float));
        lo[l].in_proj = carve(&top, (size_t)2 * di * g->dmp * es);
        lo[l].params = carve(&top, (size_t)di * a.pl.stride * sizeof(float));
        lo[l].x_proj_t = carve(&top, (size_t)di * g->Rp * es);
        lo[l].dt_proj = carve(&top, (size_t)di * g->rkp * es);
        lo[l].out_proj_t = carve(&top, (size_t)di * g->dmp * es);
    }
    const size_t layer_bytes = (top - lo[0].norm) / L;   /* every layer is carved alike */
    g->weight_bytes = top;
    /* state and buffers; reset zeroes everything before rng */
    top = 0;
    const size_t resid = carve(&top, g->dmp * sizeof(float)), dbc = carve(&top, (size_t)L * g->Rp * sizeof(float));
    g->conv_slot = (size_t)L * di * g->kcp, g->ssm_slot = (size_t)L * di * g->nsp;
    const size_t conv = carve(&top, (g->max_batch + 1) * g->conv_slot * sizeof(float));
    const size_t ssm = carve(&top, (g->max_batch + 1) * g->ssm_slot * sizeof(float));
    const size_t logits = carve(&top, vocab_bytes), history = carve(&top, HISTORY_CAP * sizeof(int));
    const size_t best = carve(&top, g->grid * sizeof(float)), best_id = carve(&top, g->grid * sizeof(int));
    const size_t counters = carve(&top, 2 * sizeof(unsigned) + sizeof(unsigned long long) + 2 * sizeof(int));
    g->zeroed_bytes = top;
    const size_t rng = carve(&top, sizeof(unsigned long long));
    const size_t scratch = sample_in_smem ? 0 : carve(&top, vocab_bytes);
    g->work_bytes = top;
    const size_t tmp_bytes = (size_t)di * (dm > g->R ? dm : g->R) * es;   /* transposes go through it */
    /* the buffers of the passes over many rows: the prompt's chunks, or a batch */
    const int classes = batch_class(g->max_batch) + 1, max_rows = 1 << (classes - 1);
    const int cap = PREFILL_CHUNK > max_rows ? PREFILL_CHUNK : max_rows;
    const int logit_rows = max_rows > PREFILL_LOGIT_ROWS ? max_rows : PREFILL_LOGIT_ROWS;
    top = 0;
    const size_t pX = carve(&top, (size_t)cap * g->dmp * 4), pXZ = carve(&top, (size_t)cap * 2 * di * 4);
    const size_t pU = carve(&top, (size_t)cap * di * 4), pDBC = carve(&top, (size_t)cap * g->Rp * 4);
    const size_t pDELTA = carve(&top, (size_t)cap * di * 4), pLOG = carve(&top, (size_t)logit_rows * vocab_bytes);
    const size_t pXN = carve(&top, (size_t)cap * g->dmp * es), pU16 = carve(&top, (size_t)cap * di * es);
    const size_t pDT = carve(&top, (size_t)cap * g->rkp * es), pY = carve(&top, (size_t)cap * di * es);
    const size_t pINT = carve(&top, (size_t)2 * cap * sizeof(int)), pWS = carve(&top, BLAS_WORKSPACE);
    const size_t pass_bytes = top;

    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    const size_t need = g->weight_bytes + g->work_bytes + tmp_bytes + pass_bytes;
    if (need > free_bytes) {
        snprintf(err, err_len, "out of GPU memory: the model needs %zu bytes on %s, %zu of %zu are free", need, prop.name,
                 free_bytes, total_bytes);
        return abandon(g);
    }
    CUDA_CHECK(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking));
    g->weights = (char *)gpu_alloc(g->weight_bytes);
    g->work = (char *)gpu_alloc(g->work_bytes);
    void *tmp = gpu_alloc(tmp_bytes);
    cudaStream_t st = g->stream;
    CUDA_CHECK(cudaMemsetAsync(g->weights, 0, g->weight_bytes, st));
    CUDA_CHECK(cudaMemsetAsync(g->work, 0, g->work_bytes, st));

    /* upload: big matrices padded (x_proj and out_proj transposed), A = -exp(A_log) */
    char *W = g->weights;
    upload_rows(W + emb, w->embedding, c->padded_vocab, dm, g->dmp, es, st);
    if (!c->tied_head) upload_rows(W + head, w->lm_head, c->padded_vocab, dm, g->dmp, es, st);
    upload(W + norm_f, w->norm_f, dm * sizeof(float), st);
    std::vector<float> params((size_t)di * a.pl.stride);
    for (int l = 0; l < L; l++) {
        const LayerWeights *src = &w->layers[l];
        const LayerOffsets &o = lo[l];
        upload(W + o.norm, src->norm, dm * sizeof(float), st);
        upload_rows(W + o.in_proj, src->in_proj, (size_t)2 * di, dm, g->dmp, es, st);
        for (int ch_i = 0; ch_i < di; ch_i++) {
            float *p = &params[(size_t)ch_i * a.pl.stride];
            for (int k = 0; k < c->d_conv; k++) p[k] = src->conv_w[(size_t)ch_i * c->d_conv + k];
            p[a.pl.conv_b] = src->conv_b[ch_i], p[a.pl.dt_bias] = src->dt_bias[ch_i], p[a.pl.D] = src->D[ch_i];
            for (int n = 0; n < ns; n++) p[a.pl.A + n] = -expf(src->A_log[(size_t)ch_i * ns + n]);
        }
        upload(W + o.params, params.data(), params.size() * sizeof(float), st);   /* staged before it returns: reusable */
        upload_transposed(W + o.x_proj_t, src->x_proj, g->R, di, g->Rp, es, tmp, st);
        upload_rows(W + o.dt_proj, src->dt_proj, di, c->dt_rank, g->rkp, es, st);
        upload_transposed(W + o.out_proj_t, src->out_proj, dm, di, g->dmp, es, tmp, st);
    }
    CUDA_CHECK(cudaStreamSynchronize(st));
    CUDA_CHECK(cudaFree(tmp));

    /* the step's arguments */
    char *K = g->work;
    a.layer0 = W + lo[0].norm, a.layer_stride = layer_bytes;
    a.lo = LayerOffsets{0, lo[0].in_proj - lo[0].norm, lo[0].params - lo[0].norm, lo[0].x_proj_t - lo[0].norm,
                        lo[0].dt_proj - lo[0].norm, lo[0].out_proj_t - lo[0].norm};
    a.embedding = W + emb, a.norm_f = (const float *)(W + norm_f), a.head = W + head;
    a.n_layer = L, a.dm = dm, a.dmp = g->dmp, a.di = di, a.ns = ns, a.nsp = g->nsp, a.d_conv = c->d_conv;
    a.kcp = g->kcp, a.dt_rank = c->dt_rank, a.rkp = g->rkp, a.Rp = g->Rp, a.vocab = c->vocab_size;
    a.eps = c->norm_eps;
    a.resid = (float *)(K + resid), a.dbc = (float *)(K + dbc);
    a.conv_state = (float *)(K + conv), a.ssm_state = (float *)(K + ssm), a.logits = (float *)(K + logits);
    a.history = (int *)(K + history);
    a.block_best = (float *)(K + best), a.block_best_id = (int *)(K + best_id);
    a.arrivals = (unsigned *)(K + counters), a.finished = a.arrivals + 1;
    a.n_run = (unsigned long long *)(a.arrivals + 2);
    g->tokens = (int *)(a.n_run + 1);
    g->rng = (unsigned long long *)(K + rng);
    g->sample = SampleArgs{a.logits, sample_in_smem ? NULL : (float *)(K + scratch), c->vocab_size, a.history, a.n_run,
                           0.0f, 1.0f, 1.0f, 0, 0, g->rng, NULL};

    /* the passes over many rows */
    char *P = (char *)gpu_alloc(pass_bytes);
    PassBuffers &pb = g->pass;
    pb.logit_rows = logit_rows;
    pb.X = (float *)(P + pX), pb.XZ = (float *)(P + pXZ), pb.U = (float *)(P + pU), pb.DBC = (float *)(P + pDBC);
    pb.DELTA = (float *)(P + pDELTA), pb.logits = (float *)(P + pLOG);
    pb.XN = P + pXN, pb.U16 = P + pU16, pb.DT = P + pDT, pb.Y = P + pY;
    pb.tokens = (int *)(P + pINT), pb.slots = pb.tokens + cap;
    g->blas_workspace = P + pWS;
    CUDA_CHECK(cudaMallocHost((void **)&pb.host_tokens, 2 * (size_t)cap * sizeof(int)));
    pb.host_slots = pb.host_tokens + cap;
    CUDA_CHECK(cudaMallocHost((void **)&pb.host_logits, (size_t)max_rows * vocab_bytes));
    BLAS_CHECK(g, g->blas.create(&g->blas_handle));
    BLAS_CHECK(g, g->blas.set_stream(g->blas_handle, g->stream));
    BLAS_CHECK(g, g->blas.set_workspace(g->blas_handle, g->blas_workspace, BLAS_WORKSPACE));
    BLAS_CHECK(g, g->blas.set_math_mode(g->blas_handle, CUBLAS_DEFAULT_MATH));   /* fp32 stays fp32: no TF32 */
    g->pass_mem = P;
    const char *trap = getenv("MAMBA_GPU_TRAP_AT_TOKEN");   /* fault injection for the tests */
    a.trap_at_run = trap ? strtoull(trap, NULL, 10) : 0;

    CUDA_CHECK(cudaMallocHost((void **)&g->host_in, INPUT_RING * sizeof(int)));
    CUDA_CHECK(cudaMallocHost((void **)&g->host_out, OUTPUT_RING * sizeof(int)));
    CUDA_CHECK(cudaMallocHost((void **)&g->host_logits, OUTPUT_RING * vocab_bytes));
    for (int i = 0; i < OUTPUT_RING; i++) CUDA_CHECK(cudaEventCreateWithFlags(&g->out_ready[i], cudaEventDisableTiming));
    const GpuSampling greedy = {0.0f, 0, 1.0f, 1.0f, 64, 0x9E3779B97F4A7C15ull, c->vocab_size};
    gpu_engine_set_sampling(g, &greedy);
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
    for (cudaGraphExec_t &x : g->batch_graph)
        if (x) CUDA_CHECK(cudaGraphExecDestroy(x));
    BLAS_CHECK(g, g->blas.destroy(g->blas_handle));
    dlclose(g->blas.lib);
    CUDA_CHECK(cudaFree(g->pass_mem));
    CUDA_CHECK(cudaFreeHost(g->pass.host_tokens));
    CUDA_CHECK(cudaFreeHost(g->pass.host_logits));
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

/* Best of several streaming reads of a buffer far larger than L2, in bytes/s. */
static double measure_read_bandwidth(GpuEngine *g) {
    size_t free_bytes = 0, total = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
    size_t bytes = (size_t)2 << 30;
    if (bytes > free_bytes / 2) bytes = free_bytes / 2 / 16 * 16;
    uint4 *buf = (uint4 *)gpu_alloc(bytes + 16);
    unsigned *sink = (unsigned *)(buf + bytes / 16);
    CUDA_CHECK(cudaMemsetAsync(buf, 0x5a, bytes + 16, g->stream));
    cudaEvent_t t0, t1;
    CUDA_CHECK(cudaEventCreate(&t0));
    CUDA_CHECK(cudaEventCreate(&t1));
    float best_ms = 1e30f;
    for (int rep = 0; rep < 12; rep++) {
        CUDA_CHECK(cudaEventRecord(t0, g->stream));
        read_probe<<<g->grid * 4, 512, 0, g->stream>>>(buf, bytes / 16, sink);
        CUDA_CHECK(cudaGetLastError());
        CUDA_CHECK(cudaEventRecord(t1, g->stream));
        CUDA_CHECK(cudaEventSynchronize(t1));
        float ms;
        CUDA_CHECK(cudaEventElapsedTime(&ms, t0, t1));
        if (rep >= 2 && ms < best_ms) best_ms = ms;   /* the first two warm up */
    }
    CUDA_CHECK(cudaEventDestroy(t0));
    CUDA_CHECK(cudaEventDestroy(t1));
    CUDA_CHECK(cudaFree(buf));
    return bytes / (best_ms * 1e-3);
}

extern "C" void gpu_engine_bench(GpuEngine *g, const int *prompt, int n_prompt, int n_decode, GpuBench *out) {
    const GpuSampling greedy = {0.0f, 0, 1.0f, 1.0f, 64, 1, g->c.vocab_size};
    gpu_engine_set_sampling(g, &greedy);
    /* warm-up: clocks, caches, the graphs' first launches */
    gpu_engine_reset(g);
    gpu_engine_prefill(g, 0, prompt, n_prompt - 1, 0, NULL);
    gpu_engine_feed(g, prompt[n_prompt - 1], 0);
    for (int i = 0; i < 16; i++) CUDA_CHECK(cudaGraphLaunch(g->decode_graph[i & 1 ? 1 - g->parity : g->parity], g->stream));
    sync_or_die(g);

    /* time to first token: the prompt in parallel but its last token, that token's step, then
     * the first id on the host */
    gpu_engine_reset(g);
    const double t0 = host_seconds();
    gpu_engine_prefill(g, 0, prompt, n_prompt - 1, 0, NULL);
    gpu_engine_feed(g, prompt[n_prompt - 1], 0);
    CUDA_CHECK(cudaMemcpyAsync(g->host_out, g->tokens + g->parity, sizeof(int), cudaMemcpyDeviceToHost, g->stream));
    sync_or_die(g);
    out->first_token_seconds = host_seconds() - t0;

    /* decode: n_decode greedy steps replayed back to back */
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    CUDA_CHECK(cudaEventRecord(e0, g->stream));
    for (int i = 0; i < n_decode; i++) {
        CUDA_CHECK(cudaGraphLaunch(g->decode_graph[g->parity], g->stream));
        g->parity ^= 1;
    }
    CUDA_CHECK(cudaEventRecord(e1, g->stream));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float ms;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    out->decode_seconds = ms * 1e-3;
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    out->engine_bytes = g->weight_bytes + g->work_bytes;
    out->used_bytes = gpu_memory_used();
    out->read_bandwidth = measure_read_bandwidth(g);
}

/* ----------------------------------------------------------------------------------------
 * Many tokens at once: the pass over all layers, the prompt in chunks, the batched step. */

static cudaDataType weight_type(const GpuEngine *g) {
    return g->c.dtype == DTYPE_F32 ? CUDA_R_32F : g->c.dtype == DTYPE_F16 ? CUDA_R_16F : CUDA_R_16BF;
}

/* C[m, n] (column-major, fp32) = op(A) · op(B) (+ C when accumulate), A and B in the weights'
 * dtype, fp32 accumulation. */
static void gemm(GpuEngine *g, bool transpose_a, bool transpose_b, int m, int n, int k, const void *A, int lda,
                 const void *B, int ldb, float *C, int ldc, bool accumulate) {
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    const cudaDataType t = weight_type(g);
    BLAS_CHECK(g, g->blas.gemm(g->blas_handle, transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N, transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                               m, n, k, &one, A, t, lda, B, t, ldb, &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
}

template <typename T>
static void enqueue_pass(GpuEngine *g, int S, int L, bool want_logits) {
    PassBuffers &b = g->pass;
    const StepArgs &a = g->step;
    const int rows = S * L, di = a.di, dmp = a.dmp, Rp = a.Rp, rkp = a.rkp;
    const bool by_channel = L > 1;
    const int ld = round_up(rows, 8);
    cudaStream_t st = g->stream;
    PassArgs p{S, L, rows, by_channel, ld, b.slots, 0, di, a.dm, dmp, a.d_conv, a.kcp, a.ns, a.nsp, a.dt_rank, rkp, Rp, a.pl,
               NULL, a.conv_state, a.ssm_state, g->conv_slot, g->ssm_slot};
    T *XN = (T *)b.XN, *U16 = (T *)b.U16, *DT = (T *)b.DT, *Y = (T *)b.Y;
    embed_rows<T><<<rows, 256, 0, st>>>((const T *)a.embedding, b.tokens, dmp, b.X);
    LAUNCH_CHECK("embed_rows");
    const int row_blocks = (rows + 255) / 256;
    for (int l = 0; l < a.n_layer; l++) {
        const char *base = a.layer0 + (size_t)l * a.layer_stride;
        const void *in_proj = base + a.lo.in_proj, *x_proj_t = base + a.lo.x_proj_t, *dt_proj = base + a.lo.dt_proj;
        p.layer = l, p.params = (const float *)(base + a.lo.params);
        rmsnorm_rows<T><<<rows, 256, 0, st>>>(b.X, (const float *)(base + a.lo.norm), a.dm, dmp, a.eps, XN);
        LAUNCH_CHECK("rmsnorm_rows");
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
        gemm(g, false, by_channel, dmp, rows, di, base + a.lo.out_proj_t, dmp, Y, by_channel ? ld : di, b.X, dmp, true);
    }
    if (want_logits) {
        rmsnorm_rows<T><<<rows, 256, 0, st>>>(b.X, a.norm_f, a.dm, dmp, a.eps, XN);
        LAUNCH_CHECK("rmsnorm_rows");
        gemm(g, true, false, a.vocab, rows, dmp, a.head, dmp, XN, dmp, b.logits, a.vocab, false);
    }
}

static void run_pass(GpuEngine *g, int S, int L, bool want_logits) {
    if (g->c.dtype == DTYPE_F32) enqueue_pass<float>(g, S, L, want_logits);
    else if (g->c.dtype == DTYPE_F16) enqueue_pass<__half>(g, S, L, want_logits);
    else enqueue_pass<__nv_bfloat16>(g, S, L, want_logits);
}

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
        run_pass(g, 1, len, logits != NULL);
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
static cudaGraphExec_t batch_graph(GpuEngine *g, int k) {
    if (!g->batch_graph[k]) {
        cudaGraph_t graph;
        CUDA_CHECK(cudaStreamBeginCapture(g->stream, cudaStreamCaptureModeThreadLocal));
        run_pass(g, 1 << k, 1, true);
        CUDA_CHECK(cudaStreamEndCapture(g->stream, &graph));
        CUDA_CHECK(cudaGraphInstantiate(&g->batch_graph[k], graph, 0));
        CUDA_CHECK(cudaGraphDestroy(graph));
    }
    return g->batch_graph[k];
}

/* Stages n (token, slot) pairs, padded to the class with token 0 in the scratch slot. */
static int stage_batch(GpuEngine *g, int n, const int *slots, const int *tokens) {
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

/* ---- benchmarks of the parallel paths ---- */

/* Seconds to run n pseudo-random prompt tokens through slot 0 in parallel. */
extern "C" double gpu_engine_bench_prefill(GpuEngine *g, long n) {
    int *tokens = (int *)malloc(n * sizeof(int));
    if (!tokens) {
        fprintf(stderr, "mamba: error: out of host memory for a %ld-token prompt\n", n);
        exit(1);
    }
    for (long i = 0; i < n; i++) tokens[i] = (int)((1 + 7919ull * i) % (unsigned long long)g->c.vocab_size);
    gpu_engine_reset(g);
    gpu_engine_prefill(g, 0, tokens, n < PREFILL_CHUNK ? n : PREFILL_CHUNK, 0, NULL);   /* warm-up: cuBLAS picks its kernels */
    gpu_engine_reset(g);
    const double t0 = host_seconds();
    gpu_engine_prefill(g, 0, tokens, n, 0, NULL);
    const double seconds = host_seconds() - t0;
    free(tokens);
    gpu_engine_reset(g);
    return seconds;
}

/* Seconds for `steps` greedy steps of `batch` sequences decoding together (each step one graph
 * replay and an argmax per row that feeds the next step, all on the device). */
extern "C" double gpu_engine_bench_batch(GpuEngine *g, int batch, int steps) {
    int *slots = (int *)malloc(batch * sizeof(int)), *tokens = (int *)malloc(batch * sizeof(int));
    if (!slots || !tokens) {
        fprintf(stderr, "mamba: error: out of host memory\n");
        exit(1);
    }
    for (int i = 0; i < batch; i++) slots[i] = i, tokens[i] = 1 + i;
    gpu_engine_reset(g);
    const int k = stage_batch(g, batch, slots, tokens), rows = 1 << k;
    const cudaGraphExec_t graph = batch_graph(g, k);
    g->in_flight = "the batched benchmark (a batched step, argmax_rows)";
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    for (int rep = 0; rep < 2; rep++) {   /* the first round warms up */
        CUDA_CHECK(cudaEventRecord(e0, g->stream));
        for (int i = 0; i < (rep ? steps : 8); i++) {
            CUDA_CHECK(cudaGraphLaunch(graph, g->stream));
            argmax_rows<<<rows, 256, 0, g->stream>>>(g->pass.logits, g->c.vocab_size, g->step.argmax_vocab, g->pass.tokens);
            LAUNCH_CHECK("argmax_rows");
        }
        CUDA_CHECK(cudaEventRecord(e1, g->stream));
        sync_or_die(g);
    }
    float ms;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    free(slots), free(tokens);
    gpu_engine_reset(g);
    return ms * 1e-3;
}

/* Uniform values in [-1, 1) from a hash of the index: operands for the matrix-product benchmark. */
template <typename T>
__global__ void fill_uniform(T *p, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 0x9E3779B1u;
        h ^= h >> 15, h *= 0x85EBCA77u, h ^= h >> 13;
        p[i] = T((float)(h >> 8) / 8388608.0f - 1.0f);
    }
}

/* FLOP/s of an 8192³ cuBLAS product in the engine's setting (weights' dtype, fp32 accumulation
 * and output), the best of five, on uniform random operands, or on zeros (which the GPU runs
 * faster: it draws less power): what the prompt pass is compared to. */
extern "C" double gpu_engine_matmul_flops(GpuEngine *g, int zeros) {
    const int n = 8192;
    const size_t es = g->c.dtype == DTYPE_F32 ? 4 : 2, elems = (size_t)n * n;
    char *buf = (char *)gpu_alloc(elems * (2 * es + 4));
    void *A = buf, *B = buf + elems * es;
    float *C = (float *)(buf + elems * 2 * es);
    if (zeros) {
        CUDA_CHECK(cudaMemsetAsync(buf, 0, elems * 2 * es, g->stream));
    } else if (g->c.dtype == DTYPE_F32) {
        fill_uniform<<<g->grid * 8, 256, 0, g->stream>>>((float *)buf, 2 * elems);
    } else if (g->c.dtype == DTYPE_F16) {
        fill_uniform<<<g->grid * 8, 256, 0, g->stream>>>((__half *)buf, 2 * elems);
    } else {
        fill_uniform<<<g->grid * 8, 256, 0, g->stream>>>((__nv_bfloat16 *)buf, 2 * elems);
    }
    LAUNCH_CHECK("fill_uniform");
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    g->in_flight = "the matrix-product benchmark (cuBLAS)";
    float best = 1e30f;
    for (int rep = 0; rep < 6; rep++) {
        CUDA_CHECK(cudaEventRecord(e0, g->stream));
        gemm(g, true, false, n, n, n, A, n, B, n, C, n, false);
        CUDA_CHECK(cudaEventRecord(e1, g->stream));
        sync_or_die(g);
        float ms;
        CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        if (rep > 0 && ms < best) best = ms;
    }
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    CUDA_CHECK(cudaFree(buf));
    return 2.0 * n * n * (double)n / (best * 1e-3);
}
