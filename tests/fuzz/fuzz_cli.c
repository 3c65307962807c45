/* libFuzzer target: the CLI's option parsing. The input is NUL-separated arguments; its first
 * byte picks the command. It runs in an empty folder with MAMBA_MODEL naming a missing file and
 * stdin on /dev/null, so every command stops at the latest when it opens the model; init (which
 * writes files) and absolute or parent paths are left out. */
#include "fuzz_common.h"
#include "mamba_unity.h"

/* Done at the first input. libFuzzer reads corpus files after that: name corpus folders and
 * -artifact_prefix by absolute paths. */
static char sandbox[] = "/tmp/fuzz_cli.XXXXXX";

static void leave_sandbox(void) { rmdir(sandbox); }

static void enter_sandbox(void) {
    if (!mkdtemp(sandbox) || chdir(sandbox)) abort();
    atexit(leave_sandbox);
    setenv("MAMBA_MODEL", "missing.bin", 1);
    if (!freopen("/dev/null", "r", stdin) || !freopen("/dev/null", "w", stdout)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    enum { MAX_ARGS = 64 };
    static int entered;
    if (!entered) {
        fuzz_track_cjson();
        enter_sandbox();
        entered = 1;
    }
    if (size < 1 || size > 4096) return -1;
    static char buf[4097];
    memcpy(buf, data + 1, size - 1);
    buf[size - 1] = '\0';
    char *argv[MAX_ARGS + 1];
    int argc = 0;
    for (char *p = buf; p < buf + size - 1 && argc < MAX_ARGS; p += strlen(p) + 1) {
        if (p[0] == '/' || strstr(p, "..")) return -1;
        argv[argc++] = p;
    }
    argv[argc] = NULL;
    static const char *const commands[] = {"run", "tokenize", "info", "perplexity", "convert", "bench", "help"};
    int which = data[0] % (sizeof commands / sizeof *commands);
    volatile int died = 1;
    if (!setjmp(mamba_fuzz_jmp)) {
        switch (which) {
        case 0: cmd_run(argc, argv, 0); break;
        case 1: cmd_tokenize(argc, argv); break;
        case 2: cmd_info(argc, argv); break;
        case 3: cmd_perplexity(argc, argv); break;
        case 4: cmd_convert(argc, argv); break;
        case 5: cmd_bench(argc, argv); break;
        default: usage();
        }
        died = 0;
    }
    fuzz_sweep(died);
    return 0;
}
