/* libFuzzer target: state files (state_load against a model, state_info without one). The first
 * byte picks the model (bit 0: the Mamba-1 or the Mamba-2 tiny checkpoint of the checkpoint
 * corpus, whose seeds the state seeds were written with) and whether to set the checksum the
 * rest would have (bit 1), so that mutations get past it to the checks behind it; the rest is
 * the state file. */
#include "fuzz_common.h"
#include "mamba_unity.h"

static const char *const MODELS[2] = {"tied_f32.bin", "init_mamba2-tiny_bf16.bin"};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (!freopen("/dev/null", "w", stdout)) abort();   /* state_info prints */
    return 0;
}

/* The checksum the header's own shape gives the bytes, when their size fits it. */
static void set_checksum(uint8_t *data, size_t size) {
    StateHeader h;
    if (size < sizeof h) return;
    memcpy(&h, data, sizeof h);
    const uint64_t floats = (size - sizeof h) / 4;
    const uint64_t n_conv = (uint64_t)h.n_layer * h.conv_channels * h.d_conv, n_ssm = (uint64_t)h.n_layer * h.d_inner * h.d_state;
    if ((size - sizeof h) % 4 || h.n_layer > 1024 || h.conv_channels > (1u << 20) || h.d_conv > 64 || h.d_inner > 262144 ||
        h.d_state > 1024 || n_conv + n_ssm > floats)
        return;
    const float *conv = (const float *)(data + sizeof h);
    h.checksum = checksum_of(h, conv, n_conv, conv + n_conv, n_ssm, (const int *)(conv + n_conv + n_ssm), floats - n_conv - n_ssm);
    memcpy(data, &h, sizeof h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    char model_path[4096];
    const char *root = getenv("MAMBA_FUZZ_ROOT");
    snprintf(model_path, sizeof model_path, "%s/tests/fuzz/corpus/checkpoint/%s", root ? root : ".", MODELS[data[0] & 1]);
    uint8_t *copy = malloc(size);
    memcpy(copy, data + 1, size - 1);
    if (data[0] & 2) set_checksum(copy, size - 1);
    int fd;
    const char *path = fuzz_memfd(copy, size - 1, &fd);
    free(copy);
    static Model m;
    static SavedState s;
    volatile int died = 1;
    if (!setjmp(mamba_fuzz_jmp)) {
        model_load(&m, model_path);
        saved_state_init(&s, &m.config);
        state_load(path, &s, &m, 0);
        saved_state_free(&s);
        state_info(path);
        model_free(&m);
        died = 0;
    }
    close(fd);
    fuzz_sweep(died);
    return 0;
}
