#!/usr/bin/env python3
"""Benchmark driver: echo servers on tpio (Protocol, BufferedProtocol; on its
epoll backend and on its io_uring one), libuv, libevent, a bare epoll loop
and a bare io_uring loop, measured by bench/loadgen; the same over TLS 1.3
(tpio, libevent's bufferevent_openssl, epoll with OpenSSL); and the same
echo in Python (bench/servers/py_echo.py) on stock asyncio, uvloop and
tpio's event loop (on both backends).

    python3 bench/run.py [--quick] [--build build-bench] [--out bench/results]
                         [--doc docs/performance.md] [--skip tls,python,...]

What it does, in order (see docs/performance.md for the method):
 1. throughput: every server is started once, pinned to one core; the load
    generator, pinned to another, runs the matrix message size x connections
    (ping-pong) plus bulk streaming. Each configuration is one load generator
    run over all the servers, which take turns in short slices (the order
    rotating every round); every round is a repetition, and figures and
    ratios are medians over the rounds.
 2. costs that do not depend on a noisy machine, each as the difference of two
    run lengths so that start-up and teardown cancel out:
    user-space instructions per round trip (valgrind --tool=callgrind) and
    syscalls per round trip (strace -c -f) in the server process.
 3. resident memory per idle connection: VmRSS of a fresh server before and
    after N idle connections are opened, divided by N.
 4. TLS: a throw-away CA and server certificate (EC P-256, made with the
    openssl command into the run's temporary directory), then 1-3 again for
    the TLS servers (TLS 1.3, TLS_AES_128_GCM_SHA256): ping-pong 1 KiB x 10
    and bulk, interleaved in slices as above; instructions per round trip
    split by object into OpenSSL's (libssl, libcrypto and the C library
    functions they call) and the rest; syscalls; memory per idle TLS
    connection (handshake done, one byte echoed).
 5. Python: the Python servers (three loops x Protocol/BufferedProtocol, and
    tpio's loop with a Protocol on its io_uring backend too), all on the
    interpreter the extension was built for, in their own load
    generator run per configuration (the same matrix, interleaved in slices
    as in 1), and their instructions and syscalls per round trip at
    1 KiB x 10 as in 2 (shorter runs: Python under valgrind is slow).
 6. writes CSVs, a markdown summary, PNG charts (gnuplot) into --out, and with
    --doc replaces the generated part of docs/performance.md.

The io_uring rows (the yardstick echo_uring, tpio's servers with
TPIO_BACKEND=io_uring) are tried first with a short echo; where the machine
refuses io_uring, or echo_uring was not built (no liburing), they are left
out and the summary says why.

Only the Python standard library; taskset, valgrind, strace, gnuplot, openssl
and python3-uvloop from Debian. Every subprocess has a timeout; servers are
stopped by their pid.
"""
import argparse
import csv
import datetime
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

SERVERS = [  # (name, binary); each io_uring row beside its epoll one
    ("epoll", "echo_epoll"),
    ("uring", "echo_uring"),
    ("tpio", "echo_tpio"),
    ("tpio-uring", "echo_tpio"),
    ("tpio-buffered", "echo_tpio_buffered"),
    ("tpio-uring-buffered", "echo_tpio_buffered"),
    ("libuv", "echo_libuv"),
    ("libevent", "echo_libevent"),
]
TPIO_SERVERS = ("tpio", "tpio-buffered")
YARDSTICK, REFERENCE = "epoll", "libuv"
# io_uring: its own yardstick, and tpio's servers on tpio's io_uring backend,
# each held to the same server on epoll. The rows go when the machine
# refuses io_uring (see uring_probe).
URING_YARDSTICK = "uring"
URING_SERVERS = {"tpio-uring": "tpio", "tpio-uring-buffered": "tpio-buffered"}
# What a server's environment adds to the caller's (less its TPIO_BACKEND,
# so that an unmarked tpio row is always tpio's default backend, epoll).
SERVER_ENV = {"tpio-uring": {"TPIO_BACKEND": "io_uring"},
              "tpio-uring-buffered": {"TPIO_BACKEND": "io_uring"},
              "py-tpio-uring": {"TPIO_BACKEND": "io_uring"}}

# TLS: the same names for the servers' kinds, their own configurations
# ("TLS ..."), their own yardstick (epoll with OpenSSL on the socket) and
# reference (libevent's bufferevent_openssl).
TLS_SERVERS = [
    ("epoll", "echo_tls_epoll"),
    ("tpio", "echo_tls_tpio"),
    ("tpio-buffered", "echo_tls_tpio_buffered"),
    ("libevent", "echo_tls_libevent"),
]
TLS_YARDSTICK, TLS_REFERENCE = "epoll", "libevent"
TLS_MATRIX = [("pingpong", 1024, 10), ("bulk", 65536, 1)]  # quick and full alike
TLS_MEMORY_SERVERS = ("epoll", "tpio")
TLS_BARS = dict(vs_yardstick=0.95, vs_reference=1.0, own_vs_plain=2.0)
OPENSSL_OBJECTS = ("libssl.so", "libcrypto.so")  # basename prefixes
# Objects whose code runs on behalf of its caller: what OpenSSL calls in
# them (malloc and free of its record buffers, memcpy, strcmp, locks) is
# OpenSSL's. "???" is where callgrind puts the PLT stubs through which
# libcrypto calls the C library.
SYSTEM_OBJECTS = ("libc.so", "ld-linux", "libm.so", "vgpreload_", "???")

# The Python servers: (name, --loop, --proto) of bench/servers/py_echo.py.
PY_SERVERS = [
    ("py-asyncio", "asyncio", "protocol"),
    ("py-asyncio-buffered", "asyncio", "buffered"),
    ("py-uvloop", "uvloop", "protocol"),
    ("py-uvloop-buffered", "uvloop", "buffered"),
    ("py-tpio", "tpio", "protocol"),
    ("py-tpio-uring", "tpio", "protocol"),  # TPIO_BACKEND=io_uring (SERVER_ENV)
    ("py-tpio-buffered", "tpio", "buffered"),
]
# tpio's loop is held to uvloop's with the same kind of protocol.
PY_PAIRS = [("py-tpio", "py-uvloop"), ("py-tpio-buffered", "py-uvloop-buffered")]
PY_BARS = dict(rtps=1.0, cpu=0.7, instructions=0.5)
PY_ECHO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "servers", "py_echo.py")


def py_ref(name):
    """The uvloop server of the same kind of protocol."""
    return "py-uvloop-buffered" if name.endswith("-buffered") else "py-uvloop"


# Throughput runs load every server in turn within one load generator run, in
# slices (see bench/loadgen.c): `seconds` of slices per server and
# configuration, after `warmup` seconds of uncounted ones.
FULL = dict(
    slice=0.05, warmup=0.5, seconds=4.0, bulk_slice=0.1, bulk_warmup=0.4, bulk_seconds=8.0,
    sizes=[64, 1024, 16384], conns=[1, 10, 100],
    count_cfgs=[(1024, 10), (1024, 1)], count_rounds=(2000, 12000),
    idle_conns=10000, tls_count_rounds=(2000, 12000), tls_idle_conns=10000,
    py_count_rounds=(2000, 6000),
)
QUICK = dict(
    slice=0.05, warmup=0.1, seconds=0.5, bulk_slice=0.2, bulk_warmup=0.2, bulk_seconds=1.0,
    sizes=None, conns=None,  # explicit list below
    count_cfgs=[(1024, 10)], count_rounds=(500, 2500),
    idle_conns=1000, tls_count_rounds=(500, 2500), tls_idle_conns=1000,
    py_count_rounds=(500, 1500),
)
QUICK_MATRIX = [(64, 1), (1024, 10), (16384, 100)]
BAR_CFG = (1024, 10)  # where the instruction, syscall and 0.97x-epoll bars apply

START = time.monotonic()


def log(*a):
    print("[%6.1fs]" % (time.monotonic() - START), *a, flush=True)


def cfg_name(size, conns):
    s = "%d B" % size if size < 1024 else "%d KiB" % (size // 1024)
    return "%s x %d" % (s, conns)


def tls_cfg_name(mode, size, conns):
    return "TLS " + ("bulk" if mode == "bulk" else cfg_name(size, conns))


class Tls:
    """A throw-away CA and a server certificate for 127.0.0.1 (EC P-256:
    cheap handshakes), made with the openssl command in the run's temporary
    directory; the arguments that give them to the servers and loadgen."""

    def __init__(self, tmp):
        d = os.path.join(tmp, "tls")
        os.makedirs(d)
        self.ca, self.cert, self.key = (os.path.join(d, f) for f in
                                        ("ca.pem", "server.pem", "server.key"))
        cakey, csr, ext = (os.path.join(d, f) for f in ("ca.key", "server.csr", "ext.cnf"))
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                    "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
        for cmd in (
            ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", cakey],
            ["req", "-x509", "-new", "-key", cakey, "-subj", "/CN=tpio bench CA", "-days", "2",
             "-out", self.ca],
            ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", self.key],
            ["req", "-new", "-key", self.key, "-subj", "/CN=127.0.0.1", "-out", csr],
            ["x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", cakey, "-CAcreateserial",
             "-days", "2", "-extfile", ext, "-out", self.cert],
        ):
            r = subprocess.run(["openssl"] + cmd, capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                raise RuntimeError("openssl %s failed: %s" % (cmd[0], r.stderr.strip()))
        self.server_args = ["--cert", self.cert, "--key", self.key]
        self.loadgen_args = ["--tls", "--ca", self.ca]


# ---------------------------------------------------------------------------
# processes


class Pinning:
    def __init__(self):
        cpus = sorted(os.sched_getaffinity(0))
        self.ok = len(cpus) >= 2 and shutil.which("taskset") is not None
        self.server_cpu = cpus[-1]
        self.client_cpu = cpus[0]

    def server(self):
        return ["taskset", "-c", str(self.server_cpu)] if self.ok else []

    def client(self):
        return ["taskset", "-c", str(self.client_cpu)] if self.ok else []


class Server:
    """A server process; its first stdout line is the port."""

    def __init__(self, argv, errlog, timeout=30, env=None):
        self.errlog = open(errlog, "ab")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.errlog,
                                     stdin=subprocess.DEVNULL, env=env)
        self.port = None
        line = b""
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("server %s did not print its port" % argv)
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if r:
                c = os.read(self.proc.stdout.fileno(), 1)
                if not c:
                    continue
                line += c
        self.port = int(line.strip())

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError("server did not exit within %ss" % timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.errlog.close()


def py_interpreter(build):
    """The interpreter the extension in <build>/python was built for (CMake's
    choice: Debian's /usr/bin/python3 unless told otherwise); Debian's uvloop
    is for that one too."""
    try:
        with open(os.path.join(build, "CMakeCache.txt")) as f:
            for line in f:
                m = re.match(r"_?Python3_EXECUTABLE:[A-Z]+=(.+)$", line.strip())
                if m and os.access(m.group(1), os.X_OK):
                    return m.group(1)
    except OSError:
        pass
    return "/usr/bin/python3"


def py_env(build):
    """The Python servers' environment. The caller's PYTHON* variables go:
    debug mode, another allocator or a startup file would change what is
    measured. A fixed hash seed keeps the dicts' layout, and so the
    instruction counts, the same from one process to the next."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.path.join(build, "python")
    env["PYTHONHASHSEED"] = "0"
    return env


def server_env(name, base=None):
    """The environment of the server `name`: base (the caller's when None)
    without TPIO_BACKEND, so that a row says which backend it runs on, plus
    what SERVER_ENV gives that server."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if k != "TPIO_BACKEND"}
    env.update(SERVER_ENV.get(name, {}))
    return env


def py_argv(a, loop, kind):
    # -s: no user site-packages, whose uvloop could differ from Debian's.
    return [a.python, "-s", PY_ECHO, "--loop", loop, "--proto", kind]


def py_check(a):
    """Versions of the interpreter, uvloop and tpio's package, or exit if
    either cannot be imported."""
    r = subprocess.run([a.python, "-s", "-c", "import sys, uvloop, tpio; print(sys.version."
                        "split()[0], uvloop.__version__, getattr(tpio, '__version__', '?'))"],
                       env=a.py_env, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        sys.exit("%s cannot import uvloop and tpio (PYTHONPATH=%s): %s\nDebian: python3-uvloop; "
                 "the extension: `make bench-build`; or pass --skip python" % (
                     a.python, a.py_env["PYTHONPATH"], r.stderr.strip().splitlines()[-1:]))
    v = r.stdout.split()
    return dict(python=v[0], uvloop=v[1], tpio_py=v[2])


def cpu_ns(pid):
    """Time the process has run on a CPU (user + kernel), in ns."""
    with open("/proc/%d/schedstat" % pid) as f:
        return int(f.read().split()[0])


def parse_kv(text):
    out = {}
    for tok in text.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


def loadgen(a, pin, port, *args, timeout):
    """One load generator run; returns its output lines as dicts, one per port."""
    argv = pin.client() + [os.path.join(a.build, "loadgen"), "-p", str(port),
                           "-T", str(timeout)] + [str(x) for x in args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 15)
    if r.returncode != 0:
        raise RuntimeError("loadgen %s failed (%d): %s" % (args, r.returncode, r.stderr.strip()))
    return [parse_kv(line) for line in r.stdout.splitlines() if line.strip()]


def uring_probe(a, pin, tmp, plain, python):
    """Tries every io_uring row (with plain URING_YARDSTICK and URING_SERVERS,
    with python the Python ones that SERVER_ENV puts on io_uring) with a short
    echo; drops from SERVERS and PY_SERVERS (in place: the rest of the run
    reads them) the rows that fail, and says why in a.notes. A machine may
    refuse io_uring (kernel.io_uring_disabled, a seccomp filter, an old
    kernel), and echo_uring is only built where liburing is."""
    tried = [(n, [os.path.join(a.build, b)], server_env(n), b) for n, b in SERVERS
             if plain and (n == URING_YARDSTICK or n in URING_SERVERS)]
    if python:
        tried += [(n, py_argv(a, loop, kind), server_env(n, a.py_env), None)
                  for n, loop, kind in PY_SERVERS
                  if SERVER_ENV.get(n, {}).get("TPIO_BACKEND") == "io_uring"]
    dropped = set()
    for name, argv, env, binary in tried:
        why = None
        if binary and not os.access(argv[0], os.X_OK):
            why = "%s was not built (no liburing >= 2.3 at `make bench-build`)" % binary
        else:
            srv = None
            try:
                srv = Server(pin.server() + argv, os.path.join(tmp, "probe-%s.log" % name),
                             timeout=60, env=env)
                loadgen(a, pin, srv.port, "-m", "pingpong", "-c", 2, "-s", 1024, "-n", 50,
                        timeout=20)
            except Exception as e:  # whatever the reason, the row cannot be measured
                why = str(e)
                try:
                    with open(os.path.join(tmp, "probe-%s.log" % name), errors="replace") as f:
                        err = f.read().strip().splitlines()
                    if err:
                        why = err[-1]
                except OSError:
                    pass
                why = "io_uring refused here: " + why
            finally:
                if srv:
                    srv.stop()
        if why:
            dropped.add(name)
            a.notes.append("`%s` left out: %s." % (name, why.rstrip(".")))
            log("io_uring: %s left out: %s" % (name, why))
    SERVERS[:] = [s for s in SERVERS if s[0] not in dropped]
    PY_SERVERS[:] = [s for s in PY_SERVERS if s[0] not in dropped]


# ---------------------------------------------------------------------------
# 1. throughput matrix


def run_matrix(a, P, pin, tmp, tls=None, python=False):
    """Every configuration is one load generator run over all the servers,
    which take turns in short slices (the order rotating every round), so a
    slow spell of the machine falls on all of them alike. Each round is a
    repetition: `rep` in the rows is the round, and the ratios are taken
    within a round. With tls (a Tls): the TLS servers and configurations.
    With python: the Python servers, over the plain-TCP configurations."""
    if tls:
        cfgs = list(TLS_MATRIX)
        label = lambda c: tls_cfg_name(*c)
        lg_args, logtag = tls.loadgen_args, "tls-"
        launch = [(n, [os.path.join(a.build, b)] + tls.server_args, server_env(n))
                  for n, b in TLS_SERVERS]
    else:
        if a.quick:
            cfgs = [("pingpong", s, c) for s, c in QUICK_MATRIX]
        else:
            cfgs = [("pingpong", s, c) for s in P["sizes"] for c in P["conns"]]
        cfgs.append(("bulk", 65536, 1))
        label = lambda c: "bulk" if c[0] == "bulk" else cfg_name(c[1], c[2])
        lg_args, logtag = [], ""
        if python:
            launch = [(n, py_argv(a, loop, kind), server_env(n, a.py_env))
                      for n, loop, kind in PY_SERVERS]
        else:
            launch = [(n, [os.path.join(a.build, b)], server_env(n)) for n, b in SERVERS]
    if a.only:
        keep = set(x.strip() for x in a.only.split(","))
        cfgs = [c for c in cfgs if label(c) in keep]
    if not cfgs:
        return [], []
    servers = {}
    try:
        for name, argv, env in launch:
            servers[name] = Server(pin.server() + argv,
                                   os.path.join(tmp, "server-%s%s.log" % (logtag, name)),
                                   env=env)
    except Exception:
        for s in servers.values():
            s.stop()
        raise
    names = [n for n, _, _ in launch]
    ports = ",".join(str(servers[n].port) for n in names)
    rows = []
    try:
        for mode, size, conns in cfgs:
            c0 = {n: cpu_ns(servers[n].pid) for n in names}
            if mode == "bulk":
                args = ["-m", "bulk", "-s", size, "-q", P["bulk_slice"], "-w", P["bulk_warmup"],
                        "-t", P["bulk_seconds"]]
                budget = len(names) * (P["bulk_warmup"] + P["bulk_seconds"])
            else:
                args = ["-m", "pingpong", "-c", conns, "-s", size, "-q", P["slice"],
                        "-w", P["warmup"], "-t", P["seconds"]]
                budget = len(names) * (P["warmup"] + P["seconds"])
            out = loadgen(a, pin, ports, *(args + lg_args), timeout=int(budget * 3) + 30)
            cfg = label((mode, size, conns))
            for name, r in zip(names, out):
                srv = servers[name]
                if not srv.alive():
                    raise RuntimeError("server %s died" % name)
                # CPU per round trip (bulk: per MB), warm-up slices included.
                per = r["total"] / 1e6 if mode == "bulk" else r["total"]
                cpu = (cpu_ns(srv.pid) - c0[name]) / per
                slices = [float(x) for x in str(r["slices"]).split(",")]
                for k, v in enumerate(slices):
                    rows.append(dict(server=name, config=cfg, size=size, conns=conns, rep=k,
                                     value=v, unit="MB/s" if mode == "bulk" else "rt/s",
                                     p50_us=r.get("p50_us", ""), p99_us=r.get("p99_us", ""),
                                     cpu_ns=cpu))
            log("%-16s done: %d slices per server" % (cfg, len(slices)))
    finally:
        for s in servers.values():
            s.stop()
    return rows, [label(c) for c in cfgs]


def medians(rows, configs, server_list=SERVERS):
    med = {}
    for cfg in configs:
        for name in (s[0] for s in server_list):
            rs = [r for r in rows if r["config"] == cfg and r["server"] == name]
            if not rs:
                continue
            m = dict(value=statistics.median(r["value"] for r in rs), unit=rs[0]["unit"],
                     n=len(rs), cpu_ns=statistics.median(r["cpu_ns"] for r in rs),
                     by_rep={r["rep"]: r["value"] for r in rs})
            if rs[0]["p50_us"] != "":
                m["p50_us"] = statistics.median(r["p50_us"] for r in rs)
                m["p99_us"] = statistics.median(r["p99_us"] for r in rs)
            med[(cfg, name)] = m
    return med


# ---------------------------------------------------------------------------
# 2. instructions and syscalls per round trip


def callgrind_total(path):
    with open(path) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError("no totals in " + path)


ANNOT_RE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*)$")


def callgrind_functions(path):
    """Self instructions per function, from callgrind_annotate."""
    r = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=no", "--auto=no",
                        path], capture_output=True, text=True, timeout=120)
    funcs = {}
    started = False
    for line in r.stdout.splitlines():
        if "file:function" in line:
            started = True
            continue
        if not started or line.startswith("--"):
            continue
        if not line.strip():
            if funcs:
                break  # end of the function table
            continue
        m = ANNOT_RE.match(line)
        if m:
            # "file:function [/path/to/object]" -> "file:function [object]"
            name = re.sub(r" \[(?:.*/)?([^/\]]+)\]$", r" [\1]", m.group(2).strip())
            funcs[name] = funcs.get(name, 0) + int(m.group(1).replace(",", ""))
    return funcs


def _is_obj(path, prefixes):
    base = os.path.basename(path)
    return any(base.startswith(p) for p in prefixes)


def callgrind_objects(path):
    """Self instructions per object (basename), straight from callgrind's
    output, and how many of the instructions in SYSTEM_OBJECTS (the C
    library, ld.so, the PLT stubs) ran for libssl/libcrypto: malloc and free
    of the record buffers, memcpy, strcmp, locks.

    The profile is flat (a function's cost is not kept per call path), so a
    system function's own instructions are split among its callers in
    proportion to the instructions of their calls to it, a caller in a
    system object passing on its own split (OpenSSL -> PLT stub -> strcmp
    is OpenSSL's; the program -> stub -> write is the program's). Exact
    when each system function works for one side only or costs the same
    per call for both; code that a system function calls back (a PLT stub
    jumping into libcrypto) keeps its own object. Returns
    ({object: Ir}, Ir of system code that ran for OpenSSL)."""
    obs = {}       # compressed object id -> name
    fn_obj = {}    # function (compressed id, or "=name") -> object path
    fn_self = {}   # function -> self Ir
    calls_in = {}  # callee -> {caller: inclusive Ir of its calls}

    def key(v):
        v = v.strip()
        m = re.match(r"\((\d+)\)", v)
        return m.group(1) if m else "=" + v

    def obname(v):
        v = v.strip()
        m = re.match(r"\((\d+)\)(?:\s+(.*))?$", v)
        if not m:
            return v
        if m.group(2) is not None:
            obs[m.group(1)] = m.group(2)
        return obs.get(m.group(1), "???")

    ob, fn, callee, in_call = "", None, None, False
    with open(path) as f:
        for line in f:
            c = line[:1]
            if c.isdigit() or c in "+-*":
                t = line.split()
                ir = int(t[1]) if len(t) > 1 else 0
                if in_call:
                    in_call = False
                    d = calls_in.setdefault(callee, {})
                    d[fn] = d.get(fn, 0) + ir
                else:
                    fn_self[fn] = fn_self.get(fn, 0) + ir
            elif line.startswith("fn="):
                fn = key(line[3:])
                fn_obj[fn] = ob
            elif line.startswith("ob="):
                ob = obname(line[3:])
            elif line.startswith("cob="):
                obname(line[4:])
            elif line.startswith("cfn="):
                callee = key(line[4:])
            elif line.startswith("calls="):
                in_call = True
    self_ir = {}
    for fn, ir in fn_self.items():
        k = os.path.basename(fn_obj.get(fn, "???"))
        self_ir[k] = self_ir.get(k, 0) + ir
    total = callgrind_total(path)
    if sum(self_ir.values()) != total:
        log("WARNING: %s: the objects' instructions add up to %d, not %d" % (
            path, sum(self_ir.values()), total))

    def side(fn):
        o = fn_obj.get(fn, "???")
        return ("ossl" if _is_obj(o, OPENSSL_OBJECTS) else
                "sys" if _is_obj(o, SYSTEM_OBJECTS) else "rest")
    sides = {fn: side(fn) for fn in fn_obj}
    sysfns = [fn for fn, sd in sides.items() if sd == "sys"]
    share = {fn: 0.0 for fn in sysfns}  # OpenSSL's share of a system function
    for _ in range(50):  # system -> system chains are short; a fixpoint
        delta = 0.0
        for fn in sysfns:
            ins = calls_in.get(fn)
            if not ins:
                continue
            tot = sum(ins.values())
            if tot <= 0:
                continue
            w = sum(v * (1.0 if sides.get(g) == "ossl" else share.get(g, 0.0)
                         if sides.get(g) == "sys" else 0.0) for g, v in ins.items())
            new = w / tot
            delta = max(delta, abs(new - share[fn]))
            share[fn] = new
        if delta < 1e-9:
            break
    ossl_sys = sum(fn_self.get(fn, 0) * share[fn] for fn in sysfns)
    return self_ir, ossl_sys


def strace_counts(path):
    counts = {}
    with open(path) as f:
        for line in f:
            t = line.split()
            if len(t) >= 5 and t[0][0].isdigit() and t[-1] != "total":
                try:
                    counts[t[-1]] = int(t[3])
                except ValueError:
                    pass
    return counts


def counted_run(a, pin, tool, binary, size, conns, rounds, tmp, tag, tls=None, env=None,
                start_timeout=60):
    """binary: a program of the build directory, or a whole command (a list);
    env: the server's environment (server_env)."""
    out = os.path.join(tmp, "%s-%s.out" % (tag, rounds))
    if tool == "callgrind":
        prefix = ["valgrind", "--tool=callgrind", "--trace-children=no",
                  "--callgrind-out-file=" + out]
    else:
        prefix = ["strace", "-f", "-c", "-o", out, "--"]
    cmd = list(binary) if isinstance(binary, list) else [os.path.join(a.build, binary)]
    # The server exits once the `conns` connections are closed, so the tool
    # writes its report.
    srv = Server(pin.server() + prefix + cmd +
                 (tls.server_args if tls else []) + ["0", str(conns)],
                 os.path.join(tmp, "%s.log" % tag), timeout=start_timeout, env=env)
    try:
        loadgen(a, pin, srv.port, "-m", "pingpong", "-c", conns, "-s", size, "-n", rounds,
                *(tls.loadgen_args if tls else []), timeout=300)
        srv.wait(120)
    finally:
        srv.stop()
    return out


def run_counts(a, P, pin, tmp):
    r1, r2 = P["count_rounds"]
    counts = []  # dicts
    profiles = {}
    for size, conns in P["count_cfgs"]:
        cfg = cfg_name(size, conns)
        for name, binary in SERVERS:
            env = server_env(name)
            tag = "cg-%s-%d-%d" % (name, size, conns)
            fa = counted_run(a, pin, "callgrind", binary, size, conns, r1, tmp, tag, env=env)
            fb = counted_run(a, pin, "callgrind", binary, size, conns, r2, tmp, tag, env=env)
            ir = (callgrind_total(fb) - callgrind_total(fa)) / (r2 - r1)
            if (size, conns) == BAR_CFG:
                ffa, ffb = callgrind_functions(fa), callgrind_functions(fb)
                diff = {k: (ffb.get(k, 0) - ffa.get(k, 0)) / (r2 - r1)
                        for k in set(ffa) | set(ffb)}
                profiles[name] = sorted(diff.items(), key=lambda kv: -kv[1])
                shutil.copy(fb, os.path.join(a.out, "callgrind-%s.out" % name))
            tag = "st-%s-%d-%d" % (name, size, conns)
            sa = strace_counts(counted_run(a, pin, "strace", binary, size, conns, r1, tmp, tag,
                                           env=env))
            sb = strace_counts(counted_run(a, pin, "strace", binary, size, conns, r2, tmp, tag,
                                           env=env))
            per = {k: (sb.get(k, 0) - sa.get(k, 0)) / (r2 - r1) for k in set(sa) | set(sb)}
            per = {k: v for k, v in per.items() if abs(v) >= 0.0005}
            counts.append(dict(server=name, config=cfg, size=size, conns=conns,
                               instructions=ir, syscalls=sum(per.values()), breakdown=per))
            log("counts %-8s %-14s %8.0f instr/rt  %.3f syscalls/rt  %s" % (
                cfg, name, ir, sum(per.values()),
                " ".join("%s=%.3f" % kv for kv in sorted(per.items()))))
    return counts, profiles


def run_tls_counts(a, P, pin, tmp, tls, plain_counts):
    """Instructions (split by object) and syscalls per round trip of the TLS
    servers at TLS 1 KiB x 10, each the difference of two run lengths as for
    plain TCP; and the plain-TCP instructions per round trip of the tpio
    servers at 1 KiB x 10 (from the plain counts, or measured here when they
    were skipped), which the TLS instructions outside OpenSSL are held to."""
    r1, r2 = P["tls_count_rounds"]
    size, conns = BAR_CFG
    cfg = "TLS " + cfg_name(size, conns)
    counts, profiles = [], {}
    for name, binary in TLS_SERVERS:
        env = server_env(name)
        tag = "cg-tls-%s" % name
        fa = counted_run(a, pin, "callgrind", binary, size, conns, r1, tmp, tag, tls, env)
        fb = counted_run(a, pin, "callgrind", binary, size, conns, r2, tmp, tag, tls, env)
        (oa, xa), (ob, xb) = callgrind_objects(fa), callgrind_objects(fb)
        per_obj = {k: (ob.get(k, 0) - oa.get(k, 0)) / (r2 - r1) for k in set(oa) | set(ob)}
        per_obj = {k: v for k, v in per_obj.items() if abs(v) >= 0.05}
        ossl_libc = (xb - xa) / (r2 - r1)
        total = sum(per_obj.values())
        ossl_self = sum(v for k, v in per_obj.items() if _is_obj(k, OPENSSL_OBJECTS))
        ffa, ffb = callgrind_functions(fa), callgrind_functions(fb)
        diff = {k: (ffb.get(k, 0) - ffa.get(k, 0)) / (r2 - r1) for k in set(ffa) | set(ffb)}
        profiles[name] = sorted(diff.items(), key=lambda kv: -kv[1])
        shutil.copy(fb, os.path.join(a.out, "callgrind-tls-%s.out" % name))
        tag = "st-tls-%s" % name
        sa = strace_counts(counted_run(a, pin, "strace", binary, size, conns, r1, tmp, tag, tls,
                                       env))
        sb = strace_counts(counted_run(a, pin, "strace", binary, size, conns, r2, tmp, tag, tls,
                                       env))
        per = {k: (sb.get(k, 0) - sa.get(k, 0)) / (r2 - r1) for k in set(sa) | set(sb)}
        per = {k: v for k, v in per.items() if abs(v) >= 0.0005}
        c = dict(server=name, config=cfg, size=size, conns=conns, instructions=total,
                 openssl=ossl_self + ossl_libc, openssl_self=ossl_self, openssl_libc=ossl_libc,
                 rest=total - ossl_self - ossl_libc, rest_self=total - ossl_self,
                 by_object=per_obj, syscalls=sum(per.values()), breakdown=per)
        counts.append(c)
        log("counts %-14s %-14s %8.0f instr/rt: OpenSSL %.0f (libc for it %.0f), rest %.0f; "
            "%.3f syscalls/rt  %s" % (cfg, name, total, c["openssl"], ossl_libc, c["rest"],
                                       c["syscalls"], " ".join("%s=%.3f" % kv
                                                               for kv in sorted(per.items()))))
    plain_cfg = cfg_name(*BAR_CFG)
    plain = {c["server"]: c["instructions"] for c in plain_counts if c["config"] == plain_cfg}
    r1, r2 = P["count_rounds"]
    for name, binary in SERVERS:
        if name in TPIO_SERVERS and name not in plain:
            if not os.access(os.path.join(a.build, binary), os.X_OK):
                log("no %s: no plain-TCP reference for the TLS counts of %s" % (binary, name))
                continue
            tag = "cg-plainref-%s" % name
            env = server_env(name)
            fa = counted_run(a, pin, "callgrind", binary, size, conns, r1, tmp, tag, env=env)
            fb = counted_run(a, pin, "callgrind", binary, size, conns, r2, tmp, tag, env=env)
            plain[name] = (callgrind_total(fb) - callgrind_total(fa)) / (r2 - r1)
            log("counts %-14s %-14s %8.0f instr/rt (plain TCP, the reference of the TLS "
                "counts)" % (plain_cfg, name, plain[name]))
    return counts, profiles, plain


def run_py_counts(a, P, pin, tmp):
    """Instructions (with a profile by function) and syscalls per round trip
    of the Python servers at 1 KiB x 10, each the difference of two run
    lengths as for the C servers; shorter runs, as the interpreter under
    valgrind is slow. Only the server process is counted: the interpreter,
    the loop's extension or uvloop's, libuv, libc."""
    r1, r2 = P["py_count_rounds"]
    size, conns = BAR_CFG
    cfg = cfg_name(size, conns)
    counts, profiles = [], {}
    for name, loop, kind in PY_SERVERS:
        argv = py_argv(a, loop, kind)
        env = server_env(name, a.py_env)
        tag = "cg-%s" % name
        # An interpreter under valgrind takes seconds to start.
        fa = counted_run(a, pin, "callgrind", argv, size, conns, r1, tmp, tag, env=env,
                         start_timeout=180)
        fb = counted_run(a, pin, "callgrind", argv, size, conns, r2, tmp, tag, env=env,
                         start_timeout=180)
        ir = (callgrind_total(fb) - callgrind_total(fa)) / (r2 - r1)
        ffa, ffb = callgrind_functions(fa), callgrind_functions(fb)
        diff = {k: (ffb.get(k, 0) - ffa.get(k, 0)) / (r2 - r1) for k in set(ffa) | set(ffb)}
        profiles[name] = sorted(diff.items(), key=lambda kv: -kv[1])
        # Only tpio's loop keeps its whole profile (for callgrind_annotate):
        # an interpreter's is most of a megabyte, and the others are not ours
        # to fix; py-profiles.txt has every server's functions.
        if loop == "tpio":
            shutil.copyfile(fb, os.path.join(a.out, "callgrind-%s.out" % name))
        tag = "st-%s" % name
        sa = strace_counts(counted_run(a, pin, "strace", argv, size, conns, r1, tmp, tag,
                                       env=env, start_timeout=180))
        sb = strace_counts(counted_run(a, pin, "strace", argv, size, conns, r2, tmp, tag,
                                       env=env, start_timeout=180))
        per = {k: (sb.get(k, 0) - sa.get(k, 0)) / (r2 - r1) for k in set(sa) | set(sb)}
        per = {k: v for k, v in per.items() if abs(v) >= 0.0005}
        counts.append(dict(server=name, config=cfg, size=size, conns=conns, instructions=ir,
                           syscalls=sum(per.values()), breakdown=per))
        log("counts %-8s %-20s %8.0f instr/rt  %.3f syscalls/rt  %s" % (
            cfg, name, ir, sum(per.values()),
            " ".join("%s=%.3f" % kv for kv in sorted(per.items()))))
    return counts, profiles


# ---------------------------------------------------------------------------
# 3. memory per idle connection


def vmrss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def run_memory(a, P, pin, tmp, tls=None):
    """With tls: the TLS servers of TLS_MEMORY_SERVERS; every idle connection
    has completed its handshake (and echoed one byte) before the count."""
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    n = P["tls_idle_conns" if tls else "idle_conns"]
    if hard != resource.RLIM_INFINITY and hard < n + 100:
        n = hard - 100
        log("RLIMIT_NOFILE hard limit %d: measuring %d idle connections" % (hard, n))
    if tls:
        server_list = [s for s in TLS_SERVERS if s[0] in TLS_MEMORY_SERVERS]
        srv_args, lg_args, tag, limit = tls.server_args, tls.loadgen_args, "TLS ", 600
    else:
        server_list, srv_args, lg_args, tag, limit = SERVERS, [], [], "", 120
    res = []
    for name, binary in server_list:
        srv = Server(pin.server() + [os.path.join(a.build, binary)] + srv_args,
                     os.path.join(tmp, "mem-%s%s.log" % ("tls-" if tls else "", name)),
                     env=server_env(name))
        try:
            time.sleep(0.2)
            before = vmrss_kib(srv.pid)
            lg = subprocess.Popen(pin.client() + [os.path.join(a.build, "loadgen"), "-p",
                                                  str(srv.port), "-m", "idle", "-c", str(n),
                                                  "-T", str(limit)] + lg_args,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
            try:
                r, _, _ = select.select([lg.stdout], [], [], limit)
                line = lg.stdout.readline() if r else ""
                if not line.startswith("ready"):
                    raise RuntimeError("idle loadgen failed: %s" % lg.stderr.read())
                time.sleep(0.3)
                after = vmrss_kib(srv.pid)
                lg.stdin.write("\n")
                lg.stdin.close()
                lg.wait(timeout=60)
            finally:
                if lg.poll() is None:
                    lg.kill()
                    lg.wait()
        finally:
            srv.stop()
        per = (after - before) * 1024 / n
        res.append(dict(server=name, conns=n, rss_before_kib=before, rss_after_kib=after,
                        bytes_per_conn=per))
        log("memory %-18s %6d KiB -> %6d KiB : %7.0f B per idle %sconnection" % (
            tag + name, before, after, per, tag))
    return res


# ---------------------------------------------------------------------------
# 4. reporting


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                              timeout=20).stdout.strip()
    except Exception:
        return ""


def cpu_times():
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def machine_info():
    model = sh("lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1") or platform.processor()
    hyp = sh("lscpu | sed -n 's/^Hypervisor vendor:[[:space:]]*//p' | head -1")
    return dict(
        cpu=model + (" (virtual machine, %s)" % hyp if hyp else ""),
        cores=str(os.cpu_count()),
        kernel=platform.release(),
        mem=sh("free -g | awk '/^Mem:/{print $2\" GiB\"}'"),
        gcc=sh("gcc -dumpfullversion"),
        libuv=sh("pkg-config --modversion libuv"),
        libevent=sh("pkg-config --modversion libevent"),
        valgrind=sh("valgrind --version"),
        strace=sh("strace -V | head -1"),
        tpio=sh("git -C %s describe --always --dirty 2>/dev/null" % os.path.dirname(
            os.path.dirname(os.path.abspath(__file__)))),
        date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    )


def fmt_val(v, unit):
    if unit == "MB/s":
        return "%.0f MB/s" % v
    return "%.1fk" % (v / 1000) if v >= 1000 else "%.0f" % v


def paired_ratios(med, cfg, name, ref):
    """Per round ratios: both slices of a pair come from the same round, a
    fraction of a second apart, so the machine's slow spells cancel."""
    a, b = med.get((cfg, name)), med.get((cfg, ref))
    if not a or not b:
        return []
    return [a["by_rep"][k] / b["by_rep"][k] for k in sorted(a["by_rep"])
            if k in b["by_rep"] and b["by_rep"][k] > 0]


def ratio(med, cfg, name, ref):
    """Median of the paired ratios."""
    rs = paired_ratios(med, cfg, name, ref)
    return statistics.median(rs) if rs else None


def median_ci(values):
    """Distribution-free 95% confidence interval of the median: the order
    statistics n/2 -+ 0.98 sqrt(n) (binomial, normal approximation). It takes
    the rounds as independent; neighbouring rounds share slow drifts of the
    machine, so the true interval is somewhat wider."""
    v = sorted(values)
    n = len(v)
    if n < 6:
        return (v[0], v[-1]) if v else (None, None)
    lo = max(int(n / 2 - 0.98 * n ** 0.5), 0)
    return v[lo], v[n - 1 - lo]


def verdict(med, cfg, name, ref, bar):
    """'yes' when the median paired ratio reaches the bar; 'tie' when it does
    not but the bar lies inside its 95% confidence interval (the difference is
    below what the run can resolve); 'no' when the whole interval is below."""
    rs = paired_ratios(med, cfg, name, ref)
    if not rs:
        return None
    m = statistics.median(rs)
    lo, hi = median_ci(rs)
    return "yes" if m >= bar else ("tie" if hi >= bar else "no")


def ratio_range(med, cfg, name, ref, bar):
    """The 95% interval of the median ratio, and in how many rounds the bar
    was missed: in about half of them is noise, in all of them is not."""
    rs = paired_ratios(med, cfg, name, ref)
    if len(rs) < 2:
        return ""
    lo, hi = median_ci(rs)
    return " (95%% CI %.3f-%.3f; under %.2f in %d of %d rounds)" % (
        lo, hi, bar, sum(r < bar for r in rs), len(rs))


def check_bars(med, configs, counts, mem):
    """Returns a list of (server, bar, measured, ok)."""
    bars = []
    cnt = {(c["server"], c["config"]): c for c in counts}
    bar_cfg = cfg_name(*BAR_CFG)
    memd = {m["server"]: m for m in mem}
    pp = [c for c in configs if c != "bulk"]
    for t in TPIO_SERVERS:
        if pp:
            worst = min((ratio(med, c, t, REFERENCE), c) for c in pp)
            vs = {c: verdict(med, c, t, REFERENCE, 1.0) for c in pp}
            below = [c for c in pp if vs[c] != "yes"]
            nos = [c for c in pp if vs[c] == "no"]
            bars.append((t, "rt/s >= libuv in every ping-pong configuration",
                         "worst %.3fx libuv (%s)%s; median below 1.000 in %d of %d (%s), "
                         "significantly below in %d" % (
                             worst[0], worst[1], ratio_range(med, worst[1], t, REFERENCE, 1.0),
                             len(below), len(pp), ", ".join(below) or "none", len(nos)),
                         "no" if nos else ("tie" if below else "yes")))
        if bar_cfg in configs:
            r = ratio(med, bar_cfg, t, YARDSTICK)
            bars.append((t, "rt/s >= 0.97x epoll at %s" % bar_cfg,
                         "%.3fx%s" % (r, ratio_range(med, bar_cfg, t, YARDSTICK, 0.97)),
                         verdict(med, bar_cfg, t, YARDSTICK, 0.97)))
        ct, cu, ce = cnt.get((t, bar_cfg)), cnt.get((REFERENCE, bar_cfg)), cnt.get((YARDSTICK, bar_cfg))
        if ct and cu:
            r = ct["instructions"] / cu["instructions"]
            bars.append((t, "instructions/rt <= 0.5x libuv at %s" % bar_cfg,
                         "%.0f vs %.0f = %.2fx" % (ct["instructions"], cu["instructions"], r),
                         "yes" if r <= 0.5 else "no"))
        for cfgc in sorted({c["config"] for c in counts}):
            ct, ce = cnt.get((t, cfgc)), cnt.get((YARDSTICK, cfgc))
            if ct and ce:
                # Equal to the yardstick: the same total, to the count's noise
                # (0.02 syscalls per round trip: epoll_wait batching varies
                # from run to run when several connections are active).
                ok = abs(ct["syscalls"] - ce["syscalls"]) <= 0.02 + 0.01 * ce["syscalls"]
                bars.append((t, "syscalls/rt == epoll at %s" % cfgc,
                             "%.3f vs %.3f" % (ct["syscalls"], ce["syscalls"]),
                             "yes" if ok else "no"))
        r = ratio(med, "bulk", t, REFERENCE)
        if r is not None:
            bars.append((t, "bulk MB/s >= libuv",
                         "%.3fx%s" % (r, ratio_range(med, "bulk", t, REFERENCE, 1.0)),
                         verdict(med, "bulk", t, REFERENCE, 1.0)))
        if t in memd and REFERENCE in memd:
            a, b = memd[t]["bytes_per_conn"], memd[REFERENCE]["bytes_per_conn"]
            bars.append((t, "memory per idle connection < libuv",
                         "%.0f B vs %.0f B" % (a, b), "yes" if a < b else "no"))
    for t, base in URING_SERVERS.items():
        line = uring_compare(med, counts, t)
        if line:
            bars.append((t, "io_uring at %s: vs %s and %s (epoll)" % (bar_cfg, URING_YARDSTICK,
                                                                     base), line, "info"))
    return bars


def uring_compare(med, counts, t):
    """tpio's server t on io_uring at BAR_CFG against the io_uring yardstick
    and the same server on epoll: syscalls and server CPU per round trip, as
    one line; None when t has neither figure."""
    cfg = cfg_name(*BAR_CFG)
    others = (URING_YARDSTICK, URING_SERVERS[t])
    sc = {c["server"]: c["syscalls"] for c in counts if c["config"] == cfg}
    cpu = {n: med[(cfg, n)]["cpu_ns"] for n in (t,) + others if (cfg, n) in med}
    parts = []
    if t in sc:
        parts.append("syscalls/rt %.3f (%s)" % (sc[t], ", ".join(
            "%s %.3f" % (n, sc[n]) for n in others if n in sc) or "nothing to compare"))
    if t in cpu:
        parts.append("server CPU/rt %.0f ns (%s)" % (cpu[t], ", ".join(
            "%s %.0f ns: %.2fx" % (n, cpu[n], cpu[t] / cpu[n]) for n in others
            if cpu.get(n)) or "nothing to compare"))
    return "; ".join(parts) or None


def check_tls_bars(T):
    """The TLS bars of the tpio servers; T is main's dict of TLS results."""
    bars = []
    med, configs = T["med"], T["configs"]
    cfg = "TLS " + cfg_name(*BAR_CFG)
    cnt = {c["server"]: c for c in T["counts"] if c["config"] == cfg}
    memd = {m["server"]: m for m in T["mem"]}
    vy, vr, own = TLS_BARS["vs_yardstick"], TLS_BARS["vs_reference"], TLS_BARS["own_vs_plain"]
    for t in TPIO_SERVERS:
        if cfg in configs:
            r = ratio(med, cfg, t, TLS_YARDSTICK)
            if r is not None:
                bars.append((t, "TLS rt/s >= %.2fx epoll+OpenSSL at %s" % (vy, cfg),
                             "%.3fx%s" % (r, ratio_range(med, cfg, t, TLS_YARDSTICK, vy)),
                             verdict(med, cfg, t, TLS_YARDSTICK, vy)))
            r = ratio(med, cfg, t, TLS_REFERENCE)
            if r is not None:
                bars.append((t, "TLS rt/s >= libevent (bufferevent_openssl) at %s" % cfg,
                             "%.3fx%s" % (r, ratio_range(med, cfg, t, TLS_REFERENCE, vr)),
                             verdict(med, cfg, t, TLS_REFERENCE, vr)))
        c, p = cnt.get(t), T["plain"].get(t)
        if c and p:
            r = c["rest"] / p
            bars.append((t, "TLS instructions/rt outside OpenSSL <= %.0fx plain TCP at %s" % (
                own, cfg),
                         "%.0f (%.0f - OpenSSL %.0f) vs %.0f = %.2fx; without counting the C "
                         "library calls of OpenSSL as its own: %.0f = %.2fx" % (
                             c["rest"], c["instructions"], c["openssl"], p, r, c["rest_self"],
                             c["rest_self"] / p),
                         "yes" if r <= own else "no"))
        if t in memd and TLS_YARDSTICK in memd:
            m, y = memd[t]["bytes_per_conn"], memd[TLS_YARDSTICK]["bytes_per_conn"]
            bars.append((t, "memory per idle TLS connection: OpenSSL's + a small constant",
                         "%.0f B vs %.0f B for epoll+OpenSSL (what OpenSSL needs): %+.0f B" % (
                             m, y, m - y), "info"))
    return bars


def check_py_bars(Y):
    """The Python bars: tpio's loop against uvloop's with the same kind of
    protocol; Y is main's dict of Python results."""
    bars = []
    med, configs = Y["med"], Y["configs"]
    cnt = {c["server"]: c for c in Y["counts"]}
    bar_cfg = cfg_name(*BAR_CFG)
    pp = [c for c in configs if c != "bulk"]
    bar = PY_BARS["rtps"]
    for t, ref in PY_PAIRS:
        if pp:
            worst = min((ratio(med, c, t, ref), c) for c in pp)
            vs = {c: verdict(med, c, t, ref, bar) for c in pp}
            below = [c for c in pp if vs[c] != "yes"]
            nos = [c for c in pp if vs[c] == "no"]
            bars.append((t, "rt/s >= %s in every ping-pong configuration" % ref,
                         "worst %.3fx (%s)%s; median below %.3f in %d of %d (%s), "
                         "significantly below in %d" % (
                             worst[0], worst[1], ratio_range(med, worst[1], t, ref, bar), bar,
                             len(below), len(pp), ", ".join(below) or "none", len(nos)),
                         "no" if nos else ("tie" if below else "yes")))
        r = ratio(med, "bulk", t, ref)
        if r is not None:
            bars.append((t, "bulk MB/s >= %s" % ref,
                         "%.3fx%s" % (r, ratio_range(med, "bulk", t, ref, bar)),
                         verdict(med, "bulk", t, ref, bar)))
        if (bar_cfg, t) in med and (bar_cfg, ref) in med:
            a_, b_ = med[(bar_cfg, t)]["cpu_ns"], med[(bar_cfg, ref)]["cpu_ns"]
            bars.append((t, "server CPU/rt <= %.1fx %s at %s" % (PY_BARS["cpu"], ref, bar_cfg),
                         "%.0f ns vs %.0f ns = %.2fx" % (a_, b_, a_ / b_),
                         "yes" if a_ / b_ <= PY_BARS["cpu"] else "no"))
            rs = [(med[(c, t)]["cpu_ns"] / med[(c, ref)]["cpu_ns"], c) for c in pp
                  if (c, t) in med and (c, ref) in med]
            if rs:
                bars.append((t, "server CPU/rt vs %s in every ping-pong configuration" % ref,
                             "%.2fx (%s) to %.2fx (%s)" % (min(rs) + max(rs)), "info"))
        ct, cr = cnt.get(t), cnt.get(ref)
        if ct and cr:
            r = ct["instructions"] / cr["instructions"]
            bars.append((t, "instructions/rt <= %.1fx %s at %s" % (
                PY_BARS["instructions"], ref, ct["config"]),
                         "%.0f vs %.0f = %.2fx" % (ct["instructions"], cr["instructions"], r),
                         "yes" if r <= PY_BARS["instructions"] else "no"))
    # tpio's loop on io_uring, against the same loop on epoll
    t, base = "py-tpio-uring", "py-tpio"
    parts = []
    r = ratio(med, bar_cfg, t, base)
    if r is not None:
        parts.append("rt/s %.3fx; server CPU/rt %.0f ns vs %.0f ns = %.2fx" % (
            r, med[(bar_cfg, t)]["cpu_ns"],
            med[(bar_cfg, base)]["cpu_ns"],
            med[(bar_cfg, t)]["cpu_ns"] / med[(bar_cfg, base)]["cpu_ns"]))
    if t in cnt and base in cnt:
        parts.append("syscalls/rt %.3f vs %.3f" % (cnt[t]["syscalls"], cnt[base]["syscalls"]))
    if parts:
        bars.append((t, "io_uring at %s: vs %s (epoll)" % (bar_cfg, base), "; ".join(parts),
                     "info"))
    return bars


def py_summary_md(a, P, Y):
    """The Python part of the summary (markdown lines), self-contained: its
    method, tables, bars and profiles."""
    names = [n for n, _, _ in PY_SERVERS]
    med, configs, counts = Y["med"], Y["configs"], Y["counts"]
    v = Y["versions"]
    r1, r2 = P["py_count_rounds"]
    L = []
    L.append("### Python event loops")
    L.append("")
    L.append("The same echo in Python (`bench/servers/py_echo.py`) on Python %s (Debian's "
             "`%s`, no user site-packages, `PYTHONHASHSEED=0`, the caller's other `PYTHON*` "
             "variables removed): `py-asyncio` is the standard library's loop (selectors, "
             "epoll), `py-uvloop` is uvloop %s (Debian's python3-uvloop, on libuv), `py-tpio` "
             "is tpio's loop (the package %s and its extension, built into "
             "`build-bench/python` with the release flags, on `PYTHONPATH`) on its default "
             "backend, epoll, and `py-tpio-uring` the same on its io_uring backend "
             "(`TPIO_BACKEND=io_uring`; with a Protocol only). Each has an "
             "`asyncio.Protocol` (`data_received` writes the bytes it gets) and, `-buffered`, "
             "an `asyncio.BufferedProtocol` (`get_buffer` returns a view of one 64 KiB buffer "
             "shared by all connections, `buffer_updated` writes a slice of it; on uvloop, "
             "whose `write` keeps the object and sends it later, a copy of the slice). The "
             "flow control (64 KiB / 16 KiB), `TCP_NODELAY`, pinning, matrix, slices and "
             "rounds are the C servers'; the Python servers take turns in their own load "
             "generator "
             "run per configuration, apart from the C servers' runs. Server CPU per round "
             "trip as above. Instructions and syscalls per round trip at %s as above, from "
             "a %d- and a %d-round-trip run (shorter: the interpreter under valgrind is "
             "slow), the whole server process: the interpreter, the loop (tpio's "
             "extension, or uvloop and libuv) and the C library. tpio's loop is held to "
             "uvloop's with the same kind of protocol: round trips per second at least "
             "%.1fx in every configuration, server CPU per round trip at most %.1fx and "
             "instructions per round trip at most %.1fx at %s." % (
                 v["python"], a.python, v["uvloop"], v["tpio_py"], cfg_name(*BAR_CFG), r1, r2,
                 PY_BARS["rtps"], PY_BARS["cpu"], PY_BARS["instructions"],
                 cfg_name(*BAR_CFG)))
    L.append("")
    for c in Y.get("charts", []):
        L.append("![%s](%s)" % (c[1], c[0]))
        L.append("")
    if configs:
        md_matrix(L, "#### Python: throughput (median round trips per second; bulk: MB/s)",
                  configs, names, cell_value(med))
        L.append("#### Python: ratios to uvloop with the same kind of protocol")
        L.append("")
        L.append("Median of the paired ratios, to `py-uvloop` for the Protocols and to "
                 "`py-uvloop-buffered` for the BufferedProtocols.")
        L.append("")
        L.append("| configuration | " + " | ".join(names) + " |")
        L.append("|---|" + "---:|" * len(names))
        for cfg in configs:
            cells = []
            for n in names:
                r = ratio(med, cfg, n, py_ref(n))
                cells.append("%.2f" % r if r is not None else "-")
            L.append("| %s | " % cfg + " | ".join(cells) + " |")
        L.append("")
        md_matrix(L, "#### Python: latency over all measured slices, p50 / p99 in microseconds",
                  configs, names, cell_latency(med), skip_bulk=True)
        md_matrix(L, "#### Python: server CPU time per round trip (user + kernel, ns; bulk: "
                  "per MB echoed)", configs, names, cell_cpu(med))
    if counts:
        L.append("#### Python: costs per round trip in the server (deterministic counts)")
        L.append("")
        L.append("| configuration | server | instructions / rt | vs uvloop | syscalls / rt | "
                 "syscalls by name |")
        L.append("|---|---|---:|---:|---:|---|")
        cnt = {c["server"]: c for c in counts}
        for c in counts:
            ref = cnt.get(py_ref(c["server"]))
            L.append("| %s | %s | %.0f | %s | %.3f | %s |" % (
                c["config"], c["server"], c["instructions"],
                "%.2f" % (c["instructions"] / ref["instructions"]) if ref else "-",
                c["syscalls"], ", ".join("%s %.3f" % kv for kv in sorted(
                    c["breakdown"].items(), key=lambda kv: -kv[1]))))
        L.append("")
    if Y["bars"]:
        L.append("#### Python: the bars tpio's loop must clear")
        L.append("")
        L.append("`yes`, `tie` and **no** as in the bars above; the CPU and instruction "
                 "bars are single figures, without an interval.")
        L.append("")
        L.append("| server | bar | measured | met |")
        L.append("|---|---|---|---|")
        for s_, b, val, ok in Y["bars"]:
            L.append("| %s | %s | %s | %s |" % (s_, b, val, "**no**" if ok == "no" else ok))
        L.append("")
    if Y["profiles"]:
        md_profiles(L, "#### Python: where the instructions go at %s (self instructions per "
                    "round trip, top functions)" % cfg_name(*BAR_CFG), names, Y["profiles"], 25)
    return L


def md_profiles(L, title, names, profiles, top, label="%s"):
    """Each server's top functions (self instructions per round trip), folded."""
    L.append(title)
    L.append("")
    for n in names:
        if n not in profiles:
            continue
        L.append("<details><summary>%s</summary>" % (label % n))
        L.append("")
        L.append("| instr / rt | function |")
        L.append("|---:|---|")
        for fn, v in profiles[n][:top]:
            if v < 0.5:
                break
            L.append("| %.1f | `%s` |" % (v, fn))
        L.append("")
        L.append("</details>")
        L.append("")


def md_matrix(L, title, configs, names, cell, intro=None, skip_bulk=False):
    """A table of the report: one row per configuration, one column per
    server, cell(cfg, name) in each ("-" where there is no figure)."""
    L.append(title)
    L.append("")
    if intro:
        L.append(intro)
        L.append("")
    L.append("| configuration | " + " | ".join(names) + " |")
    L.append("|---|" + "---:|" * len(names))
    for cfg in configs:
        if skip_bulk and cfg.endswith("bulk"):
            continue
        L.append("| %s | " % cfg + " | ".join(cell(cfg, n) for n in names) + " |")
    L.append("")


def cell_value(med):
    return lambda cfg, n: (fmt_val(med[(cfg, n)]["value"], med[(cfg, n)]["unit"])
                           if (cfg, n) in med else "-")


def cell_latency(med):
    return lambda cfg, n: ("%.0f / %.0f" % (med[(cfg, n)]["p50_us"], med[(cfg, n)]["p99_us"])
                           if (cfg, n) in med else "-")


def cell_cpu(med):
    return lambda cfg, n: "%.0f" % med[(cfg, n)]["cpu_ns"] if (cfg, n) in med else "-"


def tls_summary_md(a, P, T):
    """The TLS part of the summary (markdown lines)."""
    names = [n for n, _ in TLS_SERVERS]
    med, configs, counts, mem = T["med"], T["configs"], T["counts"], T["mem"]
    L = []
    L.append("### TLS 1.3 (TLS_AES_128_GCM_SHA256): the servers")
    L.append("")
    L.append("The same echo over TLS 1.3 with one cipher suite, AES-128-GCM, OpenSSL %s, a "
             "throw-away EC P-256 certificate (made at run time); no session tickets, "
             "SSL_MODE_RELEASE_BUFFERS in every server (bench/bench_tls.h). `epoll` is the "
             "TLS yardstick: a bare epoll loop with OpenSSL on the socket (SSL_set_fd, "
             "read-ahead, bench/servers/echo_tls_epoll.c); `tpio` and `tpio-buffered` are "
             "tpio's TLS transport under a Protocol and a BufferedProtocol; `libevent` is "
             "bufferevent_openssl (without read-ahead, which libevent 2.1 cannot take: "
             "OpenSSL reads each record with two read()s). The load generator completes every handshake before the "
             "slices start (bulk: before the slice's time starts); it verifies the "
             "certificate. Slices and rounds as above." % T.get("openssl_version", "?"))
    L.append("")
    if configs:
        md_matrix(L, "### TLS: throughput (median round trips per second; bulk: MB/s)",
                  configs, names, cell_value(med))
        L.append("### TLS: ratios to the epoll+OpenSSL yardstick / to libevent")
        L.append("")
        L.append("| configuration | " + " | ".join(names) + " |")
        L.append("|---|" + "---:|" * len(names))
        for cfg in configs:
            cells = []
            for n in names:
                ry, rr = ratio(med, cfg, n, TLS_YARDSTICK), ratio(med, cfg, n, TLS_REFERENCE)
                cells.append("%.2f / %.2f" % (ry, rr) if ry is not None and rr is not None
                             else "-")
            L.append("| %s | " % cfg + " | ".join(cells) + " |")
        L.append("")
        md_matrix(L, "### TLS: latency over all measured slices, p50 / p99 in microseconds",
                  configs, names, cell_latency(med), skip_bulk=True)
        md_matrix(L, "### TLS: server CPU time per round trip (user + kernel, ns; bulk: per MB "
                  "echoed)", configs, names, cell_cpu(med),
                  intro="As for plain TCP: /proc/PID/schedstat around the run over every "
                  "round trip of it (warm-up included; the few handshakes of the run too).")
    if counts:
        r1, r2 = P["tls_count_rounds"]
        L.append("### TLS: costs per round trip in the server (deterministic counts)")
        L.append("")
        L.append("Difference of a %d- and a %d-round-trip run (handshakes, start-up and "
                 "teardown cancel out), user-space instructions (callgrind) split by object: "
                 "**OpenSSL** is the code of libssl and libcrypto plus the C library functions "
                 "they call (malloc and free of the record buffers SSL_MODE_RELEASE_BUFFERS "
                 "releases, memcpy, locks), shown apart in the next column; **the rest** is "
                 "everything else: the program, its event library, and the C library calls "
                 "it makes itself (syscall wrappers, its own allocations). OpenSSL's "
                 "callbacks into the program (a BIO of the library's own) are the rest's. "
                 "tpio's plain-TCP figure (the reference of the rest): %s." % (
                     r1, r2, ", ".join("%s %.0f" % kv for kv in sorted(T["plain"].items()))))
        L.append("")
        L.append("| configuration | server | instructions / rt | OpenSSL | of which C library "
                 "| the rest | the rest by object | syscalls / rt | syscalls by name |")
        L.append("|---|---|---:|---:|---:|---:|---|---:|---|")
        for c in counts:
            objs = sorted(((k, v) for k, v in c["by_object"].items()
                           if not _is_obj(k, OPENSSL_OBJECTS + SYSTEM_OBJECTS)),
                          key=lambda kv: -kv[1])
            own_sys = c["rest"] - sum(v for _, v in objs)
            objs_s = ", ".join(["%s %.0f" % (k, v) for k, v in objs if abs(v) >= 0.5] +
                               ["C library for them %.0f" % own_sys])
            L.append("| %s | %s | %.0f | %.0f | %.0f | %.0f | %s | %.3f | %s |" % (
                c["config"], c["server"], c["instructions"], c["openssl"], c["openssl_libc"],
                c["rest"], objs_s, c["syscalls"],
                ", ".join("%s %.3f" % kv for kv in sorted(c["breakdown"].items(),
                                                          key=lambda kv: -kv[1]))))
        L.append("")
        L.append("(\"C library for them\": the C library, ld.so and the PLT stubs, less "
                 "what OpenSSL called there; by object and function in tls-counts.csv and "
                 "tls-profiles.txt.)")
        L.append("")
    if mem:
        L.append("### TLS: resident memory per idle TLS connection")
        L.append("")
        L.append("VmRSS of a fresh server before and after %d idle TLS connections (each has "
                 "completed its handshake and echoed one byte), difference / %d. The "
                 "yardstick's figure is what OpenSSL needs (its SSL object and what hangs on "
                 "it, plus the yardstick's own few dozen bytes); the difference to it is "
                 "what the library adds." % (mem[0]["conns"], mem[0]["conns"]))
        L.append("")
        L.append("| server | VmRSS before | VmRSS after | bytes per connection | over the "
                 "yardstick |")
        L.append("|---|---:|---:|---:|---:|")
        y = {m["server"]: m for m in mem}.get(TLS_YARDSTICK)
        for m in mem:
            L.append("| %s | %d KiB | %d KiB | %.0f | %s |" % (
                m["server"], m["rss_before_kib"], m["rss_after_kib"], m["bytes_per_conn"],
                "%+.0f" % (m["bytes_per_conn"] - y["bytes_per_conn"]) if y else "-"))
        L.append("")
    return L


def uring_summary_md(a, med, configs, counts, names):
    """The io_uring part of the summary: what the rows are, the rows left
    out, tpio on io_uring against the yardstick and against itself on
    epoll."""
    ur = [t for t in URING_SERVERS if t in names]
    if not ur and not a.notes:
        return []
    L = ["### io_uring", ""]
    L.append("`uring` is the io_uring yardstick (`bench/servers/echo_uring.c`, liburing): one "
             "ring (DEFER_TASKRUN and SINGLE_ISSUER where the kernel takes them), a multishot "
             "accept, and per connection a multishot receive into a ring of provided buffers "
             "(of the read size); each buffer is sent back as it came and returned to the "
             "ring once sent, so the echo never copies, and one `io_uring_enter` per loop "
             "iteration submits the sends and waits for the next completions. `tpio-uring` "
             "and `tpio-uring-buffered` are the `tpio` and `tpio-buffered` programs on "
             "tpio's io_uring backend (`TPIO_BACKEND=io_uring`); the other tpio rows run on "
             "its default backend, epoll. Flow control and the rest of the contract are the "
             "other servers'.")
    L.append("")
    for note in a.notes:
        L.append("- " + note)
    if a.notes:
        L.append("")
    lines = [(t, uring_compare(med, counts, t)) for t in ur]
    for t, line in lines:
        if line:
            L.append("- `%s` at %s: %s." % (t, cfg_name(*BAR_CFG), line))
    if any(line for _, line in lines):
        L.append("")
    if ur and configs:
        L.append("Ratios of round trips per second (bulk: MB/s), medians of the paired "
                 "ratios: to `%s` / to the same server on epoll." % URING_YARDSTICK)
        L.append("")
        L.append("| configuration | " + " | ".join(ur) + " |")
        L.append("|---|" + "---:|" * len(ur))
        for cfg in configs:
            cells = []
            for t in ur:
                ry, rb = ratio(med, cfg, t, URING_YARDSTICK), ratio(med, cfg, t, URING_SERVERS[t])
                cells.append("%s / %s" % ("%.2f" % ry if ry is not None else "-",
                                          "%.2f" % rb if rb is not None else "-"))
            L.append("| %s | " % cfg + " | ".join(cells) + " |")
        L.append("")
    return L


def summary_md(a, P, info, med, configs, counts, profiles, mem, bars, chart_names, T=None,
               Y=None):
    names = [n for n, _ in SERVERS]
    L = []
    L.append("Measured %s on: **%s**, %s cores, Linux %s, %s RAM; gcc %s, libuv %s, "
             "libevent %s; tpio %s. Server pinned to one core and load generator to the "
             "other (taskset). Machine: %s." % (info["date"], info["cpu"], info["cores"], info["kernel"],
                                   info["mem"], info["gcc"], info["libuv"], info["libevent"],
                                   info["tpio"], info.get("load", "")))
    L.append("")
    L.append("Command: `%s`. One load generator run per configuration loads all the servers "
             "in turn, in slices of %.2f s (bulk: %.2f s, each on a new connection), the "
             "order rotating every round: %.1f s measured per server after %.1f s of "
             "warm-up (bulk: %.1f s after %.1f s). Every round is a repetition; figures "
             "are medians over the rounds." % (
                 "make bench-quick" if a.quick else "make bench", P["slice"], P["bulk_slice"],
                 P["seconds"], P["warmup"], P["bulk_seconds"], P["bulk_warmup"]))
    L.append("")
    for c in chart_names:
        L.append("![%s](%s)" % (c[1], c[0]))
        L.append("")
    md_matrix(L, "### Throughput (median round trips per second; bulk: MB/s)",
              configs, names, cell_value(med))
    L.append("### Ratios: to the epoll yardstick / to libuv")
    L.append("")
    L.append("Median over the rounds of the ratio within each round (the slices of one "
             "round are a fraction of a second apart, so they share the machine's state).")
    L.append("")
    L.append("| configuration | " + " | ".join(names) + " |")
    L.append("|---|" + "---:|" * len(names))
    for cfg in configs:
        cells = []
        for n in names:
            re_, ru = ratio(med, cfg, n, YARDSTICK), ratio(med, cfg, n, REFERENCE)
            cells.append("%.2f / %.2f" % (re_, ru) if re_ is not None else "-")
        L.append("| %s | " % cfg + " | ".join(cells) + " |")
    L.append("")
    md_matrix(L, "### Latency over all measured slices: p50 / p99 in microseconds",
              configs, names, cell_latency(med), skip_bulk=True)
    md_matrix(L, "### Server CPU time per round trip (user + kernel, ns; bulk: per MB echoed)",
              configs, names, cell_cpu(med),
              intro="From /proc/PID/schedstat around each configuration's run, divided by "
              "every round trip of the run (warm-up included). Less sensitive to other load "
              "than throughput, though cache and steal effects remain.")
    r1, r2 = P["count_rounds"]
    L.append("### Costs per round trip in the server (deterministic counts)")
    L.append("")
    L.append("Difference of a %d- and a %d-round-trip run, divided by %d: start-up, "
             "accepting and teardown cancel out. Instructions: `valgrind --tool=callgrind` "
             "(user space, all code in the process: program, library, libc). Syscalls: "
             "`strace -f -c`." % (r1, r2, r2 - r1))
    L.append("")
    L.append("| configuration | server | instructions / rt | syscalls / rt | syscalls by name |")
    L.append("|---|---|---:|---:|---|")
    for c in counts:
        L.append("| %s | %s | %.0f | %.3f | %s |" % (
            c["config"], c["server"], c["instructions"], c["syscalls"],
            ", ".join("%s %.3f" % kv for kv in sorted(c["breakdown"].items(),
                                                      key=lambda kv: -kv[1]))))
    L.append("")
    L.extend(uring_summary_md(a, med, configs, counts, names))
    if mem:
        L.append("### Resident memory per idle connection")
        L.append("")
        L.append("VmRSS of a fresh server before and after %d idle connections (each has "
                 "echoed one byte), difference / %d." % (mem[0]["conns"], mem[0]["conns"]))
        L.append("")
        L.append("| server | VmRSS before | VmRSS after | bytes per connection |")
        L.append("|---|---:|---:|---:|")
        for m in mem:
            L.append("| %s | %d KiB | %d KiB | %.0f |" % (m["server"], m["rss_before_kib"],
                                                        m["rss_after_kib"],
                                                        m["bytes_per_conn"]))
        L.append("")
    if T:
        L.extend(tls_summary_md(a, P, T))
    L.append("### The bars tpio must clear")
    L.append("")
    L.append("For a timed bar, *met* is `yes` when the median of the paired ratios reaches "
             "it, `tie` when it does not but the bar lies inside the median's 95% confidence "
             "interval (the difference is smaller than this run can resolve), and **no** "
             "when the whole interval is below it.")
    L.append("")
    L.append("| server | bar | measured | met |")
    L.append("|---|---|---|---|")
    for s, b, v, ok in bars:
        L.append("| %s | %s | %s | %s |" % (s, b, v, "**no**" if ok == "no" else ok))
    L.append("")
    if profiles:
        md_profiles(L, "### Where the instructions go at %s (self instructions per round trip, "
                    "top functions)" % cfg_name(*BAR_CFG), names, profiles, 15)
    if T and T["profiles"]:
        md_profiles(L, "### Where the instructions go over TLS at %s (self instructions per "
                    "round trip, top functions)" % cfg_name(*BAR_CFG),
                    [n for n, _ in TLS_SERVERS], T["profiles"], 25, label="TLS %s")
    if Y:
        L.extend(py_summary_md(a, P, Y))
    return "\n".join(L)


def write_csv(path, rows, fields):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def write_tls_csvs(a, T):
    """tls-runs.csv, tls-results.csv, tls-counts.csv, tls-memory.csv."""
    write_csv(os.path.join(a.out, "tls-runs.csv"), T["rows"],
              ["server", "config", "size", "conns", "rep", "value", "unit", "p50_us",
               "p99_us", "cpu_ns"])
    summ = []
    for cfg in T["configs"]:
        for n, _ in TLS_SERVERS:
            m = T["med"].get((cfg, n))
            if m:
                ry, rr = ratio(T["med"], cfg, n, TLS_YARDSTICK), ratio(T["med"], cfg, n,
                                                                      TLS_REFERENCE)
                summ.append(dict(config=cfg, server=n, median=round(m["value"], 1),
                                 unit=m["unit"], runs=m["n"],
                                 ratio_epoll=round(ry, 4) if ry is not None else "",
                                 ratio_libevent=round(rr, 4) if rr is not None else "",
                                 p50_us=m.get("p50_us", ""), p99_us=m.get("p99_us", ""),
                                 server_cpu_ns=round(m["cpu_ns"])))
    write_csv(os.path.join(a.out, "tls-results.csv"), summ,
              ["config", "server", "median", "unit", "runs", "ratio_epoll", "ratio_libevent",
               "p50_us", "p99_us", "server_cpu_ns"])
    crow = []
    for c in T["counts"]:
        d = dict(c)
        d["plain_tcp_instructions"] = T["plain"].get(c["server"], "")
        d["by_object"] = " ".join("%s=%.1f" % kv for kv in sorted(c["by_object"].items()))
        d["breakdown"] = " ".join("%s=%.4f" % kv for kv in sorted(c["breakdown"].items()))
        crow.append(d)
    write_csv(os.path.join(a.out, "tls-counts.csv"), crow,
              ["config", "server", "instructions", "openssl", "openssl_self", "openssl_libc",
               "rest", "rest_self", "plain_tcp_instructions", "by_object", "syscalls",
               "breakdown"])
    write_csv(os.path.join(a.out, "tls-memory.csv"), T["mem"],
              ["server", "conns", "rss_before_kib", "rss_after_kib", "bytes_per_conn"])
    if T["profiles"]:
        with open(os.path.join(a.out, "tls-profiles.txt"), "w") as f:
            for n, prof in T["profiles"].items():
                f.write("== TLS %s: self instructions per round trip at %s ==\n" % (
                    n, cfg_name(*BAR_CFG)))
                for fn, v in prof:
                    if abs(v) >= 0.5:
                        f.write("%10.1f  %s\n" % (v, fn))
                f.write("\n")


def write_py_csvs(a, Y):
    """py-runs.csv, py-results.csv, py-counts.csv, py-profiles.txt."""
    write_csv(os.path.join(a.out, "py-runs.csv"), Y["rows"],
              ["server", "config", "size", "conns", "rep", "value", "unit", "p50_us",
               "p99_us", "cpu_ns"])
    summ = []
    for cfg in Y["configs"]:
        for n, _, _ in PY_SERVERS:
            m = Y["med"].get((cfg, n))
            if m:
                ru = ratio(Y["med"], cfg, n, py_ref(n))
                summ.append(dict(config=cfg, server=n, median=round(m["value"], 1),
                                 unit=m["unit"], runs=m["n"],
                                 ratio_uvloop=round(ru, 4) if ru is not None else "",
                                 p50_us=m.get("p50_us", ""), p99_us=m.get("p99_us", ""),
                                 server_cpu_ns=round(m["cpu_ns"])))
    write_csv(os.path.join(a.out, "py-results.csv"), summ,
              ["config", "server", "median", "unit", "runs", "ratio_uvloop", "p50_us",
               "p99_us", "server_cpu_ns"])
    crow = []
    for c in Y["counts"]:
        d = dict(c)
        d["breakdown"] = " ".join("%s=%.4f" % kv for kv in sorted(c["breakdown"].items()))
        crow.append(d)
    write_csv(os.path.join(a.out, "py-counts.csv"), crow,
              ["config", "server", "instructions", "syscalls", "breakdown"])
    if Y["profiles"]:
        with open(os.path.join(a.out, "py-profiles.txt"), "w") as f:
            for n, prof in Y["profiles"].items():
                f.write("== %s: self instructions per round trip at %s ==\n" % (
                    n, cfg_name(*BAR_CFG)))
                for fn, v in prof:
                    if abs(v) >= 0.5:
                        f.write("%10.1f  %s\n" % (v, fn))
                f.write("\n")


# Chart colours by name, so that a row left out shifts none of the others';
# an io_uring row is the lighter shade of its epoll one.
COLORS = {"epoll": "#7f7f7f", "uring": "#c7c7c7", "tpio": "#d62728", "tpio-uring": "#ff9896",
          "tpio-buffered": "#ff7f0e", "tpio-uring-buffered": "#ffbb78", "libuv": "#1f77b4",
          "libevent": "#2ca02c"}
PY_COLORS = {"py-asyncio": "#9edae5", "py-asyncio-buffered": "#17becf", "py-uvloop": "#aec7e8",
             "py-uvloop-buffered": "#1f77b4", "py-tpio": "#ff9896", "py-tpio-uring": "#f7b6d2",
             "py-tpio-buffered": "#d62728"}


def py_chart(a, Y, info, tmp):
    """python.png: every Python server's round trips per second relative to
    uvloop with a Protocol, so that the two kinds of protocol show on one
    scale."""
    if not shutil.which("gnuplot") or not Y["med"]:
        return []
    names = [n for n, _, _ in PY_SERVERS]
    colors = [PY_COLORS[n] for n in names]
    dat = os.path.join(tmp, "py-ratio.dat")
    with open(dat, "w") as f:
        for cfg in Y["configs"]:
            f.write('"%s" ' % cfg.replace(" x ", " x") + " ".join(
                "%.4f" % (ratio(Y["med"], cfg, n, "py-uvloop") or 0) for n in names) + "\n")
    sub = "%s, %s cores, Linux %s; Python %s, uvloop %s" % (
        info["cpu"], info["cores"], info["kernel"], Y["versions"]["python"],
        Y["versions"]["uvloop"])
    plots = ", ".join(
        "'%s' using %d:xtic(1) title '%s' lc rgb '%s'" % (dat if i == 0 else "", i + 2, n,
                                                         colors[i])
        for i, n in enumerate(names))
    script = """
set terminal pngcairo size 1300,560 font 'DejaVu Sans,10'
set output '{out}'
set title "Python echo throughput relative to uvloop with a Protocol (= 1.0), median of the per-round ratios\\n{{/*0.85 {sub}}}"
set style data histogram
set style histogram cluster gap 1
set style fill solid 0.9 border -1
set boxwidth 0.9
set key outside right top
set ylabel 'round trips/s (bulk: MB/s) / py-uvloop'
set yrange [0:*]
set grid ytics
set xtics rotate by -25 scale 0
set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lc rgb '#444444'
plot {plots}
""".format(out=os.path.join(a.out, "python.png"), sub=sub, plots=plots)
    sp = os.path.join(tmp, "py-chart.gp")
    with open(sp, "w") as f:
        f.write(script)
    r = subprocess.run(["gnuplot", sp], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        log("gnuplot failed: " + r.stderr.strip())
        return []
    return [("python.png", "Python throughput relative to uvloop")]


def gnuplot_charts(a, med, configs, counts, mem, info, tmp):
    if not shutil.which("gnuplot"):
        log("gnuplot not found: no chart")
        return []
    names = [n for n, _ in SERVERS]
    colors = [COLORS[n] for n in names]
    dat = os.path.join(tmp, "ratio.dat")
    with open(dat, "w") as f:
        for cfg in configs:
            f.write('"%s" ' % cfg.replace(" x ", " x") + " ".join(
                "%.4f" % (ratio(med, cfg, n, YARDSTICK) or 0) for n in names) + "\n")
    title = "Echo throughput relative to a bare epoll loop (= 1.0), median of the per-round ratios"
    sub = "%s, %s cores, Linux %s" % (info["cpu"], info["cores"], info["kernel"])
    plots = ", ".join(
        "'%s' using %d:xtic(1) title '%s' lc rgb '%s'" % (dat if i == 0 else "", i + 2, n,
                                                         colors[i])
        for i, n in enumerate(names))
    script = """
set terminal pngcairo size 1300,560 font 'DejaVu Sans,10'
set output '{out}'
set title "{title}\\n{{/*0.85 {sub}}}"
set style data histogram
set style histogram cluster gap 1
set style fill solid 0.9 border -1
set boxwidth 0.9
set key outside right top
set ylabel 'round trips/s (bulk: MB/s) / epoll'
set yrange [0:*]
set grid ytics
set xtics rotate by -25 scale 0
set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lc rgb '#444444'
plot {plots}
""".format(out=os.path.join(a.out, "throughput.png"), title=title, sub=sub, plots=plots)
    charts = [("throughput.png", "throughput relative to epoll")]
    # costs chart: instructions/rt, syscalls/rt at the bar configuration, memory
    bar_cfg = cfg_name(*BAR_CFG)
    cnt = {c["server"]: c for c in counts if c["config"] == bar_cfg}
    memd = {m["server"]: m for m in mem}
    cdat = os.path.join(tmp, "costs.dat")
    with open(cdat, "w") as f:
        for i, n in enumerate(names):
            f.write('%d "%s" %.1f %.4f %.1f\n' % (
                i, n, cnt[n]["instructions"] if n in cnt else 0,
                cnt[n]["syscalls"] if n in cnt else 0,
                memd[n]["bytes_per_conn"] if n in memd else 0))
    if cnt:
        script += """
set terminal pngcairo size 1300,420 font 'DejaVu Sans,10'
set output '{out}'
unset arrow
unset key
set style data boxes
set style fill solid 0.9 border -1
set boxwidth 0.7
set xtics rotate by -25 scale 0
set yrange [0:*]
set multiplot layout 1,3 title "Costs in the server (deterministic): {cfg}; memory with idle connections\\n{{/*0.85 {sub}}}"
set title 'user-space instructions per round trip'
set ylabel ''
plot '{dat}' using 1:3:($1+1):xtic(2) lc variable, '' using 1:3:(sprintf('%.0f',$3)) with labels offset 0,0.7
set title 'syscalls per round trip'
plot '{dat}' using 1:4:($1+1):xtic(2) lc variable, '' using 1:4:(sprintf('%.2f',$4)) with labels offset 0,0.7
set title 'resident bytes per idle connection'
plot '{dat}' using 1:5:($1+1):xtic(2) lc variable, '' using 1:5:(sprintf('%.0f',$5)) with labels offset 0,0.7
unset multiplot
""".format(out=os.path.join(a.out, "costs.png"), dat=cdat, cfg=bar_cfg, sub=sub)
        # lc variable indexes the default palette; map it to ours
        script = "".join("set linetype %d lc rgb '%s'\n" % (i + 1, c)
                         for i, c in enumerate(colors)) + script
        charts.append(("costs.png", "instructions, syscalls and memory"))
    sp = os.path.join(tmp, "charts.gp")
    with open(sp, "w") as f:
        f.write(script)
    r = subprocess.run(["gnuplot", sp], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        log("gnuplot failed: " + r.stderr.strip())
        return []
    return charts


def update_doc(doc, summary, out_rel):
    begin, end = "<!-- BEGIN GENERATED by bench/run.py -->", "<!-- END GENERATED -->"
    block = re.sub(r"\]\(([\w.-]+\.png)\)", lambda m: "](%s/%s)" % (out_rel, m.group(1)),
                   summary)
    text = open(doc).read() if os.path.exists(doc) else "# Performance\n\n%s\n%s\n" % (begin, end)
    if begin not in text or end not in text:
        text += "\n%s\n%s\n" % (begin, end)
    pre, rest = text.split(begin, 1)
    _, post = rest.split(end, 1)
    with open(doc, "w") as f:
        f.write(pre + begin + "\n" + block + "\n" + end + post)


# ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke check, a few minutes")
    ap.add_argument("--build", default="build-bench")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--doc", default=None, help="markdown file whose generated part to update")
    ap.add_argument("--seconds", type=float,
                    help="measured seconds per server and configuration (default 4 / 0.5)")
    ap.add_argument("--skip", default="", help="comma list of: matrix,counts,memory (for "
                    "plain TCP, TLS and Python alike), tls (everything over TLS), plain "
                    "(the C servers over plain TCP), python (the Python servers)")
    ap.add_argument("--only", default="", help="comma list of configurations to run, e.g. "
                    "'1 KiB x 10,bulk,TLS 1 KiB x 10,TLS bulk' (default: all)")
    a = ap.parse_args()
    P = dict(QUICK if a.quick else FULL)
    if a.seconds:
        P["seconds"] = a.seconds
        P["bulk_seconds"] = 2 * a.seconds
    skip = set(filter(None, a.skip.split(",")))
    unknown = skip - {"matrix", "counts", "memory", "tls", "plain", "python"}
    if unknown:
        ap.error("unknown --skip: %s" % ",".join(sorted(unknown)))
    a.build = os.path.abspath(a.build)
    os.makedirs(a.out, exist_ok=True)
    # echo_uring is only built where liburing is: uring_probe leaves it out
    needed = [("loadgen", "loadgen")] + ([] if "plain" in skip else [
        s for s in SERVERS if s[0] != URING_YARDSTICK]) + ([] if "tls" in skip else TLS_SERVERS)
    for name, binary in needed:
        if not os.access(os.path.join(a.build, binary), os.X_OK):
            sys.exit("missing %s in %s: build with `make bench-build`" % (binary, a.build))
    if "tls" not in skip and not shutil.which("openssl"):
        sys.exit("the openssl command is missing (Debian: openssl), or pass --skip tls")
    a.python, a.py_env = py_interpreter(a.build), py_env(a.build)
    py_versions = None if "python" in skip else py_check(a)
    pin = Pinning()
    if not pin.ok:
        log("WARNING: fewer than 2 CPUs or no taskset: server and client are not pinned")
    info = machine_info()
    load0, cpu0 = loadavg(), cpu_times()
    log("machine: %s, %s cores, Linux %s" % (info["cpu"], info["cores"], info["kernel"]))
    tmp = tempfile.mkdtemp(prefix="tpio-bench-")
    try:
        rows, configs, med = [], [], {}
        plain = "plain" not in skip
        a.notes = []
        uring_probe(a, pin, tmp, plain, py_versions is not None)
        if plain and "matrix" not in skip:
            rows, configs = run_matrix(a, P, pin, tmp)
            med = medians(rows, configs)
        counts, profiles = ([], {}) if "counts" in skip or not plain else run_counts(
            a, P, pin, tmp)
        mem = [] if "memory" in skip or not plain else run_memory(a, P, pin, tmp)
        bars = check_bars(med, configs, counts, mem) if med else []
        T = None
        if "tls" not in skip:
            tls = Tls(tmp)
            T = dict(rows=[], configs=[], med={}, counts=[], profiles={}, plain={}, mem=[],
                     openssl_version=sh("openssl version | cut -d' ' -f2"))
            if "matrix" not in skip:
                T["rows"], T["configs"] = run_matrix(a, P, pin, tmp, tls)
                T["med"] = medians(T["rows"], T["configs"], TLS_SERVERS)
            if "counts" not in skip:
                T["counts"], T["profiles"], T["plain"] = run_tls_counts(a, P, pin, tmp, tls,
                                                                         counts)
            if "memory" not in skip:
                T["mem"] = run_memory(a, P, pin, tmp, tls)
            bars += check_tls_bars(T)
        Y = None
        if py_versions:
            Y = dict(rows=[], configs=[], med={}, counts=[], profiles={}, bars=[],
                     versions=py_versions)
            if "matrix" not in skip:
                Y["rows"], Y["configs"] = run_matrix(a, P, pin, tmp, python=True)
                Y["med"] = medians(Y["rows"], Y["configs"], PY_SERVERS)
            if "counts" not in skip:
                Y["counts"], Y["profiles"] = run_py_counts(a, P, pin, tmp)
            Y["bars"] = check_py_bars(Y)
        cpu1 = cpu_times()
        d = [b - a for a, b in zip(cpu0, cpu1)]
        # user nice system idle iowait irq softirq steal ...
        info["load"] = ("load average %.2f at the start, %.2f at the end; CPU time over the run: "
                        "%.0f%% busy, %.0f%% stolen by the hypervisor" % (
                            load0, loadavg(), 100.0 * (sum(d) - d[3] - d[4]) / max(sum(d), 1),
                            100.0 * (d[7] if len(d) > 7 else 0) / max(sum(d), 1)))

        write_csv(os.path.join(a.out, "runs.csv"), rows,
                  ["server", "config", "size", "conns", "rep", "value", "unit", "p50_us",
                   "p99_us", "cpu_ns"])
        summ = []
        for cfg in configs:
            for n, _ in SERVERS:
                m = med.get((cfg, n))
                if m:
                    summ.append(dict(config=cfg, server=n, median=round(m["value"], 1),
                                     unit=m["unit"], runs=m["n"],
                                     ratio_epoll=round(ratio(med, cfg, n, YARDSTICK), 4),
                                     ratio_libuv=round(ratio(med, cfg, n, REFERENCE), 4),
                                     ratio_uring=(lambda r: round(r, 4) if r is not None
                                                  else "")(ratio(med, cfg, n, URING_YARDSTICK)),
                                     p50_us=m.get("p50_us", ""), p99_us=m.get("p99_us", ""),
                                     server_cpu_ns=round(m["cpu_ns"])))
        write_csv(os.path.join(a.out, "results.csv"), summ,
                  ["config", "server", "median", "unit", "runs", "ratio_epoll", "ratio_libuv",
                   "ratio_uring", "p50_us", "p99_us", "server_cpu_ns"])
        crow = []
        for c in counts:
            d = dict(c)
            d["breakdown"] = " ".join("%s=%.4f" % kv for kv in sorted(c["breakdown"].items()))
            crow.append(d)
        write_csv(os.path.join(a.out, "counts.csv"), crow,
                  ["config", "server", "instructions", "syscalls", "breakdown"])
        write_csv(os.path.join(a.out, "memory.csv"), mem,
                  ["server", "conns", "rss_before_kib", "rss_after_kib", "bytes_per_conn"])
        if profiles:
            with open(os.path.join(a.out, "profiles.txt"), "w") as f:
                for n, prof in profiles.items():
                    f.write("== %s: self instructions per round trip at %s ==\n" % (
                        n, cfg_name(*BAR_CFG)))
                    for fn, v in prof:
                        if abs(v) >= 0.5:
                            f.write("%10.1f  %s\n" % (v, fn))
                    f.write("\n")
        if T:
            write_tls_csvs(a, T)
        if Y:
            write_py_csvs(a, Y)
            Y["charts"] = py_chart(a, Y, info, tmp)
        charts = gnuplot_charts(a, med, configs, counts, mem, info, tmp) if med else []
        md = summary_md(a, P, info, med, configs, counts, profiles, mem, bars, charts, T, Y)
        with open(os.path.join(a.out, "summary.md"), "w") as f:
            f.write(md + "\n")
        if a.doc:
            rel = os.path.relpath(os.path.abspath(a.out), os.path.dirname(os.path.abspath(a.doc)))
            update_doc(a.doc, md, rel)
        print()
        if med:
            print("### Throughput" + md.split("### Throughput", 1)[1].split("### Latency")[0])
        if T and T["med"]:
            print("### TLS: throughput" + md.split("### TLS: throughput", 1)[1].split(
                "### TLS: latency")[0])
        if Y and Y["med"]:
            print("#### Python: throughput" + md.split("#### Python: throughput", 1)[1].split(
                "#### Python: latency")[0])
        for s, b, v, ok in bars + (Y["bars"] if Y else []):
            print("%-4s %-14s %-50s %s" % ({"yes": "PASS", "tie": "TIE", "info": "INFO"}.get(
                ok, "FAIL"), s, b, v))
        if a.quick:
            print("(quick: a short run per configuration; the timed bars are indicative only, "
                  "the counts are exact)")
        charts += Y.get("charts", []) if Y else []
        log("results in %s (summary.md, results.csv, runs.csv, counts.csv, memory.csv%s%s%s)" % (
            a.out, ", tls-*.csv" if T else "", ", py-*.csv" if Y else "",
            ", " + ", ".join(c[0] for c in charts) if charts else ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
