#!/usr/bin/env bash
# bench/run.sh [OUT_DIR]: the README's benchmark table in one run on the GPU machine. Random
# models of the published Mamba-1 shapes (mamba init, bf16), batch 1, greedy, 256 decode tokens
# after a 16-token prompt; each line of OUT_DIR/bench.jsonl is one `mamba bench --json`.
#   MAMBA=path/to/mamba  SHAPES="tiny 130m 1.4b 2.8b"  BENCH_DIR=/tmp/mamba-bench (models)
set -u
cd "$(dirname "$0")/.."
MAMBA=${MAMBA:-./mamba}
OUT=${1:-.}
DIR=${BENCH_DIR:-/tmp/mamba-bench}
mkdir -p "$DIR" "$OUT"
for shape in ${SHAPES:-tiny 130m 1.4b 2.8b}; do
    [ -e "$DIR/$shape.bin" ] || $MAMBA init --shape "$shape" --dtype bf16 "$DIR/$shape.bin" 2>/dev/null || exit 1
    $MAMBA bench -m "$DIR/$shape.bin" --device cuda -n 256 --prompt-len 16 --json | sed "s/^{/{\"shape\":\"$shape\",/" >>"$OUT/bench.jsonl" || exit 1
done
python3 - "$OUT/bench.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"{'shape':6} {'tokens/s':>9} {'ms/token':>9} {'prompt tok/s':>12} {'TTFT ms':>8} {'GB/s':>7} {'roofline':>8} {'GPU MiB':>8} {'read GB/s':>9}")
for r in rows:
    print(f"{r['shape']:6} {r['decode_tokens_per_s']:9.1f} {r['ms_per_token']:9.4f} {r['prompt_tokens_per_s']:12.1f} "
          f"{r['time_to_first_token_ms']:8.2f} {r['achieved_GBps']:7.1f} {100 * r['fraction_of_roofline']:7.1f}% "
          f"{r['gpu_memory_bytes'] / 2**20:8.0f} {r['read_bandwidth_GBps']:9.1f}")
print(f"device: {rows[0]['device']}" if rows else "no results")
PY
