#!/usr/bin/env bash
# run.sh: builds mamba when needed (first installing the missing Debian packages a build needs),
# then runs the default model on the arguments, e.g. ./run.sh "Once upon a time"  or
#   echo "Call me" | ./run.sh
# Extra options go through to mamba: ./run.sh -n 100 --seed 1 "The whale"
set -euo pipefail
cd "$(dirname "$0")"
# make decides whether ./mamba is out of date (`make -q`); without make, the build packages
# (make among them) are installed first. Only what building and running needs is installed
# here (tests/deps.sh build); `make test` installs the test tools.
if ! command -v make >/dev/null || ! make -q mamba >/dev/null 2>&1; then
    bash tests/deps.sh build >&2
    make -s mamba >&2
fi
exec ./mamba -m weights/model.bin "$@"
