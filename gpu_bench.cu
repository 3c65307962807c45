/* gpu_bench.cu: the CUDA engine's benchmarks (gpu.h's gpu_engine_bench*, gpu_engine_matmul_flops):
 * timed runs of the decode step, the prompt pass, the batched step and a large matrix product,
 * and the read bandwidth they are compared to. No engine code depends on this file. */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "gpu_device.cuh"
#include "gpu_internal.cuh"

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

static double host_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Best of several streaming reads of a buffer far larger than L2, in bytes/s. */
static double measure_read_bandwidth(cudaStream_t stream, int multiprocessors) {
    size_t free_bytes = 0, total = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
    size_t bytes = (size_t)2 << 30;
    if (bytes > free_bytes / 2) bytes = free_bytes / 2 / 16 * 16;
    uint4 *buf = (uint4 *)gpu_alloc(bytes + 16);
    unsigned *sink = (unsigned *)(buf + bytes / 16);
    CUDA_CHECK(cudaMemsetAsync(buf, 0x5a, bytes + 16, stream));
    cudaEvent_t t0, t1;
    CUDA_CHECK(cudaEventCreate(&t0));
    CUDA_CHECK(cudaEventCreate(&t1));
    float best_ms = 1e30f;
    for (int rep = 0; rep < 12; rep++) {
        CUDA_CHECK(cudaEventRecord(t0, stream));
        read_probe<<<multiprocessors * 4, 512, 0, stream>>>(buf, bytes / 16, sink);
        LAUNCH_CHECK("read_probe");
        CUDA_CHECK(cudaEventRecord(t1, stream));
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
    out->read_bandwidth = measure_read_bandwidth(g->stream, g->grid);
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
