/* state.c: state files, a sequence's whole memory on disk. A Mamba model's memory of a text is
 * its recurrent state (conv and SSM, a few megabytes whatever the length), so a run can save it
 * (--state-out, --prompt-cache) and another continue from it (--state-in), on either engine: the
 * file is f32, little-endian, device-independent (docs/FORMAT.md, "State files").
 *
 * A state holds the model's state after every consumed token but the last, which is kept as
 * `last_token`: the run that continues runs it first, so it always has logits to sample from
 * (even with no new prompt), and a cached prompt equal to the new one still gives its last
 * token's logits. A state belongs to one checkpoint: its shape and its weights' fingerprint. */
#include "mamba.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STATE_MAGIC "MAMBAstt"          /* 8 bytes, no terminator in the file */
#define STATE_VERSION 1
#define STATE_HEADER_BYTES 128

/* On-disk header, exactly STATE_HEADER_BYTES long; the payload follows: conv, ssm, ids. */
typedef struct {
    char magic[8];
    uint32_t version;
    uint32_t header_bytes;
    uint64_t fingerprint;               /* the checkpoint's (model_fingerprint) */
    uint32_t arch, n_layer, conv_channels, d_conv, d_inner, d_state, vocab_size;   /* its shape */
    int32_t last_token;
    uint64_t n_tokens;
    uint64_t rng;
    uint32_t n_ids;
    uint32_t n_pending;
    uint8_t pending[STATE_MAX_PENDING];
    uint64_t file_bytes;
    uint64_t checksum;                  /* fingerprint_bytes of the header (this field 0), conv, ssm, ids */
} StateHeader;
_Static_assert(sizeof(StateHeader) == STATE_HEADER_BYTES, "StateHeader must be STATE_HEADER_BYTES long");

static uint64_t conv_floats(const Config *c) { return (uint64_t)c->n_layer * conv_dim(c) * c->d_conv; }

static uint64_t ssm_floats(const Config *c) { return (uint64_t)c->n_layer * c->d_inner * c->d_state; }

void saved_state_init(SavedState *s, const Config *c) {
    *s = (SavedState){.last_token = -1};
    s->conv = xmalloc(conv_floats(c) * sizeof(float));
    s->ssm = xmalloc(ssm_floats(c) * sizeof(float));
}

void saved_state_free(SavedState *s) {
    free(s->conv), free(s->ssm), free(s->ids);
    *s = (SavedState){.last_token = -1};
}

void saved_state_set_ids(SavedState *s, const int *ids, size_t n) {
    free(s->ids);
    s->ids = xmalloc((n ? n : 1) * sizeof *s->ids);
    memcpy(s->ids, ids, n * sizeof *ids);
    s->n_ids = n;
}

/* The header's shape fields, from a config. */
static void shape_of(const Config *c, StateHeader *h) {
    h->arch = c->arch, h->n_layer = c->n_layer, h->conv_channels = conv_dim(c), h->d_conv = c->d_conv;
    h->d_inner = c->d_inner, h->d_state = c->d_state, h->vocab_size = c->vocab_size;
}

static uint64_t checksum_of(StateHeader h, const float *conv, uint64_t n_conv, const float *ssm, uint64_t n_ssm,
                            const int *ids, uint64_t n_ids) {
    h.checksum = 0;
    uint64_t sum = fingerprint_bytes(FINGERPRINT_SEED, &h, sizeof h);
    sum = fingerprint_bytes(sum, conv, n_conv * sizeof *conv);
    sum = fingerprint_bytes(sum, ssm, n_ssm * sizeof *ssm);
    return fingerprint_bytes(sum, ids, n_ids * sizeof *ids);
}

/* ---- writing: a temporary file beside the target, fsynced, renamed into place ---- */

static char g_partial_state[PATH_MAX];   /* removed if we exit before the rename */

static void remove_partial_state(void) {
    if (g_partial_state[0]) unlink(g_partial_state);
}

static FILE *open_partial_state(const char *path) {
    static int registered;
    if (!registered) atexit(remove_partial_state), registered = 1;
    int written = snprintf(g_partial_state, sizeof g_partial_state, "%s.partial-XXXXXX", path);
    if (written < 0 || (size_t)written >= sizeof g_partial_state) die("state path too long: %s", path);
    int fd = mkstemp(g_partial_state);
    if (fd < 0) {
        g_partial_state[0] = '\0';
        die("cannot create a file beside %s: %s", path, strerror(errno));
    }
    mode_t mask = umask(0);                         /* mkstemp makes 0600; give the usual 0666 & ~umask */
    umask(mask);
    FILE *f = fchmod(fd, 0666 & ~mask) ? NULL : fdopen(fd, "wb");
    if (!f) die("cannot open %s: %s", g_partial_state, strerror(errno));
    return f;
}

static void write_or_die(const void *p, size_t n, FILE *f, const char *path) {
    if (n && fwrite(p, 1, n, f) != n) die("cannot write the state %s: %s", path, strerror(errno));
}

/* The file reaches the disk before its name does; then its folder is synced (best effort). */
static void commit_partial_state(FILE *f, const char *path) {
    if (fflush(f) || fsync(fileno(f))) die("cannot write the state %s: %s", path, strerror(errno));
    if (fclose(f)) die("cannot write the state %s: %s", path, strerror(errno));
    if (rename(g_partial_state, path)) die("cannot rename the state to %s: %s", path, strerror(errno));
    g_partial_state[0] = '\0';
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) slash[slash == dir] = '\0';
    int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) fsync(dfd), close(dfd);
}

void state_save(const char *path, const SavedState *s, Model *m) {
    const Config *c = &m->config;
    if (s->n_ids < 1 || s->n_ids > s->n_tokens || s->ids[s->n_ids - 1] != s->last_token || s->n_pending < 0 ||
        s->n_pending > STATE_MAX_PENDING)
        die("internal error: an inconsistent state for %s", path);
    StateHeader h = {0};
    memcpy(h.magic, STATE_MAGIC, 8);
    h.version = STATE_VERSION, h.header_bytes = STATE_HEADER_BYTES, h.fingerprint = model_fingerprint(m);
    shape_of(c, &h);
    h.last_token = s->last_token, h.n_tokens = s->n_tokens, h.rng = s->rng;
    h.n_ids = (uint32_t)s->n_ids, h.n_pending = (uint32_t)s->n_pending;
    memcpy(h.pending, s->pending, s->n_pending);
    h.file_bytes = STATE_HEADER_BYTES + (conv_floats(c) + ssm_floats(c) + s->n_ids) * 4;
    h.checksum = checksum_of(h, s->conv, conv_floats(c), s->ssm, ssm_floats(c), s->ids, s->n_ids);
    FILE *f = open_partial_state(path);
    write_or_die(&h, sizeof h, f, path);
    write_or_die(s->conv, conv_floats(c) * sizeof(float), f, path);
    write_or_die(s->ssm, ssm_floats(c) * sizeof(float), f, path);
    write_or_die(s->ids, s->n_ids * sizeof *s->ids, f, path);
    commit_partial_state(f, path);
}

/* ---- reading: an untrusted file, every field checked ---- */

/* The header's own fields: magic, version, sizes and the checksum of what the file holds. The
 * whole file is in data[0, size). */
static void check_header(const StateHeader *h, const uint8_t *data, uint64_t size, const char *path) {
    if (size < STATE_HEADER_BYTES) die("state %s is truncated: %llu bytes, smaller than its header", path, (unsigned long long)size);
    if (memcmp(h->magic, STATE_MAGIC, 8)) die("%s is not a mamba state file (bad magic)", path);
    if (h->version != STATE_VERSION) die("state %s has version %u; this mamba reads version %d", path, h->version, STATE_VERSION);
    if (h->header_bytes != STATE_HEADER_BYTES) die("state %s: header size %u, expected %d", path, h->header_bytes, STATE_HEADER_BYTES);
    if (h->file_bytes != size)
        die("state %s: its header says %llu bytes but the file has %llu (truncated or padded)", path,
            (unsigned long long)h->file_bytes, (unsigned long long)size);
    uint64_t payload = (uint64_t)h->n_layer * h->conv_channels * h->d_conv + (uint64_t)h->n_layer * h->d_inner * h->d_state;
    if (h->n_layer > 1024 || h->conv_channels > (1u << 20) || h->d_conv > 64 || h->d_inner > 262144 || h->d_state > 1024 ||
        (size - STATE_HEADER_BYTES) / 4 < payload || (size - STATE_HEADER_BYTES) % 4 ||
        (size - STATE_HEADER_BYTES) / 4 - payload != h->n_ids)
        die("state %s: its size does not match its shape and %u token ids", path, h->n_ids);
    const float *conv = (const float *)(data + STATE_HEADER_BYTES);
    const uint64_t n_conv = (uint64_t)h->n_layer * h->conv_channels * h->d_conv, n_ssm = payload - n_conv;
    if (checksum_of(*h, conv, n_conv, conv + n_conv, n_ssm, (const int *)(conv + payload), h->n_ids) != h->checksum)
        die("state %s is corrupted (checksum mismatch)", path);
}

/* The header against the model: same shape, same weights. */
static void check_model(const StateHeader *h, Model *m, const char *path) {
    StateHeader want = {0};
    shape_of(&m->config, &want);
    if (h->arch != want.arch || h->n_layer != want.n_layer || h->conv_channels != want.conv_channels ||
        h->d_conv != want.d_conv || h->d_inner != want.d_inner || h->d_state != want.d_state ||
        h->vocab_size != want.vocab_size)
        die("state %s is of another model: %s, %u layers, d_inner %u, d_state %u, vocab %u (this one: %s, %d, %d, %d, %d)",
            path, arch_name((Arch)h->arch) ? arch_name((Arch)h->arch) : "unknown arch", h->n_layer, h->d_inner, h->d_state,
            h->vocab_size, arch_name(m->config.arch), m->config.n_layer, m->config.d_inner, m->config.d_state,
            m->config.vocab_size);
    if (h->fingerprint != model_fingerprint(m))
        die("state %s belongs to other weights of this shape (fingerprint %016llx, this model's %016llx)", path,
            (unsigned long long)h->fingerprint, (unsigned long long)m->fingerprint);
}

/* The sequence's fields: token counts, ids in the vocabulary, the pending bytes' length. */
static void check_sequence(const StateHeader *h, const int *ids, const char *path) {
    if (h->n_tokens < 1 || h->n_ids < 1 || h->n_ids > h->n_tokens)
        die("state %s: %u token ids of %llu tokens consumed (1 to all of them expected)", path, h->n_ids,
            (unsigned long long)h->n_tokens);
    if (h->last_token < 0 || (uint32_t)h->last_token >= h->vocab_size)
        die("state %s: last token %d is outside the vocabulary of %u", path, h->last_token, h->vocab_size);
    for (uint32_t i = 0; i < h->n_ids; i++) {
        int32_t id;
        memcpy(&id, ids + i, sizeof id);
        if (id < 0 || (uint32_t)id >= h->vocab_size) die("state %s: token id %d (number %u) is outside the vocabulary", path, id, i);
        if (i == h->n_ids - 1 && id != h->last_token) die("state %s: its ids do not end with its last token", path);
    }
    if (h->n_pending > STATE_MAX_PENDING)
        die("state %s: %u pending bytes of text, more than %d", path, h->n_pending, STATE_MAX_PENDING);
}

static void check_finite(const float *v, uint64_t n, const char *what, const char *path) {
    for (uint64_t i = 0; i < n; i++)
        if (!isfinite(v[i])) die("state %s: its %s state has a non-finite value (float %llu)", path, what, (unsigned long long)i);
}

/* The whole file, read into memory (its size is what its header claims, checked after); kept
 * in g_state_data until freed, so that a refusal (exit) leaves nothing unreachable behind. */
uint8_t *g_state_data;   /* not static: a store the compiler may not drop */

static uint8_t *read_state_file(const char *path, uint64_t *size) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("cannot open the state %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) close(fd), die("state %s is not a regular file", path);
    if ((uint64_t)st.st_size > (16ull << 30)) close(fd), die("state %s is implausibly large (%lld bytes)", path, (long long)st.st_size);
    uint8_t *data = g_state_data = xmalloc(st.st_size);
    size_t got = 0;
    for (ssize_t n; got < (size_t)st.st_size; got += n)
        if ((n = read(fd, data + got, st.st_size - got)) <= 0) break;
    close(fd);
    if (got != (size_t)st.st_size) free(data), die("cannot read the state %s", path);
    *size = got;
    return data;
}

int state_load(const char *path, SavedState *s, Model *m, int missing_ok) {
    if (missing_ok && access(path, F_OK) && errno == ENOENT) return 0;
    uint64_t size;
    uint8_t *data = read_state_file(path, &size);
    StateHeader h = {0};
    memcpy(&h, data, size < sizeof h ? size : sizeof h);
    check_header(&h, data, size, path);
    check_model(&h, m, path);
    const Config *c = &m->config;
    const float *conv = (const float *)(data + STATE_HEADER_BYTES), *ssm = conv + conv_floats(c);
    const int *ids = (const int *)(ssm + ssm_floats(c));
    check_sequence(&h, ids, path);
    check_finite(conv, conv_floats(c), "conv", path);
    check_finite(ssm, ssm_floats(c), "SSM", path);
    memcpy(s->conv, conv, conv_floats(c) * sizeof(float));
    memcpy(s->ssm, ssm, ssm_floats(c) * sizeof(float));
    saved_state_set_ids(s, ids, h.n_ids);
    s->n_tokens = h.n_tokens, s->rng = h.rng, s->last_token = h.last_token;
    s->n_pending = (int)h.n_pending;
    memcpy(s->pending, h.pending, h.n_pending);
    free(data), g_state_data = NULL;
    return 1;
}

int is_state_file(const char *path) {
    char magic[8];
    FILE *f = fopen(path, "rb");
    int yes = f && fread(magic, 1, 8, f) == 8 && !memcmp(magic, STATE_MAGIC, 8);
    if (f) fclose(f);
    return yes;
}

/* mamba info FILE.state: the header, checked as a load checks it short of a model. */
void state_info(const char *path) {
    uint64_t size;
    uint8_t *data = read_state_file(path, &size);
    StateHeader h = {0};
    memcpy(&h, data, size < sizeof h ? size : sizeof h);
    check_header(&h, data, size, path);
    const float *values = (const float *)(data + STATE_HEADER_BYTES);
    const uint64_t n_conv = (uint64_t)h.n_layer * h.conv_channels * h.d_conv;
    const uint64_t n_values = n_conv + (uint64_t)h.n_layer * h.d_inner * h.d_state;
    check_sequence(&h, (const int *)(values + n_values), path);
    check_finite(values, n_values, "recurrent", path);
    const char *arch = arch_name((Arch)h.arch);
    printf("state file: version %u\narch: %s\nfingerprint: %016llx\n", h.version, arch ? arch : "unknown",
           (unsigned long long)h.fingerprint);
    printf("n_layer: %u\nconv_channels: %u\nd_conv: %u\nd_inner: %u\nd_state: %u\nvocab_size: %u\n", h.n_layer,
           h.conv_channels, h.d_conv, h.d_inner, h.d_state, h.vocab_size);
    printf("tokens: %llu\nlast_token: %d\nids_stored: %u%s\npending_text_bytes: %u\n", (unsigned long long)h.n_tokens,
           h.last_token, h.n_ids, h.n_ids == h.n_tokens ? " (all: usable as a prompt cache)" : " (the most recent)",
           h.n_pending);
    printf("state_bytes: %llu\nfile_bytes: %llu\n", (unsigned long long)n_values * 4, (unsigned long long)size);
    free(data), g_state_data = NULL;
}
