/* tests/kernels/kernel_test.cuh: what the kernel test programs (test_kernels.cu,
 * test_mamba2_pass.cu) share on the host: random values, the dtypes' storage, the reference's
 * activations, the verdicts and their summary, device reads, a launch's timing, and main's
 * device check and `--no-bench`. Included after the engine's files. */
#ifndef MAMBA_KERNEL_TEST_CUH
#define MAMBA_KERNEL_TEST_CUH

#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <functional>
#include <vector>

#include "gpu_internal.cuh"
#include "model.h"

/* ----------------------------------------------------------------------------------------
 * Random values: an xorshift, each program with its own seed. */

static uint64_t test_rng;

/* Starts uniform's sequence; each program calls it once, before its first draw. */
static void seed_uniform(uint64_t seed) { test_rng = seed; }

static float uniform(float lo, float hi) {
    test_rng ^= test_rng >> 12, test_rng ^= test_rng << 25, test_rng ^= test_rng >> 27;
    return lo + (hi - lo) * (float)((test_rng * 0x2545F4914F6CDD1DULL) >> 40) / 16777216.0f;
}

/* ----------------------------------------------------------------------------------------
 * The dtypes' storage. */

static uint16_t bf16_bits(float v) {   /* round to nearest even */
    uint32_t u;
    memcpy(&u, &v, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

static uint16_t f16_bits(float v) {
    const __half h = __float2half_rn(v);
    uint16_t e;
    memcpy(&e, &h, 2);
    return e;
}

/* v as a weight of dtype t holds it */
static float round_to(DType t, float v) {
    return t == DTYPE_BF16 ? bf16_to_f32(bf16_bits(v)) : t == DTYPE_F16 ? f16_to_f32(f16_bits(v)) : v;
}

static const char *dtype_label(DType t) { return t == DTYPE_F32 ? "f32" : t == DTYPE_F16 ? "f16" : "bf16"; }

/* n values uniform in [lo, hi), rounded to dtype `round`. */
static std::vector<float> randoms(size_t n, float lo, float hi, DType round = DTYPE_F32) {
    std::vector<float> v(n);
    for (float &x : v) x = round_to(round, uniform(lo, hi));
    return v;
}

/* A value into host bytes laid out as the device's: element i of the array at byte `at`, in dtype t. */
static void put(std::vector<uint8_t> &bytes, size_t at, size_t i, float v, DType t) {
    if (t == DTYPE_F32) {
        memcpy(&bytes[at + 4 * i], &v, 4);
    } else {
        const uint16_t e = t == DTYPE_BF16 ? bf16_bits(v) : f16_bits(v);
        memcpy(&bytes[at + 2 * i], &e, 2);
    }
}

/* The i-th token id of the tests' fixed sequences over a vocabulary of `vocab`. */
static int token_at(int i, int vocab) { return (int)((i * 7919LL + 13) % vocab); }

/* ----------------------------------------------------------------------------------------
 * The references' activations. */

static double silu_ref(double x) { return x / (1.0 + exp(-x)); }
static double softplus_ref(double x) { return x > 20.0 ? x : log1p(exp(x)); }

/* ----------------------------------------------------------------------------------------
 * The verdicts: one PASS/FAIL line each, counted for the summary. */

static int passed, failed;

static void report(const char *name, double err, double tolerance) {
    const bool ok = err <= tolerance;   /* NaN fails */
    printf("%s %s (max err %.3g, tolerance %.3g)\n", ok ? "PASS" : "FAIL", name, err, tolerance);
    (ok ? passed : failed)++;
}

/* |got - want| / max(1, |want|); NaN counts as infinite */
static double rel_err(double got, double want) {
    const double d = fabs(got - want) / fmax(1.0, fabs(want));
    return d == d ? d : INFINITY;
}

/* n elements from the device, once its work is done. */
template <typename E>
static std::vector<E> to_host(const E *d, size_t n) {
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<E> h(n);
    CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(E), cudaMemcpyDeviceToHost));
    return h;
}

/* ----------------------------------------------------------------------------------------
 * The benchmarks' timing and main's scaffolding. */

/* Microseconds a launch (enqueued in `stream`) takes: the mean of 20, after 3 to warm up. */
static double time_us(cudaStream_t stream, const std::function<void()> &launch) {
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    for (int i = 0; i < 3; i++) launch();   /* warm-up */
    const int reps = 20;
    CUDA_CHECK(cudaEventRecord(e0, stream));
    for (int i = 0; i < reps; i++) launch();
    CUDA_CHECK(cudaEventRecord(e1, stream));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float ms;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    return ms * 1e3 / reps;
}

/* Device 0's properties, its name printed; false (said on stderr) when there is no device. */
static bool open_device(const char *program, cudaDeviceProp *prop) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        fprintf(stderr, "%s: no usable CUDA device\n", program);
        return false;
    }
    CUDA_CHECK(cudaGetDeviceProperties(prop, 0));
    printf("device: %s\n", prop->name);
    return true;
}

/* Whether to run the benchmarks: unless the first argument is `--no-bench`. */
static bool bench_wanted(int argc, char **argv) { return !(argc > 1 && strcmp(argv[1], "--no-bench") == 0); }

/* The summary line; the exit status: non-zero on any FAIL. */
static int summary() {
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

#endif
