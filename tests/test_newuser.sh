#!/usr/bin/env bash
# What a new user tries first: no arguments and piped stdin, --version, every command's --help,
# GNU option spellings (--opt=value, -n5, --), -f FILE and the llama.cpp-style long aliases, a
# checkpoint given first (llama2.c's ./run model.bin), progress lines on a terminal only, the
# Makefile finding nvcc through CUDA_HOME, and version-1 checkpoints still loading.
source tests/lib.sh
F=tests/fixtures
M=weights/model.bin
case $MAMBA in *asan*) sanitized=1 ;; *) sanitized=0 ;; esac

# ---- no arguments, piped stdin ----
# the default model is found beside the binary; stdin that is not a terminal is the prompt
check "no arguments, stdin empty: the default model runs from BOS" bash -c "env -u MAMBA_MODEL $MAMBA </dev/null >$TMP/noargs.txt && [ -s $TMP/noargs.txt ]"
check "echo 'The whale' | mamba: the piped text is the prompt" bash -c "echo 'The whale' | env -u MAMBA_MODEL $MAMBA >$TMP/piped.txt && head -c 9 $TMP/piped.txt | grep -qx 'The whale'"
# stdin a terminal: BOS alone (script gives the run a pseudo-terminal)
check "no prompt, stdin a terminal: generates from BOS" bash -c "script -qec '$MAMBA -n 8 -t 0 --print-ids' /dev/null </dev/null >$TMP/tty.txt && grep -Eq '[0-9]+( [0-9]+){7}' $TMP/tty.txt"

# ---- --version ----
for flag in --version -V; do
    check "$flag: version and build, exit 0" bash -c "$MAMBA $flag >$TMP/v.out 2>$TMP/v.err && grep -Eqx 'mamba [0-9]+\.[0-9]+\.[0-9]+ \((CUDA|CPU-only) build\)' $TMP/v.out && [ ! -s $TMP/v.err ]"
done
if [ "$sanitized" = 1 ]; then
    check "the sanitized build says it is CPU-only" bash -c "$MAMBA --version | grep -q 'CPU-only build'"
fi

# ---- --help: each command's usage on stdout, exit 0, every option, the defaults, $MAMBA_MODEL ----
help_ok() {   # help_ok CMD... : usage on stdout, nothing on stderr, exit 0; $MAMBA_MODEL where a model is read
    "$@" >"$TMP/h.out" 2>"$TMP/h.err" || { echo "exit $?"; return 1; }
    [ ! -s "$TMP/h.err" ] || { cat "$TMP/h.err"; return 1; }
    grep -q '^usage: ' "$TMP/h.out" || { head -5 "$TMP/h.out"; return 1; }
    case $2 in convert|init) ! grep -q 'MAMBA_MODEL' "$TMP/h.out" ;; *) grep -q 'MAMBA_MODEL' "$TMP/h.out" ;; esac
}
for cmd in run convert info tokenize perplexity init bench; do
    check "mamba $cmd --help: usage on stdout, exit 0" help_ok $MAMBA $cmd --help
    check "mamba $cmd -h: the same" help_ok $MAMBA $cmd -h
done
check "mamba run --version: the version too" bash -c "$MAMBA run --version | grep -q '^mamba [0-9]'"
check "--help into a full disk: an error, not silence" bash -c "! $MAMBA bench --help >/dev/full 2>$TMP/full.err && grep -q 'cannot write to stdout' $TMP/full.err"
check "mamba --help: the commands and run's options" bash -c "$MAMBA --help >$TMP/top.txt && grep -q 'perplexity' $TMP/top.txt && grep -q -- '--n-predict' $TMP/top.txt && grep -q MAMBA_MODEL $TMP/top.txt"
lists_all() {   # lists_all CMD OPTION...: CMD --help names each option
    local cmd=$1; shift
    $MAMBA $cmd --help >"$TMP/l.txt" || return 1
    for o in "$@"; do grep -q -- "$o\b" "$TMP/l.txt" || { echo "$cmd --help lacks $o"; return 1; }; done
}
check "run --help lists every option" lists_all run -m --model -i --prompt -f --file --prompt-ids --tokenizer -n --steps --n-predict \
    -t --temperature --temp -k --top-k -p --top-p --repeat-penalty --repeat-last-n -s --seed --ignore-eos --print-ids \
    --no-echo --stats --logits-out --max-prompt-tokens --prompt-batch --device --threads --batch-file --batch-size --json
check "run --help gives the defaults" bash -c "$MAMBA run --help | grep -q 'default 256' && $MAMBA run --help | grep -q 'default 0.8'"
check "perplexity --help lists -c, --ctx" lists_all perplexity -c --ctx --max-tokens --tokenizer --device --threads --json
check "bench --help lists every option" lists_all bench -m -n --steps --n-predict --prompt-len --batch --device --threads --json --sweep
check "convert --help lists --dtype" lists_all convert --dtype
check "init --help lists --shape, --dtype, --seed" lists_all init --shape --dtype --seed
expect_error "an unknown option names itself and --help" "unknown option --frob.*--help" $MAMBA bench --frob
expect_error "a flag given a value is refused" "takes no value" $MAMBA run --stats=1 -n 1
expect_error "an option without its value says so" "needs a value" $MAMBA run -m $M -n

# ---- option spellings: each must give what the plain spelling gives ----
ids="--prompt-ids 1,2,3 --print-ids"
check "--opt=value = --opt value" same "$MAMBA --model=$M $ids --steps=6 --temperature=0" "$MAMBA -m $M $ids --steps 6 -t 0"
check "-n5 = -n 5" same "$MAMBA -m $M $ids -n5 -t0" "$MAMBA -m $M $ids -n 5 -t 0"
check "--n-predict = -n, --temp = -t" same "$MAMBA -m $M $ids --n-predict 7 --temp 0" "$MAMBA -m $M $ids -n 7 -t 0"
check "--seed, --top-k, --top-p = -s, -k, -p" same "$MAMBA -m $M $ids -n 12 --seed 9 --top-k 5 --top-p 0.5" "$MAMBA -m $M $ids -n 12 -s 9 -k 5 -p 0.5"
check "--prompt = -i" same "$MAMBA -m $M -n 6 -t 0 --prompt 'The whale'" "$MAMBA -m $M -n 6 -t 0 -i 'The whale'"
check "--threads 1 = the default threads" same "$MAMBA -m $M $ids -n 6 -t 0 --threads 1" "$MAMBA -m $M $ids -n 6 -t 0"
check "-- ends the options: a prompt that starts with a dash" same "$MAMBA -m $M -n 4 -t 0 -- --stats" "$MAMBA -m $M -n 4 -t 0 -i --stats"
check "-- : later words are prompt text, not options" bash -c "$MAMBA -m $M -n 2 -t 0 -- --stats 2>$TMP/dd.err | grep -q -- '^--stats' && ! grep -q 'tokens/s' $TMP/dd.err"
printf 'It is a truth universally acknowledged\n' >$TMP/prompt.txt
check "-f FILE = the prompt as an argument" same "$MAMBA -m $M -n 8 -t 0 -f $TMP/prompt.txt" "$MAMBA -m $M -n 8 -t 0 'It is a truth universally acknowledged'"
check "--file=FILE = -f FILE" same "$MAMBA -m $M -n 8 -t 0 --file=$TMP/prompt.txt" "$MAMBA -m $M -n 8 -t 0 -f $TMP/prompt.txt"
expect_error "-f of a missing file names it" "cannot open $TMP/missing.txt" $MAMBA -m $M -f $TMP/missing.txt
check "-f - reads standard input" same "echo 'The whale' | $MAMBA -m $M -n 6 -t 0 -f -" "$MAMBA -m $M -n 6 -t 0 'The whale'"
expect_error "-steps hints at --steps" "unknown option -steps \(did you mean --steps\?\)" $MAMBA -m $M -steps 3
check "perplexity -c = --ctx" same "$MAMBA perplexity -m $M -c 64 --max-tokens 100 $TMP/prompt.txt" "$MAMBA perplexity -m $M --ctx 64 --max-tokens 100 $TMP/prompt.txt"

# ---- a checkpoint given first is the model ----
cp $M $TMP/model.bin
check "mamba MODEL.bin PROMPT = mamba -m MODEL.bin PROMPT" same "$MAMBA $TMP/model.bin -n 6 -t 0 'Once upon'" "$MAMBA -m $TMP/model.bin -n 6 -t 0 'Once upon'"
check "mamba run MODEL.bin PROMPT: the same" same "$MAMBA run $TMP/model.bin -n 6 -t 0 'Once upon'" "$MAMBA -m $TMP/model.bin -n 6 -t 0 'Once upon'"
check "a first word that is not a checkpoint stays prompt text" bash -c "$MAMBA -m $M -n 1 -t 0 $TMP/prompt.txt | grep -qF '$TMP/prompt.txt'"
check "tokenize MODEL.bin TEXT = tokenize -m MODEL.bin TEXT" same "$MAMBA tokenize $TMP/model.bin 'Once upon'" "$MAMBA tokenize -m $TMP/model.bin 'Once upon'"
check "perplexity MODEL.bin FILE = perplexity -m MODEL.bin FILE" same "$MAMBA perplexity $TMP/model.bin --max-tokens 50 $TMP/prompt.txt" "$MAMBA perplexity -m $TMP/model.bin --max-tokens 50 $TMP/prompt.txt"
expect_error "a mistyped MODEL.bin first is named, not prompted" "cannot open model $TMP/modle.bin" $MAMBA $TMP/modle.bin -n 3 'Once upon'
expect_error "a checkpoint first and -m: two models" "two models" $MAMBA -m $M $TMP/model.bin -n 3
check "bench MODEL.bin: that model" bash -c "$MAMBA bench $TMP/model.bin --device cpu -n 4 --prompt-len 2 | grep -q '^model: $TMP/model.bin'"

# ---- progress: on a terminal, and only there ----
shows_progress() {   # shows_progress WHAT CMD: CMD's output on a pseudo-terminal has "WHAT: n/m"
    local what=$1 cmd=$2
    script -qec "$cmd" /dev/null </dev/null | tr '\r' '\n' >"$TMP/p.txt"
    grep -aEq "$what: [0-9]+/[0-9]+ " "$TMP/p.txt" || { tail -c 300 "$TMP/p.txt"; return 1; }
}
no_progress() {   # no_progress CMD: CMD's stderr, a file, has no progress line
    bash -c "$1" 2>"$TMP/np.err" >/dev/null </dev/null || return 1
    ! grep -q $'\r' "$TMP/np.err" || { cat -v "$TMP/np.err" | head -c 300; return 1; }
}
steps=$((sanitized ? 60 : 600))
check "bench: progress on a terminal" shows_progress "bench: decode" "$MAMBA bench -m $M --device cpu -n $steps"
check "bench: none when stderr is a file" no_progress "$MAMBA bench -m $M --device cpu -n $steps"
long_ids=$(seq -s, 1 600)   # ten chunks of the CPU prompt pass, the progress drawn between them
check "a long prompt: progress on a terminal" shows_progress "prompt" "$MAMBA -m $M --device cpu --prompt-ids $long_ids -n 1 --print-ids"
check "a long prompt: none when stderr is a file" no_progress "$MAMBA -m $M --device cpu --prompt-ids $long_ids -n 1 --print-ids"
head -c $((sanitized ? 400 : 4000)) ../shared/data/classics/$(ls ../shared/data/classics | head -1) >$TMP/text.txt 2>/dev/null || seq 1 2000 >$TMP/text.txt
check "perplexity: progress on a terminal" shows_progress "perplexity" "$MAMBA perplexity -m $M --device cpu $TMP/text.txt"
if [ "$sanitized" = 0 ]; then
    check "init: progress on a terminal" shows_progress "init" "$MAMBA init --shape 130m $TMP/130m.bin"
    rm -f $TMP/130m.bin
    # a Hugging Face folder of a 130m-wide model with zero weights, big enough to take a while
    python3 tests/make_zero_hf.py $TMP/zero-hf
    check "convert: progress on a terminal" shows_progress "convert" "$MAMBA convert $TMP/zero-hf $TMP/zero.bin --dtype f32"
    check "convert: none when stderr is a file" no_progress "$MAMBA convert $TMP/zero-hf $TMP/zero2.bin --dtype f32"
    rm -rf $TMP/zero-hf $TMP/zero.bin $TMP/zero2.bin
fi

# ---- checkpoint format: version 2 carries the architecture; version 1 files still load ----
$MAMBA convert $F/tiny/hf $TMP/v2.bin --dtype f32 2>/dev/null
check "a new checkpoint is version 2, Mamba-1" bash -c "$MAMBA info $TMP/v2.bin | grep -qx 'format_version: 2' && $MAMBA info $TMP/v2.bin | grep -qx 'arch: mamba1'"
patch_u32() {   # patch_u32 FILE OFFSET VALUE: a little-endian u32 at OFFSET
    printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($3 & 255)) $(($3 >> 8 & 255)) $(($3 >> 16 & 255)) $(($3 >> 24 & 255)))" |
        dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
cp $TMP/v2.bin $TMP/v1.bin && patch_u32 $TMP/v1.bin 8 1 && patch_u32 $TMP/v1.bin 112 0
check "a version-1 file loads, as Mamba-1" bash -c "$MAMBA info $TMP/v1.bin | grep -qx 'format_version: 1' && $MAMBA info $TMP/v1.bin | grep -qx 'arch: mamba1'"
check "a version-1 file gives the same tokens as version 2" same "$MAMBA -m $TMP/v1.bin $ids -n 10 -t 0" "$MAMBA -m $TMP/v2.bin $ids -n 10 -t 0"
cp $TMP/v2.bin $TMP/arch.bin && patch_u32 $TMP/arch.bin 112 99
expect_error "an unknown architecture is refused by number" "unknown architecture 99" $MAMBA info $TMP/arch.bin
cp $TMP/v2.bin $TMP/v3.bin && patch_u32 $TMP/v3.bin 8 3
expect_error "a later format version is refused" "format version 3; this mamba reads versions 1 to 2" $MAMBA info $TMP/v3.bin

# ---- the build: nvcc through CUDA_HOME, else CPU-only with a notice ----
mkdir -p $TMP/cuda/bin $TMP/nocuda && printf '#!/bin/sh\nexit 1\n' >$TMP/cuda/bin/nvcc && chmod +x $TMP/cuda/bin/nvcc
path_without_nvcc=$(echo "$PATH" | tr ':' '\n' | while read -r d; do [ -x "$d/nvcc" ] || echo "$d"; done | paste -sd:)
check "CUDA_HOME with bin/nvcc, none on the PATH: that nvcc builds the kernels" bash -c "PATH='$path_without_nvcc' env -u MAKELEVEL -u MAKEFLAGS -u MFLAGS make -n -B CUDA_HOME=$TMP/cuda build/kernels.o | grep -q '^$TMP/cuda/bin/nvcc '"
check "CUDA_HOME without nvcc, none on the PATH: CPU-only, with a notice" bash -c "PATH='$path_without_nvcc' env -u MAKELEVEL -u MAKEFLAGS -u MFLAGS make -n -B CUDA_HOME=$TMP/nocuda mamba >$TMP/mk.txt 2>&1; grep -q 'nvcc not found' $TMP/mk.txt && ! grep -q 'MAMBA_CUDA' $TMP/mk.txt"
