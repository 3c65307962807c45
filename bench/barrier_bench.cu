/* bench/barrier_bench.cu: what one grid barrier costs on this GPU, for the step kernel's
 * layout (one 512-thread block per multiprocessor), and the SM clock while it runs.
 *   nvcc -arch=sm_90 -O3 -o barrier_bench bench/barrier_bench.cu && ./barrier_bench
 * Modes (each timed with N barriers in one launch, with and without the step's float4 atomics
 * into a d_model-sized vector before each barrier):
 *   all-fence   every thread fence.acq_rel.gpu, bar.sync, thread 0 atom.acq_rel, flag poll (the engine's)
 *   t0-fence    bar.sync, thread 0 fence.acq_rel.gpu + relaxed atomic, flag poll
 *   t0-count    bar.sync, thread 0 atom.add.release.gpu, polls the counter itself (ld.acquire)
 *   cg          cooperative_groups::this_grid().sync()
 *   fence-only  every thread fence.acq_rel.gpu + bar.sync, no grid barrier
 *   sync-only   bar.sync only */
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

namespace cg = cooperative_groups;

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA error %s at %d: %s\n", #x, __LINE__, cudaGetErrorString(e_)); exit(1); } } while (0)

__device__ __forceinline__ unsigned ld_acquire(const unsigned *p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ unsigned long long gtimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}

template <int MODE>
__global__ void __launch_bounds__(512, 1) kern(unsigned *count, unsigned *opened, float *vec, int nvec4, int iters,
                                                 int atomics, unsigned long long *clk) {
    unsigned long long c0 = clock64(), t0 = gtimer();
    float sink = 0.f;
    for (int k = 1; k <= iters; k++) {
        if (atomics && threadIdx.x < nvec4)
            atomicAdd(reinterpret_cast<float4 *>(vec) + threadIdx.x, make_float4(1.f, 1.f, 1.f, 1.f));
        if (MODE == 0) {
            asm volatile("fence.acq_rel.gpu;" ::: "memory");
            __syncthreads();
            if (threadIdx.x == 0) {
                unsigned before;
                asm volatile("atom.add.acq_rel.gpu.global.u32 %0, [%1], 1;" : "=r"(before) : "l"(count) : "memory");
                if (before == k * gridDim.x - 1) asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(opened), "r"(k) : "memory");
                else while (ld_acquire(opened) < (unsigned)k) {}
            }
            __syncthreads();
        } else if (MODE == 1) {
            __syncthreads();
            if (threadIdx.x == 0) {
                asm volatile("fence.acq_rel.gpu;" ::: "memory");
                unsigned before = atomicAdd(count, 1u);
                if (before == k * gridDim.x - 1) asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(opened), "r"(k) : "memory");
                else while (ld_acquire(opened) < (unsigned)k) {}
            }
            __syncthreads();
        } else if (MODE == 2) {
            __syncthreads();
            if (threadIdx.x == 0) {
                asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(count) : "memory");
                const unsigned target = k * gridDim.x;
                while (ld_acquire(count) < target) {}
            }
            __syncthreads();
        } else if (MODE == 3) {
            cg::this_grid().sync();
        } else if (MODE == 4) {
            asm volatile("fence.acq_rel.gpu;" ::: "memory");
            __syncthreads();
        } else {
            __syncthreads();
        }
        if (atomics && threadIdx.x < nvec4) sink += __ldcg(vec + threadIdx.x * 4);
    }
    if (sink == 12345.f) vec[0] = sink;
    if (blockIdx.x == 0 && threadIdx.x == 0) clk[0] = clock64() - c0, clk[1] = gtimer() - t0;
}

template <int MODE>
static void run(const char *name, int grid, unsigned *count, unsigned *opened, float *vec, int atomics, unsigned long long *clk) {
    const int iters = 4000, nvec4 = 192;
    for (int rep = 0; rep < 2; rep++) {
        CK(cudaMemset(count, 0, 256));
        CK(cudaMemset(opened, 0, 4));
        cudaEvent_t a, b;
        CK(cudaEventCreate(&a));
        CK(cudaEventCreate(&b));
        void *args[] = {&count, &opened, &vec, (void *)&nvec4, (void *)&iters, &atomics, &clk};
        CK(cudaEventRecord(a));
        CK(cudaLaunchCooperativeKernel((void *)kern<MODE>, grid, 512, args, 0, 0));
        CK(cudaGetLastError());
        CK(cudaEventRecord(b));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        unsigned long long h[2];
        CK(cudaMemcpy(h, clk, sizeof h, cudaMemcpyDeviceToHost));
        if (rep == 1)
            printf("barrier %-10s atomics %d: %6.3f us/barrier  (SM clock in kernel %4.0f MHz)\n", name, atomics,
                   ms * 1e3 / iters, h[1] ? (double)h[0] * 1e3 / h[1] : 0.0);
        CK(cudaEventDestroy(a));
        CK(cudaEventDestroy(b));
    }
}

int main() {
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    const int grid = p.multiProcessorCount;
    printf("%s, %d SMs\n", p.name, grid);
    unsigned *count, *opened;
    float *vec;
    unsigned long long *clk;
    CK(cudaMalloc(&count, 256));
    CK(cudaMalloc(&opened, 256));
    CK(cudaMalloc(&vec, 4096 * 4));
    CK(cudaMalloc(&clk, 16));
    CK(cudaMemset(vec, 0, 4096 * 4));
    for (int atomics = 0; atomics <= 1; atomics++) {
        run<0>("all-fence", grid, count, opened, vec, atomics, clk);
        run<1>("t0-fence", grid, count, opened, vec, atomics, clk);
        run<2>("t0-count", grid, count, opened, vec, atomics, clk);
        run<3>("cg", grid, count, opened, vec, atomics, clk);
        run<4>("fence-only", grid, count, opened, vec, atomics, clk);
        run<5>("sync-only", grid, count, opened, vec, atomics, clk);
    }
    return 0;
}
