/* generate.c: one sequence (`mamba run` with one prompt): its prompt run, its tokens streamed to
 * stdout as they come (batch.c: several sequences), and its state carried between runs
 * (state.c): --state-in continues a saved sequence, --state-out saves it, --prompt-cache reuses
 * the state after the longest cached prefix of the prompt.
 *
 * The sequence is seq[]: the ids a state brought (its most recent ones, the last not yet run),
 * then the prompt's, then the generated ones. A saved state is the model's after every token
 * of seq but the last, so a generated token is run only when the next one is wanted: at the end
 * of a run the last token is always the one not yet run (the EOS that ended a generation
 * included: it is consumed, and run first by the run that continues). */
#include "mamba.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const RunOptions *o;
    Model *m;
    Engine *engine;
    FILE *logits_file;
    int keep_state;           /* a state is saved: sampled on the host, so the device never runs ahead */
    int *seq;                 /* the sequence's ids (above) */
    size_t n_seq, cap;
    uint64_t n_before;        /* tokens consumed before seq[0] (a state keeps the most recent ids only) */
    size_t first_new;         /* seq[first_new..] are this run's own (their logits rows and their echo) */
    size_t start;             /* seq[start] is the first token this run runs */
    int restored;             /* the engine's state came from a file */
    SavedState before_last;   /* the state before the prompt's last token, when asked for */
    int have_before_last;
} Single;

static void push_id(Single *q, int id) {
    q->seq = reserve(q->seq, &q->cap, q->n_seq + 1, sizeof *q->seq);
    q->seq[q->n_seq++] = id;
}

static const float *feed(Single *q, int token, int want_row) {
    const float *logits = engine_feed(q->engine, token, q->keep_state || q->logits_file);
    if (want_row) write_logits_row(q->logits_file, logits, q->m->config.vocab_size, q->o->logits_out);
    return logits;
}

/* Runs seq[start..n_seq): the GPU's parallel pass takes what it can of all but the last token,
 * the steps the rest; returns the last token's logits (NULL if Ctrl-C stopped it first). The state
 * before the last token is kept when want_before_last. Logits rows go to --logits-out for this
 * run's own tokens (not for a token a state brought). A long prompt shows a progress line. */
static const float *run_prompt(Single *q, int want_before_last) {
    const size_t last = q->n_seq - 1;
    size_t i = q->start;
    const float *logits = NULL;
    if (i < last && i < q->first_new) logits = feed(q, q->seq[i], 0), i++;   /* a state's last token: its row is its run's */
    if (i < last) i += engine_prefill(q->engine, 0, q->seq + i, last - i, q->o->prompt_batch, q->logits_file, q->o->logits_out);
    Progress progress;
    progress_begin(&progress, "prompt", (double)(q->n_seq - i), "tokens");
    for (size_t done = 0; i < last && !g_interrupted; i++) {
        logits = feed(q, q->seq[i], 1);
        progress_update(&progress, (double)++done);
    }
    progress_end(&progress);
    if (g_interrupted) return NULL;
    if (want_before_last) {
        engine_read_state(q->engine, 0, q->before_last.conv, q->before_last.ssm);
        q->have_before_last = 1;
    }
    logits = feed(q, q->seq[last], last >= q->first_new);
    engine_sync(q->engine);
    return logits;
}

/* --state-in: the saved ids start the sequence, its state the engine's (after open_engine). */
static void take_state_in(Single *q, SavedState *in) {
    for (size_t i = 0; i < in->n_ids; i++) push_id(q, in->ids[i]);
    q->n_before = in->n_tokens - in->n_ids;
    q->first_new = in->n_ids;
    q->start = in->n_ids - 1;
    q->restored = 1;
}

/* --prompt-cache: when the cached sequence is a prefix of this prompt (the whole of it, at
 * most), its state is taken and the run starts at its last token. Returns whether it was. */
static int take_prompt_cache(Single *q, SavedState *cache) {
    if (!state_load(q->o->prompt_cache, cache, q->m, 1)) return 0;
    if (cache->n_ids != cache->n_tokens || cache->n_ids > q->n_seq ||
        memcmp(cache->ids, q->seq, cache->n_ids * sizeof *q->seq))
        return 0;
    q->start = cache->n_ids - 1;
    q->restored = 1;
    return 1;
}

/* The state after the prompt, its ids all kept, as the prompt cache; rewritten unless the cache
 * already held exactly this prompt, or is read-only. */
static void save_prompt_cache(Single *q, const SavedState *cache, int hit) {
    if ((hit && cache->n_ids == q->n_seq) || q->o->prompt_cache_ro) return;
    SavedState s = q->before_last;
    s.ids = q->seq, s.n_ids = q->n_seq, s.n_tokens = q->n_seq, s.last_token = q->seq[q->n_seq - 1];
    s.rng = q->o->sampler.rng, s.n_pending = 0;
    state_save(q->o->prompt_cache, &s, q->m);
}

/* --state-out at the end: the state after all but the last token of the sequence. That is the
 * engine's when a token was generated (or EOS sampled), else the one kept before the prompt's
 * last token. The text of an incomplete character the decoder holds goes with it. */
static void save_state_out(Single *q, const Sampler *sampler, const TokenDecoder *decoder, int generated_or_eos) {
    SavedState s = q->before_last;
    SavedState now = {0};
    if (generated_or_eos) {
        saved_state_init(&now, &q->m->config);
        engine_read_state(q->engine, 0, now.conv, now.ssm);
        s.conv = now.conv, s.ssm = now.ssm;
    }
    const size_t kept = q->n_seq < STATE_MAX_IDS ? q->n_seq : STATE_MAX_IDS;
    s.ids = q->seq + q->n_seq - kept, s.n_ids = kept;
    s.n_tokens = q->n_before + q->n_seq, s.last_token = q->seq[q->n_seq - 1], s.rng = sampler->cfg.rng;
    s.n_pending = decoder ? decoder_pending(decoder, s.pending, STATE_MAX_PENDING) : 0;
    if (s.n_pending < 0) die("the text ends in more than %d undecoded bytes: no state can hold them", STATE_MAX_PENDING);
    state_save(q->o->state_out, &s, q->m);
    free(now.conv), free(now.ssm);
}

/* One prompt, its tokens streamed to stdout as they come. */
void generate(const RunOptions *o) {
    Model m;
    Tokenizer *tok = open_model_and_tokenizer(o, &m);
    Single q = {.o = o, .m = &m, .keep_state = o->state_out || o->prompt_cache};
    SavedState in = {0}, cache = {0};
    saved_state_init(&q.before_last, &m.config);
    if (o->state_in) {
        saved_state_init(&in, &m.config);
        state_load(o->state_in, &in, &m, 0);
        take_state_in(&q, &in);
    }
    size_t n_prompt;
    int *prompt = prompt_to_ids(o, &m, tok, &n_prompt);
    for (size_t i = 0; i < n_prompt; i++) push_id(&q, prompt[i]);
    free(prompt);
    int hit = 0;
    if (o->prompt_cache) saved_state_init(&cache, &m.config), hit = take_prompt_cache(&q, &cache);
    const int eos = eos_of(&m, tok);

    if (o->logits_out && !(q.logits_file = fopen(o->logits_out, "wb")))
        die("cannot open %s: %s", o->logits_out, strerror(errno));
    Engine engine;
    engine_open(&engine, &m, o->device, 1);
    q.engine = &engine;
    if (q.restored) engine_write_state(&engine, 0, o->state_in ? in.conv : cache.conv, o->state_in ? in.ssm : cache.ssm);
    Sampler sampler;
    SamplerConfig sampling = o->sampler;
    if (o->state_in && !o->seeded) sampling.rng = in.rng;   /* the sampler goes on where it was */
    sampler_init(&sampler, &sampling, sampling_vocab(&m, tok));
    if (!q.keep_state) engine_use_sampler(&engine, &sampler);

    struct sigaction old_int;
    catch_sigint(&old_int);

    double t_start = now_seconds();
    const float *logits = run_prompt(&q, (o->prompt_cache && !o->prompt_cache_ro) || (o->state_out && o->steps == 0));
    double t_prompt = now_seconds();
    if (o->prompt_cache && logits) save_prompt_cache(&q, &cache, hit);
    /* the prompt is echoed once it has run, after its progress line (on a terminal) is gone;
     * the timings leave the echo out */
    TokenDecoder *decoder = tok ? decoder_new(tok) : NULL;
    if (decoder && o->state_in && decoder_resume(decoder, in.pending, in.n_pending))
        die("the state's pending text cannot continue with this tokenizer");
    for (size_t i = q.first_new; i < q.n_seq; i++) {
        const char *text = decoder ? decoder_push(decoder, q.seq[i]) : "";
        if (o->echo && !o->print_ids) emit(text, decoder_len(decoder));
    }
    const double echo_s = now_seconds() - t_prompt, t_decode = t_prompt + echo_s;
    double t_first = t_decode;
    int generated = 0, ended_by_eos = 0;
    while (logits && generated < o->steps && !g_interrupted) {
        int next = q.keep_state ? sample(&sampler, logits, q.seq, (int)q.n_seq)
                                : engine_sample(&engine, &sampler, logits, q.seq, (int)q.n_seq, q.logits_file != NULL);
        if (next == eos && !o->ignore_eos) {
            ended_by_eos = 1;
            break;
        }
        push_id(&q, next);
        if (++generated == 1) t_first = now_seconds();
        if (o->print_ids) {
            char buf[16];
            emit(buf, format_id(buf, next, generated == 1));
        } else {
            const char *text = decoder_push(decoder, next);
            emit(text, decoder_len(decoder));
        }
        /* the token runs only when another is wanted: the last one is the state's next token */
        if (generated < o->steps && !g_interrupted) logits = feed(&q, next, 1);
    }
    double t_end = now_seconds();
    if (ended_by_eos) push_id(&q, eos);   /* consumed: the sequence goes on after it */
    if (o->print_ids) emit("\n", 1);
    else if (decoder) {
        /* with --state-out, an incomplete character is the state's to finish */
        const char *rest = o->state_out ? "" : decoder_finish(decoder);
        emit(rest, o->state_out ? 0 : decoder_len(decoder));
        emit("\n", 1);
    }
    if (q.logits_file && fclose(q.logits_file)) die("cannot write %s: %s", o->logits_out, strerror(errno));
    if (o->state_out && (generated || ended_by_eos || q.have_before_last)) save_state_out(&q, &sampler, decoder, generated || ended_by_eos);
    else if (o->state_out) fprintf(stderr, "mamba: note: interrupted before a token was generated: no state written\n");
    if (o->stats) {
        double prompt_s = t_prompt - t_start, gen_s = t_end - t_decode;
        const size_t n_run = q.n_seq - q.start - generated - ended_by_eos;
        fprintf(stderr, "device: %s\n", engine_name(&engine));
        fprintf(stderr, "prompt: %zu tokens in %.3f s (%.1f tokens/s)\n", n_run, prompt_s, n_run / prompt_s);
        if (o->prompt_cache)
            fprintf(stderr, "prompt cache: %s, %zu of %zu prompt tokens reused\n", hit ? "hit" : "miss", q.start,
                    q.n_seq - generated - ended_by_eos);
        if (o->state_in)
            fprintf(stderr, "state: continued after %llu tokens\n", (unsigned long long)in.n_tokens);
        fprintf(stderr, "generated: %d tokens in %.3f s (%.1f tokens/s)\n", generated, gen_s,
                generated > 1 ? (generated - 1) / gen_s : 0.0);
        fprintf(stderr, "time to first token: %.3f s\n", t_first - t_start - echo_s);
        fprintf(stderr, "seed: %llu\n", (unsigned long long)o->sampler.rng);
        print_stats_end(&engine);
    }
    sigaction(SIGINT, &old_int, NULL);
    if (decoder) decoder_free(decoder);
    if (tok) tokenizer_free(tok);
    free(q.seq);
    saved_state_free(&q.before_last), saved_state_free(&in), saved_state_free(&cache);
    sampler_free(&sampler);
    engine_close(&engine);
    model_free(&m);
    exit_if_interrupted();
}
