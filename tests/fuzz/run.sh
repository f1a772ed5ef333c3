#!/bin/sh
# Build the libFuzzer harnesses of tests/fuzz/ with clang (ASan + UBSan) and
# run each for a bounded time. Fails on any crash, leak, sanitizer report or
# timeout, and on any saved reproducer in tests/fuzz/crashes/ that still fails.
#
#   sh tests/fuzz/run.sh BUILD_DIR [SECONDS]   (SECONDS per harness, default 60)
#
# `make fuzz` runs it into build-fuzz/ for FUZZ_SECONDS; ctest's `fuzz` test
# runs it for 20 seconds into the test build. The corpus grows in
# BUILD_DIR/corpus/<harness>/ from one run to the next (the harness writes
# its own seeds there); what fails is written to BUILD_DIR/artifacts/.
# FUZZ_CC names the compiler (default clang); FUZZ_ARGS adds libFuzzer flags.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: run.sh BUILD_DIR [SECONDS]}
seconds=${2:-60}
cc=${FUZZ_CC:-clang}
jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}

if ! command -v "$cc" >/dev/null 2>&1; then
    echo "run.sh: $cc not found: 'make deps' (or 'apt-get install clang') installs it" >&2
    exit 1
fi
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }\n' \
    > "$probe/probe.c"
if ! "$cc" -fsanitize=fuzzer,address,undefined "$probe/probe.c" -o "$probe/probe" \
        > "$probe/log" 2>&1; then
    cat "$probe/log" >&2
    echo "run.sh: $cc cannot link libFuzzer (Debian: the libclang-rt-<version>-dev package)" >&2
    exit 1
fi

mkdir -p "$build"
build=$(cd "$build" && pwd)
cmake -S "$here" -B "$build" -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    > "$build/configure.log" || { cat "$build/configure.log" >&2; exit 1; }
cmake --build "$build" -j "$jobs"

# Sanitizer reports must end the run (and count as failures).
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export ASAN_OPTIONS UBSAN_OPTIONS

status=0
for exe in "$build"/fuzz_*; do
    [ -x "$exe" ] || continue
    name=$(basename "$exe")

    # Saved reproducers first: each must now pass.
    for f in "$here"/crashes/*; do
        [ -f "$f" ] || continue
        if ! "$exe" "$f" > "$build/replay.log" 2>&1; then
            cat "$build/replay.log" >&2
            echo "run.sh: $name still fails on $f; reproduce: $exe $f" >&2
            status=1
        fi
    done

    corpus=$build/corpus/$name
    mkdir -p "$corpus" "$build/artifacts"
    TPIO_FUZZ_SEEDS=$corpus "$exe" > /dev/null 2>&1
    extra=
    [ -d "$here/corpus/$name" ] && extra=$here/corpus/$name
    echo "run.sh: $name for ${seconds}s (corpus $corpus)"
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
    if ! "$exe" -max_len=4096 -timeout=10 -max_total_time="$seconds" -print_final_stats=1 \
            -artifact_prefix="$build/artifacts/$name-" ${FUZZ_ARGS:-} "$corpus" $extra; then
        echo "run.sh: $name failed; what failed is in $build/artifacts/;" \
             "reproduce: $exe $build/artifacts/$name-<file>" >&2
        status=1
    fi
done
exit $status
