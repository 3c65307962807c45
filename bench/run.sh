#!/usr/bin/env bash
# bench/run.sh [OUT_DIR]: the README's benchmark tables in one run on the GPU machine. Random
# models of the published Mamba-1, Mamba-2, Codestral-Mamba and Falcon-Mamba shapes (mamba init, bf16).
#   1. batch-1 decode: greedy, 256 tokens after a 16-token prompt; each line of
#      OUT_DIR/bench.jsonl is one `mamba bench --json`;
#   2. the sweep (`mamba bench --sweep --json`): the parallel prompt pass at several lengths and
#      batched decoding at several batch sizes, into OUT_DIR/sweep.jsonl;
#   3. a 1,000,000-token prompt on the first sweep shape, into OUT_DIR/million.jsonl.
#   MAMBA=path/to/mamba  SHAPES="tiny 130m 1.4b 2.8b falcon-mamba-7b mamba2-130m mamba2-2.7b codestral-7b"
#   SWEEP_SHAPES="130m 1.4b 2.8b mamba2-2.7b falcon-mamba-7b"
#   BENCH_DIR=/tmp/mamba-bench (models)
set -u -o pipefail
cd "$(dirname "$0")/.."
. tests/cuda_env.sh
MAMBA=${MAMBA:-./mamba}
OUT=${1:-.}
DIR=${BENCH_DIR:-/tmp/mamba-bench}
DEFAULT_SHAPES="tiny 130m 1.4b 2.8b falcon-mamba-7b mamba2-130m mamba2-2.7b codestral-7b"
DEFAULT_SWEEP="130m 1.4b 2.8b mamba2-2.7b falcon-mamba-7b"
mkdir -p "$DIR" "$OUT"
for shape in ${SHAPES:-$DEFAULT_SHAPES} ${SWEEP_SHAPES:-$DEFAULT_SWEEP}; do
    [ -e "$DIR/$shape.bin" ] || $MAMBA init --shape "$shape" --dtype bf16 "$DIR/$shape.bin" 2>/dev/null || exit 1
done
: >"$OUT/bench.jsonl"
: >"$OUT/sweep.jsonl"
: >"$OUT/million.jsonl"
for shape in ${SHAPES:-$DEFAULT_SHAPES}; do
    $MAMBA bench -m "$DIR/$shape.bin" --device cuda -n 256 --prompt-len 16 --json | sed "s/^{/{\"shape\":\"$shape\",/" >>"$OUT/bench.jsonl" || exit 1
done
for shape in ${SWEEP_SHAPES:-$DEFAULT_SWEEP}; do
    $MAMBA bench -m "$DIR/$shape.bin" --device cuda --sweep --json | sed "s/^{/{\"shape\":\"$shape\",/" >>"$OUT/sweep.jsonl" || exit 1
done
first=$(echo ${SWEEP_SHAPES:-$DEFAULT_SWEEP} | cut -d' ' -f1)
$MAMBA bench -m "$DIR/$first.bin" --device cuda --prompt-len 1000000 -n 16 --json | sed "s/^{/{\"shape\":\"$first\",/" >"$OUT/million.jsonl" || exit 1
python3 - "$OUT/bench.jsonl" "$OUT/sweep.jsonl" "$OUT/million.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("batch-1 decode")
print(f"{'shape':15} {'tokens/s':>9} {'ms/token':>9} {'TTFT ms':>8} {'GB/s':>7} {'roofline':>8} {'GPU MiB':>8} {'read GB/s':>9}")
for r in rows:
    print(f"{r['shape']:15} {r['decode_tokens_per_s']:9.1f} {r['ms_per_token']:9.4f} "
          f"{r['time_to_first_token_ms']:8.2f} {r['achieved_GBps']:7.1f} {100 * r['fraction_of_roofline']:7.1f}% "
          f"{r['gpu_memory_bytes'] / 2**20:8.0f} {r['read_bandwidth_GBps']:9.1f}")
sweep = [json.loads(line) for line in open(sys.argv[2])]
print("\nprompt pass (prefill)")
print(f"{'shape':15} {'tokens':>8} {'seconds':>8} {'tokens/s':>10} {'TFLOP/s':>8} {'of matmul':>9} {'of zeros':>9} {'GPU MiB':>8}")
for r in sweep:
    if r['kind'] == 'prefill':
        print(f"{r['shape']:15} {r['prompt_tokens']:8d} {r['seconds']:8.3f} {r['tokens_per_s']:10.0f} {r['tflops']:8.1f} "
              f"{100 * r['fraction_of_matmul']:8.1f}% {100 * r['tflops'] / r['matmul_zeros_tflops']:8.1f}% "
              f"{r['gpu_memory_bytes'] / 2**20:8.0f}")
for r in map(json.loads, open(sys.argv[3])):
    print(f"{r['shape']:15} {r['prompt_tokens']:8d} {r['time_to_first_token_ms'] / 1e3:8.3f} {r['prompt_tokens_per_s']:10.0f} "
          f"{'':>8} {'':>9} {'':>9} {r['gpu_memory_bytes'] / 2**20:8.0f}  (time to first token)")
print("matmul: an 8192³ product on random operands, " +
      ", ".join(f"{r['shape']} {r['matmul_tflops']:.0f} TFLOP/s ({r['matmul_zeros_tflops']:.0f} on zeros)"
                for r in sweep if r['kind'] == 'prefill' and r['prompt_tokens'] == 2048))
print("\nbatched decode")
print(f"{'shape':15} {'batch':>5} {'tokens/s':>10} {'× batch 1':>9} {'ms/step':>8} {'roofline':>8}")
for r in sweep:
    if r['kind'] == 'batch':
        print(f"{r['shape']:15} {r['batch']:5d} {r['tokens_per_s']:10.0f} {r['speedup_over_batch1']:9.1f} {r['ms_per_step']:8.3f} "
              f"{100 * r['fraction_of_roofline']:7.1f}%")
print(f"\ndevice: {rows[0]['device']}" if rows else "no results")
PY
