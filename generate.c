/* generate.c: one sequence (`mamba run` with one prompt, and chat.c's turns): its prompt run, its
 * tokens streamed to stdout as they come (batch.c: several sequences), and its state carried
 * between runs (state.c): --state-in continues a saved sequence, --state-out saves it,
 * --prompt-cache reuses the state after the longest cached prefix of the prompt.
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

struct Session {
    const RunOptions *o;
    Model *m;
    Engine *engine;
    Tokenizer *tok;
    Sampler sampler;
    TokenDecoder *decoder;
    int eos;
    SavedState in, cache;     /* --state-in's, --prompt-cache's */
    int cache_hit, turns;
    char *tail;               /* the latest text of this turn's generation, for --stop */
    size_t n_tail, tail_cap;
    /* for --stats, over all turns */
    double prompt_s, gen_s, ttft;
    size_t prompt_tokens, reused;
    long generated;
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
    int sampled;              /* the last turn sampled a token: the engine's state is the one to save */
};

static void push_id(Session *q, int id) {
    q->seq = reserve(q->seq, &q->cap, q->n_seq + 1, sizeof *q->seq);
    q->seq[q->n_seq++] = id;
}

static const float *feed(Session *q, int token, int want_row) {
    const float *logits = engine_feed(q->engine, token, q->keep_state || q->logits_file);
    if (want_row) write_logits_row(q->logits_file, logits, q->m->config.vocab_size, q->o->logits_out);
    return logits;
}

/* Runs seq[start..n_seq): the parallel pass takes what it can of all but the last token, the
 * steps the rest; sets *logits to the last token's (NULL where the GPU keeps them for its own
 * sampler) and returns 0 if Ctrl-C stopped it first (in an interactive session Ctrl-C waits for
 * the turn's first token, so that its state stays whole), else 1. The state
 * before the last token is kept when want_before_last. Logits rows go to --logits-out for this
 * run's own tokens (not for a token a state brought). A long prompt shows a progress line. */
static int run_prompt(Session *q, int want_before_last, const float **logits) {
    const size_t last = q->n_seq - 1;
    const int stoppable = !q->o->interactive;   /* a turn's state must be whole: Ctrl-C waits for its first token */
    size_t i = q->start;
    if (i < last && i < q->first_new) feed(q, q->seq[i], 0), i++;   /* a state's last token: its row is its run's */
    if (i < last) i += engine_prefill(q->engine, 0, q->seq + i, last - i, q->o->prompt_batch, q->logits_file, q->o->logits_out);
    Progress progress;
    progress_begin(&progress, "prompt", (double)(q->n_seq - i), "tokens");
    for (size_t done = 0; i < last && !(g_interrupted && stoppable); i++) {
        feed(q, q->seq[i], 1);
        progress_update(&progress, (double)++done);
    }
    progress_end(&progress);
    if (g_interrupted && stoppable) return 0;
    if (want_before_last) {
        engine_read_state(q->engine, 0, q->before_last.conv, q->before_last.ssm);
        q->have_before_last = 1;
    }
    *logits = feed(q, q->seq[last], last >= q->first_new);
    engine_sync(q->engine);
    return 1;
}

/* --state-in: the saved ids start the sequence, its state the engine's (after open_engine). */
static void take_state_in(Session *q, SavedState *in) {
    for (size_t i = 0; i < in->n_ids; i++) push_id(q, in->ids[i]);
    q->n_before = in->n_tokens - in->n_ids;
    q->first_new = in->n_ids;
    q->start = in->n_ids - 1;
    q->restored = 1;
}

/* --prompt-cache: when the cached sequence is a prefix of this prompt (the whole of it, at
 * most), its state is taken and the run starts at its last token. Returns whether it was. */
static int take_prompt_cache(Session *q, SavedState *cache) {
    if (!state_load(q->o->prompt_cache, cache, q->m, 1)) return 0;
    if (cache->n_ids != cache->n_tokens || cache->n_ids > q->n_seq ||
        memcmp(cache->ids, q->seq, cache->n_ids * sizeof *q->seq))
        return 0;
    q->start = cache->n_ids - 1;
    q->restored = 1;
    return 1;
}

/* The state after the prompt, its ids all kept and the bytes of an incomplete last character
 * the decoder holds, as the prompt cache; rewritten unless the cache already held exactly this
 * prompt, or is read-only. */
static void save_prompt_cache(Session *q, const SavedState *cache, int hit) {
    if ((hit && cache->n_ids == q->n_seq) || q->o->prompt_cache_ro) return;
    SavedState s = q->before_last;
    s.ids = q->seq, s.n_ids = q->n_seq, s.n_tokens = q->n_seq, s.last_token = q->seq[q->n_seq - 1];
    s.rng = q->o->sampler.rng;
    s.n_pending = q->decoder ? decoder_pending(q->decoder, s.pending, STATE_MAX_PENDING) : 0;
    if (s.n_pending < 0) {
        fprintf(stderr, "mamba: note: the prompt ends in more than %d undecoded bytes: no prompt cache written\n", STATE_MAX_PENDING);
        return;
    }
    state_save(q->o->prompt_cache, &s, q->m);
}

/* --state-out at the end: the state after all but the last token of the sequence. That is the
 * engine's when a token was generated (or EOS sampled), else the one kept before the prompt's
 * last token. The text of an incomplete character the decoder holds goes with it. */
static void save_state_out(Session *q, int generated_or_eos) {
    const Sampler *sampler = &q->sampler;
    const TokenDecoder *decoder = q->decoder;
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

/* The prompt's ids, when prompt_ids is given, are made and checked before the engine opens, so a
 * bad prompt fails fast and alone (no device note before its error). */
Session *session_open(const RunOptions *o, int **prompt_ids, size_t *n_prompt) {
    Session *q = xcalloc(1, sizeof *q);
    q->o = o, q->m = xmalloc(sizeof *q->m), q->engine = xmalloc(sizeof *q->engine);
    q->keep_state = o->state_out || o->prompt_cache || o->interactive;
    q->tok = open_model_and_tokenizer(o, q->m);
    q->eos = eos_of(q->m, q->tok);
    saved_state_init(&q->before_last, &q->m->config);
    if (o->state_in) {
        saved_state_init(&q->in, &q->m->config);
        state_load(o->state_in, &q->in, q->m, 0);
        take_state_in(q, &q->in);
    }
    if (o->logits_out && !(q->logits_file = fopen(o->logits_out, "wb")))
        die("cannot open %s: %s", o->logits_out, strerror(errno));
    if (prompt_ids) *prompt_ids = prompt_to_ids(o, q->m, q->tok, n_prompt);
    engine_open(q->engine, q->m, o->device, 1);
    if (q->restored) engine_write_state(q->engine, 0, q->in.conv, q->in.ssm);
    SamplerConfig sampling = o->sampler;
    if (o->state_in && !o->seeded) sampling.rng = q->in.rng;   /* the sampler goes on where it was */
    sampler_init(&q->sampler, &sampling, sampling_vocab(q->m, q->tok));
    /* a run that keeps its state samples on the host: the GPU then never runs a token ahead */
    if (!q->keep_state) engine_use_sampler(q->engine, &q->sampler);
    q->decoder = q->tok ? decoder_new(q->tok) : NULL;
    if (q->decoder && o->state_in && decoder_resume(q->decoder, q->in.pending, q->in.n_pending))
        die("the state's pending text cannot continue with this tokenizer");
    return q;
}

const Tokenizer *session_tokenizer(const Session *q) { return q->tok; }

const Model *session_model(const Session *q) { return q->m; }

size_t session_length(const Session *q) { return q->n_seq; }

/* The turn's text so far ends a generation when one of the --stop strings is in its latest
 * bytes (the text just printed and what came before it, as long as the longest stop string). */
static int hit_stop(Session *q, const char *text, size_t len) {
    if (!q->o->n_stop) return 0;
    size_t keep = 0;
    for (int i = 0; i < q->o->n_stop; i++)
        if (strlen(q->o->stop[i]) > keep) keep = strlen(q->o->stop[i]);
    q->tail = reserve(q->tail, &q->tail_cap, q->n_tail + len + 1, 1);
    memcpy(q->tail + q->n_tail, text, len);
    q->n_tail += len;
    q->tail[q->n_tail] = '\0';
    int hit = 0;
    for (int i = 0; i < q->o->n_stop && !hit; i++) hit = memmem(q->tail, q->n_tail, q->o->stop[i], strlen(q->o->stop[i])) != NULL;
    if (q->n_tail > keep) memmove(q->tail, q->tail + q->n_tail - keep, keep), q->n_tail = keep;
    return hit;
}

/* Prints a generated token: its id, or its text (which --stop looks at). Returns whether a stop
 * string came. */
static int print_token(Session *q, int id, int first) {
    const char *text = q->decoder ? decoder_push(q->decoder, id) : "";
    size_t len = q->decoder ? decoder_len(q->decoder) : 0;
    if (q->o->print_ids) {
        char buf[16];
        emit(buf, format_id(buf, id, first));
    } else {
        emit(text, len);
    }
    return hit_stop(q, text, len);
}

/* The end of a turn's output: a newline, after what the decoder still holds unless a state or
 * the next turn will finish that character. */
static void end_output(Session *q) {
    if (q->decoder && !q->o->print_ids && !q->o->state_out && !q->o->interactive) {
        const char *rest = decoder_finish(q->decoder);
        emit(rest, decoder_len(q->decoder));
    }
    if (q->decoder || q->o->print_ids) emit("\n", 1);
}

TurnEnd session_turn(Session *q, const int *ids, size_t n, int echo) {
    const RunOptions *o = q->o;
    if (q->n_seq) q->start = q->n_seq - 1, q->first_new = q->n_seq;   /* the state's last token runs first */
    for (size_t i = 0; i < n; i++) push_id(q, ids[i]);
    if (!q->n_seq) die("nothing to run: no prompt and no state");
    if (o->prompt_cache && !q->turns) {
        saved_state_init(&q->cache, &q->m->config);
        if ((q->cache_hit = take_prompt_cache(q, &q->cache))) engine_write_state(q->engine, 0, q->cache.conv, q->cache.ssm);
    }
    q->turns++, q->n_tail = 0, q->have_before_last = q->sampled = 0;
    const size_t first_run = q->start;
    double t_start = now_seconds();
    const float *logits;
    const int ran = run_prompt(q, (o->prompt_cache && !o->prompt_cache_ro) || (o->state_out && o->steps == 0), &logits);
    double t_prompt = now_seconds();
    q->prompt_s += t_prompt - t_start, q->prompt_tokens += q->n_seq - first_run, q->reused += first_run;
    /* the prompt is echoed once it has run, after its progress line (on a terminal) is gone;
     * the timings leave the echo out. Unechoed, a cached document is not decoded again: the
     * decoder takes up the bytes the cache kept of its last, incomplete character. */
    const int shows_text = echo && !o->print_ids;
    size_t decode_from = q->first_new;
    if (q->cache_hit && !shows_text && q->decoder && !decoder_resume(q->decoder, q->cache.pending, q->cache.n_pending))
        decode_from = q->cache.n_ids;
    for (size_t i = decode_from; i < q->n_seq; i++) {
        const char *text = q->decoder ? decoder_push(q->decoder, q->seq[i]) : "";
        if (shows_text) emit(text, decoder_len(q->decoder));
    }
    if (o->prompt_cache && ran) save_prompt_cache(q, &q->cache, q->cache_hit);
    const double t_decode = now_seconds();
    int generated = 0;
    TurnEnd end = ran ? END_LENGTH : END_INTERRUPTED;
    while (ran && generated < o->steps) {
        if (g_interrupted && !(o->interactive && generated == 0)) {
            end = END_INTERRUPTED;
            break;
        }
        int next = q->keep_state ? sample(&q->sampler, logits, q->seq, (int)q->n_seq)
                                 : engine_sample(q->engine, &q->sampler, logits, q->seq, (int)q->n_seq, q->logits_file != NULL);
        if (next == q->eos && !o->ignore_eos) {
            push_id(q, next);   /* consumed, not printed: the sequence goes on after it */
            end = END_EOS;
            break;
        }
        push_id(q, next);
        if (++generated == 1 && q->turns == 1) q->ttft = now_seconds() - t_start;
        const int stop = print_token(q, next, generated == 1);
        if (stop) end = END_STOP;
        if (g_interrupted) end = END_INTERRUPTED;
        /* the token runs only when another is wanted: the last one is the state's next token */
        if (end != END_LENGTH || generated == o->steps) break;
        logits = feed(q, next, 1);
    }
    q->gen_s += now_seconds() - t_decode, q->generated += generated;
    q->sampled = generated > 0 || end == END_EOS;
    end_output(q);
    q->first_new = q->n_seq;
    return end;
}

static void print_session_stats(const Session *q) {
    const RunOptions *o = q->o;
    fprintf(stderr, "device: %s\n", engine_name(q->engine));
    fprintf(stderr, "prompt: %zu tokens in %.3f s (%.1f tokens/s)\n", q->prompt_tokens, q->prompt_s, q->prompt_tokens / q->prompt_s);
    if (o->prompt_cache)
        fprintf(stderr, "prompt cache: %s, %zu of %zu prompt tokens reused\n", q->cache_hit ? "hit" : "miss", q->reused,
                q->reused + q->prompt_tokens);
    if (o->state_in) fprintf(stderr, "state: continued after %llu tokens\n", (unsigned long long)q->in.n_tokens);
    fprintf(stderr, "generated: %ld tokens in %.3f s (%.1f tokens/s)\n", q->generated, q->gen_s,
            q->generated > 1 ? (q->generated - 1) / q->gen_s : 0.0);
    fprintf(stderr, "time to first token: %.2f ms\n", q->ttft * 1e3);
    fprintf(stderr, "seed: %llu\n", (unsigned long long)o->sampler.rng);
    print_stats_end(q->engine);
}

void session_close(Session *q) {
    const RunOptions *o = q->o;
    if (q->logits_file && fclose(q->logits_file)) die("cannot write %s: %s", o->logits_out, strerror(errno));
    /* a state is the model's after all but the last token: the engine's once a token was
     * generated or sampled, else the one kept before the prompt's last token */
    if (o->state_out && q->n_seq && (q->sampled || q->have_before_last)) save_state_out(q, q->sampled);
    else if (o->state_out) fprintf(stderr, "mamba: note: interrupted before a token was generated: no state written\n");
    if (o->stats) print_session_stats(q);
    if (q->decoder) decoder_free(q->decoder);
    if (q->tok) tokenizer_free(q->tok);
    free(q->seq), free(q->tail);
    saved_state_free(&q->before_last), saved_state_free(&q->in), saved_state_free(&q->cache);
    sampler_free(&q->sampler);
    engine_close(q->engine);
    model_free(q->m);
    free(q->engine), free(q->m), free(q);
}

/* One prompt, its tokens streamed to stdout as they come. */
void generate(const RunOptions *o) {
    struct sigaction old_int;
    size_t n;
    int *ids;
    Session *q = session_open(o, &ids, &n);
    catch_sigint(&old_int);
    session_turn(q, ids, n, o->echo);
    free(ids);
    session_close(q);
    sigaction(SIGINT, &old_int, NULL);
    exit_if_interrupted();
}
