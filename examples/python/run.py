#!/usr/bin/python3
"""Run the specification's six Python examples, unchanged, on an event loop
installed through its policy, and compare what they print with what they
print on stock asyncio.

    run.py [--loop tpio|uvloop|asyncio]... [--build DIR] [--spec SPEC]

--loop   the loop to check (repeatable; default tpio). tpio is found in
         DIR/python (PYTHONPATH), DIR the build directory (default build).
--spec   transports-and-protocols.txt: first check that the .py files here
         are still the specification's code (extract.py --check).

Each example runs twice with /usr/bin/python3 (TPIO_PYTHON overrides) through
launch.py: on stock asyncio, then on the loop checked. The servers run in the
background on the examples' own ports, 8888 (TCP) and 9999 (UDP), refused up
front if busy; a client runs once its server listens (its socket, bound to
the port, is in /proc/net: the TCP server prints nothing until a client
comes, the UDP server prints "Starting UDP server" before it binds). The
server is then stopped with SIGINT, as Ctrl-C would: it must end as it ends
on stock asyncio (KeyboardInterrupt, with the same chain of exceptions
through the same lines of the example).

Compared: stdout exactly, but for the peer's ephemeral port in the servers'
lines and the date in subprocess_date.py's (its shape, and that it is the
date of the run); stderr exactly for the programs that end by themselves
(empty), the exceptions and the example's own frames for the servers; the
exit status. Exits 1 if any example fails or differs.
"""
import argparse
import datetime
import difflib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = os.environ.get("TPIO_PYTHON", "/usr/bin/python3")
HOST = "127.0.0.1"
TCP_PORT, UDP_PORT = 8888, 9999           # as written in the examples
READY_TIMEOUT = 10                        # seconds for a server to listen
RUN_TIMEOUT = 20                          # seconds for a client to finish
STOP_TIMEOUT = 10                         # seconds for a server to end
POLL = 0.01

# (server, its port and protocol, the line it prints first or None, client);
# server None: a program that ends by itself.
SCENARIOS = [
    ("tcp_echo_server.py", (TCP_PORT, "tcp"), None, "tcp_echo_client.py"),
    ("udp_echo_server.py", (UDP_PORT, "udp"), "Starting UDP server",
     "udp_echo_client.py"),
    (None, None, None, "socketpair.py"),
    (None, None, None, "subprocess_date.py"),
]


class Failure(Exception):
    pass


def ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = f.read().split()
            return int(lo), int(hi)
    except (OSError, ValueError):
        return 1024, 65535


EPHEMERAL = ephemeral_range()


# ---- what a run printed, made comparable -----------------------------------

def normalize_stdout(name, text, window):
    """The lines to compare; what may vary between runs is replaced."""
    out = []
    for line in text.splitlines():
        # the client's ephemeral port in the servers' lines
        def port(m):
            p = int(m.group(2))
            if EPHEMERAL[0] <= p <= EPHEMERAL[1]:
                return "%s<ephemeral port>)" % m.group(1)
            return m.group(0)
        line = re.sub(r"(\('127\.0\.0\.1', )(\d+)\)", port, line)
        if name == "subprocess_date.py":
            m = re.fullmatch(r"Current date: (\d{4}-\d\d-\d\d "
                             r"\d\d:\d\d:\d\d(?:\.\d{6})?)", line)
            if m:
                date = datetime.datetime.fromisoformat(m.group(1))
                lo, hi = window
                if lo - datetime.timedelta(seconds=1) <= date <= \
                        hi + datetime.timedelta(seconds=1):
                    line = "Current date: <the date of the run>"
                else:
                    line += "   <not the date of the run: %s .. %s>" % window
        out.append(line)
    return out


def traceback_shape(name, text):
    """A traceback's exceptions and the example's own frames, in order."""
    shape = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r'  File "(.*)", line (\d+), in (.*)', line)
        if m and os.path.basename(m.group(1)) == name:
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            shape.append("  %s:%s in %s: %s" % (name, m.group(2), m.group(3),
                                                 code))
        elif line.startswith("Exception in callback "):
            # the loop's exception handler; the handle's repr is the loop's
            shape.append("Exception in callback <callback>")
        elif line and not line.startswith((" ", "handle: <",
                                           "Traceback (most recent call")):
            shape.append(line)
    return shape


def status_text(rc):
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return "killed by %s" % signal.Signals(-rc).name
        except ValueError:
            return "killed by signal %d" % -rc
    return "exit status %d" % rc


class Run:
    """One program's run: its output, how it ended, the comparable view."""

    def __init__(self, name, stdout, stderr, rc, window, stopped=False):
        self.name, self.stdout, self.stderr, self.rc = name, stdout, stderr, rc
        self.stopped = stopped
        view = ["stdout:"] + ["  " + l for l in
                              normalize_stdout(name, stdout, window)]
        if stopped:
            view += ["stderr (exceptions, %s's frames):" % name] + \
                ["  " + l for l in traceback_shape(name, stderr)]
        else:
            view += ["stderr:"] + ["  " + l for l in stderr.splitlines()]
        view.append("ended: " + status_text(rc))
        self.view = view


# ---- running the programs ----------------------------------------------------

class Runner:
    """Starts the programs, each with its output in files of WORK."""

    def __init__(self, build, work):
        self.build = os.path.abspath(build)
        self.work = work
        self.procs = []

    def env(self, loop):
        env = dict(os.environ)
        for name in ("PYTHONUNBUFFERED", "TPIO_LAUNCH_INFO"):
            env.pop(name, None)
        if loop == "tpio":
            path = os.path.join(self.build, "python")
            env["PYTHONPATH"] = path + (os.pathsep + env["PYTHONPATH"]
                                        if env.get("PYTHONPATH") else "")
        return env

    def command(self, loop, name):
        """launch.py LOOP NAME; NAME None: an empty program."""
        return [PYTHON, "-u", os.path.join(HERE, "launch.py"), loop,
                os.path.join(HERE, name) if name else os.devnull]

    def start(self, loop, name):
        out = open(os.path.join(self.work, "%s.%s.out" % (name, loop)), "w+")
        err = open(os.path.join(self.work, "%s.%s.err" % (name, loop)), "w+")
        proc = subprocess.Popen(self.command(loop, name),
                                stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, env=self.env(loop), cwd=self.work)
        proc.files = (out, err)
        self.procs.append(proc)
        return proc

    @staticmethod
    def output(proc):
        texts = []
        for f in proc.files:
            f.seek(0)
            texts.append(f.read())
        return texts

    def finish(self, proc):
        """PROC has ended (or is killed): its output, its files closed."""
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out, err = self.output(proc)
        for f in proc.files:
            f.close()
        self.procs.remove(proc)
        return out, err

    def kill_all(self):
        for proc in list(self.procs):
            self.finish(proc)

    def run(self, loop, name):
        """Run NAME to completion (at most RUN_TIMEOUT seconds)."""
        lo = datetime.datetime.now()
        proc = self.start(loop, name)
        try:
            proc.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            out, err = self.finish(proc)
            raise Failure("%s did not end within %ds (killed); it printed:\n%s%s"
                          % (name, RUN_TIMEOUT, out, err))
        hi = datetime.datetime.now()
        out, err = self.finish(proc)
        return Run(name, out, err, proc.returncode, (lo, hi))

    def serve(self, loop, name, port, ready_line):
        """Start server NAME; return once it listens on PORT."""
        port_free(*port)
        proc = self.start(loop, name)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            out, err = self.output(proc)
            printed = ready_line is None or ready_line in out.splitlines()
            if printed and listening(proc.pid, *port):
                return proc
            if proc.poll() is not None:
                out, err = self.finish(proc)
                raise Failure("%s ended (%s) before it %s; it printed:\n%s%s"
                              % (name, status_text(proc.returncode),
                                 waiting_for(port, ready_line, "printed"),
                                 out, err))
            if time.monotonic() > deadline:
                out, err = self.finish(proc)
                raise Failure("%s did not %s within %ds (killed); it printed:"
                              "\n%s%s" % (name, waiting_for(port, ready_line,
                                                            "print"),
                                          READY_TIMEOUT, out, err))
            time.sleep(POLL)

    def stop(self, proc, name):
        """SIGINT the server, as Ctrl-C would; it must end by itself."""
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            out, err = self.finish(proc)
            raise Failure("%s did not end within %ds of SIGINT (killed); it "
                          "printed:\n%s%s" % (name, STOP_TIMEOUT, out, err))
        out, err = self.finish(proc)
        return Run(name, out, err, proc.returncode, None, stopped=True)

    def scenario(self, loop, server, port, ready_line, client):
        """The runs of one scenario on LOOP: [client] or [client, server]."""
        if server is None:
            return [self.run(loop, client)]
        proc = self.serve(loop, server, port, ready_line)
        try:
            client_run = self.run(loop, client)
        except Failure as e:
            try:
                r = self.stop(proc, server)
                e.args = ("%s\n%s, stopped with SIGINT (%s), printed:\n%s%s"
                          % (e, server, status_text(r.rc), r.stdout,
                             r.stderr),)
            except Failure as f:
                e.args = ("%s\n%s" % (e, f),)
            raise e
        return [client_run, self.stop(proc, server)]


def waiting_for(port, ready_line, verb):
    what = "listen on %s port %d" % (port[1].upper(), port[0])
    if ready_line:
        what = "print %r and %s" % (ready_line, what)
    if verb == "printed":
        what = what.replace("print ", "printed ").replace("listen ", "listened ")
    return what


def port_free(port, proto):
    """Refuse to start if something else holds the example's port."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    try:
        if proto == "tcp":   # as asyncio's create_server: TIME_WAIT is no owner
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, port))
    except OSError as e:
        raise Failure("%s port %d on %s is busy (%s): the Python examples use "
                      "it, as written; free it and run again"
                      % (proto.upper(), port, HOST, e.strerror))
    finally:
        s.close()


def socket_inodes(pid):
    inodes = set()
    fd_dir = "/proc/%d/fd" % pid
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def listening(pid, port, proto):
    """Whether process PID holds a socket bound to PORT (listening, for TCP)."""
    mine = socket_inodes(pid)
    if not mine:
        return False
    for table in (proto, proto + "6"):
        try:
            with open("/proc/net/" + table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if int(local.rsplit(":", 1)[1], 16) != port or inode not in mine:
                continue
            if proto == "udp" or state == "0A":       # 0A: TCP_LISTEN
                return True
    return False


# ---- the whole run -------------------------------------------------------------

def preflight(runner, loop):
    """Install LOOP and run nothing on it: the name of its loop class."""
    info = os.path.join(runner.work, "loop-class")
    env = runner.env(loop)
    env["TPIO_LAUNCH_INFO"] = info
    r = subprocess.run(runner.command(loop, None), env=env, cwd=runner.work,
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0 or r.stdout:
        where = (" from %s/python (is the Python extension built?)"
                 % runner.build) if loop == "tpio" else ""
        raise Failure("could not install %s%s: launch.py, given nothing to "
                      "run, %s:\n%s" % (loop, where, "ended with " +
                                        status_text(r.returncode)
                                        if r.returncode else "printed",
                                        r.stdout))
    with open(info) as f:
        return f.read().strip()


def show(run, label):
    print("== %s (%s) ==" % (run.name, label))
    sys.stdout.write(run.stdout)
    if run.stopped:
        print("[SIGINT; stderr: the exceptions, the example's frames:]")
        for line in traceback_shape(run.name, run.stderr):
            print("  " + line)
        print("[%s]" % status_text(run.rc))
    else:
        sys.stdout.write(run.stderr)
        if run.rc != 0:
            print("[%s]" % status_text(run.rc))


def compare(ref, run, loop):
    if ref.view == run.view:
        print("-- same as on stock asyncio")
        return True
    print("-- DIFFERS from stock asyncio (- asyncio, + %s):" % loop)
    sys.stdout.writelines(difflib.unified_diff(
        [l + "\n" for l in ref.view], [l + "\n" for l in run.view],
        "asyncio", loop, n=2))
    for r, who in ((ref, "asyncio"), (run, loop)):
        if r.stderr:
            print("-- %s's stderr on %s:" % (r.name, who))
            sys.stdout.write(r.stderr)
    return False


def run_all(runner, loops):
    """Every scenario on stock asyncio and on each loop; 1 if one failed."""
    failed = 0
    version = subprocess.run([PYTHON, "--version"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True).stdout
    for loop in loops:
        print("== The Python examples on %s, against stock asyncio (%s, %s) =="
              % (loop, PYTHON, version.strip()))
        try:
            print("(%s's policy makes a %s)" % (loop, preflight(runner, loop)))
        except Failure as e:
            print("FAILED: %s" % e, file=sys.stderr)
            failed = 1
            continue
        for server, port, ready_line, client in SCENARIOS:
            try:
                if port:
                    port_free(*port)
            except Failure as e:
                print("FAILED: %s" % e, file=sys.stderr)
                failed = 1
                continue
            try:
                refs = runner.scenario("asyncio", server, port, ready_line,
                                       client)
            except Failure as e:
                print("FAILED on stock asyncio: %s" % e, file=sys.stderr)
                failed = 1
                continue
            try:
                runs = runner.scenario(loop, server, port, ready_line, client)
            except Failure as e:
                print("FAILED on %s: %s" % (loop, e), file=sys.stderr)
                failed = 1
                continue
            for ref, run in zip(refs, runs):
                show(run, loop)
                if not compare(ref, run, loop):
                    print("FAILED: %s prints on %s what it does not on "
                          "stock asyncio" % (run.name, loop), file=sys.stderr)
                    failed = 1
    return failed


def main():
    sys.stdout.reconfigure(line_buffering=True)   # in step with stderr
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loop", action="append",
                    choices=("tpio", "uvloop", "asyncio"))
    ap.add_argument("--build", default="build")
    ap.add_argument("--spec")
    args = ap.parse_args()
    loops = args.loop or ["tpio"]

    failed = 0
    if args.spec:
        r = subprocess.run([PYTHON, os.path.join(HERE, "extract.py"),
                            args.spec, "--check"])
        if r.returncode:
            print("FAILED: examples/python/*.py are not the specification's "
                  "examples", file=sys.stderr)
            failed = 1
        else:
            print("The six examples are the specification's code, unchanged")

    with tempfile.TemporaryDirectory(prefix="tpio-pyexamples.") as work:
        runner = Runner(args.build, work)
        try:
            failed |= run_all(runner, loops)
        finally:
            runner.kill_all()
    if failed:
        print("Some Python examples FAILED", file=sys.stderr)
    else:
        print("All Python examples print on %s what they print on stock asyncio"
              % " and ".join(loops))
    return failed


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
