#!/bin/sh
# Packaging check: build the source tree in release mode, install it into a
# prefix not known when it was configured (cmake --install --prefix), move
# the installed tree elsewhere, then build and run two tiny programs against
# the moved copy only — one with pkg-config, one with CMake's
# find_package(tpio) (linked to tpio::tpio and to tpio::tpio_static). Both
# must find everything from where the files are: nothing may point at the
# configure-time prefix (/usr/local) or the install-time one.
#
# Usage: sh tests/install_check.sh SOURCE_DIR      (ctest passes it)
# Exits non-zero on any failure; always removes its temporary directory.
set -eu

SRC=${1:?usage: $0 SOURCE_DIR}
SRC=$(cd "$SRC" && pwd)
CC=${CC:-cc}
JOBS=$(nproc 2>/dev/null || echo 2)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tpio-install.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
PREFIX=$TMP/prefix
MOVED=$TMP/moved

# The check builds without sanitizers: do not let the test run's settings leak in.
unset ASAN_OPTIONS UBSAN_OPTIONS CFLAGS LDFLAGS 2>/dev/null || true

step() { echo "-- install_check: $*"; }
die() { echo "install_check: FAILED: $*" >&2; exit 1; }

step "configure and build $SRC (release)"
cmake -S "$SRC" -B "$TMP/b" -DCMAKE_BUILD_TYPE=Release \
      -DTPIO_BUILD_TESTS=OFF -DTPIO_BUILD_EXAMPLES=OFF -DTPIO_SANITIZE=OFF \
      >"$TMP/configure.log" 2>&1 \
    || { cat "$TMP/configure.log"; die "cmake configure"; }
cmake --build "$TMP/b" -j "$JOBS" >"$TMP/build.log" 2>&1 \
    || { cat "$TMP/build.log"; die "cmake build"; }

step "install into $PREFIX, then move it to $MOVED"
cmake --install "$TMP/b" --prefix "$PREFIX" >"$TMP/install.log" 2>&1 \
    || { cat "$TMP/install.log"; die "cmake --install"; }
mv "$PREFIX" "$MOVED"
if grep -rqs -e "$PREFIX" -e /usr/local "$MOVED"; then
    grep -rls -e "$PREFIX" -e /usr/local "$MOVED" >&2
    die "installed files name an install or configure-time prefix"
fi
PREFIX=$MOVED

# GNUInstallDirs picks lib, lib64 or lib/<multiarch>: find where it went.
PCFILE=$(find "$PREFIX" -name tpio.pc -path '*/pkgconfig/*' | head -n 1)
[ -n "$PCFILE" ] || die "tpio.pc was not installed"
PCDIR=$(dirname "$PCFILE")
LIBDIR=$(dirname "$PCDIR")
[ -f "$PREFIX/include/tpio.h" ] || die "tpio.h was not installed in $PREFIX/include"
[ -e "$LIBDIR/libtpio.so" ] || die "libtpio.so was not installed in $LIBDIR"
[ -f "$LIBDIR/libtpio.a" ] || die "libtpio.a was not installed in $LIBDIR"
[ -f "$LIBDIR/cmake/tpio/tpioConfig.cmake" ] || die "tpioConfig.cmake was not installed"
step "installed: $(cd "$PREFIX" && find . -type f -o -type l | sort | tr '\n' ' ')"

# A tiny program: a loop, a callback that stops it, the error table, and the
# version the header and the library agree on.
mkdir -p "$TMP/app"
cat >"$TMP/app/app.c" <<'EOF'
#include <tpio.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

static void stop(tpio_loop_t *loop, void *arg)
{
    *(int *)arg = 1;
    tpio_loop_stop(loop);
}

int main(void)
{
    tpio_loop_t *loop;
    int ran = 0;
    if (tpio_loop_new(&loop, NULL) != 0)
        return 1;
    if (tpio_loop_call_soon(loop, stop, &ran, NULL) != 0 || tpio_loop_run_forever(loop) != 0)
        return 2;
    if (tpio_loop_close(loop) != 0 || !ran)
        return 3;
    if (strcmp(tpio_err_name(-ECONNRESET), "ECONNRESET") != 0)
        return 4;
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", TPIO_VERSION_MAJOR, TPIO_VERSION_MINOR,
             TPIO_VERSION_PATCH);
    if (strcmp(tpio_version(), want) != 0)
        return 5;
    printf("tpio %s ok\n", tpio_version());
    return 0;
}
EOF

run() {
    out=$(LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@") \
        || die "$* exited with status $?"
    echo "$out"
    case $out in
        "tpio "*" ok") ;;
        *) die "$*: unexpected output '$out'" ;;
    esac
}

step "pkg-config: $(PKG_CONFIG_PATH=$PCDIR pkg-config --cflags --libs tpio)"
case $(PKG_CONFIG_PATH=$PCDIR pkg-config --variable=includedir tpio) in
    "$PREFIX"/*) ;;
    *) die "pkg-config's includedir is not under $PREFIX" ;;
esac
PKG_CONFIG_PATH=$PCDIR pkg-config --exists tpio || die "pkg-config cannot find tpio"
# shellcheck disable=SC2046  # word splitting of the flags is intended
"$CC" -Wall -Wextra -Werror -o "$TMP/app/app_pc" "$TMP/app/app.c" \
    $(PKG_CONFIG_PATH=$PCDIR pkg-config --cflags --libs tpio) \
    || die "compiling with pkg-config flags"
run "$TMP/app/app_pc"

step "CMake find_package(tpio)"
cat >"$TMP/app/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.18)
project(tpio_install_check LANGUAGES C)
find_package(tpio 0.3 REQUIRED)
add_executable(app_cmake app.c)
target_link_libraries(app_cmake PRIVATE tpio::tpio)
add_executable(app_cmake_static app.c)
target_link_libraries(app_cmake_static PRIVATE tpio::tpio_static)
EOF
cmake -S "$TMP/app" -B "$TMP/app/b" -DCMAKE_PREFIX_PATH="$PREFIX" \
      -DCMAKE_BUILD_TYPE=Release >"$TMP/app-configure.log" 2>&1 \
    || { cat "$TMP/app-configure.log"; die "find_package(tpio) project configure"; }
grep -q "tpio_DIR:PATH=$PREFIX" "$TMP/app/b/CMakeCache.txt" \
    || die "find_package(tpio) did not use the moved package"
cmake --build "$TMP/app/b" >"$TMP/app-build.log" 2>&1 \
    || { cat "$TMP/app-build.log"; die "find_package(tpio) project build"; }
run "$TMP/app/b/app_cmake"
run "$TMP/app/b/app_cmake_static"

# The shared program must really use the installed library, not a build tree.
if command -v ldd >/dev/null 2>&1; then
    LD_LIBRARY_PATH="$LIBDIR" ldd "$TMP/app/app_pc" | grep -q "$LIBDIR/libtpio.so" \
        || die "app_pc is not linked to $LIBDIR/libtpio.so"
fi

step "a build without OpenSSL and liburing (-DTPIO_TLS=OFF -DTPIO_URING=OFF): the TLS calls and the io_uring backend say -ENOTSUP"
cmake -S "$SRC" -B "$TMP/notls" -DCMAKE_BUILD_TYPE=Release -DTPIO_TLS=OFF -DTPIO_URING=OFF \
      -DTPIO_BUILD_TESTS=OFF -DTPIO_BUILD_EXAMPLES=OFF -DTPIO_SANITIZE=OFF \
      >"$TMP/notls-configure.log" 2>&1 \
    || { cat "$TMP/notls-configure.log"; die "cmake configure (TPIO_TLS=OFF)"; }
cmake --build "$TMP/notls" -j "$JOBS" --target tpio_static >"$TMP/notls-build.log" 2>&1 \
    || { cat "$TMP/notls-build.log"; die "cmake build (TPIO_TLS=OFF)"; }
cat >"$TMP/app/notls.c" <<'EOF'
#include <tpio.h>
#include <errno.h>
#include <stdio.h>
static tpio_protocol_t *factory(void *arg) { (void)arg; return NULL; }
int main(void)
{
    tpio_loop_t *loop;
    struct ssl_ctx_st *ctx = (struct ssl_ctx_st *)1; /* never used */
    tpio_tls_opts_t tls = TPIO_OPTS(tpio_tls_opts_t, .ctx = ctx);
    tpio_server_opts_t so = TPIO_OPTS(tpio_server_opts_t, .host = "127.0.0.1", .tls = &tls);
    tpio_server_t *s;
    tpio_loop_opts_t lo = TPIO_OPTS(tpio_loop_opts_t, .backend = TPIO_BACKEND_IO_URING);
    tpio_loop_t *ring;
    if (tpio_loop_new(&ring, &lo) != -ENOTSUP)
        return 1;
    if (tpio_loop_new(&loop, NULL) != 0 ||
        tpio_loop_create_server(loop, factory, NULL, &so, &s) != -ENOTSUP ||
        tpio_tls_client_context(&ctx, NULL) != -ENOTSUP ||
        tpio_tls_last_error()[0] != 0 || tpio_loop_close(loop) != 0)
        return 1;
    printf("notls ok\n");
    return 0;
}
EOF
"$CC" -Wall -Wextra -Werror -I"$SRC/include" -o "$TMP/app/notls" "$TMP/app/notls.c" \
    "$TMP/notls/libtpio.a" -lpthread || die "compiling against the build without OpenSSL"
[ "$("$TMP/app/notls")" = "notls ok" ] || die "the build without OpenSSL misbehaves"
if nm "$TMP/notls/libtpio.a" | grep -q " U SSL_"; then
    die "the build without OpenSSL still needs OpenSSL"
fi
if nm "$TMP/notls/libtpio.a" | grep -q " U io_uring_"; then
    die "the build without liburing still needs liburing"
fi

step "passed"
