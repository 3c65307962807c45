#!/usr/bin/env bash
# run.sh: builds mamba when needed (installing missing Debian packages), then runs the default
# model on the arguments, e.g. ./run.sh "Once upon a time"  or  echo "Call me" | ./run.sh
# Extra options go through to mamba: ./run.sh -n 100 --seed 1 "The whale"
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x ./mamba ] || [ -n "$(find mamba.c tokenizer.c sp_wrapper.cc kernels.cu model.h tokenizer.h -newer ./mamba 2>/dev/null)" ]; then
    bash tests/deps.sh >&2
    make -s mamba >&2
fi
exec ./mamba -m weights/model.bin "$@"
