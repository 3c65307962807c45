/* engine.c: the engines behind one interface (EngineOps, mamba.h). The CPU engine's entries
 * are here; engine_gpu.c has the GPU's. engine_open is the one place that picks a device. */
#include "mamba.h"

#include <stdlib.h>
#include <string.h>

/* ---- the CPU engine as an Engine ---- */

static CpuEngine *cpu_of(const Engine *e) { return e->impl; }

static void cpu_close(Engine *e) { cpu_engine_free(cpu_of(e)); }

static void cpu_reset_slot(Engine *e, int slot) { cpu_engine_reset_slot(cpu_of(e), slot); }

static void cpu_reset(Engine *e) { cpu_reset_slot(e, 0); }

/* The single sequence's token: a batch of one, in slot 0. */
static const float *cpu_feed(Engine *e, int token, int want_logits) {
    static const int slot0 = 0;
    (void)want_logits;
    return cpu_engine_forward_batch(cpu_of(e), 1, &slot0, &token);
}

static int cpu_sample(Engine *e, Sampler *s, const float *logits, const int *history, int n_history, int want_logits) {
    (void)e, (void)want_logits;
    return sample(s, logits, history, n_history);
}

/* The prompt in chunks of up to CPU_PROMPT_CHUNK tokens (or --prompt-batch's; 1: none, they go
 * through the steps), Ctrl-C seen between chunks; with logits_file open their rows go there. */
static size_t cpu_prefill(Engine *e, int slot, const int *ids, size_t n, int chunk, FILE *logits_file, const char *path) {
    if (chunk == 1) return 0;
    const size_t block = chunk > 1 && chunk < CPU_PROMPT_CHUNK ? (size_t)chunk : CPU_PROMPT_CHUNK;
    size_t done = 0;
    Progress progress;
    progress_begin(&progress, "prompt", (double)n, "tokens");
    while (done < n && !g_interrupted) {
        const size_t len = n - done < block ? n - done : block;
        const float *rows = cpu_engine_forward_prompt(cpu_of(e), slot, (int)len, ids + done, logits_file != NULL);
        for (size_t i = 0; rows && i < len; i++)
            write_logits_row(logits_file, rows + i * e->logits_stride, e->model->config.vocab_size, path);
        done += len;
        progress_update(&progress, (double)done);
    }
    progress_end(&progress);
    return done;
}

static const float *cpu_forward_batch(Engine *e, int n, const int *slots, const int *tokens) {
    return cpu_engine_forward_batch(cpu_of(e), n, slots, tokens);
}

static void cpu_sync(Engine *e) { (void)e; }

static void cpu_read_state(Engine *e, int slot, float *conv, float *ssm) {
    const SeqState *s = cpu_engine_state(cpu_of(e), slot);
    const Config *c = &e->model->config;
    memcpy(conv, s->conv, (size_t)c->n_layer * conv_dim(c) * c->d_conv * sizeof(float));
    memcpy(ssm, s->ssm, (size_t)c->n_layer * c->d_inner * c->d_state * sizeof(float));
}

static void cpu_write_state(Engine *e, int slot, const float *conv, const float *ssm) {
    SeqState *s = cpu_engine_state(cpu_of(e), slot);
    const Config *c = &e->model->config;
    memcpy(s->conv, conv, (size_t)c->n_layer * conv_dim(c) * c->d_conv * sizeof(float));
    memcpy(s->ssm, ssm, (size_t)c->n_layer * c->d_inner * c->d_state * sizeof(float));
}

static void cpu_report(const Engine *e, FILE *f) { (void)e, (void)f; }

static const EngineOps CPU_OPS = {
    .name = "cpu", .close = cpu_close, .reset = cpu_reset, .reset_slot = cpu_reset_slot, .feed = cpu_feed,
    .sample = cpu_sample, .prefill = cpu_prefill, .forward_batch = cpu_forward_batch, .sync = cpu_sync,
    .read_state = cpu_read_state, .write_state = cpu_write_state, .report = cpu_report, .bench = bench_cpu, .sweep = NULL,
};

/* ---- the interface ---- */

void engine_open(Engine *e, const Model *m, DeviceChoice device, int max_batch) {
    *e = (Engine){.model = m, .max_batch = max_batch, .in_batch = xcalloc(max_batch, 1)};
#ifdef MAMBA_CUDA
    if (device != DEVICE_CPU) {
        char err[512];
        if (engine_open_gpu(e, m, max_batch, err, sizeof err)) return;
        if (device == DEVICE_CUDA) die("--device cuda: %s", err);
        fprintf(stderr, "mamba: note: %s; running on the CPU\n", err);
    }
#else
    if (device == DEVICE_CUDA) die("this mamba was built without CUDA; use --device cpu");
#endif
    e->ops = &CPU_OPS;
    e->logits_stride = m->config.padded_vocab;
    e->impl = cpu_engine_new(m, max_batch);
}

void engine_close(Engine *e) {
    e->ops->close(e);
    free(e->in_batch);
}

void engine_reset(Engine *e) { e->ops->reset(e); }

void engine_reset_slot(Engine *e, int slot) { e->ops->reset_slot(e, slot); }

const float *engine_feed(Engine *e, int token, int want_logits) { return e->ops->feed(e, token, want_logits); }

void engine_use_sampler(Engine *e, const Sampler *s) {
    if (e->ops->use_sampler) e->ops->use_sampler(e, s);
}

int engine_sample(Engine *e, Sampler *s, const float *logits, const int *history, int n_history, int want_logits) {
    return e->ops->sample(e, s, logits, history, n_history, want_logits);
}

size_t engine_prefill(Engine *e, int slot, const int *ids, size_t n, int chunk, FILE *logits_file, const char *path) {
    return e->ops->prefill(e, slot, ids, n, chunk, logits_file, path);
}

/* All but the last prompt token at most: the last goes through a step and gives the logits to
 * sample from. */
int engine_start(Engine *e, int slot, const int *prompt, int n, int chunk) {
    engine_reset_slot(e, slot);
    return (int)engine_prefill(e, slot, prompt, n - 1, chunk, NULL, NULL);
}

/* A batch names each slot at most once, only slots the engine has, and ids of the vocabulary:
 * anything else is a bug of the caller, stopped before it mixes up two sequences' states. */
static void check_batch(Engine *e, int n, const int *slots, const int *tokens) {
    if (n < 1 || n > e->max_batch) die("internal error: a batch of %d sequences for %d slots", n, e->max_batch);
    for (int b = 0; b < n; b++) {
        if (slots[b] < 0 || slots[b] >= e->max_batch || e->in_batch[slots[b]])
            die("internal error: slot %d is out of range or twice in a batch", slots[b]);
        if (tokens[b] < 0 || tokens[b] >= e->model->config.vocab_size)
            die("internal error: token %d is outside the vocabulary", tokens[b]);
        e->in_batch[slots[b]] = 1;
    }
    for (int b = 0; b < n; b++) e->in_batch[slots[b]] = 0;
}

const float *engine_forward_batch(Engine *e, int n, const int *slots, const int *tokens) {
    check_batch(e, n, slots, tokens);
    return e->ops->forward_batch(e, n, slots, tokens);
}

void engine_sync(Engine *e) { e->ops->sync(e); }

void engine_read_state(Engine *e, int slot, float *conv, float *ssm) {
    if (slot < 0 || slot >= e->max_batch) die("internal error: state of slot %d of %d", slot, e->max_batch);
    e->ops->read_state(e, slot, conv, ssm);
}

void engine_write_state(Engine *e, int slot, const float *conv, const float *ssm) {
    if (slot < 0 || slot >= e->max_batch) die("internal error: state of slot %d of %d", slot, e->max_batch);
    e->ops->write_state(e, slot, conv, ssm);
}

const char *engine_name(const Engine *e) { return e->ops->name; }

void engine_report(const Engine *e, FILE *f) { e->ops->report(e, f); }
