/* engine_gpu.c: the GPU engine (kernels.cu, gpu.h) behind the Engine interface. Its sampler
 * runs on the GPU and the sampled token is run at once, so a generation's feed after a sample
 * finds its token done. */
#include "mamba.h"

#include <stdlib.h>

typedef struct {
    GpuEngine *gpu;
    int sampling_set;           /* the GPU sampler has the generation's settings (gpu_use_sampler) */
    int ran_ahead;              /* the sampled id the GPU already ran (gpu_sample), or -1 */
    const float *ahead_logits;  /* its logits on the host, when they were asked for */
} GpuSide;

static GpuSide *side_of(const Engine *e) { return e->impl; }

GpuEngine *engine_gpu(const Engine *e) { return side_of(e)->gpu; }

static void gpu_close(Engine *e) {
    gpu_engine_free(side_of(e)->gpu);
    free(side_of(e));
}

static void gpu_reset(Engine *e) {
    gpu_engine_reset(side_of(e)->gpu);
    side_of(e)->ran_ahead = -1;
}

static void gpu_reset_slot(Engine *e, int slot) { gpu_engine_reset_slot(side_of(e)->gpu, slot); }

/* A token that gpu_sample already ran is not run again. */
static const float *gpu_feed(Engine *e, int token, int want_logits) {
    GpuSide *g = side_of(e);
    if (g->ran_ahead < 0) return gpu_engine_feed(g->gpu, token, want_logits);
    if (token != g->ran_ahead) die("internal error: the GPU ran token %d, not %d", g->ran_ahead, token);
    g->ran_ahead = -1;
    return g->ahead_logits;
}

/* The settings go to the GPU before the prompt runs: a greedy step takes the argmax of its own
 * logits, over the sampler's vocabulary, so the prompt's last step already picks the first token. */
static void gpu_use_sampler(Engine *e, const Sampler *s) {
    GpuSide *g = side_of(e);
    const GpuSampling settings = {s->cfg.temperature, s->cfg.top_k, s->cfg.top_p, s->cfg.repeat_penalty,
                                  s->cfg.repeat_last_n, s->cfg.rng, s->vocab};
    gpu_engine_set_sampling(g->gpu, &settings);
    g->sampling_set = 1;
}

/* The sampler reads the logits and the history on the GPU (the host's copies are not used). */
static int gpu_sample(Engine *e, Sampler *s, const float *logits, const int *history, int n_history, int want_logits) {
    GpuSide *g = side_of(e);
    (void)s, (void)logits, (void)history, (void)n_history;
    if (!g->sampling_set) die("internal error: a GPU sample before engine_use_sampler");
    g->ran_ahead = gpu_engine_sample_feed(g->gpu, want_logits, &g->ahead_logits);
    return g->ran_ahead;
}

/* Parallel passes of up to chunk tokens (none when chunk is 1: they go one step at a time), in
 * blocks so that Ctrl-C is seen between them; with logits_file open their rows go there,
 * PREFILL_LOGIT_ROWS at a time. */
static size_t gpu_prefill(Engine *e, int slot, const int *ids, size_t n, int chunk, FILE *logits_file, const char *path) {
    if (chunk == 1) return 0;
    const int vocab = e->model->config.vocab_size;
    const size_t block = logits_file ? PREFILL_LOGIT_ROWS : chunk > 0 ? (size_t)chunk : PREFILL_CHUNK;
    float *rows = logits_file ? xmalloc(block * vocab * sizeof(float)) : NULL;
    size_t done = 0;
    Progress progress;
    progress_begin(&progress, "prompt", (double)n, "tokens");
    while (done < n && !g_interrupted) {
        const size_t len = n - done < block ? n - done : block;
        gpu_engine_prefill(side_of(e)->gpu, slot, ids + done, (long)len, chunk, rows);
        for (size_t i = 0; rows && i < len; i++) write_logits_row(logits_file, rows + i * vocab, vocab, path);
        done += len;
        progress_update(&progress, (double)done);
    }
    progress_end(&progress);
    free(rows);
    return done;
}

static const float *gpu_forward_batch(Engine *e, int n, const int *slots, const int *tokens) {
    return gpu_engine_forward_batch(side_of(e)->gpu, n, slots, tokens);
}

static void gpu_sync(Engine *e) { gpu_engine_sync(side_of(e)->gpu); }

/* A state is read or written only with nothing run ahead: the generation samples on the host
 * when it keeps its state (mamba.c), so the GPU's state is that of the tokens the host has seen. */
static void gpu_read_state(Engine *e, int slot, float *conv, float *ssm) {
    if (side_of(e)->ran_ahead >= 0) die("internal error: a state read while the GPU runs ahead");
    gpu_engine_read_state(side_of(e)->gpu, slot, conv, ssm);
}

static void gpu_write_state(Engine *e, int slot, const float *conv, const float *ssm) {
    if (side_of(e)->ran_ahead >= 0) die("internal error: a state written while the GPU runs ahead");
    gpu_engine_write_state(side_of(e)->gpu, slot, conv, ssm);
}

static void gpu_report(const Engine *e, FILE *f) {
    fprintf(f, "gpu: %s\ngpu memory: %zu bytes\n", gpu_engine_device_name(side_of(e)->gpu), gpu_memory_used());
}

static const EngineOps GPU_OPS = {
    .name = "cuda", .close = gpu_close, .reset = gpu_reset, .reset_slot = gpu_reset_slot, .feed = gpu_feed,
    .use_sampler = gpu_use_sampler, .sample = gpu_sample, .prefill = gpu_prefill, .forward_batch = gpu_forward_batch, .sync = gpu_sync,
    .read_state = gpu_read_state, .write_state = gpu_write_state, .report = gpu_report, .bench = bench_gpu, .sweep = bench_sweep_gpu,
};

int engine_open_gpu(Engine *e, const Model *m, int max_batch, char *err, size_t err_len) {
    if (!gpu_runs_arch(m->config.arch)) {
        snprintf(err, err_len, "the GPU engine does not run %s models yet", arch_name(m->config.arch));
        return 0;
    }
    if (dtype_is_quantized(m->config.dtype)) {
        snprintf(err, err_len, "the GPU engine does not run %s weights yet (the CPU does)", dtype_name(m->config.dtype));
        return 0;
    }
    GpuEngine *gpu = gpu_engine_create(&m->config, &m->weights, max_batch, err, err_len);
    if (!gpu) return 0;
    GpuSide *g = xcalloc(1, sizeof *g);
    *g = (GpuSide){.gpu = gpu, .ran_ahead = -1};
    e->ops = &GPU_OPS;
    e->logits_stride = m->config.vocab_size;   /* the GPU's logits rows are vocab_size long */
    e->impl = g;
    return 1;
}
