/* gpu_device.cuh: device helpers the engine's kernels share (kernels.cu's decode step and
 * sampler, prefill.cu's passes): reductions over a warp or a team of threads, the activations,
 * dtype conversions. */
#ifndef MAMBA_GPU_DEVICE_CUH
#define MAMBA_GPU_DEVICE_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

#include "gpu_internal.cuh"

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

__device__ __forceinline__ unsigned smem_addr(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }

#endif
