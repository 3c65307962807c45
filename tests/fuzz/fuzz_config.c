/* libFuzzer target: config.json (config_from_json, both spellings, then the config's bounds). */
#include "fuzz_common.h"
#include "mamba_unity.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_track_cjson();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cJSON *volatile json = cJSON_ParseWithLength((const char *)data, size);
    if (!json) return 0;
    volatile int died = 1;
    if (!setjmp(mamba_fuzz_jmp)) {
        Config c;
        TokenizerInfo tok = {0};
        config_from_json(json, "config.json", &c, &tok);
        c.dtype = DTYPE_BF16;
        if (!config_problem(&c)) model_param_count(&c);
        died = 0;
    }
    cJSON_Delete(json);
    fuzz_sweep(died);
    return 0;
}
