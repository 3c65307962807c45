#!/usr/bin/env bash
# tests/gpu.sh (make test-gpu): run on the GPU machine. The kernels against their CPU
# references with their micro-benchmarks (tests/kernels/test_kernels.cu and, for Mamba-2's
# passes, test_mamba2_pass.cu, built here with nvcc),
# a smoke test, the GPU tests (tests/test_gpu.sh), then the benchmark (bench/run.sh; GPU_BENCH=0
# skips it and the micro-benchmarks). Logs go to $OUT (default: a new temporary folder); a
# summary ends it, and the exit status counts every part.
# The binary comes from .devlibs/, made on the build machine by `make devlibs`, when present
# (the GPU machine lacks the Debian libraries it links), else from `make`.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
if [ -x .devlibs/mamba ]; then
    export MAMBA=$PWD/.devlibs/mamba CMP=$PWD/.devlibs/cmp_logits
else
    make mamba tests/cmp_logits >/dev/null || exit 1
    export MAMBA=$PWD/mamba
fi
. tests/cuda_env.sh
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,clocks.mem,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
# the kernels first: a wrong kernel is named here, before the end-to-end tests see its effects
NVCC=${NVCC:-$(for n in "${CUDA_HOME:-/nonexistent}/bin/nvcc" "$(command -v nvcc)" /usr/local/cuda/bin/nvcc; do [ -x "$n" ] && echo "$n" && break; done)}
mkdir -p build
(
    status=0
    for t in test_kernels test_mamba2_pass; do
        "${NVCC:-nvcc}" ${CUDA_ARCH:--arch=sm_90} -O3 -std=c++17 -I. -o build/$t tests/kernels/$t.cu -ldl &&
            timeout 300 build/$t $([ "${GPU_BENCH:-1}" = 1 ] || echo --no-bench) || status=1
    done
    exit $status
) 2>&1 | tee "$OUT/test-kernels.log"
kernels=${PIPESTATUS[0]}
# a smoke test before the end-to-end tests: a broken engine fails here in seconds, not in every test
$MAMBA init --shape tiny --dtype f32 "$OUT/smoke.bin" 2>/dev/null
if ! timeout 60 $MAMBA run --device cuda -m "$OUT/smoke.bin" --prompt-ids 1,2,3 -n 20 -t 0 --print-ids --stats >"$OUT/smoke.txt" 2>&1; then
    echo "==== the GPU engine fails its smoke test:"; cat "$OUT/gpu.txt" "$OUT/smoke.txt"; exit 1
fi
rm -f "$OUT/smoke.bin"
EXPECT_GPU=1 timeout 600 bash tests/run.sh tests/test_gpu.sh 2>&1 | tee "$OUT/test-gpu.log"
status=${PIPESTATUS[0]}
[ "$kernels" -eq 0 ] || status=1
if [ "${GPU_BENCH:-1}" = 1 ]; then
    MAMBA=$MAMBA timeout 600 bash bench/run.sh "$OUT" >"$OUT/bench.txt" 2>&1 || status=1
fi
echo "==== summary"
cat "$OUT/gpu.txt"
grep -E '^bench ' "$OUT/test-kernels.log"
grep -E '^(FAIL|[0-9]+ passed)' "$OUT/test-kernels.log" | sed 's/^/test_kernels: /'
[ "$kernels" -eq 0 ] || echo "test_kernels: exit status $kernels (log: $OUT/test-kernels.log)"
grep -E '^(FAIL|[0-9]+ passed)' "$OUT/test-gpu.log"
[ -e "$OUT/bench.txt" ] && cat "$OUT/bench.txt"
exit "$status"
