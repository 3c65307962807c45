/* libFuzzer target: the safetensors header parser (load_safetensors) when the first byte is
 * even, else model.safetensors.index.json (load_hf_tensors) over a folder of two valid shards. */
#include "fuzz_common.h"
#include "mamba_unity.h"

static char dir[64];
volatile uint8_t fuzz_sink;   /* reads that must not be optimized away */

static void write_shard(const char *name, const char *header, size_t data_bytes) {
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    uint64_t n = strlen(header);
    for (int i = 0; i < 8; i++) fputc((int)(n >> (8 * i)) & 0xff, f);
    fputs(header, f);
    for (size_t i = 0; i < data_bytes; i++) fputc(0, f);
    fclose(f);
}

static void remove_dir(void) {
    static const char *const files[] = {"a.safetensors", "b.safetensors", "model.safetensors.index.json"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char path[128];
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    fuzz_track_cjson();
    snprintf(dir, sizeof dir, "/tmp/fuzz_safetensors.XXXXXX");
    if (!mkdtemp(dir)) abort();
    atexit(remove_dir);
    write_shard("a.safetensors", "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    write_shard("b.safetensors",
                "{\"__metadata__\":{\"format\":\"pt\"},\"y\":{\"dtype\":\"BF16\",\"shape\":[1,2],\"data_offsets\":[0,4]},"
                "\"z\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[4,12]}}", 12);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int fd = -1;
    const char *path = NULL;
    if (!(data[0] & 1)) {
        path = fuzz_memfd(data + 1, size - 1, &fd);
    } else {
        char index[128];
        snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir);
        FILE *f = fopen(index, "wb");
        if (!f || fwrite(data + 1, 1, size - 1, f) != size - 1 || fclose(f)) abort();
    }
    static TensorSet set;
    volatile int died = 1;
    if (!setjmp(mamba_fuzz_jmp)) {
        memset(&set, 0, sizeof set);
        set.dir = dir;
        if (path) load_safetensors(&set, path);
        else load_hf_tensors(&set, dir);
        /* every tensor's bytes must lie inside its file */
        for (int i = 0; i < set.n; i++)
            if (set.tensors[i].bytes) fuzz_sink ^= set.tensors[i].data[0] ^ set.tensors[i].data[set.tensors[i].bytes - 1];
        died = 0;
    }
    tensor_set_free(&set);                   /* what the set holds so far, died or not */
    memset(&set, 0, sizeof set);
    if (fd >= 0) close(fd);
    fuzz_sweep(died);
    return 0;
}
