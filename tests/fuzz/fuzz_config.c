/* libFuzzer target: config.json (non-finite numbers, config_from_json for every family and
 * both spellings, the special ids, then the config's bounds and the layout it implies). */
#include "fuzz_common.h"
#include "mamba_unity.h"

volatile uint8_t fuzz_sink;   /* keeps the sizes computed */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_track_cjson();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *volatile text = malloc(size + 1);
    if (!text) abort();
    memcpy(text, data, size);
    text[size] = '\0';
    cJSON *volatile json = NULL;
    volatile int died = 1;
    if (!setjmp(mamba_fuzz_jmp)) {
        accept_infinity(text, size, "config.json");
        json = cJSON_ParseWithLength(text, size);
        if (json) {
            Config c;
            TokenizerInfo tok = {0};
            config_from_json(json, "config.json", &c, &tok);
            check_special_ids(&tok, &c, "config.json");
            c.dtype = DTYPE_BF16;
            if (!config_problem(&c)) {
                model_param_count(&c);
                fuzz_sink = (uint8_t)(state_floats(&c) + (uint64_t)in_proj_rows(&c));
            }
        }
        died = 0;
    }
    cJSON_Delete(json);
    free(text);
    fuzz_sweep(died);
    return 0;
}
