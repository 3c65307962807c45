/* bench_gpu.c: the GPU engine's benchmarks (bench's EngineOps entries for the GPU): the
 * measurements themselves are gpu_bench.cu's, on the device's own clock. */
#include "mamba.h"

#include <cjson/cJSON.h>
#include <stdlib.h>

/* Batch 1 is timed on the GPU; a batch's prompts are taken in as a batched run does, then its
 * decode steps are timed on the GPU. */
void bench_gpu(Engine *e, int n_prompt, int n_decode, int batch, BenchResult *r) {
    const int vocab = e->model->config.vocab_size;
    GpuEngine *g = engine_gpu(e);
    int *prompt = xmalloc(n_prompt * sizeof *prompt);
    for (int i = 0; i < n_prompt; i++) prompt[i] = bench_token(i, vocab);
    GpuBench b;   /* batch 1; with a batch, only its bandwidth and memory are kept */
    gpu_engine_bench(g, prompt, n_prompt, batch > 1 ? 1 : n_decode, &b);
    r->ttft = b.first_token_seconds, r->decode_s = b.decode_seconds, r->bandwidth = b.read_bandwidth;
    r->memory = b.used_bytes, r->engine_memory = b.engine_bytes;
    r->device_name = gpu_engine_device_name(g);
    if (batch > 1) {
        int *slots = xmalloc(batch * sizeof *slots), *next = xmalloc(batch * sizeof *next);
        for (int i = 0; i < batch; i++) slots[i] = i;
        r->ttft = bench_prompts(e, vocab, n_prompt, batch, slots, next);
        r->decode_s = gpu_engine_bench_batch(g, batch, n_decode);
        free(slots), free(next);
    }
    free(prompt);
}

/* bench --sweep: the GPU's parallel paths. The prompt pass at several lengths, its FLOP/s (2 ×
 * parameters a token, a floor on the work) against a large matrix product's measured now on
 * random operands (the one on zeros, faster, is shown beside it); then batched decoding at
 * several batch sizes against the batch-1 step and against their roofline (a step's bytes over
 * the read bandwidth measured with the batch-1 step). One table, or a JSON line a measurement. */
void bench_sweep_gpu(Engine *e, const char *model_path, int json) {
    static const int lengths[] = {512, 2048, 8192, 65536}, batches[] = {1, 4, 16, SWEEP_MAX_BATCH};
    const Model *m = e->model;
    GpuEngine *g = engine_gpu(e);
    const double params = (double)model_param_count(&m->config), matmul = gpu_engine_matmul_flops(g, 0);
    const double matmul_zeros = gpu_engine_matmul_flops(g, 1);
    int prompt[16];
    for (int i = 0; i < 16; i++) prompt[i] = bench_token(i, m->config.vocab_size);
    GpuBench one;
    gpu_engine_bench(g, prompt, 16, 256, &one);
    const double batch1 = 256 / one.decode_seconds;
    if (!json)
        printf("model: %s (%d layers, d_model %d, %s) on %s\nmatrix products: %.1f TFLOP/s (%.1f on zeros); batch-1 "
               "decode: %.1f tokens/s\n"
               "\n%9s %9s %11s %8s %10s %9s\n",
               model_path, m->config.n_layer, m->config.d_model, dtype_name(m->config.dtype), gpu_engine_device_name(g),
               matmul / 1e12, matmul_zeros / 1e12, batch1, "prompt", "seconds", "tokens/s", "TFLOP/s", "of matmul", "GPU MiB");
    for (size_t k = 0; k < sizeof lengths / sizeof *lengths; k++) {
        const double s = gpu_engine_bench_prefill(g, lengths[k]), flops = 2 * params * lengths[k] / s;
        const double mib = gpu_memory_used() / 1048576.0;
        if (json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "kind", "prefill");
            cJSON_AddNumberToObject(o, "prompt_tokens", lengths[k]);
            cJSON_AddNumberToObject(o, "seconds", s);
            cJSON_AddNumberToObject(o, "tokens_per_s", lengths[k] / s);
            cJSON_AddNumberToObject(o, "tflops", flops / 1e12);
            cJSON_AddNumberToObject(o, "matmul_tflops", matmul / 1e12);
            cJSON_AddNumberToObject(o, "matmul_zeros_tflops", matmul_zeros / 1e12);
            cJSON_AddNumberToObject(o, "fraction_of_matmul", flops / matmul);
            cJSON_AddNumberToObject(o, "gpu_memory_bytes", mib * 1048576.0);
            emit_json_line(o);
        } else {
            printf("%9d %9.3f %11.0f %8.1f %9.1f%% %9.0f\n", lengths[k], s, lengths[k] / s, flops / 1e12, 100 * flops / matmul, mib);
        }
    }
    if (!json) printf("\n%9s %11s %10s %9s %9s\n", "batch", "tokens/s", "ms/step", "× batch 1", "roofline");
    for (size_t k = 0; k < sizeof batches / sizeof *batches; k++) {
        const int steps = 64;
        const double s = gpu_engine_bench_batch(g, batches[k], steps), tps = batches[k] * steps / s;
        const double roofline = (double)bench_step_bytes(m, batches[k]) * steps / s / one.read_bandwidth;
        if (json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "kind", "batch");
            cJSON_AddNumberToObject(o, "batch", batches[k]);
            cJSON_AddNumberToObject(o, "tokens_per_s", tps);
            cJSON_AddNumberToObject(o, "ms_per_step", 1e3 * s / steps);
            cJSON_AddNumberToObject(o, "batch1_tokens_per_s", batch1);
            cJSON_AddNumberToObject(o, "speedup_over_batch1", tps / batch1);
            cJSON_AddNumberToObject(o, "bytes_per_step", (double)bench_step_bytes(m, batches[k]));
            cJSON_AddNumberToObject(o, "fraction_of_roofline", roofline);
            emit_json_line(o);
        } else {
            printf("%9d %11.0f %10.3f %9.1f %8.1f%%\n", batches[k], tps, 1e3 * s / steps, tps / batch1, 100 * roofline);
        }
    }
}
