/* libFuzzer target: the checkpoint header and tensor table (model_load), then the embedded
 * tokenizer of a checkpoint that loads. */
#include "fuzz_common.h"
#include "mamba_unity.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int fd;
    const char *path = fuzz_memfd(data, size, &fd);
    static Model m;
    volatile int died = 1;
    if (!setjmp(mamba_fuzz_jmp)) {
        model_load(&m, path);
        model_param_count(&m.config);
        if (m.tokenizer_kind != TOKENIZER_NONE) {
            char err[256];
            Tokenizer *t = tokenizer_load_bytes(m.tokenizer_kind, m.tokenizer_blob, m.tokenizer_bytes, err, sizeof err);
            if (t) tokenizer_free(t);
        }
        model_free(&m);
        died = 0;
    }
    close(fd);
    fuzz_sweep(died);
    return 0;
}
