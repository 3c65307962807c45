/* batch.c: several prompts decoded together, each in its own engine slot with its own random
 * state (seeded --seed + its index, so that it generates what `mamba run -s SEED+i` generates
 * for that prompt alone), stop condition and output. */
#include "mamba.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

/* One prompt of a batch. ids holds its prompt, then the tokens it generated (the repetition
 * penalty reads them all). */
typedef struct {
    const char *text;          /* the prompt as given; NULL: none (BOS alone) */
    int *ids;
    size_t n_prompt, n_ids, ids_cap;
    size_t fed;                /* prompt tokens the engine has run */
    uint64_t rng;              /* its sampler's random state */
    TokenDecoder *decoder;     /* text output: the streaming decode of its ids */
    char *out;                 /* its output: the echoed prompt (text blocks only), then the completion */
    size_t out_len, out_cap;
    const char *finish;        /* NULL until it ends: "eos", "length" or "interrupted" */
} Sequence;

typedef struct {
    const RunOptions *o;
    const Tokenizer *tok;
    Engine engine;
    Sampler sampler;           /* serves every sequence in turn, with that sequence's rng */
    int eos;
    Sequence *seqs;
    int n_seqs, n_slots;
    int *running;              /* [n_slots] the sequence in each engine slot, or -1 */
    int *step_slots, *step_tokens;   /* [n_slots] one step's batch */
    int next_start;            /* the first sequence not started yet */
    int next_print;            /* text output: the first sequence whose block is not printed yet */
    long prompt_tokens, generated;
} Batch;

static void sequence_print(Sequence *s, const char *text, size_t n) {
    if (n == 0) return;
    s->out = reserve(s->out, &s->out_cap, s->out_len + n, 1);
    memcpy(s->out + s->out_len, text, n);
    s->out_len += n;
}

static void sequence_free(Sequence *s) {
    free(s->ids), free(s->out);
    s->ids = NULL, s->out = NULL;
}

/* s[0..n) as a quoted JSON string: valid UTF-8 whatever the bytes (each ill-formed part becomes
 * one U+FFFD, as in decoded text) and NUL bytes kept, which a cJSON string cannot hold. */
static char *json_quote(const char *s, size_t n) {
    char *out = xmalloc(6 * n + 3), *p = out;
    *p++ = '"';
    for (size_t i = 0; i < n;) {
        size_t valid = i + utf8_valid_prefix(s + i, n - i);
        for (; i < valid; i++) {
            unsigned char c = s[i];
            const char *short_escape = c == '\n' ? "\\n" : c == '\t' ? "\\t" : c == '\r' ? "\\r" : NULL;
            if (c == '"' || c == '\\') *p++ = '\\', *p++ = c;
            else if (short_escape) memcpy(p, short_escape, 2), p += 2;
            else if (c < 0x20) p += sprintf(p, "\\u%04x", c);
            else *p++ = c;
        }
        if (i < n) memcpy(p, "\xEF\xBF\xBD", 3), p += 3, i += utf8_ill_formed_length(s + i, n - i);
    }
    *p++ = '"';
    *p = '\0';
    return out;
}

static void add_json_text(cJSON *o, const char *key, const char *s, size_t n) {
    char *quoted = json_quote(s, n);
    if (!cJSON_AddRawToObject(o, key, quoted)) die("out of memory making JSON");
    free(quoted);
}

/* --json: a sequence's line, as soon as it ends. */
static void print_json_result(Batch *r, int i) {
    Sequence *s = &r->seqs[i];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "index", i);
    add_json_text(o, "prompt", s->text ? s->text : "", s->text ? strlen(s->text) : 0);
    add_json_text(o, "completion", s->out ? s->out : "", s->out_len);
    cJSON_AddNumberToObject(o, "tokens", (double)(s->n_ids - s->n_prompt));
    cJSON_AddStringToObject(o, "finish", s->finish);
    emit_json_line(o);
    sequence_free(s);
}

/* Text output: a block per sequence ("==> i <==", then what `mamba run` prints for its prompt,
 * then a blank line), in index order: a block waits for those before it. */
static void print_text_blocks(Batch *r) {
    for (; r->next_print < r->n_seqs && r->seqs[r->next_print].finish; r->next_print++) {
        Sequence *s = &r->seqs[r->next_print];
        char header[32];
        emit(header, snprintf(header, sizeof header, "==> %d <==\n", r->next_print));
        emit(s->out, s->out_len);
        emit("\n\n", 2);
        sequence_free(s);
    }
}

/* Decodes the prompt, so that the completion decodes as it does after the prompt in a single
 * run; text blocks echo it unless --no-echo. */
static void sequence_open(Batch *r, Sequence *s) {
    if (r->o->print_ids) return;
    s->decoder = decoder_new(r->tok);
    int echo = r->o->echo && !r->o->json;
    for (size_t i = 0; i < s->n_prompt; i++) {
        const char *text = decoder_push(s->decoder, s->ids[i]);
        if (echo) sequence_print(s, text, decoder_len(s->decoder));
    }
}

/* Ends sequence i and prints what can be printed. */
static void sequence_finish(Batch *r, int i, const char *why) {
    Sequence *s = &r->seqs[i];
    s->finish = why;
    if (s->decoder) {
        const char *rest = decoder_finish(s->decoder);
        sequence_print(s, rest, decoder_len(s->decoder));
        decoder_free(s->decoder);
        s->decoder = NULL;
    }
    if (r->o->json) print_json_result(r, i);
    else print_text_blocks(r);
}

/* Frees a slot: its sequence ends. */
static void slot_finish(Batch *r, int slot, const char *why) {
    int i = r->running[slot];
    r->running[slot] = -1;
    sequence_finish(r, i, why);
}

/* Starts sequence i in a free slot; the engine may run part of its prompt at once. */
static void sequence_start(Batch *r, int i, int slot) {
    Sequence *s = &r->seqs[i];
    SamplerConfig cfg = r->o->sampler;
    cfg.rng += (uint64_t)i;
    sampler_configure(&r->sampler, &cfg);
    s->rng = r->sampler.cfg.rng;
    sequence_open(r, s);
    s->fed = engine_start(&r->engine, slot, s->ids, (int)s->n_prompt, r->o->prompt_batch);
    r->prompt_tokens += (long)s->fed;
    r->running[slot] = i;
}

/* The sequence in slot has read its prompt: it samples its next token from logits, or ends at
 * EOS or after -n tokens. */
static void sequence_sample(Batch *r, int slot, const float *logits) {
    Sequence *s = &r->seqs[r->running[slot]];
    if (s->n_ids - s->n_prompt == (size_t)r->o->steps) {     /* -n 0 */
        slot_finish(r, slot, "length");
        return;
    }
    r->sampler.cfg.rng = s->rng;
    int next = sample(&r->sampler, logits, s->ids, (int)s->n_ids);
    s->rng = r->sampler.cfg.rng;
    if (next == r->eos && !r->o->ignore_eos) {
        slot_finish(r, slot, "eos");
        return;
    }
    s->ids = reserve(s->ids, &s->ids_cap, s->n_ids + 1, sizeof *s->ids);
    s->ids[s->n_ids++] = next;
    r->generated++;
    if (r->o->print_ids) {
        char buf[16];
        sequence_print(s, buf, format_id(buf, next, s->n_ids == s->n_prompt + 1));
    } else {
        const char *text = decoder_push(s->decoder, next);
        sequence_print(s, text, decoder_len(s->decoder));
    }
    if (s->n_ids - s->n_prompt == (size_t)r->o->steps) slot_finish(r, slot, "length");
}

/* Free slots take the next waiting prompts. */
static void batch_fill_slots(Batch *r) {
    for (int slot = 0; slot < r->n_slots && r->next_start < r->n_seqs; slot++)
        if (r->running[slot] < 0) sequence_start(r, r->next_start++, slot);
}

/* One step: every running sequence feeds one token, its next prompt token or the one it sampled
 * last, all in one engine batch; those that have read their whole prompt then sample. Returns
 * 0 when no sequence was running. */
static int batch_step(Batch *r) {
    int n = 0;
    for (int slot = 0; slot < r->n_slots; slot++) {
        if (r->running[slot] < 0) continue;
        const Sequence *s = &r->seqs[r->running[slot]];
        r->step_slots[n] = slot;
        r->step_tokens[n++] = s->ids[s->fed < s->n_prompt ? s->fed : s->n_ids - 1];
    }
    if (n == 0) return 0;
    const float *logits = engine_forward_batch(&r->engine, n, r->step_slots, r->step_tokens);
    size_t stride = r->engine.logits_stride;
    for (int b = 0; b < n; b++) {
        Sequence *s = &r->seqs[r->running[r->step_slots[b]]];
        if (s->fed < s->n_prompt) s->fed++, r->prompt_tokens++;
        if (s->fed == s->n_prompt) sequence_sample(r, r->step_slots[b], logits + b * stride);
    }
    return 1;
}

/* Ctrl-C: the sequences still running or waiting end as "interrupted". */
static void batch_interrupt(Batch *r) {
    for (int slot = 0; slot < r->n_slots; slot++)
        if (r->running[slot] >= 0) slot_finish(r, slot, "interrupted");
    for (; r->next_start < r->n_seqs; r->next_start++) {
        sequence_open(r, &r->seqs[r->next_start]);
        sequence_finish(r, r->next_start, "interrupted");
    }
}

static void print_batch_stats(const Batch *r, double seconds) {
    fprintf(stderr, "device: %s\n", engine_name(&r->engine));
    fprintf(stderr, "sequences: %d, at most %d at once\n", r->n_seqs, r->n_slots);
    fprintf(stderr, "prompt: %ld tokens\n", r->prompt_tokens);
    fprintf(stderr, "generated: %ld tokens in %.3f s (%.1f tokens/s in all)\n", r->generated, seconds,
            r->generated / seconds);
    fprintf(stderr, "processed: %.1f tokens/s, prompt and generated\n", (r->prompt_tokens + r->generated) / seconds);
    fprintf(stderr, "seed: %llu (prompt i samples with seed + i)\n", (unsigned long long)r->o->sampler.rng);
    print_stats_end(&r->engine);
}

/* Decodes the n prompts texts[i] together, at most --batch-size at a time. */
void generate_batch(const RunOptions *o, const char *const *texts, int n) {
    Model m;
    Batch r = {.o = o, .n_seqs = n, .n_slots = n < o->batch_size ? n : o->batch_size};
    Tokenizer *tok = open_model_and_tokenizer(o, &m);
    r.tok = tok;
    r.eos = eos_of(&m, tok);
    /* every prompt is tokenized first, so that a bad one stops the run before any output */
    r.seqs = xcalloc(n, sizeof *r.seqs);
    for (int i = 0; i < n; i++) {
        RunOptions one = *o;
        one.prompt = (char *)texts[i];
        r.seqs[i].text = texts[i];
        r.seqs[i].ids = prompt_to_ids(&one, &m, tok, &r.seqs[i].n_prompt);
        r.seqs[i].n_ids = r.seqs[i].ids_cap = r.seqs[i].n_prompt;
    }
    engine_open(&r.engine, &m, o->device, r.n_slots);
    sampler_init(&r.sampler, &o->sampler, sampling_vocab(&m, tok));
    r.running = xmalloc(r.n_slots * sizeof *r.running);
    for (int slot = 0; slot < r.n_slots; slot++) r.running[slot] = -1;
    r.step_slots = xmalloc(r.n_slots * sizeof *r.step_slots);
    r.step_tokens = xmalloc(r.n_slots * sizeof *r.step_tokens);

    struct sigaction old_int;
    catch_sigint(&old_int);
    double t_start = now_seconds();
    while (!g_interrupted) {
        batch_fill_slots(&r);
        if (!batch_step(&r)) break;            /* every sequence has ended */
    }
    double seconds = now_seconds() - t_start;
    if (g_interrupted) batch_interrupt(&r);
    if (o->stats) print_batch_stats(&r, seconds);
    sigaction(SIGINT, &old_int, NULL);

    free(r.running), free(r.step_slots), free(r.step_tokens), free(r.seqs);
    sampler_free(&r.sampler);
    engine_close(&r.engine);
    if (tok) tokenizer_free(tok);
    model_free(&m);
    exit_if_interrupted();
}

