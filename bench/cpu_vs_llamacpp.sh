#!/usr/bin/env bash
# bench/cpu_vs_llamacpp.sh [ROUNDS]: this engine's CPU path beside llama.cpp's on this machine,
# the same random 130m-shape weights for both, THREADS threads (default 2), ROUNDS interleaved
# rounds (default 3), medians in a table: decode in bf16 and f16 (tokens/s, and this engine's
# share of the memory roofline measured in the same run) and prompts of 128 and 512 tokens.
#
# llama.cpp is built CPU-only from the llama-cpp-python 0.3.36 source package (its
# vendor/llama.cpp) into bench/.llamacpp/ (ignored; nothing of it is committed), once. The
# weights come from bench/random_mamba.py: an HF folder that `mamba convert` reads and GGUFs
# written with the gguf-py library of that tree. Needs cmake, a C++ compiler, pip, numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
THREADS=${THREADS:-2}
MAMBA=${MAMBA:-./mamba}
WORK=bench/.llamacpp
VERSION=0.3.36
SRC=$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp
LLAMA_BENCH=$SRC/build/bin/llama-bench

mkdir -p "$WORK"
if [ ! -x "$LLAMA_BENCH" ]; then
    [ -d "$SRC" ] || {
        pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK"
        tar -xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
    }
    cmake -S "$SRC" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=OFF -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >"$WORK/cmake.log"
    cmake --build "$SRC/build" -j"$(nproc)" --target llama-bench >"$WORK/build.log"
fi
[ -x "$MAMBA" ] || make mamba >/dev/null

M=$WORK/m130
if [ ! -e "$M/model-f16.gguf" ]; then
    python3 bench/random_mamba.py "$SRC" "$M"
    for d in bf16 f16; do $MAMBA convert "$M/hf" "$M/mamba-$d.bin" --dtype $d >/dev/null; done
fi

RESULTS=$WORK/results.jsonl
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
    for d in bf16 f16; do
        echo "round $round/$ROUNDS, $d" >&2
        for p in 128 512; do
            $MAMBA bench -m "$M/mamba-$d.bin" --device cpu --threads "$THREADS" --prompt-len $p -n 64 --json |
                python3 -c 'import json, sys; r = json.load(sys.stdin); r["who"] = "mamba"; print(json.dumps(r))' >>"$RESULTS"
        done
        "$LLAMA_BENCH" -m "$M/model-$d.gguf" -t "$THREADS" -p 128,512 -n 64 -r 1 -o jsonl 2>/dev/null |
            python3 -c 'import json, sys
for line in sys.stdin:
    r = json.loads(line); r["who"] = "llama.cpp"; print(json.dumps(r))' >>"$RESULTS"
    done
done

python3 - "$RESULTS" "$THREADS" "$ROUNDS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda xs: statistics.median(xs) if xs else float("nan")
def ours(dtype, what, prompt=None):
    sel = [r for r in rows if r["who"] == "mamba" and r["dtype"] == dtype and (prompt is None or r["prompt_tokens"] == prompt)]
    return med([r[what] for r in sel])
def theirs(dtype, n_prompt, n_gen):
    sel = [r for r in rows if r["who"] == "llama.cpp" and r["model_filename"].endswith(f"model-{dtype}.gguf")
           and r["n_prompt"] == n_prompt and r["n_gen"] == n_gen]
    return med([r["avg_ts"] for r in sel])
print(f"{sys.argv[3]} interleaved rounds, {sys.argv[2]} threads, medians\n")
print("| | this engine | llama.cpp | ratio | this engine, % of roofline |")
print("|---|---:|---:|---:|---:|")
for d in ("bf16", "f16"):
    a, b = ours(d, "decode_tokens_per_s"), theirs(d, 0, 64)
    roof = 100 * ours(d, "fraction_of_roofline")
    bw = ours(d, "read_bandwidth_GBps")
    print(f"| decode, {d}, tok/s | {a:.1f} | {b:.1f} | {a / b:.2f}× | {roof:.0f}% of {bw:.1f} GB/s |")
for d in ("bf16", "f16"):
    for p in (128, 512):
        a, b = ours(d, "prompt_tokens_per_s", p), theirs(d, p, 0)
        print(f"| prompt of {p}, {d}, tok/s | {a:.1f} | {b:.1f} | {a / b:.2f}× | |")
PY
