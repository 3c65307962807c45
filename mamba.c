/* mamba.c: a single-binary inference engine for Mamba language models. Here: main, `run` (the
 * default command: its options and prompts; its generation loop is generate.c), `tokenize` and
 * `info`.
 *
 *   mamba [run] [MODEL.bin] [options] [PROMPT]    generate text (prompt from stdin when piped)
 *   mamba convert HF_DIR OUT.bin [--dtype ...]     import a Hugging Face checkpoint (convert.c)
 *   mamba info [MODEL]                             print a checkpoint's config
 *   mamba tokenize [...] [TEXT]                    text → ids, or ids → text with --decode
 *   mamba perplexity [-m MODEL] FILE               NLL, perplexity and bits per byte (bench.c)
 *   mamba init --shape NAME OUT.bin                a random model of a published shape (convert.c)
 *   mamba bench [-m MODEL] [...]                   throughput (bench.c)
 *
 * A token's path: main → cmd_run → generate (generate.c) → prompt_to_ids → tokenizer_encode (tokenizer.c);
 * engine_feed (engine.c) → the CPU forward (cpu.c: forward, the model's block) or the GPU's
 * (engine_gpu.c → kernels.cu); engine_sample → sample (sampler.c) or the GPU's sampler; decoder_push
 * (tokenizer.c) → emit (util.c: stdout). */
#include "mamba.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ----------------------------------------------------------------------------------------
 * The prompt, the tokenizer and the model of a generation. */

DeviceChoice parse_device(const char *s) {
    if (!strcmp(s, "auto")) return DEVICE_AUTO;
    if (!strcmp(s, "cpu")) return DEVICE_CPU;
    if (!strcmp(s, "cuda")) return DEVICE_CUDA;
    die("--device must be auto, cpu or cuda, got '%s'", s);
}

Tokenizer *open_tokenizer(const Model *m, const char *override_path) {
    char err[512];
    Tokenizer *t = NULL;
    if (override_path) {
        t = tokenizer_load_file(override_path, err, sizeof err);
        if (!t) die("%s", err);
    } else if (m->tokenizer_kind != TOKENIZER_NONE) {
        t = tokenizer_load_bytes(m->tokenizer_kind, m->tokenizer_blob, m->tokenizer_bytes, err, sizeof err);
        if (!t) die("embedded tokenizer: %s", err);
    } else {
        return NULL;
    }
    if (tokenizer_vocab_size(t) > m->config.padded_vocab)
        die("the tokenizer has %d ids but the model only %d", tokenizer_vocab_size(t), m->config.padded_vocab);
    return t;
}

/* Parses "1,2,3" (commas and/or spaces) into ids, each checked against the vocabulary. */
static int *parse_id_list(const char *text, int vocab, size_t *n_out) {
    size_t n = 0, cap = 16;
    int *ids = xmalloc(cap * sizeof *ids);
    const char *p = text;
    for (;;) {
        while (*p == ',' || isspace((unsigned char)*p)) p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || (*end && *end != ',' && !isspace((unsigned char)*end)))
            die("token ids must be integers separated by commas or spaces, got '%.40s'", p);
        if (v < 0 || v >= vocab) die("token id %ld is out of range: the vocabulary has %d ids", v, vocab);
        if (n == cap) ids = realloc(ids, (cap *= 2) * sizeof *ids);
        if (!ids) die("out of memory");
        ids[n++] = (int)v;
        p = end;
    }
    if (n == 0) die("no token ids given");
    *n_out = n;
    return ids;
}

/* The ids of the prompt's text (BOS alone when there is none). A prompt that continues a saved
 * sequence (--state-in) gets no BOS, and may be empty: no ids. */
static int *text_to_ids(const RunOptions *o, const Model *m, const Tokenizer *tok, size_t *n) {
    int bos = m->bos_id >= 0 ? m->bos_id : tok ? tokenizer_bos_id(tok) : -1;
    if ((!o->prompt || !o->prompt[0]) && o->state_in) {
        *n = 0;
        return xmalloc(sizeof(int));
    }
    if (!o->prompt || !o->prompt[0]) {
        /* no prompt: generate from BOS alone, as a model trained with it expects */
        if (bos < 0) die("no prompt: give one as an argument, with -i, --prompt-ids, or on standard input");
        int *ids = xmalloc(sizeof *ids);
        ids[0] = bos;
        *n = 1;
        return ids;
    }
    if (!tok) die("this model has no tokenizer: use --prompt-ids, or --tokenizer FILE");
    size_t len = strlen(o->prompt), bad = utf8_valid_prefix(o->prompt, len);
    if (bad < len)
        fprintf(stderr, "mamba: note: the prompt is not valid UTF-8 (byte %zu); %s\n", bad,
                tokenizer_kind(tok) == TOKENIZER_HF_JSON ? "its ill-formed bytes are tokenized as raw bytes (byte-level BPE)"
                                                         : "each ill-formed byte is read as U+FFFD (SentencePiece)");
    char err[512];
    int *ids;
    if (tokenizer_encode(tok, o->prompt, len, tokenizer_wants_bos(tok) && !o->state_in, &ids, n, err, sizeof err))
        die("cannot tokenize the prompt: %s", err);
    if (*n == 0 && !o->state_in) die("the prompt encodes to no tokens");
    for (size_t i = 0; i < *n; i++)
        if (ids[i] >= m->config.vocab_size) die("the tokenizer produced id %d, beyond the model's vocabulary", ids[i]);
    return ids;
}

/* The prompt's ids, from --prompt-ids or from its text, within --max-prompt-tokens. */
int *prompt_to_ids(const RunOptions *o, const Model *m, const Tokenizer *tok, size_t *n) {
    int *ids = o->prompt_ids ? parse_id_list(o->prompt_ids, m->config.vocab_size, n) : text_to_ids(o, m, tok, n);
    if (*n > (size_t)o->max_prompt_tokens) {
        free(ids);
        die("the prompt is %zu tokens, over the limit of %ld (--max-prompt-tokens)", *n, o->max_prompt_tokens);
    }
    return ids;
}

/* The model and its tokenizer for generating; text output needs a tokenizer. */
Tokenizer *open_model_and_tokenizer(const RunOptions *o, Model *m) {
    model_load(m, o->model_path);
    Tokenizer *tok = open_tokenizer(m, o->tokenizer_path);
    if (!tok && !o->print_ids) die("this model has no tokenizer to print text: use --print-ids, or --tokenizer FILE");
    return tok;
}

/* The id that ends a generation, or -1. */
int eos_of(const Model *m, const Tokenizer *tok) {
    return m->eos_id >= 0 ? m->eos_id : tok ? tokenizer_eos_id(tok) : -1;
}

/* The ids the sampler may pick: those beyond the tokenizer's vocabulary (padding rows) have no
 * text, so they are never sampled. */
int sampling_vocab(const Model *m, const Tokenizer *tok) {
    int vocab = m->config.vocab_size;
    return tok && tokenizer_vocab_size(tok) < vocab ? tokenizer_vocab_size(tok) : vocab;
}

/* A generated id as --print-ids writes it, a space before all but the first; returns the length. */
int format_id(char buf[16], int id, int first) {
    return snprintf(buf, 16, "%s%d", first ? "" : " ", id);
}

/* The last --stats lines of a generation. */
void print_stats_end(const Engine *e) {
    engine_report(e, stderr);
    if (g_interrupted) fprintf(stderr, "interrupted\n");
}

/* ----------------------------------------------------------------------------------------
 * Reading the prompts. */

/* Appends a word to a space-joined string (the prompt given as several arguments). */
static char *append_word(char *text, const char *word) {
    size_t old = text ? strlen(text) : 0, add = strlen(word);
    char *out = realloc(text, old + add + 2);
    if (!out) die("out of memory");
    if (old) out[old++] = ' ';
    memcpy(out + old, word, add + 1);
    return out;
}

/* A prompt from a file ("-": standard input), within the prompt's byte limit. One trailing
 * newline (as echo and editors add) is dropped. */
static char *read_prompt_file(const char *path, size_t max_bytes, long max_tokens) {
    char note[96];
    snprintf(note, sizeof note, "%d per token of --max-prompt-tokens %ld", PROMPT_BYTES_PER_TOKEN, max_tokens);
    size_t len;
    char *text = read_file(path, max_bytes, &len, note);
    if (memchr(text, '\0', len)) die("the prompt in %s contains a NUL byte", strcmp(path, "-") ? path : "standard input");
    if (len && text[len - 1] == '\n') text[--len] = '\0';
    return text;
}

/* A prompt is refused before it is read whole or tokenized when its bytes could not fit the
 * token limit: a token is rarely longer than a few bytes. */
static void check_prompt_bytes(const char *text, const char *what, size_t max_bytes, long max_tokens) {
    if (text && strlen(text) > max_bytes)
        die("%s is larger than the limit of %zu bytes (%d per token of --max-prompt-tokens %ld)", what, max_bytes,
            PROMPT_BYTES_PER_TOKEN, max_tokens);
}

/* The one prompt: the arguments, else standard input when it is not a terminal (a closed stdin
 * is no prompt), else none (BOS alone). */
static void read_single_prompt(RunOptions *o, size_t max_bytes) {
    check_prompt_bytes(o->prompt, "the prompt", max_bytes, o->max_prompt_tokens);
    if (!o->prompt && !o->prompt_ids && !isatty(STDIN_FILENO) && fcntl(STDIN_FILENO, F_GETFD) != -1)
        o->prompt = read_prompt_file("-", max_bytes, o->max_prompt_tokens);
}

#define MAX_BATCH_PROMPTS 65536

static int is_blank(const char *s) {
    while (isspace((unsigned char)*s)) s++;
    return !*s;
}

/* The prompts of --batch-file ("-": standard input): one a line, "\n" or "\r\n", blank lines
 * skipped. They point into *text, which the caller frees. */
static const char **read_batch_file(const RunOptions *o, size_t max_bytes, int *n_out, char **text) {
    const char *name = strcmp(o->batch_file, "-") ? o->batch_file : "standard input";
    size_t len, cap = 0;
    *text = read_file(o->batch_file, MAX_PROMPT_BYTES, &len, NULL);
    if (memchr(*text, '\0', len)) die("%s contains a NUL byte", name);
    const char **prompts = NULL;
    int n = 0, line_no = 0;
    for (char *line = *text, *next; *line; line = next) {
        char *end = strchr(line, '\n');
        next = end ? end + 1 : line + strlen(line);
        line_no++;
        if (end) *end = '\0';
        if (end > line && end[-1] == '\r') end[-1] = '\0';
        if (is_blank(line)) continue;
        char what[PATH_MAX + 32];
        snprintf(what, sizeof what, "line %d of %s", line_no, name);
        check_prompt_bytes(line, what, max_bytes, o->max_prompt_tokens);
        if (n == MAX_BATCH_PROMPTS) die("%s has more than %d prompts (the limit)", name, MAX_BATCH_PROMPTS);
        prompts = reserve(prompts, &cap, n + 1, sizeof *prompts);
        prompts[n++] = line;
    }
    if (n == 0) die("%s has no prompt (blank lines are skipped)", name);
    *n_out = n;
    return prompts;
}

/* Several prompts (--batch-file, or -i more than once), or --json: decoded by generate_batch. */
static int is_batched(const RunOptions *o, int n_inputs) { return o->batch_file || n_inputs > 1 || o->json; }

/* What a batched run cannot be combined with, checked before any prompt file is read. */
static void check_batched_run(const RunOptions *o, int n_inputs, int n_words) {
    const char *mode = o->batch_file ? "--batch-file" : n_inputs > 1 ? "several -i/-f" : "--json";
    if (o->prompt_ids) die("--prompt-ids cannot be combined with %s", mode);
    if (o->logits_out) die("--logits-out cannot be combined with %s", mode);
    if (o->state_in || o->state_out || o->prompt_cache)
        die("%s cannot be combined with %s: a state is one sequence's",
            o->state_in ? "--state-in" : o->state_out ? "--state-out" : "--prompt-cache", mode);
    if (o->batch_file && (n_inputs || n_words)) die("--batch-file gives the prompts: no -i, -f or prompt words with it");
    if (n_inputs > 1 && n_words) die("with several -i/-f, give each prompt with its own -i or -f (bare words found)");
}

static void run_batched(RunOptions *o, const char **inputs, int n_inputs, size_t max_bytes) {
    if (o->batch_file) {
        char *text;
        int n;
        const char **prompts = read_batch_file(o, max_bytes, &n, &text);
        generate_batch(o, prompts, n);
        free(prompts), free(text);
    } else if (n_inputs > 1) {
        for (int i = 0; i < n_inputs; i++) check_prompt_bytes(inputs[i], "a prompt", max_bytes, o->max_prompt_tokens);
        generate_batch(o, inputs, n_inputs);
    } else {
        read_single_prompt(o, max_bytes);
        generate_batch(o, (const char *const *)&o->prompt, 1);
    }
}

/* ----------------------------------------------------------------------------------------
 * mamba run */

enum {
    RUN_MODEL = 1, RUN_PROMPT, RUN_FILE, RUN_PROMPT_IDS, RUN_BATCH_FILE, RUN_BATCH_SIZE, RUN_TOKENIZER, RUN_STEPS,
    RUN_TEMPERATURE, RUN_TOP_K, RUN_TOP_P, RUN_REPEAT_PENALTY, RUN_REPEAT_LAST_N, RUN_SEED, RUN_DEVICE, RUN_THREADS,
    RUN_LOGITS_OUT, RUN_MAX_PROMPT_TOKENS, RUN_PROMPT_BATCH, RUN_IGNORE_EOS, RUN_STATS, RUN_PRINT_IDS, RUN_NO_ECHO,
    RUN_JSON, RUN_STATE_IN, RUN_STATE_OUT, RUN_PROMPT_CACHE, RUN_PROMPT_CACHE_RO, RUN_INTERACTIVE,
    RUN_STOP, RUN_IN_PREFIX, RUN_IN_SUFFIX,
};

static const Option RUN_OPTIONS[] = {
    {RUN_MODEL, "-m|--model", "FILE", "the checkpoint (default: see below; or give it first, before the prompt)"},
    {RUN_PROMPT, "-i|--prompt", "TEXT", "the prompt (given more than once: several prompts, decoded together)"},
    {RUN_FILE, "-f|--file", "FILE", "the prompt from a file (\"-\": standard input; one trailing newline dropped; like -i, more than once: several prompts)"},
    {RUN_PROMPT_IDS, "--prompt-ids", "IDS", "the prompt as token ids: 1,2,3"},
    OPTION_TOKENIZER(RUN_TOKENIZER),
    {RUN_STEPS, "-n|--steps|--n-predict", "N", "tokens to generate (default 256)"},
    {RUN_TEMPERATURE, "-t|--temperature|--temp", "T", "sampling temperature, 0 = greedy (default 0.8)"},
    {RUN_TOP_K, "-k|--top-k", "K", "sample among the K likeliest tokens, 0 = all (default 40)"},
    {RUN_TOP_P, "-p|--top-p", "P", "then among the likeliest whose probabilities sum to P (default 0.95)"},
    {RUN_REPEAT_PENALTY, "--repeat-penalty", "R", "penalty on recent tokens, 1 = off (default 1)"},
    {RUN_REPEAT_LAST_N, "--repeat-last-n", "N", "how many recent tokens it looks at (default 64)"},
    {RUN_SEED, "-s|--seed", "N", "random seed (default: from the time; --stats prints it)"},
    {RUN_IGNORE_EOS, "--ignore-eos", NULL, "keep generating after the end-of-text token"},
    {RUN_PRINT_IDS, "--print-ids", NULL, "print the generated token ids instead of text"},
    {RUN_NO_ECHO, "--no-echo", NULL, "do not print the prompt before the completion"},
    {RUN_STATS, "--stats", NULL, "timings, device and seed on stderr"},
    {RUN_LOGITS_OUT, "--logits-out", "FILE", "every step's logits as float32 rows"},
    {RUN_STATE_IN, "--state-in", "FILE", "continue the sequence saved in FILE: the prompt (no BOS; may be empty) follows it"},
    {RUN_STATE_OUT, "--state-out", "FILE", "save the sequence at the end (prompt and generated tokens) to FILE"},
    {RUN_PROMPT_CACHE, "--prompt-cache", "FILE", "reuse the state after the prompt's longest prefix cached in FILE; save this prompt's"},
    {RUN_INTERACTIVE, "--interactive", NULL, "after each generation, read a line of standard input and generate again (mamba chat)"},
    {RUN_STOP, "--stop", "STR", "end a generation when its text contains STR (printed; more than once: any of them)"},
    {RUN_IN_PREFIX, "--in-prefix", "STR", "interactive: text before each line of input"},
    {RUN_IN_SUFFIX, "--in-suffix", "STR", "interactive: text after each line of input"},
    {RUN_PROMPT_CACHE_RO, "--prompt-cache-ro", NULL, "use --prompt-cache but never rewrite it (a document cached once, then questions)"},
    {RUN_MAX_PROMPT_TOKENS, "--max-prompt-tokens", "N",
     "longest prompt (default 1048576; text beyond " STRINGIFY(PROMPT_BYTES_PER_TOKEN) " bytes a token is refused unread)"},
    {RUN_PROMPT_BATCH, "--prompt-batch", "N",
     "prompt tokens a parallel pass takes (default and most: GPU " STRINGIFY(PREFILL_CHUNK) ", CPU " STRINGIFY(CPU_PROMPT_CHUNK) "; 1 = one step at a time)"},
    OPTION_DEVICE(RUN_DEVICE),
    OPTION_THREADS(RUN_THREADS),
    {RUN_BATCH_FILE, "--batch-file", "FILE", "several prompts, one a line (\"-\": stdin), decoded together; prompt i samples with seed + i"},
    {RUN_BATCH_SIZE, "--batch-size", "B", "most sequences in flight at once (default 32, at most " STRINGIFY(MAX_BATCH) ")"},
    {RUN_JSON, "--json", NULL, "a JSON line a prompt as it ends: index, prompt, completion, tokens, finish"},
    {0},
};

static const Command RUN_COMMAND = {
    "run", "mamba [run] [MODEL.bin] [options] [PROMPT...]",
    "Generates text from a prompt: the words given, else -i, -f or --prompt-ids, else standard\n"
    "input when it is not a terminal, else the beginning-of-text token alone. The prompt is echoed,\n"
    "then the completion streams to stdout.",
    RUN_OPTIONS, 1,
};

/* The prompt's parts in the order given: bare words, -i texts and -f files (read once the
 * options are all known, --max-prompt-tokens included). Words and parts join, space-separated,
 * into one prompt; several -i/-f are several prompts, decoded together. */
typedef enum { PART_WORD, PART_TEXT, PART_FILE } PartKind;

typedef struct {
    const char *text;          /* PART_FILE: the file's path */
    PartKind kind;
} PromptPart;

/* Joins the parts into o->prompt; inputs[] gets each -i/-f part's text when there are several
 * (file texts in *file_texts, for the caller to free). */
static void assemble_prompt(RunOptions *o, const PromptPart *parts, int n_parts, int n_inputs, size_t max_bytes,
                            const char **inputs, char **file_texts, int *n_files) {
    for (int i = 0, k = 0; i < n_parts; i++) {
        char *file = parts[i].kind == PART_FILE ? read_prompt_file(parts[i].text, max_bytes, o->max_prompt_tokens) : NULL;
        const char *text = file ? file : parts[i].text;
        o->prompt = append_word(o->prompt, text);
        if (parts[i].kind != PART_WORD && n_inputs > 1) inputs[k++] = text;
        if (file && n_inputs > 1) file_texts[(*n_files)++] = file;
        else free(file);   /* o->prompt holds its copy */
    }
}

static void parse_run_option(RunOptions *o, OptionParser *p, int id, const char *value, int *seeded) {
    const char *name = p->name;
    switch (id) {
    case RUN_MODEL: o->model_path = value; break;
    case RUN_PROMPT_IDS: o->prompt_ids = value; break;
    case RUN_BATCH_FILE: o->batch_file = value; break;
    case RUN_BATCH_SIZE: o->batch_size = (int)parse_long(name, value, 1, MAX_BATCH); break;
    case RUN_TOKENIZER: o->tokenizer_path = value; break;
    case RUN_STEPS: o->steps = (int)parse_long(name, value, 0, 100000000); break;
    case RUN_TEMPERATURE: o->sampler.temperature = (float)parse_double(name, value, 0, 100); break;
    case RUN_TOP_K: o->sampler.top_k = (int)parse_long(name, value, 0, 1 << 24); break;
    case RUN_TOP_P: o->sampler.top_p = (float)parse_double(name, value, 1e-6, 1); break;
    case RUN_REPEAT_PENALTY: o->sampler.repeat_penalty = (float)parse_double(name, value, 1e-3, 100); break;
    case RUN_REPEAT_LAST_N: o->sampler.repeat_last_n = (int)parse_long(name, value, 0, 1 << 20); break;
    case RUN_SEED: o->sampler.rng = (uint64_t)parse_long(name, value, 0, LONG_MAX), *seeded = 1; break;
    case RUN_DEVICE: o->device = parse_device(value); break;
    case RUN_THREADS: set_threads(value); break;
    case RUN_LOGITS_OUT: o->logits_out = value; break;
    case RUN_STATE_IN: o->state_in = value; break;
    case RUN_STATE_OUT: o->state_out = value; break;
    case RUN_PROMPT_CACHE: o->prompt_cache = value; break;
    case RUN_PROMPT_CACHE_RO: o->prompt_cache_ro = 1; break;
    case RUN_INTERACTIVE: o->interactive = 1; break;
    case RUN_STOP:
        if (!*value) die("--stop needs a non-empty string");
        o->stop[o->n_stop++] = value;
        break;
    case RUN_IN_PREFIX: o->in_prefix = value; break;
    case RUN_IN_SUFFIX: o->in_suffix = value; break;
    case RUN_MAX_PROMPT_TOKENS: o->max_prompt_tokens = parse_long(name, value, 1, 1 << 30); break;
    case RUN_PROMPT_BATCH: o->prompt_batch = (int)parse_long(name, value, 1, PREFILL_CHUNK); break;
    case RUN_IGNORE_EOS: o->ignore_eos = 1; break;
    case RUN_STATS: o->stats = 1; break;
    case RUN_PRINT_IDS: o->print_ids = 1; break;
    case RUN_NO_ECHO: o->echo = 0; break;
    case RUN_JSON: o->json = 1; break;
    }
}

static void cmd_run(int argc, char **argv, int interactive) {
    RunOptions o = {.interactive = interactive, .stop = xmalloc((argc + 1) * sizeof(char *)),.steps = 256, .echo = 1, .device = DEVICE_AUTO, .max_prompt_tokens = DEFAULT_MAX_PROMPT_TOKENS,
                    .batch_size = 32,
                    .sampler = {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .repeat_penalty = 1.0f,
                                .repeat_last_n = 64}};
    PromptPart *parts = xmalloc((argc + 1) * sizeof *parts);
    int n_parts = 0, n_inputs = 0, n_words = 0, seeded = 0, n_positional = 0;
    const char *value;
    OptionParser p;
    options_begin(&p, &RUN_COMMAND, argc, argv);
    for (int id; (id = options_next(&p, &value)) != OPT_END;) {
        if (id == RUN_PROMPT || id == RUN_FILE) {
            parts[n_parts++] = (PromptPart){value, id == RUN_FILE ? PART_FILE : PART_TEXT};
            n_inputs++;
        } else if (id != OPT_POSITIONAL) {
            parse_run_option(&o, &p, id, value, &seeded);
        } else if (!positional_model(&o.model_path, n_positional++, value)) {
            parts[n_parts++] = (PromptPart){value, PART_WORD};
            n_words++;
        }
    }
    if (!seeded) o.sampler.rng = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    o.seeded = seeded;
    if (!o.model_path) o.model_path = default_model_path();
    size_t max_bytes = (size_t)o.max_prompt_tokens * PROMPT_BYTES_PER_TOKEN;
    if (max_bytes > MAX_PROMPT_BYTES) max_bytes = MAX_PROMPT_BYTES;
    const int batched = is_batched(&o, n_inputs);
    if (batched && o.interactive) die("--interactive cannot be combined with several prompts, --batch-file or --json: it is one sequence");
    if (o.interactive && o.prompt_cache) die("--prompt-cache cannot be combined with --interactive");
    if ((o.in_prefix || o.in_suffix) && !o.interactive) die("--in-prefix and --in-suffix go with --interactive (or mamba chat)");
    if (batched) check_batched_run(&o, n_inputs, n_words);
    else if (n_parts && o.prompt_ids) die("give the prompt as text or as --prompt-ids, not both");
    if (o.prompt_cache_ro && !o.prompt_cache) die("--prompt-cache-ro needs --prompt-cache FILE");
    if (o.prompt_cache && o.state_in) die("--prompt-cache cannot be combined with --state-in: both give the sequence's start");
    if (o.prompt_cache && o.logits_out) die("--logits-out cannot be combined with --prompt-cache: a cached prompt's logits are not run");
    const char **inputs = xmalloc((n_inputs + 1) * sizeof *inputs);
    char **file_texts = xmalloc((n_inputs + 1) * sizeof *file_texts);
    int n_files = 0;
    assemble_prompt(&o, parts, n_parts, n_inputs, max_bytes, inputs, file_texts, &n_files);
    if (batched) {
        run_batched(&o, inputs, n_inputs, max_bytes);
    } else if (o.interactive) {
        check_prompt_bytes(o.prompt, "the prompt", max_bytes, o.max_prompt_tokens);   /* stdin is the turns' */
        chat(&o);
    } else {
        read_single_prompt(&o, max_bytes);
        generate(&o);
    }
    for (int i = 0; i < n_files; i++) free(file_texts[i]);
    free(o.prompt), free(inputs), free(parts), free(file_texts), free(o.stop);
}

/* ----------------------------------------------------------------------------------------
 * mamba tokenize: text → ids, or ids → text with --decode. */

enum { TOK_MODEL = 1, TOK_TOKENIZER, TOK_DECODE, TOK_BOS };

static const Option TOKENIZE_OPTIONS[] = {
    {TOK_MODEL, "-m|--model", "FILE", "the checkpoint whose tokenizer to use (default: see below)"},
    {TOK_TOKENIZER, "--tokenizer", "FILE", "tokenizer.json or tokenizer.model instead of a checkpoint's"},
    {TOK_DECODE, "--decode", NULL, "ids (1,2,3 or 1 2 3) to text"},
    {TOK_BOS, "--bos", NULL, "begin with the beginning-of-text id"},
    {0},
};

static const Command TOKENIZE_COMMAND = {
    "tokenize", "mamba tokenize [MODEL.bin | -m MODEL | --tokenizer FILE] [--bos] [--decode] [TEXT...]",
    "Prints the ids of the text (the words given, else standard input), or with --decode the text\n"
    "of the ids.",
    TOKENIZE_OPTIONS, 1,
};

static void print_decoded(const Tokenizer *tok, const char *text) {
    size_t n;
    int *ids = parse_id_list(text, tokenizer_vocab_size(tok), &n);
    TokenDecoder *d = decoder_new(tok);
    for (size_t i = 0; i < n; i++) {
        const char *s = decoder_push(d, ids[i]);
        emit(s, decoder_len(d));
    }
    const char *rest = decoder_finish(d);
    emit(rest, decoder_len(d));
    decoder_free(d);
    free(ids);
}

static void print_encoded(const Tokenizer *tok, const char *text, size_t len, int bos) {
    int *ids;
    size_t n;
    char err[512];
    if (tokenizer_encode(tok, text, len, bos, &ids, &n, err, sizeof err)) die("cannot tokenize: %s", err);
    for (size_t i = 0; i < n; i++) {
        char buf[16];
        emit(buf, format_id(buf, ids[i], i == 0));
    }
    emit("\n", 1);
    free(ids);
}

static void cmd_tokenize(int argc, char **argv) {
    const char *model_path = NULL, *tok_path = NULL, *value;
    char *text = NULL;
    int decode = 0, bos = 0, n_positional = 0;
    OptionParser p;
    options_begin(&p, &TOKENIZE_COMMAND, argc, argv);
    for (int id; (id = options_next(&p, &value)) != OPT_END;) {
        if (id == TOK_MODEL) model_path = value;
        else if (id == TOK_TOKENIZER) tok_path = value;
        else if (id == TOK_DECODE) decode = 1;
        else if (id == TOK_BOS) bos = 1;
        else if (!positional_model(&model_path, n_positional++, value)) text = append_word(text, value);
    }
    char err[512];
    Tokenizer *tok;
    Model m;
    if (tok_path) {
        if (!(tok = tokenizer_load_file(tok_path, err, sizeof err))) die("%s", err);
    } else {
        model_load(&m, model_path ? model_path : default_model_path());
        if (!(tok = open_tokenizer(&m, NULL))) die("this model has no embedded tokenizer; use --tokenizer FILE");
    }
    size_t len;
    if (!text) text = read_file("-", MAX_PROMPT_BYTES, &len, NULL);
    else len = strlen(text);
    if (decode) print_decoded(tok, text);
    else print_encoded(tok, text, len, bos);
    tokenizer_free(tok);
    if (!tok_path) model_free(&m);
    free(text);
}

/* ----------------------------------------------------------------------------------------
 * mamba info */

static const Option INFO_OPTIONS[] = {{0}};

static const Command INFO_COMMAND = {
    "info", "mamba info [MODEL.bin | FILE.state]",
    "Prints a checkpoint's architecture, format version, config, fingerprint, size and tokenizer;\n"
    "or what a state file (--state-out, --prompt-cache) holds.",
    INFO_OPTIONS, 1,
};

static void cmd_info(int argc, char **argv) {
    const char *model_path = NULL, *value;
    OptionParser p;
    options_begin(&p, &INFO_COMMAND, argc, argv);
    while (options_next(&p, &value) != OPT_END) {
        if (model_path) die("usage: %s", INFO_COMMAND.synopsis);
        model_path = value;
    }
    if (model_path && is_state_file(model_path)) {
        state_info(model_path);
        return;
    }
    Model m;
    model_load(&m, model_path ? model_path : default_model_path());
    const Config *c = &m.config;
    static const char *const tok_names[] = {"none", "sentencepiece", "tokenizer.json"};
    printf("arch: %s\nformat_version: %u\n", arch_name(c->arch), m.format_version);
    printf("n_layer: %d\nd_model: %d\nd_inner: %d\nd_state: %d\nd_conv: %d\n", c->n_layer, c->d_model, c->d_inner,
           c->d_state, c->d_conv);
    /* the fields of the other architectures are zero */
    if (c->dt_rank) printf("dt_rank: %d\n", c->dt_rank);
    if (c->n_heads)
        printf("n_heads: %d\nhead_dim: %d\nn_groups: %d\ndt_limit: [%g, %g]\n", c->n_heads, c->head_dim, c->n_groups,
               c->dt_limit_lo, c->dt_limit_hi);
    if (c->mixer_eps) printf("mixer_eps: %g\n", c->mixer_eps);
    printf("vocab_size: %d\npadded_vocab: %d\nnorm_eps: %g\ndtype: %s\ntied_head: %s\n", c->vocab_size,
           c->padded_vocab, c->norm_eps, dtype_name(c->dtype), c->tied_head ? "yes" : "no");
    if (dtype_is_quantized(c->dtype))
        printf("quantization: %s codes in groups of %d weights of a row, an f32 scale a group\n",
               c->dtype == DTYPE_Q8 ? "8-bit" : "4-bit", QUANT_GROUP);
    if (m.fingerprint) printf("fingerprint: %016llx\n", (unsigned long long)m.fingerprint);
    else printf("fingerprint: %016llx (computed: this file predates stored fingerprints)\n", (unsigned long long)model_fingerprint(&m));
    printf("bytes_per_weight: %.4f\n", (double)m.weight_bytes / (double)model_param_count(c));
    printf("parameters: %llu\nweight_bytes: %llu\ntokenizer: %s (%zu bytes)\nbos_id: %d\neos_id: %d\npad_id: %d\n",
           (unsigned long long)model_param_count(c), (unsigned long long)m.weight_bytes, tok_names[m.tokenizer_kind],
           m.tokenizer_bytes, m.bos_id, m.eos_id, m.pad_id);
    model_free(&m);
}

/* ----------------------------------------------------------------------------------------
 * main */

static void usage(void) {
    fputs("mamba " MAMBA_VERSION ": Mamba language models from one checkpoint file, on the CPU or a GPU.\n\n"
          "commands:\n"
          "  run         generate text (the default: `mamba \"Once upon a time\"`)\n"
          "  chat        run --interactive: a turn a line of input, the state carried on\n"
          "  convert     import a Hugging Face or state-spaces checkpoint: mamba convert HF_DIR OUT.bin\n"
          "  info        a checkpoint's config\n"
          "  tokenize    text to ids, or ids to text\n"
          "  perplexity  score a text file\n"
          "  init        write a random model of a published shape\n"
          "  bench       throughput beside the memory roofline\n"
          "`mamba COMMAND --help` describes each; `mamba --version` says which build this is.\n\n",
          stdout);
    print_usage(&RUN_COMMAND, stdout);
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);          /* a closed stdout shows up as EPIPE, handled in emit() */
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) usage();
    else if (!strcmp(cmd, "-V") || !strcmp(cmd, "--version")) print_version();
    else if (!strcmp(cmd, "convert")) cmd_convert(argc - 2, argv + 2);
    else if (!strcmp(cmd, "info")) cmd_info(argc - 2, argv + 2);
    else if (!strcmp(cmd, "tokenize")) cmd_tokenize(argc - 2, argv + 2);
    else if (!strcmp(cmd, "perplexity")) cmd_perplexity(argc - 2, argv + 2);
    else if (!strcmp(cmd, "init")) cmd_init(argc - 2, argv + 2);
    else if (!strcmp(cmd, "bench")) cmd_bench(argc - 2, argv + 2);
    else if (!strcmp(cmd, "run")) cmd_run(argc - 2, argv + 2, 0);
    else if (!strcmp(cmd, "chat")) cmd_run(argc - 2, argv + 2, 1);   /* run --interactive */
    else cmd_run(argc - 1, argv + 1, 0);   /* no command: run, with all the arguments */
    if (fflush(stdout) && errno != EPIPE) die("cannot write to stdout: %s", strerror(errno));
    return 0;
}
