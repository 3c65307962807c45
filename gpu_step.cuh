/* gpu_step.cuh: the building blocks of the persistent decode-step kernels (kernels.cu's
 * Mamba-1 step, mamba2.cu's Mamba-2 step; kernels.cu's opening comment tells the design): the
 * weight ring a producer warp fills with bulk copies, the consumers' products with its tiles,
 * the grid barrier, the LM head with its argmax and the step's end. */
#ifndef MAMBA_GPU_STEP_CUH
#define MAMBA_GPU_STEP_CUH

#include <stdint.h>

#include "gpu_device.cuh"
#include "gpu_internal.cuh"

/* ----------------------------------------------------------------------------------------
 * Sizes of the decode step. */

constexpr int RING_SLOTS = 3;                /* shared-memory ring slots of a block */
constexpr int MAX_COL_ITEMS = 4;             /* column chunks a consumer thread sums, at most */
constexpr long long WAIT_TIMEOUT_CYCLES = 20000000000LL;   /* ~10 s: a wait that never ends is a bug */

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
__device__ inline char *ring_begin(Ring &r, unsigned bytes) {
    const unsigned s = r.t % r.n_slots, fill = r.t / r.n_slots;
    if (fill > 0) mbar_wait(&r.empty[s], (fill - 1) & 1);
    mbar_expect_bytes(&r.full[s], bytes);
    return r.slot(r.t);
}

__device__ inline void ring_copy(Ring &r, void *dst, const void *src, unsigned bytes) {
    bulk_copy(dst, src, bytes, &r.full[r.t % r.n_slots]);
}

/* Producer: n rows of row_bytes from src, rows_per_tile to a tile. */
__device__ inline void produce_rows(Ring &r, const void *src, int n, int row_bytes, int rows_per_tile) {
    const char *p = static_cast<const char *>(src);
    for (int i = 0; i < n; i += rows_per_tile) {
        const unsigned bytes = (unsigned)(min(rows_per_tile, n - i) * row_bytes);
        ring_copy(r, ring_begin(r, bytes), p + (size_t)i * row_bytes, bytes);
        r.t++;
    }
}

/* Consumer: waits for the next tile and returns it. One lane of each warp polls the barrier;
 * __syncwarp passes the ordering on to the others. */
__device__ inline const char *ring_wait(const Ring &r) {
    if ((threadIdx.x & 31) == 0) mbar_wait(&r.full[r.t % r.n_slots], (r.t / r.n_slots) & 1);
    __syncwarp();
    return r.slot(r.t);
}

/* Consumer: this warp is done with the tile. */
__device__ inline void ring_release(Ring &r) {
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
__device__ inline void tile_rows_dot(const uint4 *tile, int n, int chunks, const float *x, float *out) {
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
__device__ inline void consume_rows(Ring &r, int n, int rows_per_tile, int K, const float *x, float *out) {
    const int chunks = K / (16 / (int)sizeof(T));
    for (int i = 0; i < n; i += rows_per_tile) {
        tile_rows_dot<T>(reinterpret_cast<const uint4 *>(ring_wait(r)), min(rows_per_tile, n - i), chunks, x, out + i);
        ring_release(r);
    }
}

/* All the tiles of a column-split matrix: out[0:N] += Σ_{c < n} v[c] · Wt[c, :]. */
template <typename T>
__device__ inline void consume_cols(Ring &r, int n, int rows_per_tile, int N, const float *v, float *out, float *part) {
    ColumnSums<T> sums(N);
    for (int i = 0; i < n; i += rows_per_tile) {
        sums.add(reinterpret_cast<const uint4 *>(ring_wait(r)), i, min(rows_per_tile, n - i), v);
        ring_release(r);
    }
    sums.finish(out, part);
}

/* xn = w ⊙ x / sqrt(mean(x²) + eps) over d_model; the padding up to dmp stays zero. */
template <typename Load>
__device__ inline void rmsnorm_into(float *xn, Load load, const float *w, int dm, int dmp, float eps, float *red) {
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
__device__ inline void grid_barrier(unsigned *count, unsigned k) {
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


/* dst[0:n] += this block's share of a product split over the blocks (n a multiple of 4). */
__device__ __forceinline__ void add_block_share(float *dst, const float *acc, int n, int nc) {
    if (nc > 0)
        for (int i = threadIdx.x; i < n / 4; i += CONSUMERS)
            atomicAdd(reinterpret_cast<float4 *>(dst) + i, reinterpret_cast<const float4 *>(acc)[i]);
}

/* The final RMSNorm of the residual (resid(i) loads element i) and the LM head over my rows [r0, r1): the logits out, and the block's
 * largest (ids below argmax_vocab, lowest id on ties; NaN never wins) in best, best_id. */
template <typename T, typename Load>
__device__ __forceinline__ void lm_head(const StepArgs &a, Ring &ring, Load resid, int r0, int r1, float *xn, float *rows,
                                        float *red, int *redi, float &best, int &best_id) {
    for (int j = threadIdx.x; j < r1 - r0; j += CONSUMERS) rows[j] = 0.0f;
    rmsnorm_into(xn, resid, reinterpret_cast<const float *>(ring_wait(ring)), a.dm, a.dmp, a.eps, red);
    ring_release(ring);
    consume_rows<T>(ring, r1 - r0, a.rows_per_tile_head, a.dmp, xn, rows);
    team_sync<CONSUMERS>();
    best = -INFINITY, best_id = -1;
    for (int j = threadIdx.x; j < r1 - r0; j += CONSUMERS) {
        const float v = rows[j];
        a.logits[r0 + j] = v;
        if (r0 + j < a.argmax_vocab && v == v && (best_id < 0 || v > best)) best = v, best_id = r0 + j;
    }
    block_argmax<CONSUMERS>(best, best_id, red, redi);
}

/* The last block to finish reduces the blocks' maxima into token_out and readies the next
 * step: the barrier's counters and the n floats of sums at `sums` back to zero. ticket is
 * shared by the block. */
__device__ __forceinline__ void finish_step(const StepArgs &a, float best, int best_id, float *sums, int n, float *red,
                                            int *redi, unsigned &ticket) {
    const int tid = threadIdx.x, nb = gridDim.x;
    if (tid == 0) {
        a.block_best[blockIdx.x] = best, a.block_best_id[blockIdx.x] = best_id;
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
    for (int i = tid; i < n; i += CONSUMERS) sums[i] = 0.0f;
}

#endif
