#!/usr/bin/env bash
# tests/deps.sh [build|test]: installs the Debian packages that are missing (apt-get, through
# sudo when not root) for one of two sets:
#   build  what compiling and running ./mamba needs: cc, c++, make and the -dev libraries
#          (cJSON, SentencePiece, utf8proc, PCRE2, libzip, libedit). ./run.sh installs this set.
#   test   (the default) build's set plus what only the tests use: python3, tmux, the SentencePiece
#          command-line tools (spm_encode, tests/test_default_model.sh) and clang with its
#          sanitizer and libFuzzer runtimes (make fuzz). `make test` installs this set.
set -eu
mode=${1:-test}
case $mode in build|test) ;; *) echo "usage: tests/deps.sh [build|test]" >&2; exit 2;; esac
need=()
have_header() { [ -e "/usr/include/$1" ]; }
have_header cjson/cJSON.h || need+=(libcjson-dev)
have_header sentencepiece_processor.h || need+=(libsentencepiece-dev)
have_header utf8proc.h || need+=(libutf8proc-dev)
have_header pcre2.h || need+=(libpcre2-dev)
have_header zip.h || need+=(libzip-dev)
have_header editline/readline.h || need+=(libedit-dev)
command -v cc >/dev/null || need+=(gcc)
command -v c++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
if [ "$mode" = test ]; then
    command -v spm_encode >/dev/null || need+=(sentencepiece)
    command -v python3 >/dev/null || need+=(python3)
    command -v tmux >/dev/null || need+=(tmux)   # mamba chat on a terminal (tests/test_state.sh)
    # the libFuzzer targets (make fuzz): clang with its sanitizer and libFuzzer runtimes (the
    # packages that go with the release's default clang)
    if command -v clang >/dev/null && command -v clang++ >/dev/null; then
        [ -e "$(clang -print-file-name=libclang_rt.fuzzer-x86_64.a)" ] || need+=(libclang-rt-dev)
    else
        need+=(clang libclang-rt-dev)
    fi
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    SUDO=; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
