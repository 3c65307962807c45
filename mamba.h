/* mamba.h: what the host files share (internal; the checkpoint format is model.h, the GPU
 * engine's API gpu.h).
 *
 *   util.c      errors, memory, numbers, files, stdout, Ctrl-C, progress lines
 *   options.c   the command-line parser every command uses, and its --help
 *   model.c     checkpoint loading and validation, per architecture
 *   cpu.c       the CPU reference engine, per architecture (pool.c: its threads)
 *   sampler.c   repetition penalty, greedy, temperature + top-k + top-p
 *   engine.c    one interface over the CPU engine and (engine_gpu.c) the GPU one
 *   mamba.c     main, `run`'s options and prompts, tokenize, info
 *   generate.c  one sequence's generation, its state carried in and out
 *   state.c     state files: the state of a sequence on disk
 *   chat.c      interactive sessions: a turn a line of input
 *   batch.c     several prompts decoded together
 *   convert.c   Hugging Face and state-spaces import, the checkpoint writer, init
 *               (torch_archive.c, torch_archive.h: reading pytorch_model.bin)
 *   bench.c     bench and perplexity (bench_gpu.c: the GPU's benchmarks) */
#ifndef MAMBA_H
#define MAMBA_H

#define _GNU_SOURCE
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "model.h"
#include "tokenizer.h"
#include "gpu.h"   /* the GPU engine's API, and the limits both engines share */

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

#define MAMBA_VERSION "0.12.0"

/* ---- util.c ---- */

/* One line "mamba: error: ..." on stderr and exit status 1. */
__attribute__((noreturn, format(printf, 1, 2))) void die(const char *fmt, ...);
void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
/* Room for need elements of elem_size bytes in p (capacity *cap), growing by doubling. */
void *reserve(void *p, size_t *cap, size_t need, size_t elem_size);
double now_seconds(void);
/* Strict number parsing for flags: the whole string must be a number inside [lo, hi]. */
long parse_long(const char *flag, const char *s, long lo, long hi);
double parse_double(const char *flag, const char *s, double lo, double hi);
const char *dtype_name(DType t);
int parse_dtype(const char *s, DType *out);
/* A whole file ("-": stdin) as a NUL-terminated buffer, at most max_bytes. */
char *read_file(const char *path, size_t max_bytes, size_t *len_out, const char *limit_note);
/* Writes to stdout; a reader that went away (| head) ends the program quietly. */
void emit(const char *s, size_t n);
struct cJSON;
void emit_json_line(struct cJSON *o);   /* one line of JSON on stdout; frees o */
/* One row of logits, vocab floats, appended to --logits-out. */
void write_logits_row(FILE *f, const float *logits, int vocab, const char *path);
/* A 64-bit fingerprint of n bytes, continuing from h (FINGERPRINT_SEED to begin): four lanes of
 * 8-byte words, each lane (lane ^ word) · K then xorshift, folded and mixed (docs/FORMAT.md). */
#define FINGERPRINT_SEED 0xcbf29ce484222325ull
uint64_t fingerprint_bytes(uint64_t h, const void *data, size_t n);

/* Ctrl-C while generating: the work in hand is finished and printed, then the run exits with
 * 130 (exit_if_interrupted). A second Ctrl-C kills at once. */
extern volatile sig_atomic_t g_interrupted;
void catch_sigint(struct sigaction *old);
void exit_if_interrupted(void);

/* A progress line on stderr, redrawn in place at most a few times a second, only when stderr
 * is a terminal and the job has more than one item: "what: done/total unit". progress_end
 * clears it. */
typedef struct {
    const char *what, *unit;
    double total, start, last_draw;
    int on;
} Progress;
extern volatile sig_atomic_t g_progress_shown;   /* a line is on screen: die() and signal handlers clear it first */
void progress_begin(Progress *p, const char *what, double total, const char *unit);
void progress_update(Progress *p, double done);
void progress_end(Progress *p);

/* ---- options.c ---- */

/* One option of a command: its spellings ("-n|--steps|--n-predict"), its value's name (NULL
 * for a flag) and its help, default included. */
typedef struct {
    int id;
    const char *names;
    const char *value;
    const char *help;
} Option;

typedef struct {
    const char *command;      /* "run", "bench", ... */
    const char *synopsis;     /* the usage line(s) after "usage: " */
    const char *about;        /* what the command does, a line or two */
    const Option *options;    /* ends with an entry whose names is NULL */
    int reads_model;          /* --help explains where the model comes from */
} Command;

enum { OPT_POSITIONAL = -1, OPT_END = -2 };

/* The rows several commands share. */
#define OPTION_DEVICE(id) {id, "--device", "D", "auto, cpu or cuda (default auto: the GPU when there is one)"}
#define OPTION_THREADS(id) {id, "--threads", "N", "CPU threads (default: one a core)"}
#define OPTION_TOKENIZER(id) {id, "--tokenizer", "FILE", "tokenizer.json or tokenizer.model (default: the model's own)"}

typedef struct {
    const Command *cmd;
    int argc;
    char **argv;
    int i;                    /* next argument */
    int only_positional;      /* after "--" */
    char spelling[64];        /* "-n" of "-n5", "--steps" of "--steps=5": for messages */
    const char *name;         /* the spelling of the option just returned */
} OptionParser;

void options_begin(OptionParser *p, const Command *cmd, int argc, char **argv);
/* The next option's id with *value its value (NULL for a flag), or OPT_POSITIONAL with *value
 * the argument, or OPT_END. Understands --name=value, -n5, and "--". --help / -h print the
 * command's usage on stdout and exit 0; an unknown option dies. */
int options_next(OptionParser *p, const char **value);
void print_usage(const Command *cmd, FILE *f);
void print_version(void);   /* "mamba 0.12.0 (CUDA build)" or "(CPU-only build)" */
/* llama2.c's `./run model.bin ...`: the first positional argument (n_positional == 0), when it
 * is a mamba checkpoint or ends in .bin, is the model; returns whether it was taken. With -m
 * given too, two models are refused. */
int positional_model(const char **model_path, int n_positional, const char *arg);

/* ---- model.c ---- */

/* What a checkpoint of a given config must contain, in file order. */
typedef struct {
    char name[MAMBA_NAME_BYTES];
    uint32_t rows, cols;      /* 1-D tensors: cols == 1 */
    int ndim;
    int big;                  /* stored in config.dtype; otherwise f32 */
} TensorSpec;

typedef struct {
    Config config;
    Weights weights;
    uint32_t format_version;  /* of the file as read */
    TokenizerKind tokenizer_kind;
    const void *tokenizer_blob;
    size_t tokenizer_bytes;
    int bos_id, eos_id, pad_id;
    const uint8_t *map;
    size_t map_bytes;
    uint64_t weight_bytes;    /* bytes of all tensors, what one decode step reads */
    uint64_t fingerprint;     /* of the tensors: the header's, or computed when first asked (0: not yet) */
    const TensorEntry *table; /* in the map */
    int n_tensors;
} Model;

enum { MAMBA1_LAYER_TENSORS = 10, MAMBA2_LAYER_TENSORS = 9 };
extern const char *const MAMBA1_LAYER_TENSOR_NAMES[MAMBA1_LAYER_TENSORS];   /* "norm", "in_proj", ... */
extern const char *const MAMBA2_LAYER_TENSOR_NAMES[MAMBA2_LAYER_TENSORS];

const char *arch_name(Arch a);                  /* "mamba1", "mamba2", "falcon-mamba", or NULL */
int conv_dim(const Config *c);                  /* channels of the causal conv and of its state */
int in_proj_rows(const Config *c);
uint64_t state_floats(const Config *c);         /* floats of one sequence's SeqState */
uint64_t align_up(uint64_t x, uint64_t a);
int n_model_tensors(const Config *c);
void model_tensor_specs(const Config *c, TensorSpec *specs);   /* fills specs[n_model_tensors(c)] */
void set_spec(TensorSpec *s, const char *name, uint32_t rows, uint32_t cols, int ndim, int big);
DType spec_dtype(const Config *c, const TensorSpec *s);
const char *config_problem(const Config *c);    /* NULL when the config is in range */
void model_load(Model *m, const char *path);
void model_free(Model *m);
/* The fingerprint of the tensors' bytes, in table order (what a state file is tied to). */
uint64_t tensors_fingerprint(const uint8_t *map, const TensorEntry *table, int n);
/* The model's: stored in the header by convert and init, else computed now (older files). */
uint64_t model_fingerprint(Model *m);
uint64_t model_param_count(const Config *c);
int is_checkpoint(const char *path);            /* a regular file that starts with the magic */
const char *default_model_path(void);           /* $MAMBA_MODEL, else weights/model.bin beside the binary */

/* ---- pool.c: the CPU engine's threads ---- */

typedef void (*RangeFn)(void *ctx, int begin, int end);
/* fn(ctx, begin, end) over [0, n) in chunks, on the caller and the pool's workers (as many
 * threads in all as --threads, OMP_NUM_THREADS or the CPUs say); returns when all are done. */
void parallel_for(int n, RangeFn fn, void *ctx);

/* ---- cpu_quant.c: products with q8/q4 weights as int8 dot products (the input quantized too) ---- */

typedef struct QuantInput QuantInput;   /* an input's codes and scales, reused across products */
QuantInput *quant_input_new(int max_rows, int max_cols);
void quant_input_free(QuantInput *q);
/* out[b, r] = Σ_c W[r, c] · x[b, c] as cpu.c's matmul, for a q8/q4 matrix; in parallel over rows. */
void quant_matmul(QuantInput *q, float *out, const void *W, DType dtype, int rows, int cols, const float *x,
                  size_t x_stride, int n);
void quant_matrix_row(float *out, const void *W, DType dtype, int rows, int row, int cols);   /* dequantized */

/* ---- cpu.c ---- */

typedef struct CpuEngine CpuEngine;
#define CPU_PROMPT_CHUNK 64   /* prompt tokens the CPU takes through each layer together */
CpuEngine *cpu_engine_new(const Model *m, int max_batch);
void cpu_engine_free(CpuEngine *e);
void cpu_engine_reset_slot(CpuEngine *e, int slot);
SeqState *cpu_engine_state(CpuEngine *e, int slot);   /* the slot's state, for state files */
/* Runs tokens[b] through the sequence in slots[b] for b < n (distinct slots); returns the n
 * rows of padded_vocab logits, row b for slots[b]. */
const float *cpu_engine_forward_batch(CpuEngine *e, int n, const int *slots, const int *tokens);
/* Runs the n ≤ CPU_PROMPT_CHUNK successive prompt tokens of the sequence in a slot, each weight
 * read once for them all; returns their n rows of logits when want_logits, else NULL. */
const float *cpu_engine_forward_prompt(CpuEngine *e, int slot, int n, const int *tokens, int want_logits);
void set_threads(const char *value);            /* --threads N */

/* ---- sampler.c ---- */

typedef struct {
    float temperature;     /* 0: greedy */
    int top_k;             /* 0: off */
    float top_p;           /* 1: off */
    float repeat_penalty;  /* 1: off */
    int repeat_last_n;     /* how many recent tokens the penalty looks at */
    uint64_t rng;          /* xorshift64* state, from --seed */
} SamplerConfig;

typedef struct {
    float p;
    int id;
} Candidate;

typedef struct {
    SamplerConfig cfg;
    int vocab;
    float *scratch;        /* [vocab] */
    Candidate *cand;       /* [vocab] */
} Sampler;

void sampler_init(Sampler *s, const SamplerConfig *cfg, int vocab);
void sampler_configure(Sampler *s, const SamplerConfig *cfg);   /* new settings and seed */
void sampler_free(Sampler *s);
/* Picks the next id from logits[vocab] given the ids produced so far. */
int sample(Sampler *s, const float *logits, const int *history, int n_history);
int argmax(const float *x, int n);

/* ---- engine.c: the CPU engine, or the GPU one when there is one, behind one interface ---- */

typedef enum { DEVICE_AUTO, DEVICE_CPU, DEVICE_CUDA } DeviceChoice;

typedef struct Engine Engine;

typedef struct {
    double ttft, decode_s, bandwidth;   /* seconds to the first generated tokens, of the decode steps; bytes/s */
    double cold_ttft;                   /* CPU: ttft of the first, cold reading of the prompts (0: not measured) */
    uint64_t memory, engine_memory;     /* GPU bytes in use, the engine's */
    const char *device_name;
} BenchResult;

/* What each engine does; engine.c's wrappers below are the way to call them (bench.c calls the
 * benchmarks, bench and sweep, itself). */
typedef struct {
    const char *name;                   /* "cpu" or "cuda" */
    void (*close)(Engine *e);
    void (*reset)(Engine *e);
    void (*reset_slot)(Engine *e, int slot);
    const float *(*feed)(Engine *e, int token, int want_logits);
    void (*use_sampler)(Engine *e, const Sampler *s);   /* NULL: the engine samples on the host */
    int (*sample)(Engine *e, Sampler *s, const float *logits, const int *history, int n_history, int want_logits);
    size_t (*prefill)(Engine *e, int slot, const int *ids, size_t n, int chunk, FILE *logits_file, const char *path);
    const float *(*forward_batch)(Engine *e, int n, const int *slots, const int *tokens);
    void (*sync)(Engine *e);
    /* one slot's state as f32 [n_layer, conv_dim, d_conv] and [n_layer, d_inner, d_state] */
    void (*read_state)(Engine *e, int slot, float *conv, float *ssm);
    void (*write_state)(Engine *e, int slot, const float *conv, const float *ssm);
    void (*report)(const Engine *e, FILE *f);
    void (*bench)(Engine *e, int n_prompt, int n_decode, int batch, BenchResult *r);
    void (*sweep)(Engine *e, const char *model_path, int json);   /* NULL: the engine has none */
} EngineOps;

struct Engine {
    const EngineOps *ops;
    const Model *model;
    int max_batch;              /* sequence slots 0 .. max_batch-1; slot 0 is the single sequence's */
    int logits_stride;          /* floats from one row of forward_batch's logits to the next */
    unsigned char *in_batch;    /* [max_batch] marks, to check that a batch names each slot once */
    void *impl;                 /* the engine's own state */
};

/* An engine with the state of max_batch sequences (1 ≤ max_batch ≤ MAX_BATCH). --device cuda
 * insists on the GPU; auto takes it when one is usable, else says so once and runs on the CPU. */
void engine_open(Engine *e, const Model *m, DeviceChoice device, int max_batch);
void engine_close(Engine *e);
/* Empties the single sequence (slot 0). */
void engine_reset(Engine *e);
/* Empties one sequence slot. */
void engine_reset_slot(Engine *e, int slot);
/* Runs one token of the single sequence; its logits come back when want_logits (the GPU keeps
 * them for its sampler otherwise). */
const float *engine_feed(Engine *e, int token, int want_logits);
/* The settings of the single sequence's coming samples, given before its prompt: the GPU's step
 * picks a greedy token itself, so the prompt's last step already picks the first one with them. */
void engine_use_sampler(Engine *e, const Sampler *s);
/* The next token of the single sequence (on the GPU it is sampled there, and run at once). */
int engine_sample(Engine *e, Sampler *s, const float *logits, const int *history, int n_history, int want_logits);
/* Runs the first n prompt tokens of the sequence in a slot as parallel passes of up to chunk
 * tokens (the CPU's at most CPU_PROMPT_CHUNK), and returns how many it ran (none when chunk is 1). */
size_t engine_prefill(Engine *e, int slot, const int *ids, size_t n, int chunk, FILE *logits_file, const char *path);
/* Starts a sequence of n ≥ 1 prompt tokens in an emptied slot; returns how many it ran. */
int engine_start(Engine *e, int slot, const int *prompt, int n, int chunk);
/* Runs tokens[b] through the sequence in slots[b] for b < n as one batch; returns n rows of
 * logits on the host, logits_stride floats apart (valid until the next call). */
const float *engine_forward_batch(Engine *e, int n, const int *slots, const int *tokens);
void engine_sync(Engine *e);
/* One slot's recurrent state copied out to the host, or replaced by one from the host (f32, the
 * layout of SeqState, whatever the device keeps): what a state file holds. */
void engine_read_state(Engine *e, int slot, float *conv, float *ssm);
void engine_write_state(Engine *e, int slot, const float *conv, const float *ssm);
const char *engine_name(const Engine *e);
void engine_report(const Engine *e, FILE *f);   /* the --stats lines about the device */

#ifdef MAMBA_CUDA
/* engine_gpu.c: the GPU engine behind the interface; false (and a reason in err) when there is
 * no usable GPU. */
int engine_open_gpu(Engine *e, const Model *m, int max_batch, char *err, size_t err_len);
GpuEngine *engine_gpu(const Engine *e);
/* bench_gpu.c */
void bench_gpu(Engine *e, int n_prompt, int n_decode, int batch, BenchResult *r);
void bench_sweep_gpu(Engine *e, const char *model_path, int json);
#define SWEEP_MAX_BATCH 64   /* the largest batch bench --sweep measures */
#else
#define SWEEP_MAX_BATCH 1    /* no sweep without the GPU engine: bench says so */
#endif

/* ---- the prompt, the tokenizer and generation (mamba.c) ---- */

typedef struct {
    const char *model_path;
    const char *tokenizer_path;
    char *prompt;              /* text, or NULL */
    const char *prompt_ids;    /* "1,2,3", or NULL */
    const char *logits_out;
    const char *batch_file;    /* --batch-file: one prompt a line, or NULL */
    DeviceChoice device;
    int steps;
    int ignore_eos, stats, print_ids, echo, json;
    int batch_size;            /* batched runs: the most sequences in flight at once */
    int prompt_batch;          /* GPU: prompt tokens a parallel pass takes (0: the most; 1: one step at a time) */
    long max_prompt_tokens;
    SamplerConfig sampler;
    int seeded;                /* --seed was given: it wins over a state's RNG */
    const char *state_in;      /* --state-in: continue this saved sequence */
    const char *state_out;     /* --state-out: save the sequence at the end */
    const char *prompt_cache;  /* --prompt-cache: reuse the state after the longest cached prefix */
    int prompt_cache_ro;       /* --prompt-cache-ro: never rewrite it */
    int interactive;           /* --interactive, mamba chat: turns read from standard input */
    const char **stop;         /* --stop strings: a generation ends at one */
    int n_stop;
    const char *in_prefix, *in_suffix;   /* around each line of input */
} RunOptions;

#define MAX_PROMPT_BYTES (256u << 20)
#define DEFAULT_MAX_PROMPT_TOKENS (1L << 20)
#define PROMPT_BYTES_PER_TOKEN 16

DeviceChoice parse_device(const char *s);
Tokenizer *open_tokenizer(const Model *m, const char *override_path);
/* The model and its tokenizer for generating; text output needs a tokenizer. */
Tokenizer *open_model_and_tokenizer(const RunOptions *o, Model *m);
/* The prompt's ids, from --prompt-ids or from its text, within --max-prompt-tokens. */
int *prompt_to_ids(const RunOptions *o, const Model *m, const Tokenizer *tok, size_t *n);
int eos_of(const Model *m, const Tokenizer *tok);
int sampling_vocab(const Model *m, const Tokenizer *tok);
int format_id(char buf[16], int id, int first);
void print_stats_end(const Engine *e);

/* ---- state.c: state files (docs/FORMAT.md) ---- */

#define STATE_MAX_PENDING 32      /* bytes of an incomplete character of text a state carries */
#define STATE_MAX_IDS (1 << 20)   /* --state-out keeps at most this many recent ids (a prompt cache: all) */

/* A sequence as a state file holds it: the model's state after every consumed token but the
 * last, which the next run runs first. */
typedef struct {
    uint64_t n_tokens;        /* tokens consumed, the last one included */
    uint64_t rng;             /* the sampler's xorshift state after them */
    int last_token;           /* consumed, not yet run through the model */
    int *ids;                 /* the most recent consumed tokens, oldest first, ending with last_token */
    size_t n_ids;             /* n_tokens of them: the whole sequence (what a prompt cache needs) */
    char pending[STATE_MAX_PENDING];   /* the text of an incomplete character, not yet printed */
    int n_pending;
    float *conv, *ssm;        /* [n_layer, conv_dim, d_conv], [n_layer, d_inner, d_state] */
} SavedState;

void saved_state_init(SavedState *s, const Config *c);   /* room for the model's state, no ids */
void saved_state_free(SavedState *s);
void saved_state_set_ids(SavedState *s, const int *ids, size_t n);
/* Written atomically (a temporary file beside path, fsynced, renamed); the model's fingerprint
 * is computed first if its checkpoint does not store one. */
void state_save(const char *path, const SavedState *s, Model *m);
/* Reads and checks a state of model m into s (made by saved_state_init); every problem is one
 * line and exit 1. With missing_ok, a file that does not exist returns 0. */
int state_load(const char *path, SavedState *s, Model *m, int missing_ok);
int is_state_file(const char *path);          /* starts with the state magic */
extern uint8_t *g_state_data;                 /* the state file being read (reachable at a refusal's exit) */
void state_info(const char *path);            /* mamba info FILE.state */

/* ---- generate.c ---- */

/* One prompt, its tokens streamed to stdout as they come; --state-in, --state-out, --prompt-cache. */
void generate(const RunOptions *o);

/* A sequence that takes turns (chat.c): each runs some ids, then generates until EOS, -n, a
 * --stop string or Ctrl-C; the state goes on to the next. */
typedef struct Session Session;
typedef enum { END_LENGTH, END_EOS, END_STOP, END_INTERRUPTED } TurnEnd;
Session *session_open(const RunOptions *o, int **prompt_ids, size_t *n_prompt); /* the model, --state-in, the command's prompt, the engine, the sampler */
const Tokenizer *session_tokenizer(const Session *q);
const Model *session_model(const Session *q);
size_t session_length(const Session *q);               /* tokens so far (0: the next text starts the sequence) */
TurnEnd session_turn(Session *q, const int *ids, size_t n, int echo);
void session_close(Session *q);                        /* --state-out, --stats, and frees it all */

/* ---- chat.c ---- */

/* --interactive, mamba chat: the prompt (if any) as the first turn, then a turn a line of input. */
void chat(const RunOptions *o);

/* ---- batch.c ---- */

/* Decodes the n prompts texts[i] together, at most --batch-size at a time. */
void generate_batch(const RunOptions *o, const char *const *texts, int n);

/* ---- the other commands: their argv is what follows the command's name ---- */

void cmd_convert(int argc, char **argv);   /* convert.c */
void cmd_init(int argc, char **argv);
void cmd_bench(int argc, char **argv);     /* bench.c */
void cmd_perplexity(int argc, char **argv);
/* bench.c: the prompts of a batch taken in as a batched run does (for the engines' benches). */
int bench_token(long i, int vocab);
/* Bytes one decode step of batch sequences reads: the weights once and each sequence's state. */
uint64_t bench_step_bytes(const Model *m, int batch);
double bench_prompts(Engine *e, int vocab, int n_prompt, int batch, const int *slots, int *tokens);
void bench_cpu(Engine *e, int n_prompt, int n_decode, int batch, BenchResult *r);

#endif
