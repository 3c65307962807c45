/* bench.c: `mamba bench` (prompt and decode throughput next to the bytes a step must read over
 * a read bandwidth measured in the same run; each engine's measurement is its EngineOps bench,
 * bench_gpu.c the GPU's) and `mamba perplexity`. */
#include "mamba.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ----------------------------------------------------------------------------------------
 * mamba bench: prompt and decode throughput (greedy) of one sequence or of a batch decoding
 * together, time to first token, memory, and the bytes a decode step must read against a read
 * bandwidth measured in the same run. */

/* Bytes one decode step of batch sequences reads: every weight once (the LM head whole, one
 * embedding row a sequence) and their recurrent states. */
uint64_t bench_step_bytes(const Model *m, int batch) {
    const Config *c = &m->config;
    uint64_t emb = tensor_bytes(c->dtype, c->padded_vocab, c->d_model), row = emb / c->padded_vocab;
    uint64_t state = state_floats(c) * sizeof(float);
    return m->weight_bytes - (c->tied_head ? 0 : emb - batch * row) + batch * state;
}
/* The best of a few multi-threaded passes over a buffer far larger than the caches, in bytes/s. */
static double cpu_read_bandwidth(void) {
    size_t n = (size_t)256 << 20 >> 3;
    uint64_t *buf = xmalloc(n * sizeof *buf);
    memset(buf, 0x5a, n * sizeof *buf);
    double best = 0;
    uint64_t sink = 0;
    for (int rep = 0; rep < 4; rep++) {
        double t = now_seconds();
        uint64_t acc = 0;
#pragma omp parallel for reduction(^ : acc) schedule(static)
        for (size_t i = 0; i < n; i++) acc ^= buf[i];
        t = now_seconds() - t;
        sink ^= acc;
        if (n * sizeof *buf / t > best) best = n * sizeof *buf / t;
    }
    free(buf);
    return sink == 1 ? best + 1 : best;   /* keeps the reads */
}

/* Token i of the synthetic prompt; sequence b of a batch reads it from token b on. */
int bench_token(long i, int vocab) { return (int)((1 + 7919ull * i) % (uint64_t)vocab); }

/* The greedy choice of each of the batch rows of logits, into next. */
static void argmax_rows(int *next, const float *logits, int batch, size_t stride, int vocab) {
    for (int b = 0; b < batch; b++) next[b] = argmax(logits + b * stride, vocab);
}

/* Seconds to take in the prompts of a batch in slots 0 .. batch-1 as a batched run does: each
 * sequence started in its slot (the GPU runs all but its last token in parallel), then steps of
 * every sequence until all the prompts are in. tokens gets each sequence's greedy next token. */
double bench_prompts(Engine *e, int vocab, int n_prompt, int batch, const int *slots, int *tokens) {
    int *prompt = xmalloc((size_t)(n_prompt + batch) * sizeof *prompt);
    for (long i = 0; i < n_prompt + batch; i++) prompt[i] = bench_token(i, vocab);
    const double t0 = now_seconds();
    int ran = 0;
    for (int b = 0; b < batch; b++) ran = engine_start(e, slots[b], prompt + b, n_prompt, 0);   /* the same for every b */
    const float *logits = NULL;
    Progress progress;
    progress_begin(&progress, "bench: prompt", n_prompt - ran, "tokens");
    for (int i = ran; i < n_prompt; i++) {
        for (int b = 0; b < batch; b++) tokens[b] = prompt[b + i];
        logits = engine_forward_batch(e, batch, slots, tokens);
        progress_update(&progress, i + 1 - ran);
    }
    progress_end(&progress);
    argmax_rows(tokens, logits, batch, e->logits_stride, vocab);
    free(prompt);
    return now_seconds() - t0;
}

/* On the CPU: batch sequences in slots 0 .. batch-1 read their prompts, then decode greedily,
 * together. The prompts are read twice and the second time is the one reported (llama-bench's
 * warm-up): the first touches every page of the mapped weights and finds the caches cold. */
void bench_cpu(Engine *e, int n_prompt, int n_decode, int batch, BenchResult *r) {
    const int vocab = e->model->config.vocab_size;
    int *slots = xmalloc(batch * sizeof *slots), *tokens = xmalloc(batch * sizeof *tokens);
    for (int b = 0; b < batch; b++) slots[b] = b;
    r->cold_ttft = bench_prompts(e, vocab, n_prompt, batch, slots, tokens);
    r->ttft = bench_prompts(e, vocab, n_prompt, batch, slots, tokens);
    Progress progress;
    progress_begin(&progress, "bench: decode", n_decode, "steps");
    double t0 = now_seconds();
    for (int i = 0; i < n_decode; i++) {
        argmax_rows(tokens, engine_forward_batch(e, batch, slots, tokens), batch, e->logits_stride, vocab);
        progress_update(&progress, i + 1);
    }
    r->decode_s = now_seconds() - t0;
    progress_end(&progress);
    r->bandwidth = cpu_read_bandwidth();
    r->device_name = "cpu";
    free(slots), free(tokens);
}

static void print_bench(const char *model_path, const Model *m, const Engine *e, int n_prompt, int n_decode, int batch,
                        const BenchResult *r, int json) {
    const Config *c = &m->config;
    const uint64_t bytes = bench_step_bytes(m, batch);
    const double steps_per_s = n_decode / r->decode_s, decode_tps = batch * steps_per_s, achieved = bytes * steps_per_s;
    const double prompt_tps = (double)batch * n_prompt / r->ttft;
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "model", model_path);
        cJSON_AddNumberToObject(o, "n_layer", c->n_layer);
        cJSON_AddNumberToObject(o, "d_model", c->d_model);
        cJSON_AddStringToObject(o, "dtype", dtype_name(c->dtype));
        cJSON_AddStringToObject(o, "engine", engine_name(e));
        cJSON_AddStringToObject(o, "device", r->device_name);
        cJSON_AddNumberToObject(o, "batch", batch);
        cJSON_AddNumberToObject(o, "prompt_tokens", n_prompt);
        cJSON_AddNumberToObject(o, "prompt_tokens_per_s", prompt_tps);
        cJSON_AddNumberToObject(o, "time_to_first_token_ms", r->ttft * 1e3);
        if (r->cold_ttft > 0) cJSON_AddNumberToObject(o, "cold_time_to_first_token_ms", r->cold_ttft * 1e3);
        cJSON_AddNumberToObject(o, "decode_tokens", n_decode);
        cJSON_AddNumberToObject(o, "decode_tokens_per_s", decode_tps);
        cJSON_AddNumberToObject(o, "decode_tokens_per_s_per_sequence", steps_per_s);
        cJSON_AddNumberToObject(o, "ms_per_token", 1e3 / steps_per_s);
        cJSON_AddNumberToObject(o, "gpu_memory_bytes", (double)r->memory);
        cJSON_AddNumberToObject(o, "engine_bytes", (double)r->engine_memory);
        cJSON_AddNumberToObject(o, "bytes_per_token", (double)bytes / batch);
        cJSON_AddNumberToObject(o, "achieved_GBps", achieved / 1e9);
        cJSON_AddNumberToObject(o, "read_bandwidth_GBps", r->bandwidth / 1e9);
        cJSON_AddNumberToObject(o, "roofline_tokens_per_s", r->bandwidth / bytes * batch);
        cJSON_AddNumberToObject(o, "fraction_of_roofline", achieved / r->bandwidth);
        emit_json_line(o);
        return;
    }
    printf("model: %s (%d layers, d_model %d, %s)\ndevice: %s (%s)\n", model_path, c->n_layer, c->d_model,
           dtype_name(c->dtype), engine_name(e), r->device_name);
    if (batch > 1) printf("batch: %d sequences decoding together\n", batch);
    printf("prompt: %d tokens, %.1f tokens/s\ntime to first token: %.3f ms\n", n_prompt, prompt_tps, r->ttft * 1e3);
    if (r->cold_ttft > 0) printf("time to first token, cold (the run's first reading of the weights): %.3f ms\n", r->cold_ttft * 1e3);
    if (batch > 1)
        printf("decode: %d tokens a sequence, %.1f tokens/s in all, %.1f per sequence (%.4f ms a step)\n", n_decode,
               decode_tps, steps_per_s, 1e3 / steps_per_s);
    else
        printf("decode: %d tokens, %.1f tokens/s (%.4f ms/token)\n", n_decode, decode_tps, 1e3 / decode_tps);
    if (r->memory)
        printf("gpu memory: %llu bytes in use, %llu of them the engine's\n", (unsigned long long)r->memory,
               (unsigned long long)r->engine_memory);
    printf("bytes per token: %llu\nachieved: %.1f GB/s, %.1f%% of the measured read bandwidth %.1f GB/s "
           "(roofline %.1f tokens/s)\n",
           (unsigned long long)(bytes / batch), achieved / 1e9, 100 * achieved / r->bandwidth, r->bandwidth / 1e9,
           r->bandwidth / bytes * batch);
}


/* ---- mamba bench ---- */

enum { BENCH_MODEL = 1, BENCH_STEPS, BENCH_PROMPT_LEN, BENCH_BATCH, BENCH_DEVICE, BENCH_THREADS, BENCH_JSON, BENCH_SWEEP };

static const Option BENCH_OPTIONS[] = {
    {BENCH_MODEL, "-m|--model", "FILE", "the checkpoint (default: see below)"},
    {BENCH_STEPS, "-n|--steps|--n-predict", "N", "decode steps (default 256)"},
    {BENCH_PROMPT_LEN, "--prompt-len", "N", "prompt tokens (default 16)"},
    {BENCH_BATCH, "--batch", "N", "sequences decoding together (default 1, at most " STRINGIFY(MAX_BATCH) ")"},
    OPTION_DEVICE(BENCH_DEVICE),
    OPTION_THREADS(BENCH_THREADS),
    {BENCH_JSON, "--json", NULL, "one line of JSON instead of the text report"},
    {BENCH_SWEEP, "--sweep", NULL, "GPU: the prompt pass at several lengths and batched decoding at several sizes"},
    {0},
};

static const Command BENCH_COMMAND = {
    "bench", "mamba bench [-m MODEL] [-n STEPS] [--prompt-len N] [--batch N] [options]",
    "Measures prompt and greedy decode throughput, time to first token and memory, beside the\n"
    "bytes a decode step must read over a read bandwidth measured in the same run.",
    BENCH_OPTIONS, 1,
};

void cmd_bench(int argc, char **argv) {
    const char *model_path = NULL, *value;
    int n_decode = 256, n_prompt = 16, batch = 1, json = 0, sweep = 0, sized = 0, n_positional = 0;
    DeviceChoice device = DEVICE_AUTO;
    OptionParser p;
    options_begin(&p, &BENCH_COMMAND, argc, argv);
    for (int id; (id = options_next(&p, &value)) != OPT_END;) {
        switch (id) {
        case BENCH_MODEL: model_path = value; break;
        case BENCH_STEPS: n_decode = (int)parse_long(p.name, value, 1, 1000000), sized = 1; break;
        case BENCH_PROMPT_LEN: n_prompt = (int)parse_long(p.name, value, 1, 1000000), sized = 1; break;
        case BENCH_BATCH: batch = (int)parse_long(p.name, value, 1, MAX_BATCH), sized = 1; break;
        case BENCH_DEVICE: device = parse_device(value); break;
        case BENCH_THREADS: set_threads(value); break;
        case BENCH_JSON: json = 1; break;
        case BENCH_SWEEP: sweep = 1; break;
        default:   /* the model, always: a wrong path is then named by model_load */
            if (positional_model(&model_path, n_positional++, value)) break;
            if (model_path) die("bench: unexpected argument %s", value);
            model_path = value;
        }
    }
    if (sweep && sized) die("bench --sweep sets its own lengths and batch sizes: drop -n, --prompt-len and --batch");
    if (sweep && device == DEVICE_CPU) die("bench --sweep measures the GPU's parallel paths: it needs --device cuda");
    if (!model_path) model_path = default_model_path();
    Model m;
    model_load(&m, model_path);
    Engine engine;
    engine_open(&engine, &m, device, sweep ? SWEEP_MAX_BATCH : batch);
    if (sweep) {
        if (!engine.ops->sweep) die("bench --sweep measures the GPU's parallel paths: it needs --device cuda");
        engine.ops->sweep(&engine, model_path, json);
    } else {
        BenchResult r = {0};
        engine.ops->bench(&engine, n_prompt, n_decode, batch, &r);
        print_bench(model_path, &m, &engine, n_prompt, n_decode, batch, &r, json);
    }
    engine_close(&engine);
    model_free(&m);
}

/* ----------------------------------------------------------------------------------------
 * mamba perplexity: the text is encoded whole, cut into windows of ctx-1 ids, and each window
 * is scored from a fresh state after BOS, so every token is predicted exactly once. */

enum { PPL_MODEL = 1, PPL_TOKENIZER, PPL_CTX, PPL_MAX_TOKENS, PPL_DEVICE, PPL_THREADS, PPL_JSON };

static const Option PERPLEXITY_OPTIONS[] = {
    {PPL_MODEL, "-m|--model", "FILE", "the checkpoint (default: see below)"},
    OPTION_TOKENIZER(PPL_TOKENIZER),
    {PPL_CTX, "-c|--ctx", "N", "window length: each window is scored from a fresh state (default 1024)"},
    {PPL_MAX_TOKENS, "--max-tokens", "N", "score only the first N tokens of the text (default: all)"},
    OPTION_DEVICE(PPL_DEVICE),
    OPTION_THREADS(PPL_THREADS),
    {PPL_JSON, "--json", NULL, "one line of JSON instead of the text report"},
    {0},
};

static const Command PERPLEXITY_COMMAND = {
    "perplexity", "mamba perplexity [-m MODEL] [--ctx N] [options] FILE",
    "Scores a text file (\"-\": standard input): mean negative log-likelihood, perplexity and bits\n"
    "per byte. A progress line shows on a terminal.",
    PERPLEXITY_OPTIONS, 1,
};

static double log_softmax_at(const float *logits, int n, int target) {
    float max = logits[argmax(logits, n)];
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += exp((double)logits[i] - max);
    return (double)logits[target] - max - log(sum);
}

/* The text's ids, at most max_tokens (0: all), each checked against the model's vocabulary. */
static int *perplexity_ids(const Model *m, const Tokenizer *tok, const char *file, const char *text, size_t bytes,
                           long max_tokens, size_t *n_out) {
    int *ids;
    size_t n_ids;
    char err[512];
    if (tokenizer_encode(tok, text, bytes, 0, &ids, &n_ids, err, sizeof err)) die("cannot tokenize %s: %s", file, err);
    if (max_tokens && n_ids > (size_t)max_tokens) n_ids = (size_t)max_tokens;
    if (n_ids == 0) die("%s encodes to no tokens", file);
    for (size_t i = 0; i < n_ids; i++)
        if (ids[i] >= m->config.vocab_size) die("the tokenizer produced id %d, beyond the model's vocabulary", ids[i]);
    *n_out = n_ids;
    return ids;
}

/* Σ -log p(id | what precedes it in its window). */
static double total_nll(Engine *e, const int *ids, size_t n_ids, int ctx, int bos, int vocab) {
    double nll = 0.0;
    size_t window = ctx - 1;
    Progress progress;
    progress_begin(&progress, "perplexity", (double)n_ids, "tokens");
    for (size_t start = 0; start < n_ids; start += window) {
        engine_reset(e);
        const float *logits = engine_feed(e, bos, 1);
        size_t end = start + window < n_ids ? start + window : n_ids;
        for (size_t i = start; i < end; i++) {
            nll -= log_softmax_at(logits, vocab, ids[i]);
            if (i + 1 < end) logits = engine_feed(e, ids[i], 1);
            progress_update(&progress, (double)i + 1);
        }
    }
    progress_end(&progress);
    return nll;
}

/* Bits per byte counts the bytes of the scored text: all of it unless --max-tokens cut it. */
static size_t scored_bytes(const Tokenizer *tok, const int *ids, size_t n_ids) {
    TokenDecoder *d = decoder_new(tok);
    size_t bytes = 0;
    for (size_t i = 0; i < n_ids; i++) {
        decoder_push(d, ids[i]);
        bytes += decoder_len(d);
    }
    decoder_finish(d);
    bytes += decoder_len(d);
    decoder_free(d);
    return bytes;
}

static void print_perplexity(size_t n_ids, size_t bytes, int ctx, double nll, double seconds, int json) {
    double mean = nll / n_ids, bpb = nll / log(2.0) / bytes;
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "tokens", (double)n_ids);
        cJSON_AddNumberToObject(o, "bytes", (double)bytes);
        cJSON_AddNumberToObject(o, "ctx", ctx);
        cJSON_AddNumberToObject(o, "mean_nll", mean);
        cJSON_AddNumberToObject(o, "perplexity", exp(mean));
        cJSON_AddNumberToObject(o, "bits_per_byte", bpb);
        cJSON_AddNumberToObject(o, "seconds", seconds);
        emit_json_line(o);
    } else {
        printf("tokens: %zu\nbytes: %zu\nctx: %d\nmean NLL: %.6f nats/token\nperplexity: %.4f\nbits per byte: %.4f\n",
               n_ids, bytes, ctx, mean, exp(mean), bpb);
    }
}

void cmd_perplexity(int argc, char **argv) {
    const char *model_path = NULL, *tok_path = NULL, *file = NULL, *value;
    int ctx = 1024, json = 0, n_positional = 0;
    long max_tokens = 0;
    DeviceChoice device = DEVICE_AUTO;
    OptionParser p;
    options_begin(&p, &PERPLEXITY_COMMAND, argc, argv);
    for (int id; (id = options_next(&p, &value)) != OPT_END;) {
        switch (id) {
        case PPL_MODEL: model_path = value; break;
        case PPL_TOKENIZER: tok_path = value; break;
        case PPL_CTX: ctx = (int)parse_long(p.name, value, 2, 1 << 24); break;
        case PPL_MAX_TOKENS: max_tokens = parse_long(p.name, value, 1, LONG_MAX); break;
        case PPL_DEVICE: device = parse_device(value); break;
        case PPL_THREADS: set_threads(value); break;
        case PPL_JSON: json = 1; break;
        default:
            if (positional_model(&model_path, n_positional++, value)) break;
            if (file) die("perplexity: unexpected argument %s", value);
            file = value;
        }
    }
    if (!file) die("usage: %s", PERPLEXITY_COMMAND.synopsis);
    Model m;
    model_load(&m, model_path ? model_path : default_model_path());
    Tokenizer *tok = open_tokenizer(&m, tok_path);
    if (!tok) die("perplexity needs a tokenizer: this model has none embedded; use --tokenizer FILE");
    size_t bytes, n_ids;
    char *text = read_file(file, 1u << 30, &bytes, NULL);
    int *ids = perplexity_ids(&m, tok, file, text, bytes, max_tokens, &n_ids);
    int bos = m.bos_id >= 0 ? m.bos_id : tokenizer_bos_id(tok);
    if (bos < 0) die("perplexity needs a BOS token to start each window, and this model has none");

    Engine engine;
    engine_open(&engine, &m, device, 1);
    double t0 = now_seconds(), nll = total_nll(&engine, ids, n_ids, ctx, bos, m.config.vocab_size);
    if (max_tokens && n_ids == (size_t)max_tokens) bytes = scored_bytes(tok, ids, n_ids);
    print_perplexity(n_ids, bytes, ctx, nll, now_seconds() - t0, json);
    engine_close(&engine);
    tokenizer_free(tok);
    model_free(&m);
    free(ids), free(text);
}
