#!/usr/bin/env bash
# tests/deps.sh: installs the Debian packages the build and the tests need, when missing.
set -eu
need=()
have_header() { [ -e "/usr/include/$1" ]; }
have_header cjson/cJSON.h || need+=(libcjson-dev)
have_header sentencepiece_processor.h || need+=(libsentencepiece-dev)
have_header utf8proc.h || need+=(libutf8proc-dev)
have_header pcre2.h || need+=(libpcre2-dev)
command -v spm_encode >/dev/null || need+=(sentencepiece)
command -v cc >/dev/null || need+=(gcc)
command -v c++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
command -v python3 >/dev/null || need+=(python3)
# the libFuzzer targets (make fuzz): clang with its sanitizer and libFuzzer runtimes (the
# packages that go with the release's default clang)
if command -v clang >/dev/null && command -v clang++ >/dev/null; then
    [ -e "$(clang -print-file-name=libclang_rt.fuzzer-x86_64.a)" ] || need+=(libclang-rt-dev)
else
    need+=(clang libclang-rt-dev)
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    SUDO=; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
