#!/bin/sh
# Run the specification's examples end to end: sh examples/run-examples.sh DIR
#
# DIR holds the built example programs (build/examples for `make run`).
# TPIO_PORT overrides the TCP port (default 8888, as in the specification),
# TPIO_UDP_PORT the UDP port (default 9999, likewise), TPIO_TLS_PORT the TLS
# echo pair's port (default 8443). The TLS pair uses a throw-away CA and a
# server certificate (for localhost and 127.0.0.1) made here with the
# openssl command into the temporary directory, removed at exit.
# Then the specification's six Python examples (examples/python/*.py, its
# code unchanged) run with /usr/bin/python3 on tpio's event loop, installed
# through its policy (tpio.install(), tpio from DIR/../python), each compared
# with what it prints on stock asyncio: examples/python/run.py. They use the
# ports 8888 (TCP) and 9999 (UDP) as written; TPIO_PORT and TPIO_UDP_PORT do
# not reach them. TPIO_PY_LOOP=uvloop checks uvloop instead, a stand-in;
# TPIO_SPEC=.../transports-and-protocols.txt first checks that the .py files
# are still the specification's code.
# Each program's output is printed under a "== name ==" header; the script
# exits non-zero if any step fails.
#
# Adding an example:
#   - a standalone program:   run_example NAME [ARGS...]
#   - a server and a client:  start_server NAME READY_TEXT [ARGS...] &&
#                             run_example CLIENT [ARGS...]
#                             stop_server
#     (READY_TEXT: what the server prints once it is ready, e.g. "Serving on")
#   - a Python example: examples/python/ (run.py's SCENARIOS, extract.py)
set -u

DIR=${1:-}
if [ -z "$DIR" ] || [ ! -d "$DIR" ]; then
    echo "usage: $0 DIR   (DIR: the directory of the built examples)" >&2
    exit 2
fi
BUILD=$(dirname "$DIR")   # the build directory: DIR is BUILD/examples
HERE=$(dirname "$0")
PY_LOOP=${TPIO_PY_LOOP:-tpio}
PORT=${TPIO_PORT:-8888}
UDP_PORT=${TPIO_UDP_PORT:-9999}
TLS_PORT=${TPIO_TLS_PORT:-8443}
HOST=127.0.0.1
READY_TIMEOUT=5          # seconds to wait for a server to be ready

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tpio-examples.XXXXXX") || exit 1
FAILED=0
SERVER_PID=
SERVER_NAME=
SERVER_OUT=

cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    echo "FAILED: $*" >&2
    FAILED=1
}

# A short pause for polling; falls back to 1 s where sleep takes integers only.
nap() {
    sleep 0.1 2>/dev/null || sleep 1
}

# run_example NAME [ARGS...]: run to completion, print its output, check status.
run_example() {
    name=$1
    shift
    echo "== $name =="
    "$DIR/$name" "$@" >"$WORK/$name.out" 2>&1
    status=$?
    cat "$WORK/$name.out"
    [ "$status" -eq 0 ] || fail "$name exited with status $status"
    return "$status"
}

# start_server NAME READY_TEXT [ARGS...]: start NAME in the background and wait
# (at most READY_TIMEOUT seconds) until its output contains READY_TEXT.
start_server() {
    SERVER_NAME=$1
    ready=$2
    shift 2
    SERVER_OUT=$WORK/$SERVER_NAME.out
    : >"$SERVER_OUT"
    "$DIR/$SERVER_NAME" "$@" >"$SERVER_OUT" 2>&1 &
    SERVER_PID=$!
    waited=0
    while ! grep -q "$ready" "$SERVER_OUT"; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            wait "$SERVER_PID"
            status=$?
            SERVER_PID=
            echo "== $SERVER_NAME =="
            cat "$SERVER_OUT"
            fail "$SERVER_NAME exited with status $status before printing '$ready'"
            return 1
        fi
        if [ "$waited" -ge "$((READY_TIMEOUT * 10))" ]; then
            kill "$SERVER_PID" 2>/dev/null
            wait "$SERVER_PID" 2>/dev/null
            SERVER_PID=
            echo "== $SERVER_NAME =="
            cat "$SERVER_OUT"
            fail "$SERVER_NAME did not print '$ready' within ${READY_TIMEOUT}s"
            return 1
        fi
        nap
        waited=$((waited + 1))
    done
    return 0
}

# stop_server: SIGTERM the running server, wait for it, print its output; it
# must exit with status 0.
stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID"
    status=$?
    SERVER_PID=
    echo "== $SERVER_NAME =="
    cat "$SERVER_OUT"
    if [ "$status" -ne 0 ]; then
        fail "$SERVER_NAME exited with status $status after SIGTERM"
        return 1
    fi
    return 0
}

# make_certs: a throw-away CA (self-signed, CA:TRUE, keyCertSign) and a server
# certificate it signs (not a CA; subjectAltName DNS:localhost, IP:127.0.0.1),
# EC P-256 keys, valid for two days: $WORK/ca.pem, $WORK/server.pem and
# $WORK/server-key.pem. openssl's chatter goes to $WORK/openssl.log, shown
# if a step fails.
make_certs() {
    if ! command -v openssl >/dev/null 2>&1; then
        fail "the openssl command is needed for the TLS examples (Debian: apt-get install openssl)"
        return 1
    fi
    printf '%s\n' 'basicConstraints=critical,CA:FALSE' \
        'keyUsage=critical,digitalSignature' 'extendedKeyUsage=serverAuth' \
        'subjectAltName=DNS:localhost,IP:127.0.0.1' >"$WORK/server.ext"
    if openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout "$WORK/ca-key.pem" -out "$WORK/ca.pem" -days 2 \
            -subj "/CN=tpio examples throw-away CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" \
            >"$WORK/openssl.log" 2>&1 &&
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout "$WORK/server-key.pem" -out "$WORK/server.csr" \
            -subj "/CN=localhost" >>"$WORK/openssl.log" 2>&1 &&
        openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" \
            -CAkey "$WORK/ca-key.pem" -days 2 -extfile "$WORK/server.ext" \
            -out "$WORK/server.pem" >>"$WORK/openssl.log" 2>&1; then
        return 0
    fi
    cat "$WORK/openssl.log" >&2
    fail "could not make the certificates for the TLS examples"
    return 1
}

for prog in tcp_echo_server tcp_echo_client udp_echo_server udp_echo_client \
            tls_echo_server tls_echo_client existing_socket unix_echo \
            subprocess_date; do
    if [ ! -x "$DIR/$prog" ]; then
        echo "FAILED: $DIR/$prog not found (build the examples first)" >&2
        exit 1
    fi
done

# TCP Echo Server + TCP Echo Client
if start_server tcp_echo_server "Serving on" "$HOST" "$PORT"; then
    run_example tcp_echo_client "$HOST" "$PORT"
    stop_server
fi

# The TCP echo server and client over TLS; the client verifies the server
# against the throw-away CA
if make_certs &&
    start_server tls_echo_server "Serving on" "$HOST" "$TLS_PORT" \
        --cert "$WORK/server.pem" --key "$WORK/server-key.pem"; then
    run_example tls_echo_client "$HOST" "$TLS_PORT" --cafile "$WORK/ca.pem"
    stop_server
fi

# UDP Echo Server + UDP Echo Client
if start_server udp_echo_server "Starting UDP server" "$HOST" "$UDP_PORT"; then
    run_example udp_echo_client "$HOST" "$UDP_PORT"
    stop_server
fi

# Connecting Existing Sockets
run_example existing_socket

# The TCP echo server and client over a Unix socket, in one program
run_example unix_echo

# loop.subprocess_exec() and SubprocessProtocol
run_example subprocess_date

# The six Python examples, on tpio's loop and on stock asyncio, compared
set -- --loop "$PY_LOOP" --build "$BUILD"
if [ -n "${TPIO_SPEC:-}" ]; then
    set -- "$@" --spec "$TPIO_SPEC"
fi
"${TPIO_PYTHON:-/usr/bin/python3}" "$HERE/python/run.py" "$@" ||
    fail "the Python examples (examples/python/run.py)"

if [ "$FAILED" -ne 0 ]; then
    echo "Some examples FAILED" >&2
    exit 1
fi
echo "All examples passed"
