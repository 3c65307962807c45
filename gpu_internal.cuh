/* gpu_internal.cuh: what the CUDA engine's files share (the public API is gpu.h). kernels.cu
 * has the decode step, the sampler and the engine's life cycle; prefill.cu the passes over many
 * rows (the prompt pass, the batched step) with cuBLAS; gpu_bench.cu the benchmarks. Here: the
 * engine's struct, the kernels' argument records, the error checks and the limits. */
#ifndef MAMBA_GPU_INTERNAL_CUH
#define MAMBA_GPU_INTERNAL_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#include "gpu.h"

/* ----------------------------------------------------------------------------------------
 * Errors: every CUDA call is checked; a failure prints one line (the call, where, the error)
 * and exits. */

static inline void cuda_check(cudaError_t err, const char *call, const char *file, int line) {
    if (err == cudaSuccess) return;
    fprintf(stderr, "mamba: error: CUDA call %s failed at %s:%d: %s (%s)\n", call, file, line, cudaGetErrorName(err),
            cudaGetErrorString(err));
    exit(1);
}
#define CUDA_CHECK(call) cuda_check((call), #call, __FILE__, __LINE__)

/* Kernel launches are checked where they are made; a fault while one runs surfaces at the next
 * synchronization, which names the work that was in flight (see sync_or_die). */
#define LAUNCH_CHECK(name) cuda_check(cudaGetLastError(), "launching " name, __FILE__, __LINE__)

/* cudaMalloc that says how much was asked for and how much is free when the GPU is full. */
static inline void *gpu_alloc(size_t bytes) {
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
constexpr int SAMPLE_THREADS = 1024;         /* sample_token's single block */
constexpr int PAD = 8;                       /* rows are padded to 8 elements: 16-byte aligned for every dtype */
constexpr int HISTORY_CAP = 1 << 20;         /* tokens the repetition penalty can look back at */
constexpr int INPUT_RING = 64;               /* pinned slots for prompt ids in flight */
constexpr int OUTPUT_RING = 3;               /* pinned slots for sampled ids (and logits) in flight */
constexpr unsigned FULL_MASK = 0xffffffffu;
constexpr int CONV_MAX = 8;                  /* d_conv at most (the prompt pass's conv holds a window of it) */
constexpr int SCAN_MAX_STATES = 64;          /* d_state at most (the prompt pass's scan carries two a lane) */
constexpr int BATCH_CLASSES = 11;            /* batched-step graphs: 2^0 .. 2^10 = MAX_BATCH rows (gpu.h) */
static_assert(1 << (BATCH_CLASSES - 1) == MAX_BATCH, "a batch class for every batch size");

static inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

/* Offsets of one allocation carved in 256-byte-aligned pieces. */
static inline size_t carve(size_t *top, size_t bytes) {
    size_t at = *top;
    *top += (bytes + 255) / 256 * 256;
    return at;
}

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

/* Offsets of the per-channel parameter record, in floats. Mamba-1: A is the channel's [nsp]
 * decay rates. Mamba-2: every channel of the conv (x, B, C) has one; an x channel's also holds
 * its head's dt_bias, D and A (one rate) and its gate_norm weight at gate. */
struct ParamLayout {
    int conv_b, dt_bias, D, A, stride, gate;
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
    float mixer_eps;          /* Falcon-Mamba: the eps of the normalisation of dt, B and C */
    /* Mamba-2: heads, groups, the conv's channels (x, B, C), in_proj's rows (z, x, B, C, dt),
     * the rows of B, C and dt ("shared": every head of a group reads them) a block computes,
     * the blocks a group's channels are split over, the time-step limits */
    int nh, hd, ng, group_size, conv_dim, in_rows, n_shared, shared_per_block, blocks_per_group, max_heads;
    float dt_lo, dt_hi;
    int channels_per_block, head_rows_per_block;
    int argmax_vocab;         /* the argmax looks at ids below this only */
    /* the ring: n_slots slots of slot_bytes; a tile of a matrix holds rows_per_tile_* rows */
    int n_slots, slot_bytes, rows_per_tile_in, rows_per_tile_x, rows_per_tile_dt, rows_per_tile_out, rows_per_tile_head;
    int small_conv, small_ssm, small_params;   /* byte offsets in a layer's first tile (the norm is at 0) */
    int small_conv_shared, small_params_shared, rows_per_tile_state;   /* Mamba-2: the shared rows' slices; state tiles */
    int off_xn, off_rows, off_dt, off_u, off_z, off_y, off_dbc, off_dtv, off_acc, off_red, off_part, off_params,
        off_conv, off_ssm;    /* shared-memory layout after the ring, in floats */
    int off_shared, off_heads, off_scale, off_params_shared, off_conv_shared;   /* Mamba-2's more */
    float *resid;             /* [dmp] the residual stream; Mamba-2 [2 parities][dmp] (layer l writes parity l % 2) */
    float *dbc;               /* [n_layer, Rp] x_proj outputs, accumulated by all blocks; Mamba-2:
                                 [n_shared] B, C (after the conv) and dt, one block writing each */
    float *out_acc;           /* Mamba-2 [2 parities][ng][dmp] out_proj's sums per group, not yet scaled */
    float *out_ss;            /* Mamba-2 [2 parities][ng] Σ y² per group, for the gated norm's scale */
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

/* ----------------------------------------------------------------------------------------
 * The engine. */

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
    cublasStatus_t (*gemm_strided_batched)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                           const void *, const void *, cudaDataType, int, long long, const void *,
                                           cudaDataType, int, long long, const void *, void *, cudaDataType, int,
                                           long long, int, cublasComputeType_t, cublasGemmAlgo_t);
    cublasStatus_t (*gemm_batched)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void *,
                                   const void *const *, cudaDataType, int, const void *const *, cudaDataType, int,
                                   const void *, void *const *, cudaDataType, int, int, cublasComputeType_t,
                                   cublasGemmAlgo_t);
    decltype(&cublasGetStatusName) status_name;
};

/* What the engine needs for passes over many rows: what every architecture's pass uses, and
 * scratch for the activations inside a block (each architecture carves its own). */
struct PassBuffers {
    int cap;                 /* rows a pass takes at most */
    int logit_rows;          /* rows of logits a pass can make */
    float *X, *logits;       /* [cap, dmp] the residual stream; [logit_rows, vocab] */
    void *XN;                /* [cap, dmp] the normalized residual, in the weights' dtype */
    char *scratch;           /* GpuArch.pass_scratch(cap) bytes */
    int *tokens, *slots;     /* [cap] each: the pass's token ids (the batched benchmark's argmax writes them) and slots */
    int *host_tokens, *host_slots;   /* pinned */
    float *host_logits;              /* pinned [max class, vocab] */
};

/* The pass buffers' offsets in their one allocation (prefill.cu plans them; the engine checks
 * that they fit before allocating anything). */
struct PassLayout {
    int cap, logit_rows, max_rows;
    size_t X, logits, XN, scratch, ints, workspace, bytes;
};

struct GpuEngine;

/* One architecture of Config.arch: whether the kernels handle a model's shape, its setup
 * (shared-memory plan, device memory, weights, kernel arguments, the passes' buffers), the
 * launch of its decode step (captured in the step's graphs) and its pass over many rows.
 * gpu_engine_create picks one from the table in kernels.cu; another architecture is another
 * row of new functions. */
typedef void (*StepKernel)(StepArgs);

struct GpuArch {
    Arch arch;
    bool (*supports)(const Config *c, char *err, size_t err_len);
    bool (*setup)(GpuEngine *g, const Weights *w, const cudaDeviceProp &prop, char *err, size_t err_len);
    StepKernel (*step_kernel)(DType dtype);   /* the decode step's kernel for the weights' dtype */
    void (*launch_step)(GpuEngine *g, int token_slot);
    void (*run_pass)(GpuEngine *g, int S, int L, bool want_logits);
    size_t (*pass_scratch)(const GpuEngine *g, size_t cap);   /* bytes of activations run_pass needs for cap rows */
};

struct GpuEngine {
    Config c;
    const GpuArch *arch;
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
    StepKernel step_kernel;
    unsigned long long trap_at_run;                  /* fault injection: the step of token number trap_at_run traps (0: never) */
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

/* ---- kernels.cu ---- */

/* Steps of an architecture's setup: copies to the device in the engine's stream (a matrix into
 * padded rows; transposed through tmp); the check that everything planned fits the free memory
 * (the reason names the whole need); the stream and the weights' and work's allocations, zeroed;
 * the check that the step kernel's blocks can all be resident; the sampler's shared memory. */
void upload(void *dst, const void *src, size_t bytes, cudaStream_t stream);
void upload_rows(void *dst, const void *src, size_t rows, int K, int Kp, size_t es, cudaStream_t stream);
void upload_transposed(void *dst, const void *src, int rows, int cols, int out_stride, size_t es, void *tmp,
                       cudaStream_t stream);
bool fits_free_memory(const GpuEngine *g, size_t tmp_bytes, const PassLayout &passes, const char *device, char *err,
                      size_t err_len);
void allocate_device_memory(GpuEngine *g);
bool step_fits_resident(GpuEngine *g, const char *device, char *err, size_t err_len);
void plan_sampler_smem(GpuEngine *g, const cudaDeviceProp &prop);

/* The model's two ends in the weights allocation (offsets): the embedding, the LM head (the
 * embedding itself when tied) and the final norm, carved first by an architecture's plan. */
struct ModelEnds {
    size_t emb, head, norm_f;
};
ModelEnds carve_model_ends(const GpuEngine *g, size_t *top);
void upload_model_ends(GpuEngine *g, const Weights *w, const ModelEnds &m);
void bind_model_ends(GpuEngine *g, const ModelEnds &m);

/* The work every step has after its state (offsets in the work allocation): carved last by an
 * architecture's plan (which it ends: work_bytes, zeroed_bytes), bound once the work exists. */
struct StepWork {
    size_t logits, history, best, best_id, counters, rng, scratch;
};
StepWork carve_step_work(GpuEngine *g, size_t *top);
void bind_step_work(GpuEngine *g, const StepWork &w);

/* A fault in a kernel surfaces at the next synchronization, which names the work in flight. */
void die_in_flight(const GpuEngine *g, cudaError_t err);
void sync_or_die(GpuEngine *g);

/* ---- mamba2.cu: Mamba-2's decode step and setup (GpuArch's supports, setup, step_kernel) ---- */

bool mamba2_supports(const Config *c, char *err, size_t err_len);
bool mamba2_setup(GpuEngine *g, const Weights *w, const cudaDeviceProp &prop, char *err, size_t err_len);
StepKernel mamba2_step_kernel(DType dtype);

/* ---- prefill.cu ---- */

bool blas_load(Blas *b, char *err, size_t err_len);
void blas_check(const Blas &b, cublasStatus_t st, const char *call, const char *file, int line);
#define BLAS_CHECK(g, call) blas_check((g)->blas, (call), #call, __FILE__, __LINE__)

/* Plans the pass buffers from the engine's shape; then allocates them, their pinned staging and
 * cuBLAS's handle; the last one lets them go. */
PassLayout plan_pass_buffers(const GpuEngine *g);
void open_passes(GpuEngine *g, const PassLayout &pl);
void close_passes(GpuEngine *g);

/* Mamba-1's pass over S sequences × L tokens (GpuArch.run_pass), and Falcon-Mamba's (the same
 * with dt, B and C normalised after x_proj); their scratch; the attributes their kernels need. */
void mamba1_run_pass(GpuEngine *g, int S, int L, bool want_logits);
void falcon_run_pass(GpuEngine *g, int S, int L, bool want_logits);
size_t mamba1_pass_scratch(const GpuEngine *g, size_t cap);
void prepare_mamba1_pass(GpuEngine *g);

/* ---- mamba2_pass.cu ---- */

/* Mamba-2's pass (GpuArch.run_pass): the prompt (S = 1) by the chunked state-space dual
 * algorithm, the batched step (L = 1) one recurrent step a row; its scratch. */
void mamba2_run_pass(GpuEngine *g, int S, int L, bool want_logits);
size_t mamba2_pass_scratch(const GpuEngine *g, size_t cap);

/* The steps every architecture's pass shares, on its first `rows` rows: X = the embeddings of
 * pass.tokens; XN = RMSNorm(X)·w in the weights' dtype; pass.logits from X (final norm, LM head). */
void embed_pass_rows(GpuEngine *g, int rows);
void norm_pass_rows(GpuEngine *g, int rows, const float *w);
void pass_logits(GpuEngine *g, int rows);

/* The C = op(A) · op(B) (+ C) of the passes, in the weights' dtype with fp32 accumulation. */
void gemm(GpuEngine *g, bool transpose_a, bool transpose_b, int m, int n, int k, const void *A, int lda, const void *B,
          int ldb, float *C, int ldc, bool accumulate);

/* The batched step: stages n (token, slot) pairs padded to a batch class k (returned), and that
 * class's graph, captured on first use. */
int stage_batch(GpuEngine *g, int n, const int *slots, const int *tokens);
cudaGraphExec_t batch_graph(GpuEngine *g, int k);

#endif
