/* gpu.h: the C API of the CUDA engine (kernels.cu).
 *
 * The engine keeps the weights (uploaded once), the per-sequence state (conv and SSM, fp32),
 * the logits and the sampler's state on the GPU. A decode step is one CUDA graph replay; only
 * the sampled token id crosses PCIe, unless the caller asks for the logits. */
#ifndef MAMBA_GPU_H
#define MAMBA_GPU_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* Limits the engine and its caller share (mamba.h includes this header in CPU-only builds too,
 * for these). */
#define MAX_BATCH 1024             /* sequences one engine runs together at most (the CPU's too) */
#define PREFILL_CHUNK 4096         /* prompt tokens one parallel pass takes at most: bounds the memory */
#define PREFILL_LOGIT_ROWS 256     /* prompt tokens one pass takes when their logits are wanted */

#ifdef __cplusplus
extern "C" {
#endif

typedef struct GpuEngine GpuEngine;

/* The sampler's settings, as the CPU sampler reads them. */
typedef struct {
    float temperature;     /* 0: greedy */
    int top_k;             /* 0: off */
    float top_p;           /* 1: off */
    float repeat_penalty;  /* 1: off */
    int repeat_last_n;     /* how many of the latest tokens the penalty looks at (at most 2^20) */
    uint64_t rng;          /* xorshift64* state, not 0 */
    int vocab;             /* the sampler (greedy too) picks ids in [0, vocab) only */
} GpuSampling;

/* Uploads the weights and allocates the state of max_batch (1 to 1024) sequences (slots; slot 0
 * is the one the single-sequence calls use) and the step's graphs, with greedy sampling (a
 * batch's graph is captured when a batch of its size first runs). Opens cuBLAS. Returns NULL
 * and a one-line reason in err when there is no usable CUDA device or cuBLAS, when the GPU has too
 * little free memory (the reason says how many bytes are needed and how many are free), or
 * when the model's dtype or shape is one the kernels do not handle. */
GpuEngine *gpu_engine_create(const Config *c, const Weights *w, int max_batch, char *err, size_t err_len);
/* Whether the GPU engine has kernels for an architecture at all. */
int gpu_runs_arch(Arch arch);
void gpu_engine_free(GpuEngine *g);

/* Back to an empty sequence: zero state, empty penalty history. The sampler's RNG goes on. */
void gpu_engine_reset(GpuEngine *g);

void gpu_engine_set_sampling(GpuEngine *g, const GpuSampling *s);

/* Runs one given token (a prompt token). With want_logits, waits for it and returns its
 * vocab_size logits on the host (valid until the next call); otherwise returns NULL at once. */
const float *gpu_engine_feed(GpuEngine *g, int token, int want_logits);

/* Samples the next token on the GPU from the latest logits and runs it through the model, in
 * one graph; returns its id. With want_logits, *logits receives the host copy of the logits
 * after running it (valid until the next call). It keeps one such step queued ahead, so after
 * it only gpu_engine_sample_feed (with the same want_logits: the step queued ahead was launched
 * with it), gpu_engine_reset or gpu_engine_free may follow. */
int gpu_engine_sample_feed(GpuEngine *g, int want_logits, const float **logits);

/* ---- Several sequences at once (slots 0 .. max_batch-1, each with its own state) ---- */

/* Empties one slot's state. */
void gpu_engine_reset_slot(GpuEngine *g, int slot);

/* One slot's state copied to the host, or from it: f32 [n_layer, conv channels, d_conv] (the last
 * d_conv inputs, oldest first) and [n_layer, d_inner, d_state], unpadded. Both wait for the copy;
 * nothing may be queued ahead (gpu_engine_sample_feed) when they are called. */
void gpu_engine_read_state(GpuEngine *g, int slot, float *conv, float *ssm);
void gpu_engine_write_state(GpuEngine *g, int slot, const float *conv, const float *ssm);

/* Runs the n given tokens through the sequence in slot as parallel passes of up to `chunk`
 * tokens (0: the largest; at most 4096): matrix products over the tokens, the selective scan
 * over the sequence. Memory stays bounded for any n. The slot's state afterwards is the one n
 * single steps would leave (and for slot 0, the repetition penalty's history has the tokens).
 * With logits (n rows of vocab_size floats, on the host) the passes make the tokens' logits
 * too, in passes of at most 256 tokens (or max_batch, when larger). */
void gpu_engine_prefill(GpuEngine *g, int slot, const int *tokens, long n, int chunk, float *logits);

/* Runs tokens[i] through the sequence in slots[i] for i < n (distinct slots, n ≤ max_batch) as
 * one batch; returns the n rows of vocab_size logits on the host, row i for slots[i] (valid
 * until the next call). */
const float *gpu_engine_forward_batch(GpuEngine *g, int n, const int *slots, const int *tokens);

/* Waits until the queued steps are done. */
void gpu_engine_sync(GpuEngine *g);

const char *gpu_engine_device_name(const GpuEngine *g);

/* Bytes in use on the device (total - free), for reports and the constant-memory check. */
size_t gpu_memory_used(void);

typedef struct {
    double first_token_seconds;   /* feeding the prompt until the first generated id is on the host */
    double decode_seconds;        /* n_decode greedy steps, replayed back to back */
    uint64_t engine_bytes;        /* device memory the engine allocated */
    uint64_t used_bytes;          /* device memory in use (total - free) during the run */
    double read_bandwidth;        /* bytes/s of a large streaming read, measured in the same run */
} GpuBench;

/* Times a greedy run of n_prompt given tokens then n_decode generated ones. */
void gpu_engine_bench(GpuEngine *g, const int *prompt, int n_prompt, int n_decode, GpuBench *out);

/* Seconds to run an n-token prompt through the parallel prompt pass (gpu_engine_prefill). */
double gpu_engine_bench_prefill(GpuEngine *g, long n);

/* Seconds for `steps` greedy steps of `batch` sequences decoding together (batch ≤ max_batch),
 * the argmax on the device. */
double gpu_engine_bench_batch(GpuEngine *g, int batch, int steps);

/* FLOP/s of a large matrix product in the engine's dtype with fp32 accumulation, measured now, on
 * random operands or on zeros (zeros run faster). */
double gpu_engine_matmul_flops(GpuEngine *g, int zeros);

#ifdef __cplusplus
}
#endif

#endif
