/* tests/fuzz/mamba_unity.h: mamba's host files (a CPU-only build) as one translation unit, so
 * that a fuzz target reaches their static functions and fuzz_common.h's redirections apply to
 * all of them. Include fuzz_common.h first. */
#include "../../util.c"
#include "../../options.c"
#include "../../model.c"
#include "../../cpu.c"
#include "../../cpu_quant.c"
#include "../../pool.c"
#include "../../sampler.c"
#include "../../engine.c"
#include "../../batch.c"
#include "../../convert.c"
#include "../../torch_archive.c"
#include "../../bench.c"
#include "../../state.c"
#include "../../generate.c"
#include "../../chat.c"
#include "../../mamba.c"
