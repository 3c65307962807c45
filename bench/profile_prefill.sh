#!/usr/bin/env bash
# bench/profile_prefill.sh [OUT_DIR]: where one prompt pass spends its time, on the GPU machine.
# Nsight Compute times every kernel of `mamba run` over a LEN-token prompt on a random model of
# SHAPE (bf16); the times are summed by kernel into OUT_DIR/prefill-SHAPE-LEN.txt, the raw
# CSV beside it. The step kernel that then makes one token is in the table too.
#   MAMBA=path/to/mamba  SHAPE=1.4b  LEN=2048  BENCH_DIR=/tmp/mamba-bench (models)
set -u -o pipefail
cd "$(dirname "$0")/.."
. tests/cuda_env.sh
MAMBA=${MAMBA:-./mamba}
OUT=${1:-.}
DIR=${BENCH_DIR:-/tmp/mamba-bench}
SHAPE=${SHAPE:-1.4b}
LEN=${LEN:-2048}
mkdir -p "$DIR" "$OUT"
[ -e "$DIR/$SHAPE.bin" ] || $MAMBA init --shape "$SHAPE" --dtype bf16 "$DIR/$SHAPE.bin" 2>/dev/null || exit 1
ids=$(python3 -c "print(','.join(str((1 + 7919 * i) % 50000) for i in range($LEN)))")
csv="$OUT/prefill-$SHAPE-$LEN.csv"
ncu --clock-control none --metrics gpu__time_duration.sum --csv \
    $MAMBA run --device cuda -m "$DIR/$SHAPE.bin" --prompt-ids "$ids" -n 1 -t 0 --print-ids >"$csv" 2>"$OUT/ncu.err" || exit 1
python3 - "$csv" "$SHAPE" "$LEN" <<'PY' | tee "$OUT/prefill-$SHAPE-$LEN.txt"
import csv, sys, collections
scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6, "nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}
total, count = collections.defaultdict(float), collections.Counter()
for row in csv.DictReader(line for line in open(sys.argv[1]) if line.startswith('"')):
    if row["Metric Name"] != "gpu__time_duration.sum":
        continue
    name = row["Kernel Name"].split("(")[0].split("<")[0].strip()
    total[name] += float(row["Metric Value"].replace(",", "")) * scale[row["Metric Unit"]]
    count[name] += 1
whole = sum(total.values())
print(f"{sys.argv[2]}, {sys.argv[3]}-token prompt: {whole / 1e3:.2f} ms of kernels")
print(f"{'kernel':60} {'launches':>8} {'ms':>8} {'share':>6}")
for name, us in sorted(total.items(), key=lambda kv: -kv[1]):
    print(f"{name[:60]:60} {count[name]:8d} {us / 1e3:8.3f} {100 * us / whole:5.1f}%")
PY
