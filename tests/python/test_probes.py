"""Bad inputs to every public call of the loop and of its transports.

One table of probes. Each probe makes one call with a bad argument (or in a
bad state: a closed loop, a running one, another thread, a closed
transport) and records what the user observes:

  - what the call raised: ("TypeError", message regex) or None;
  - what surfaced later, when the loop next ran (asyncio checks some
    arguments only when it uses them: a callback that is not callable
    fails when it runs, a timer's `when` is compared in the loop itself);
  - the exceptions the exception handler was given meanwhile (their type
    names), and for transports the protocol's callbacks (connection_lost's
    argument above all).

Expected values are asyncio's (Python 3.11's SelectorEventLoop). After each
probe the loop must still work (callbacks, timers, a reader) and no file
descriptor may be left open.
"""

import asyncio
import errno
import gc
import math
import os
import re
import signal
import shutil
import socket
import tempfile
import threading
import warnings

import pytest

from tputil import RecDgram, RecProto, TIMEOUT, raw_listener, run, spin

LOCAL = "127.0.0.1"
LONG_PATH = "/tmp/" + "x" * 200


# ---------------------------------------------------------------- records

class Raised:
    """What a call raised; equal to ("Type",), ("Type", regex) or
    ("Type", regex, errno)."""

    def __init__(self, exc):
        self.type = type(exc).__name__
        self.msg = str(exc)
        self.errno = getattr(exc, "errno", None)

    def __eq__(self, other):
        if isinstance(other, Raised):
            return (self.type, self.msg, self.errno) == (other.type, other.msg,
                                                         other.errno)
        if not isinstance(other, tuple) or not other:
            return NotImplemented
        if other[0] != self.type:
            return False
        if len(other) > 1 and other[1] is not None and \
                not re.search(other[1], self.msg):
            return False
        if len(other) > 2 and other[2] != self.errno:
            return False
        return True

    def __repr__(self):
        if self.errno is not None:
            return f"({self.type!r}, {self.msg!r}, {self.errno})"
        return f"({self.type!r}, {self.msg!r})"


class Probe:
    """What a probe function is given: the loop and a few helpers."""

    def __init__(self, loop):
        self.loop = loop
        self.handles = []
        self._cleanup = []

    def later(self, fn, *args):
        """fn(*args) at the end of the probe (errors ignored)."""
        self._cleanup.append((fn, args))

    def close_now(self, fd):
        """os.close(fd) now, not at the end (the number may be reused)."""
        os.close(fd)
        self._cleanup.remove((os.close, (fd,)))

    def call(self, fn, *args, **kwargs):
        """fn(*args, **kwargs): None or what it raised; a handle returned
        is cancelled at the end."""
        try:
            r = fn(*args, **kwargs)
        except Exception as exc:
            return Raised(exc)
        if isinstance(r, asyncio.Handle):
            self.handles.append(r)
        return None

    def drive(self, coro):
        """Run a coroutine by hand (the loop is closed): what it raised,
        None when it finished, "pending" when it waits for the loop."""
        try:
            coro.send(None)
        except StopIteration:
            return None
        except Exception as exc:
            return Raised(exc)
        coro.close()
        return "pending"

    async def make(self, aw):
        """Await a call that makes a transport or a server: "ok" (what it
        made is closed again) or the exception propagates."""
        r = await aw
        if isinstance(r, asyncio.AbstractServer):
            r.close()
            await r.wait_closed()
        elif isinstance(r, tuple) and isinstance(r[0], asyncio.BaseTransport):
            r[0].close()
            await spin()
            lost = getattr(r[1], "lost", None)
            if lost is not None:   # a child: its end takes a while
                await asyncio.wait_for(lost, TIMEOUT)
        return "ok"

    # transports, closed at the end

    async def tcp(self):
        lsock = raw_listener()
        self.later(lsock.close)
        tr, pr = await self.loop.create_connection(
            lambda: RecProto(self.loop), *lsock.getsockname())
        lsock.settimeout(TIMEOUT)
        peer, _ = lsock.accept()
        self.later(peer.close)
        self.later(tr.close)
        return tr, pr, peer

    async def read_pipe(self):
        r, w = os.pipe()
        self.later(os.close, w)
        f = os.fdopen(r, "rb", 0)
        self.later(f.close)
        tr, pr = await self.loop.connect_read_pipe(
            lambda: RecProto(self.loop), f)
        self.later(tr.close)
        return tr, pr, w

    async def write_pipe(self):
        r, w = os.pipe()
        self.later(os.close, r)
        f = os.fdopen(w, "wb", 0)
        self.later(f.close)
        tr, pr = await self.loop.connect_write_pipe(
            lambda: RecProto(self.loop), f)
        self.later(tr.close)
        return tr, pr, r

    async def udp(self, remote=False):
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind((LOCAL, 0))
        self.later(peer.close)
        kw = ({"remote_addr": peer.getsockname()} if remote
              else {"local_addr": (LOCAL, 0)})
        tr, pr = await self.loop.create_datagram_endpoint(
            lambda: RecDgram(self.loop), **kw)
        self.later(tr.close)
        return tr, pr, peer

    async def lost(self, pr):
        """connection_lost's argument (its type name), once it ran."""
        exc = await asyncio.wait_for(pr.lost, TIMEOUT)
        return None if exc is None else type(exc).__name__

    def finish(self):
        for h in self.handles:
            h.cancel()
        for fn, args in reversed(self._cleanup):
            try:
                fn(*args)
            except Exception:
                pass
        self._cleanup = []


def _fds():
    return len(os.listdir("/proc/self/fd"))


def _record_handler(loop, seen):
    def handler(lp, context):
        exc = context.get("exception")
        seen.append(None if exc is None else type(exc).__name__)
    loop.set_exception_handler(handler)


async def _still_works(loop):
    """Callbacks, timers and a reader still run."""
    got = []
    a, b = socket.socketpair()
    try:
        fut = loop.create_future()
        loop.call_soon(got.append, "soon")
        loop.call_later(0, got.append, "later")
        loop.add_reader(a.fileno(), lambda: fut.done() or fut.set_result(
            a.recv(10)))
        b.send(b"!")
        got.append(await asyncio.wait_for(fut, TIMEOUT))
        loop.remove_reader(a.fileno())
        await asyncio.sleep(0)
    finally:
        a.close()
        b.close()
    return got


# ---------------------------------------------------------------- the table

PROBES = {}
EXPECT = {}
MARKS = {}


# Subprocess probes where tpio differs (an expected failure on tpio,
# strict): none today.
SUBPROCESS_KNOWN = {}


def probe(result=None, *, at_run=None, reported=(), differs=None):
    """Register fn as a probe: what it returns must equal `result`, what the
    next run of the loop raises `at_run`, the exception handler's
    exceptions `reported` (type names, in order). differs: a difference
    documented in docs/python.md (the probe is an expected failure on
    tpio)."""
    def deco(fn):
        name = fn.__name__
        assert name not in PROBES, name
        PROBES[name] = fn
        EXPECT[name] = (result, at_run, list(reported))
        if differs:
            MARKS[name] = pytest.mark.tpio_differs(reason=differs)
        return fn
    return deco


class Proto(asyncio.Protocol):
    pass


async def acoro():
    pass


def lit(text):
    """A regex matching exactly text."""
    return "^" + re.escape(text) + "$"


NOT_CALLABLE = "call_soon & co. refuse a non-callable or a coroutine object"
CLOSED = ("RuntimeError", "^Event loop is closed$")
NOT_THREAD = ("RuntimeError", "^Non-thread-safe operation invoked on an event "
                              "loop other than the current one$")
NAN = float("nan")
INF = float("inf")


# ---- call_soon / call_later / call_at / call_soon_threadsafe

@probe(None, reported=["TypeError"], differs=NOT_CALLABLE)
def call_soon_not_callable(t):
    return t.call(t.loop.call_soon, 42)


@probe(None, reported=["TypeError"], differs=NOT_CALLABLE)
def call_soon_coroutine_object(t):
    c = acoro()
    t.later(c.close)
    return t.call(t.loop.call_soon, c)


@probe(None)
def call_soon_coroutine_function(t):
    # asyncio checks for one in debug mode only: the call makes a coroutine
    # that is never awaited
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = t.call(t.loop.call_soon, acoro)
        t.loop.run_until_complete(spin())
        gc.collect()
    return r


@probe(("TypeError", lit("coroutines cannot be used with call_soon()")))
def call_soon_coroutine_function_debug(t):
    t.loop.set_debug(True)
    try:
        return t.call(t.loop.call_soon, acoro)
    finally:
        t.loop.set_debug(False)


@probe(("TypeError",
        lit("a callable object was expected by call_soon(), got 42")))
def call_soon_not_callable_debug(t):
    t.loop.set_debug(True)
    try:
        return t.call(t.loop.call_soon, 42)
    finally:
        t.loop.set_debug(False)


@probe(None, reported=["AttributeError"])
def call_soon_context_not_a_context(t):
    return t.call(t.loop.call_soon, print, context=42)


@probe((None, ["ran"]))
def call_soon_context_duck(t):
    # asyncio calls context.run(callback, *args): anything with a run()
    seen = []

    class Ctx:
        def run(self, fn, *args):
            seen.append("ran")
            return fn(*args)
    r = t.call(t.loop.call_soon, lambda: None, context=Ctx())
    t.loop.run_until_complete(spin())
    return r, seen


@probe(("TypeError",))
def call_soon_bad_keyword(t):
    return t.call(t.loop.call_soon, print, delay=1)


@probe(("TypeError",))
def call_soon_no_callback(t):
    return t.call(t.loop.call_soon)


@probe(("TypeError", "unsupported operand"))
def call_later_delay_decimal(t):
    import decimal
    return t.call(t.loop.call_later, decimal.Decimal(1), print)


@probe((None, ["ran"]))
def call_later_delay_fraction(t):
    import fractions
    seen = []
    r = t.call(t.loop.call_later, fractions.Fraction(0), seen.append, "ran")
    t.loop.run_until_complete(spin())
    return r, seen


@probe(("TypeError",))
def call_later_delay_str(t):
    return t.call(t.loop.call_later, "x", print)


@probe(("TypeError", "^delay must not be None$"))
def call_later_delay_none(t):
    return t.call(t.loop.call_later, None, print)


@probe((None, ["ran"]))
def call_later_delay_nan(t):
    # asyncio schedules it; a NaN compares false with everything, so the
    # loop takes it as due
    seen = []
    r = t.call(t.loop.call_later, NAN, seen.append, "ran")
    t.loop.run_until_complete(spin())
    return r, seen


@probe((None, [], True))
def call_later_delay_inf(t):
    seen = []
    h = t.loop.call_later(INF, seen.append, "ran")
    t.handles.append(h)
    t.loop.run_until_complete(spin())
    return None, seen, h.when() == INF


@probe((None, ["ran"]))
def call_later_delay_minus_inf(t):
    seen = []
    r = t.call(t.loop.call_later, -INF, seen.append, "ran")
    t.loop.run_until_complete(spin())
    return r, seen


@probe((None, [], True))
def call_later_delay_huge(t):
    seen = []
    h = t.loop.call_later(1e300, seen.append, "ran")
    t.handles.append(h)
    t.loop.run_until_complete(spin())
    return None, seen, h.when() > 1e299


@probe((None, ["ran"]))
def call_later_delay_negative(t):
    seen = []
    r = t.call(t.loop.call_later, -5, seen.append, "ran")
    t.loop.run_until_complete(spin())
    return r, seen


@probe(None, reported=["TypeError"], differs=NOT_CALLABLE)
def call_later_not_callable(t):
    r = t.call(t.loop.call_later, 0, 42)
    t.loop.run_until_complete(_until(lambda: t.seen))
    return r


@probe(None, at_run=("TypeError",),
       differs="call_at checks `when` at once (asyncio: in the loop's run)")
def call_at_when_str(t):
    return t.call(t.loop.call_at, "x", print)


@probe(("TypeError", "^when cannot be None$"))
def call_at_when_none(t):
    return t.call(t.loop.call_at, None, print)


@probe((None, ["ran"]))
def call_at_when_nan(t):
    seen = []
    r = t.call(t.loop.call_at, NAN, seen.append, "ran")
    t.loop.run_until_complete(spin())
    return r, seen


@probe((None, [], True))
def call_at_when_inf(t):
    seen = []
    h = t.loop.call_at(INF, seen.append, "ran")
    t.handles.append(h)
    t.loop.run_until_complete(spin())
    return None, seen, h.when() == INF


@probe((None, ["ran"]))
def call_at_when_zero(t):
    seen = []
    r = t.call(t.loop.call_at, 0, seen.append, "ran")
    t.loop.run_until_complete(spin())
    return r, seen


@probe(None, reported=["TypeError"], differs=NOT_CALLABLE)
def call_soon_threadsafe_not_callable(t):
    return t.call(t.loop.call_soon_threadsafe, 42)


@probe(None, reported=["AttributeError"])
def call_soon_threadsafe_context_not_a_context(t):
    return t.call(t.loop.call_soon_threadsafe, print, context="x")


@probe(None, reported=["AttributeError"])
def call_later_context_not_a_context(t):
    r = t.call(t.loop.call_later, 0, print, context=[])
    t.loop.run_until_complete(_until(lambda: t.seen))
    return r


# ---- what asyncio's own code does (BaseEventLoop): the same on both

@probe([("TypeError", "An asyncio.Future, a coroutine or an awaitable is "
                      "required"),
        ("TypeError", "a coroutine was expected"),
        ("TypeError", "A callable object or None is expected"),
        ("TypeError", "task factory must be a callable or None")])
def loop_base_methods(t):
    lp = t.loop
    return [t.call(lp.run_until_complete, 42), t.call(lp.create_task, 42),
            t.call(lp.set_exception_handler, 42),
            t.call(lp.set_task_factory, 42)]


# ---- add_reader / add_writer / remove_reader / remove_writer

def _tmpdir(t):
    d = tempfile.mkdtemp(prefix="tpio-probe-")
    t.later(shutil.rmtree, d, True)
    return d


def _closed_fd():
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    return r


@probe(("ValueError", "^Invalid file descriptor: -1$"))
def add_reader_minus_one(t):
    return t.call(t.loop.add_reader, -1, print)


@probe(("ValueError", "^Invalid file descriptor: -1$"))
def add_writer_minus_one(t):
    return t.call(t.loop.add_writer, -1, print)


@probe(("ValueError", "^Invalid file object: 'x'$"))
def add_reader_str(t):
    return t.call(t.loop.add_reader, "x", print)


@probe(("ValueError", "^Invalid file object: None$"))
def add_writer_none(t):
    return t.call(t.loop.add_writer, None, print)


@probe(("ValueError", "^Invalid file object: <object object"))
def add_reader_no_fileno(t):
    return t.call(t.loop.add_reader, object(), print)


@probe(("ValueError", "^Invalid file object: 1.5$"))
def add_reader_float(t):
    return t.call(t.loop.add_reader, 1.5, print)


@probe(("OSError", None, errno.EBADF))
def add_reader_closed_fd(t):
    return t.call(t.loop.add_reader, _closed_fd(), print)


@probe(("OSError", None, errno.EBADF))
def add_writer_closed_fd(t):
    return t.call(t.loop.add_writer, _closed_fd(), print)


@probe(("OSError", None, errno.EBADF))
def add_reader_huge_fd(t):
    return t.call(t.loop.add_reader, 10 ** 6, print)


@probe(("OverflowError",))
def add_reader_fd_over_int(t):
    return t.call(t.loop.add_reader, 2 ** 40, print)


@probe(("ValueError", "^Invalid file object: "))
def add_reader_closed_file(t):
    r, w = os.pipe()
    os.close(w)
    f = os.fdopen(r, "rb")
    f.close()
    return t.call(t.loop.add_reader, f, print)


@probe(None, reported=["TypeError"],
       differs="add_reader / add_writer refuse a non-callable at once")
def add_reader_not_callable(t):
    a, b = socket.socketpair()
    t.later(a.close)
    t.later(b.close)
    r = t.call(t.loop.add_reader, a.fileno(), 42)
    b.send(b"x")
    t.loop.run_until_complete(_until(lambda: t.seen))
    t.loop.remove_reader(a.fileno())
    del t.seen[1:]   # level-triggered: one report per iteration until removed
    return r


@probe(("RuntimeError", "^File descriptor \\d+ is used by transport"))
async def add_reader_transport_fd(t):
    tr, pr, peer = await t.tcp()
    fd = tr.get_extra_info("socket").fileno()
    return t.call(t.loop.add_reader, fd, print)


@probe(("RuntimeError", "^File descriptor \\d+ is used by transport"))
async def remove_writer_transport_fd(t):
    tr, pr, peer = await t.tcp()
    fd = tr.get_extra_info("socket").fileno()
    return t.call(t.loop.remove_writer, fd)


@probe(("ValueError", "^Invalid file descriptor: -1$"))
def remove_reader_minus_one(t):
    return t.call(t.loop.remove_reader, -1)


@probe(("ValueError", "^Invalid file object: 'x'$"))
def remove_writer_str(t):
    return t.call(t.loop.remove_writer, "x")


@probe(("ValueError", "^Invalid file object: <object object"))
def remove_reader_no_fileno(t):
    return t.call(t.loop.remove_reader, object())


@probe(False)
def remove_reader_closed_fd(t):
    return t.loop.remove_reader(_closed_fd())


@probe(False)
def remove_writer_huge_fd(t):
    return t.loop.remove_writer(10 ** 6)


@probe(("TypeError",))
def add_reader_no_callback(t):
    return t.call(t.loop.add_reader, 0)


# ---- signals

@probe(("ValueError", "^invalid signal number 0$"))
def add_signal_handler_zero(t):
    return t.call(t.loop.add_signal_handler, 0, print)


@probe(("ValueError", "^invalid signal number 999$"))
def add_signal_handler_999(t):
    return t.call(t.loop.add_signal_handler, 999, print)


@probe(("TypeError", "^sig must be an int, not 'x'$"))
def add_signal_handler_str(t):
    return t.call(t.loop.add_signal_handler, "x", print)


@probe(("TypeError", "^sig must be an int, not 1.5$"))
def add_signal_handler_float(t):
    return t.call(t.loop.add_signal_handler, 1.5, print)


@probe(("RuntimeError", "^sig 9 cannot be caught$"))
def add_signal_handler_sigkill(t):
    return t.call(t.loop.add_signal_handler, signal.SIGKILL, print)


@probe(("RuntimeError", "^sig 19 cannot be caught$"))
def add_signal_handler_sigstop(t):
    return t.call(t.loop.add_signal_handler, signal.SIGSTOP, print)


@probe(("TypeError", "^coroutines cannot be used with add_signal_handler"))
def add_signal_handler_coroutine_function(t):
    return t.call(t.loop.add_signal_handler, signal.SIGUSR1, acoro)


@probe(("TypeError", "^coroutines cannot be used with add_signal_handler"))
def add_signal_handler_coroutine_object(t):
    c = acoro()
    t.later(c.close)
    return t.call(t.loop.add_signal_handler, signal.SIGUSR1, c)


@probe((None, signal.SIG_DFL))
def add_signal_handler_not_callable(t):
    # asyncio takes it (and fails when the signal comes)
    r = t.call(t.loop.add_signal_handler, signal.SIGUSR2, 42)
    t.loop.remove_signal_handler(signal.SIGUSR2)
    return r, signal.getsignal(signal.SIGUSR2)


@probe(("TypeError",))
def add_signal_handler_keyword(t):
    return t.call(t.loop.add_signal_handler, signal.SIGUSR1, print, x=1)


@probe(("TypeError", "^sig must be an int, not 'x'$"))
def remove_signal_handler_str(t):
    return t.call(t.loop.remove_signal_handler, "x")


@probe(("ValueError", "^invalid signal number 0$"))
def remove_signal_handler_zero(t):
    return t.call(t.loop.remove_signal_handler, 0)


@probe(False)
def remove_signal_handler_sigkill(t):
    return t.loop.remove_signal_handler(signal.SIGKILL)


@probe(False)
def remove_signal_handler_not_installed(t):
    return t.loop.remove_signal_handler(signal.SIGUSR1)


@probe(("RuntimeError", "main thread"))
def add_signal_handler_other_thread(t):
    out = []
    th = threading.Thread(target=lambda: out.append(
        t.call(t.loop.add_signal_handler, signal.SIGUSR1, print)))
    th.start()
    th.join(TIMEOUT)
    return out[0]


# ---- create_connection

def _cc(t, *args, **kwargs):
    return t.make(t.loop.create_connection(Proto, *args, **kwargs))


@probe(("TypeError",))
async def create_connection_host_int(t):
    return await _cc(t, 123, 80)


@probe(("TypeError",))
async def create_connection_host_list(t):
    return await _cc(t, ["127.0.0.1"], 80)


@probe("ok")
async def create_connection_host_bytes(t):
    lsock = raw_listener()
    t.later(lsock.close)
    return await _cc(t, LOCAL.encode(), lsock.getsockname()[1])


@probe(("gaierror",))
async def create_connection_port_service_unknown(t):
    return await _cc(t, LOCAL, "no-such-service")


@probe(("OverflowError", "port must be 0-65535"))
async def create_connection_port_too_big(t):
    return await _cc(t, LOCAL, 70000)


@probe(("OverflowError", "port must be 0-65535"))
async def create_connection_port_negative(t):
    return await _cc(t, LOCAL, -1)


@probe(("ConnectionRefusedError",))
async def create_connection_port_zero(t):
    return await _cc(t, LOCAL, 0)


@probe(("OSError",))
async def create_connection_port_float_name(t):
    # a float port with a host name: getaddrinfo() refuses it
    return await _cc(t, "localhost", 1.5)


@probe(("OSError",))
async def create_connection_port_list(t):
    return await _cc(t, "localhost", [80])


@probe(("ValueError", "^host/port and sock can not be specified at the same "
                      "time$"))
async def create_connection_sock_and_host(t):
    s = socket.socket()
    t.later(s.close)
    return await _cc(t, LOCAL, 80, sock=s)


@probe(("ValueError", "^host and port was not specified and no sock "
                      "specified$"))
async def create_connection_nothing(t):
    return await _cc(t)


@probe(("ValueError", "^A Stream Socket was expected, got "))
async def create_connection_sock_dgram(t):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t.later(s.close)
    return await _cc(t, sock=s)


@probe(("AttributeError",))
async def create_connection_sock_not_a_socket(t):
    return await _cc(t, sock=object())


@probe(("gaierror",))
async def create_connection_family_mismatch(t):
    return await _cc(t, LOCAL, 80, family=socket.AF_INET6)


@probe(("gaierror",))
async def create_connection_family_unix(t):
    return await _cc(t, LOCAL, 80, family=socket.AF_UNIX)


@probe(("TypeError",))
async def create_connection_family_str(t):
    return await _cc(t, "localhost", 80, family="x")


@probe(("TypeError",))
async def create_connection_flags_str(t):
    return await _cc(t, "localhost", 80, flags="x")


@probe("ok")
async def create_connection_flags_str_numeric(t):
    # a numeric host: asyncio calls no getaddrinfo(), the flags go unread
    lsock = raw_listener()
    t.later(lsock.close)
    return await _cc(t, LOCAL, lsock.getsockname()[1], flags="x")


@probe(("TypeError",))
async def create_connection_proto_str(t):
    return await _cc(t, LOCAL, 80, proto="x")


@probe("ok")
async def create_connection_happy_eyeballs_zero(t):
    lsock = raw_listener()
    t.later(lsock.close)
    return await _cc(t, LOCAL, lsock.getsockname()[1],
                     happy_eyeballs_delay=0)


@probe(("ValueError", "not enough values to unpack"))
async def create_connection_local_addr_str(t):
    return await _cc(t, LOCAL, 80, local_addr="x")


@probe(("TypeError",))
async def create_connection_local_addr_int(t):
    return await _cc(t, LOCAL, 80, local_addr=42)


@probe(("ValueError", "not enough values to unpack"))
async def create_connection_local_addr_one(t):
    return await _cc(t, LOCAL, 80, local_addr=(LOCAL,))


@probe(("gaierror",))
async def create_connection_local_addr_port_name(t):
    return await _cc(t, LOCAL, 80, local_addr=(LOCAL, "no-such-service"))


@probe(("OverflowError", "port must be 0-65535"))
async def create_connection_local_addr_port_too_big(t):
    lsock = raw_listener()
    t.later(lsock.close)
    return await _cc(t, LOCAL, lsock.getsockname()[1],
                     local_addr=(LOCAL, 70000))


@probe(("OSError", None, errno.EADDRNOTAVAIL))
async def create_connection_local_addr_not_local(t):
    lsock = raw_listener()
    t.later(lsock.close)
    return await _cc(t, LOCAL, lsock.getsockname()[1],
                     local_addr=("192.0.2.1", 0))


@probe(("OSError",))
async def create_connection_local_addr_family_mismatch(t):
    lsock = raw_listener()
    t.later(lsock.close)
    return await _cc(t, LOCAL, lsock.getsockname()[1], local_addr=("::1", 0))


@probe("ok")
async def create_connection_happy_eyeballs_negative(t):
    lsock = raw_listener()
    t.later(lsock.close)
    return await _cc(t, LOCAL, lsock.getsockname()[1],
                     happy_eyeballs_delay=-1)


@probe(("ValueError", "^ssl_handshake_timeout is only meaningful with ssl$"))
async def create_connection_handshake_timeout_no_ssl(t):
    return await _cc(t, LOCAL, 80, ssl_handshake_timeout=1)


@probe(("ValueError", "^ssl_shutdown_timeout is only meaningful with ssl$"))
async def create_connection_shutdown_timeout_no_ssl(t):
    return await _cc(t, LOCAL, 80, ssl_shutdown_timeout=1)


@probe(("ValueError", "^server_hostname is only meaningful with ssl$"))
async def create_connection_server_hostname_no_ssl(t):
    return await _cc(t, LOCAL, 80, server_hostname="x")


@probe(("TypeError",))
async def create_connection_unknown_keyword(t):
    return await _cc(t, LOCAL, 80, reuse_port=True)


# ---- create_server

def _cs(t, *args, **kwargs):
    return t.make(t.loop.create_server(Proto, *args, **kwargs))


@probe(("gaierror",))
async def create_server_port_service_unknown(t):
    return await _cs(t, LOCAL, "no-such-service")


@probe(("OverflowError",))
async def create_server_port_too_big(t):
    return await _cs(t, LOCAL, 70000)


@probe(("OverflowError",))
async def create_server_port_negative(t):
    return await _cs(t, LOCAL, -1)


@probe(("OSError", lit("Int or String expected")))
async def create_server_port_float(t):
    # a float port with a host name: getaddrinfo() refuses it
    return await _cs(t, "localhost", 1.5)


@probe(("TypeError",))
async def create_server_host_int(t):
    return await _cs(t, 123, 0)


@probe(("TypeError",))
async def create_server_hosts_with_int(t):
    return await _cs(t, [LOCAL, 123], 0)


@probe(("gaierror",))
async def create_server_host_unknown(t):
    return await _cs(t, "no-such-host.invalid", 0)


@probe(("TypeError",))
async def create_server_backlog_str(t):
    return await _cs(t, LOCAL, 0, backlog="x")


@probe(("TypeError",))
async def create_server_backlog_float(t):
    return await _cs(t, LOCAL, 0, backlog=1.5)


@probe("ok")
async def create_server_backlog_negative(t):
    return await _cs(t, LOCAL, 0, backlog=-1)


@probe(("OverflowError",))
async def create_server_backlog_huge(t):
    return await _cs(t, LOCAL, 0, backlog=2 ** 40)


@probe("ok")
async def create_server_reuse_port_str(t):
    return await _cs(t, LOCAL, 0, reuse_port="yes")


@probe("ok")
async def create_server_flags_str(t):
    # a numeric host: asyncio calls no getaddrinfo(), the flags go unread
    return await _cs(t, LOCAL, 0, flags="x")


@probe(("TypeError",))
async def create_server_flags_str_any_host(t):
    return await _cs(t, None, 0, flags="x")


@probe(("TypeError",))
async def create_server_family_float(t):
    return await _cs(t, LOCAL, 0, family=1.5)


@probe(("gaierror",))
async def create_server_family_unix(t):
    return await _cs(t, LOCAL, 0, family=socket.AF_UNIX)


@probe(("ValueError", "^host/port and sock can not be specified at the same "
                      "time$"))
async def create_server_sock_and_host(t):
    s = socket.socket()
    t.later(s.close)
    return await _cs(t, LOCAL, 0, sock=s)


@probe(("ValueError", "^Neither host/port nor sock were specified$"))
async def create_server_nothing(t):
    return await _cs(t)


@probe(("ValueError", "^A Stream Socket was expected, got "))
async def create_server_sock_dgram(t):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t.later(s.close)
    return await _cs(t, sock=s)


@probe(("TypeError", "^ssl argument must be an SSLContext or None$"))
async def create_server_ssl_true(t):
    return await _cs(t, LOCAL, 0, ssl=True)


@probe(("ValueError", "^ssl_handshake_timeout is only meaningful with ssl$"))
async def create_server_handshake_timeout_no_ssl(t):
    return await _cs(t, LOCAL, 0, ssl_handshake_timeout=1)


@probe(("ValueError", "^A Stream Socket was expected, got "))
async def connect_accepted_socket_dgram(t):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t.later(s.close)
    return await t.make(t.loop.connect_accepted_socket(Proto, s))


@probe(("AttributeError",))
async def connect_accepted_socket_not_a_socket(t):
    return await t.make(t.loop.connect_accepted_socket(Proto, object()))


@probe(("ValueError", "^ssl_handshake_timeout is only meaningful with ssl$"))
async def connect_accepted_socket_handshake_timeout(t):
    a, b = socket.socketpair()
    t.later(a.close)
    t.later(b.close)
    return await t.make(t.loop.connect_accepted_socket(
        Proto, a, ssl_handshake_timeout=1))


@probe([None, (), ("RuntimeError", "is closed$"), None, False])
async def server_after_close(t):
    srv = await t.loop.create_server(Proto, LOCAL, 0)
    srv.close()
    out = [t.call(srv.close), srv.sockets]
    try:
        await srv.serve_forever()
    except Exception as exc:
        out.append(Raised(exc))
    try:
        await srv.wait_closed()
        out.append(None)
    except Exception as exc:
        out.append(Raised(exc))
    out.append(srv.is_serving())
    return out


# ---- Unix sockets

def _cus(t, *args, **kwargs):
    return t.make(t.loop.create_unix_server(Proto, *args, **kwargs))


def _cuc(t, *args, **kwargs):
    return t.make(t.loop.create_unix_connection(Proto, *args, **kwargs))


@probe(("TypeError", "expected str, bytes or os.PathLike object, not int"))
async def create_unix_server_path_int(t):
    return await _cus(t, 123)


@probe(("OSError", "AF_UNIX path too long"))
async def create_unix_server_path_too_long(t):
    return await _cus(t, LONG_PATH)


@probe(("IndexError",))
async def create_unix_server_path_empty(t):
    return await _cus(t, "")


@probe(("FileNotFoundError",))
async def create_unix_server_path_no_dir(t):
    return await _cus(t, "/nonexistent-dir/sock")


@probe(("TypeError",))
async def create_unix_server_backlog_str(t):
    d = _tmpdir(t)
    return await _cus(t, os.path.join(d, "s"), backlog="x")


@probe(("ValueError", "^path and sock can not be specified at the same "
                      "time$"))
async def create_unix_server_path_and_sock(t):
    s = socket.socket(socket.AF_UNIX)
    t.later(s.close)
    return await _cus(t, "/tmp/x", sock=s)


@probe(("ValueError", "^A UNIX Domain Stream Socket was expected, got "))
async def create_unix_server_sock_inet(t):
    s = socket.socket()
    t.later(s.close)
    return await _cus(t, sock=s)


@probe(("ValueError", "^path was not specified, and no sock specified$"))
async def create_unix_server_nothing(t):
    return await _cus(t)


@probe(("TypeError", "expected str, bytes or os.PathLike object, not int"))
async def create_unix_connection_path_int(t):
    return await _cuc(t, 123)


@probe(("OSError", "AF_UNIX path too long"))
async def create_unix_connection_path_too_long(t):
    return await _cuc(t, LONG_PATH)


@probe(("FileNotFoundError",))
async def create_unix_connection_path_missing(t):
    return await _cuc(t, "/nonexistent-dir/sock")


@probe(("ConnectionRefusedError",))
async def create_unix_connection_path_regular_file(t):
    d = _tmpdir(t)
    p = os.path.join(d, "f")
    open(p, "w").close()
    return await _cuc(t, p)


@probe(("OSError",))
async def create_unix_connection_path_empty(t):
    return await _cuc(t, "")


@probe(("ValueError", "^A UNIX Domain Stream Socket was expected, got "))
async def create_unix_connection_sock_inet(t):
    s = socket.socket()
    t.later(s.close)
    return await _cuc(t, sock=s)


@probe(("ValueError", "^no path and sock were specified$"))
async def create_unix_connection_nothing(t):
    return await _cuc(t)


# ---- pipes

@probe(("ValueError", "^Pipe transport is for pipes/sockets only.$"))
async def connect_read_pipe_regular_file(t):
    d = _tmpdir(t)
    f = open(os.path.join(d, "f"), "wb+", buffering=0)
    t.later(f.close)
    return await t.make(t.loop.connect_read_pipe(Proto, f))


@probe(("ValueError", "^Pipe transport is only for pipes, sockets and "
                      "character devices$"))
async def connect_write_pipe_regular_file(t):
    d = _tmpdir(t)
    f = open(os.path.join(d, "f"), "wb", buffering=0)
    t.later(f.close)
    return await t.make(t.loop.connect_write_pipe(Proto, f))


@probe(("AttributeError",))
async def connect_read_pipe_no_fileno(t):
    return await t.make(t.loop.connect_read_pipe(Proto, object()))


@probe(("AttributeError",))
async def connect_write_pipe_int(t):
    r, w = os.pipe()
    t.later(os.close, r)
    t.later(os.close, w)
    return await t.make(t.loop.connect_write_pipe(Proto, w))


@probe(("ValueError", "closed file"))
async def connect_read_pipe_closed_file(t):
    r, w = os.pipe()
    t.later(os.close, w)
    f = os.fdopen(r, "rb", 0)
    f.close()
    return await t.make(t.loop.connect_read_pipe(Proto, f))


@probe(("ValueError", "closed file"))
async def connect_write_pipe_closed_file(t):
    r, w = os.pipe()
    t.later(os.close, r)
    f = os.fdopen(w, "wb", 0)
    f.close()
    return await t.make(t.loop.connect_write_pipe(Proto, f))


@probe(("OSError", None, errno.EBADF))
async def connect_read_pipe_closed_fd(t):
    class F:
        def fileno(self):
            return _closed_fd()
    return await t.make(t.loop.connect_read_pipe(Proto, F()))


# ---- create_datagram_endpoint

def _cde(t, *args, **kwargs):
    return t.make(t.loop.create_datagram_endpoint(Proto, *args, **kwargs))


@probe(("TypeError", "^2-tuple is expected$"))
async def datagram_local_addr_str(t):
    return await _cde(t, local_addr="x")


@probe(("TypeError", "^2-tuple is expected$"))
async def datagram_remote_addr_three(t):
    return await _cde(t, remote_addr=(LOCAL, 1, 0))


@probe(("TypeError", "^2-tuple is expected$"))
async def datagram_remote_addr_list(t):
    return await _cde(t, remote_addr=[LOCAL, 1])


@probe(("gaierror",))
async def datagram_remote_addr_port_name(t):
    return await _cde(t, remote_addr=(LOCAL, "no-such-service"))


@probe(("OverflowError",))
async def datagram_remote_addr_port_too_big(t):
    return await _cde(t, remote_addr=(LOCAL, 70000))


@probe(("OverflowError",))
async def datagram_local_addr_port_negative(t):
    return await _cde(t, local_addr=(LOCAL, -1))


@probe(("TypeError",))
async def datagram_local_addr_host_int(t):
    return await _cde(t, local_addr=(123, 0))


@probe(("gaierror",))
async def datagram_remote_addr_unknown_host(t):
    return await _cde(t, remote_addr=("no-such-host.invalid", 1))


@probe(("ValueError", "^can not get address information$"))
async def datagram_family_mismatch(t):
    return await _cde(t, local_addr=(LOCAL, 0), remote_addr=("::1", 1))


@probe(("gaierror",))
async def datagram_family_mismatch_explicit(t):
    return await _cde(t, local_addr=(LOCAL, 0), family=socket.AF_INET6)


@probe(("OSError", None, errno.EADDRNOTAVAIL))
async def datagram_local_addr_not_local(t):
    return await _cde(t, local_addr=("192.0.2.1", 0))


@probe(("ValueError", "^socket modifier keyword arguments can not be used "
                      "when sock is specified. \\(local_addr="))
async def datagram_sock_and_local_addr(t):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t.later(s.close)
    return await _cde(t, local_addr=(LOCAL, 0), sock=s)


@probe(("ValueError", "^A UDP Socket was expected, got "))
async def datagram_sock_stream(t):
    s = socket.socket()
    t.later(s.close)
    return await _cde(t, sock=s)


@probe(("ValueError", "^unexpected address family$"))
async def datagram_no_family_no_address(t):
    return await _cde(t)


@probe("ok")
async def datagram_family_only(t):
    return await _cde(t, family=socket.AF_INET)


@probe(("OSError", None, errno.EAFNOSUPPORT))
async def datagram_family_bad(t):
    return await _cde(t, family=999)


@probe("ok")
async def datagram_allow_broadcast_str(t):
    return await _cde(t, local_addr=(LOCAL, 0), allow_broadcast="yes")


@probe("ok")
async def datagram_allow_broadcast_int(t):
    return await _cde(t, local_addr=(LOCAL, 0), allow_broadcast=2)


@probe(("TypeError",))
async def datagram_reuse_address(t):
    return await _cde(t, local_addr=(LOCAL, 0), reuse_address=True)


@probe(("TypeError", "^string is expected$"))
async def datagram_unix_local_addr_int(t):
    return await _cde(t, local_addr=123, family=socket.AF_UNIX)


@probe(("TypeError", "^string is expected$"))
async def datagram_unix_remote_addr_bytes(t):
    return await _cde(t, remote_addr=b"/tmp/x", family=socket.AF_UNIX)


@probe(("OSError", "AF_UNIX path too long"))
async def datagram_unix_local_addr_too_long(t):
    return await _cde(t, local_addr=LONG_PATH, family=socket.AF_UNIX)


# ---- subprocess_exec / subprocess_shell

def _sp(t, coro):
    return t.make(coro)


class SubProto(asyncio.SubprocessProtocol):
    def __init__(self):
        self.lost = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc):
        self.lost.set_result(exc)


@probe(("ValueError", "^universal_newlines must be False$"))
async def subprocess_exec_universal_newlines(t):
    return await _sp(t, t.loop.subprocess_exec(SubProto, "true",
                                               universal_newlines=True))


@probe(("ValueError", "^shell must be False$"))
async def subprocess_exec_shell(t):
    return await _sp(t, t.loop.subprocess_exec(SubProto, "true", shell=True))


@probe(("ValueError", "^bufsize must be 0$"))
async def subprocess_exec_bufsize(t):
    return await _sp(t, t.loop.subprocess_exec(SubProto, "true", bufsize=1))


@probe(("ValueError", "^text must be False$"))
async def subprocess_exec_text(t):
    return await _sp(t, t.loop.subprocess_exec(SubProto, "true", text=True))


@probe(("ValueError", "^encoding must be None$"))
async def subprocess_exec_encoding(t):
    return await _sp(t, t.loop.subprocess_exec(SubProto, "true",
                                               encoding="utf-8"))


@probe(("ValueError", "^errors must be None$"))
async def subprocess_exec_errors(t):
    return await _sp(t, t.loop.subprocess_exec(SubProto, "true",
                                               errors="strict"))


@probe(("TypeError",))
async def subprocess_exec_program_int(t):
    return await _sp(t, t.loop.subprocess_exec(SubProto, 123))


@probe(("TypeError",))
async def subprocess_exec_arg_int(t):
    return await _sp(t, t.loop.subprocess_exec(SubProto, "true", 123))


@probe(("TypeError",))
async def subprocess_exec_no_program(t):
    return await _sp(t, t.loop.subprocess_exec(SubProto))


@probe(("PermissionError",))
async def subprocess_exec_program_empty(t):
    # Popen tries "" in each PATH directory: executing a directory
    return await _sp(t, t.loop.subprocess_exec(SubProto, ""))


@probe(("FileNotFoundError",))
async def subprocess_exec_program_missing(t):
    return await _sp(t, t.loop.subprocess_exec(SubProto,
                                               "/nonexistent/program"))


@probe(("ValueError", "embedded null"))
async def subprocess_exec_program_nul(t):
    return await _sp(t, t.loop.subprocess_exec(SubProto, "tr\0ue"))


@probe(("ValueError", "^cmd must be a string$"))
async def subprocess_shell_list(t):
    return await _sp(t, t.loop.subprocess_shell(SubProto, ["true"]))


@probe(("ValueError", "^shell must be True$"))
async def subprocess_shell_shell_false(t):
    return await _sp(t, t.loop.subprocess_shell(SubProto, "true",
                                                shell=False))


@probe(("ValueError", "^universal_newlines must be False$"))
async def subprocess_shell_universal_newlines(t):
    return await _sp(t, t.loop.subprocess_shell(SubProto, "true",
                                                universal_newlines=True))


@probe(("ValueError", "^bufsize must be 0$"))
async def subprocess_shell_bufsize(t):
    return await _sp(t, t.loop.subprocess_shell(SubProto, "true",
                                                bufsize=-1))


@probe(("ValueError", "^text must be False$"))
async def subprocess_shell_text(t):
    return await _sp(t, t.loop.subprocess_shell(SubProto, "true",
                                                text=True))


@probe(("ValueError", "^encoding must be None$"))
async def subprocess_shell_encoding(t):
    return await _sp(t, t.loop.subprocess_shell(SubProto, "true",
                                                encoding="utf-8"))


@probe(("ValueError", "embedded null"))
async def subprocess_shell_nul(t):
    return await _sp(t, t.loop.subprocess_shell(SubProto, "tr\0ue"))


@probe(("FileNotFoundError",))
async def subprocess_exec_cwd_missing(t):
    return await _sp(t, t.loop.subprocess_exec(SubProto, "true",
                                               cwd="/nonexistent-dir"))


@probe(("TypeError",))
async def subprocess_exec_env_value_int(t):
    return await _sp(t, t.loop.subprocess_exec(SubProto, "true",
                                               env={"A": 1}))


@probe("ok")
async def subprocess_exec_program_path(t):
    import pathlib
    return await _sp(t, t.loop.subprocess_exec(
        SubProto, pathlib.Path("/bin/true"), stdin=None, stdout=None,
        stderr=None))


@probe(("OSError", None, errno.EBADF))
async def subprocess_exec_stdin_closed_fd(t):
    return await _sp(t, t.loop.subprocess_exec(SubProto, "true",
                                               stdin=_closed_fd()))


@probe(("AttributeError",))
async def subprocess_exec_stdin_str(t):
    return await _sp(t, t.loop.subprocess_exec(SubProto, "true",
                                               stdin="x"))


# ---- stream transports (TCP, pipes)

WRITE_TYPE = "^data argument must be a bytes-like object, not '{}'$"


@probe(("TypeError", WRITE_TYPE.format("str")))
async def tcp_write_str(t):
    tr, pr, peer = await t.tcp()
    return t.call(tr.write, "str")


@probe(("TypeError", WRITE_TYPE.format("int")))
async def tcp_write_int(t):
    tr, pr, peer = await t.tcp()
    return t.call(tr.write, 123)


@probe(("TypeError", WRITE_TYPE.format("NoneType")))
async def tcp_write_none(t):
    tr, pr, peer = await t.tcp()
    return t.call(tr.write, None)


@probe(("TypeError", WRITE_TYPE.format("array")))
async def tcp_write_array(t):
    import array
    tr, pr, peer = await t.tcp()
    return t.call(tr.write, array.array("b", b"xy"))


@probe(("TypeError", "^can only join an iterable$"))
async def tcp_writelines_int(t):
    tr, pr, peer = await t.tcp()
    return t.call(tr.writelines, 123)


@probe(("TypeError", "^sequence item 1: expected a bytes-like object, str "
                     "found$"))
async def tcp_writelines_str_item(t):
    tr, pr, peer = await t.tcp()
    return t.call(tr.writelines, [b"a", "b"])


@probe(("TypeError", "^sequence item 0: expected a bytes-like object, str "
                     "found$"))
async def tcp_writelines_str(t):
    tr, pr, peer = await t.tcp()
    return t.call(tr.writelines, "abc")


@probe((None, b"abc"))
async def tcp_writelines_generator(t):
    tr, pr, peer = await t.tcp()
    r = t.call(tr.writelines, (bytes([c]) for c in b"abc"))
    tr.write_eof()
    peer.settimeout(TIMEOUT)
    data = await t.loop.run_in_executor(None, _recv_all, peer)
    return r, data


def _recv_all(sock):
    out = b""
    while True:
        chunk = sock.recv(100)
        if not chunk:
            return out
        out += chunk


@probe(("ValueError", "must be >= low \\(-1\\) must be >= 0"))
async def tcp_set_write_buffer_limits_negative(t):
    tr, pr, peer = await t.tcp()
    return t.call(tr.set_write_buffer_limits, -1)


@probe(("ValueError", "^high \\(1\\) must be >= low \\(2\\) must be >= 0$"))
async def tcp_set_write_buffer_limits_high_below_low(t):
    tr, pr, peer = await t.tcp()
    return t.call(tr.set_write_buffer_limits, 1, 2)


@probe(("TypeError",))
async def tcp_set_write_buffer_limits_str(t):
    tr, pr, peer = await t.tcp()
    return t.call(tr.set_write_buffer_limits, "x")


@probe((None, (0, 1)))
async def tcp_set_write_buffer_limits_float(t):
    tr, pr, peer = await t.tcp()
    r = t.call(tr.set_write_buffer_limits, 1.5, 0.5)
    low, high = tr.get_write_buffer_limits()
    return r, (math.floor(low), math.floor(high))


@probe(None)
async def tcp_set_write_buffer_limits_huge(t):
    tr, pr, peer = await t.tcp()
    return t.call(tr.set_write_buffer_limits, 2 ** 70)


@probe(("ValueError",))
async def tcp_set_write_buffer_limits_nan(t):
    tr, pr, peer = await t.tcp()
    return t.call(tr.set_write_buffer_limits, NAN)


@probe((None, "dflt", None))
async def tcp_get_extra_info_int(t):
    tr, pr, peer = await t.tcp()
    return (t.call(tr.get_extra_info, 123), tr.get_extra_info(123, "dflt"),
            tr.get_extra_info(None))


@probe(("TypeError", "unhashable"))
async def tcp_get_extra_info_unhashable(t):
    tr, pr, peer = await t.tcp()
    return t.call(tr.get_extra_info, [])


@probe(("TypeError",))
async def tcp_get_extra_info_no_name(t):
    tr, pr, peer = await t.tcp()
    return t.call(tr.get_extra_info)


@probe((None, True), reported=["AttributeError", "AttributeError"])
async def tcp_set_protocol_none(t):
    # data_received() of None fails (fatal), then connection_lost() of None
    tr, pr, peer = await t.tcp()
    r = t.call(tr.set_protocol, None)
    peer.send(b"data")
    await _until(lambda: len(t.seen) >= 2)
    return r, tr.is_closing()


async def _until(cond, n=2000):
    for _ in range(n):
        if cond():
            return
        await asyncio.sleep(0)


@probe((None, None, [("made",), ("lost", None)]))
async def tcp_write_after_close(t):
    tr, pr, peer = await t.tcp()
    tr.close()
    r = t.call(tr.write, b"x")
    lost = await t.lost(pr)
    return r, lost, pr.events


@probe((("TypeError", WRITE_TYPE.format("str")), None))
async def tcp_write_str_after_close(t):
    tr, pr, peer = await t.tcp()
    tr.close()
    r = t.call(tr.write, "x")
    return r, await t.lost(pr)


@probe((None, None, None))
async def tcp_write_after_abort(t):
    tr, pr, peer = await t.tcp()
    tr.abort()
    r1 = t.call(tr.write, b"x")
    r2 = t.call(tr.writelines, [b"x"])
    return r1, r2, await t.lost(pr)


@probe((None, ("RuntimeError", "^Cannot call write\\(\\) after "
                               "write_eof\\(\\)$")))
async def tcp_write_eof_twice_then_write(t):
    tr, pr, peer = await t.tcp()
    r = t.call(tr.write_eof)
    r = r or t.call(tr.write_eof)
    return r, t.call(tr.write, b"x")


@probe(("RuntimeError", "^Cannot call write\\(\\) after write_eof\\(\\)$"))
async def tcp_writelines_after_write_eof(t):
    tr, pr, peer = await t.tcp()
    tr.write_eof()
    return t.call(tr.writelines, [b"x"])


@probe((None, None, None, False))
async def tcp_pause_resume_after_close(t):
    tr, pr, peer = await t.tcp()
    tr.close()
    return (t.call(tr.pause_reading), t.call(tr.resume_reading),
            t.call(tr.write_eof), tr.is_reading())


@probe((None, None, True))
async def tcp_pause_resume_after_lost(t):
    tr, pr, peer = await t.tcp()
    tr.close()
    await t.lost(pr)
    return t.call(tr.pause_reading), t.call(tr.resume_reading), \
        tr.is_closing()


@probe((None, None))
async def tcp_pause_twice_resume_twice(t):
    tr, pr, peer = await t.tcp()
    r = t.call(tr.pause_reading) or t.call(tr.pause_reading)
    return r, t.call(tr.resume_reading) or t.call(tr.resume_reading)


@probe((None, None, None))
async def tcp_close_twice_abort(t):
    tr, pr, peer = await t.tcp()
    return t.call(tr.close), t.call(tr.close), t.call(tr.abort)


@probe((None, "BufferError"), reported=["BufferError"])
async def tcp_write_not_contiguous(t):
    # asyncio takes the memoryview; send() fails on it: a fatal error
    tr, pr, peer = await t.tcp()
    return t.call(tr.write, memoryview(b"abcd")[::2]), await t.lost(pr)


@probe((None, "BufferError"), reported=["BufferError"])
async def write_pipe_write_not_contiguous(t):
    tr, pr, r = await t.write_pipe()
    return t.call(tr.write, memoryview(b"abcd")[::2]), await t.lost(pr)


@probe(("TypeError", lit("sequence item 0: expected a bytes-like object, "
                         "memoryview found")))
async def tcp_writelines_not_contiguous(t):
    tr, pr, peer = await t.tcp()
    return t.call(tr.writelines, [memoryview(b"abcd")[::2]])


@probe(("TypeError",))
async def tcp_write_no_argument(t):
    tr, pr, peer = await t.tcp()
    return t.call(tr.write)


# asyncio's write pipe asserts the type (python -O: no check there)
@probe(("AssertionError", lit("'str'")))
async def write_pipe_write_str(t):
    tr, pr, r = await t.write_pipe()
    return t.call(tr.write, "str")


@probe(("AssertionError", lit("None")))
async def write_pipe_write_none(t):
    tr, pr, r = await t.write_pipe()
    return t.call(tr.write, None)


@probe(("TypeError", "^can only join an iterable$"))
async def write_pipe_writelines_int(t):
    tr, pr, r = await t.write_pipe()
    return t.call(tr.writelines, 123)


@probe(("TypeError", "^sequence item 0: expected a bytes-like object, str "
                     "found$"))
async def write_pipe_writelines_str_item(t):
    tr, pr, r = await t.write_pipe()
    return t.call(tr.writelines, ["x"])


@probe((None, None, None, None))
async def write_pipe_write_eof_twice(t):
    tr, pr, r = await t.write_pipe()
    return (t.call(tr.write_eof), t.call(tr.write_eof), t.call(tr.write, b"x"),
            await t.lost(pr))


@probe((None, None))
async def write_pipe_write_after_close(t):
    tr, pr, r = await t.write_pipe()
    tr.close()
    return t.call(tr.write, b"x"), await t.lost(pr)


@probe(("ValueError", "must be >= low \\(-1\\) must be >= 0"))
async def write_pipe_set_write_buffer_limits_negative(t):
    tr, pr, r = await t.write_pipe()
    return t.call(tr.set_write_buffer_limits, -1)


@probe(("ValueError", "^high \\(1\\) must be >= low \\(2\\) must be >= 0$"))
async def write_pipe_set_write_buffer_limits_high_below_low(t):
    tr, pr, r = await t.write_pipe()
    return t.call(tr.set_write_buffer_limits, high=1, low=2)


@probe(("TypeError", "unhashable"))
async def write_pipe_get_extra_info_unhashable(t):
    tr, pr, r = await t.write_pipe()
    return t.call(tr.get_extra_info, {})


@probe((None, None))
async def read_pipe_pause_resume_after_close(t):
    tr, pr, w = await t.read_pipe()
    tr.close()
    return t.call(tr.pause_reading), t.call(tr.resume_reading)


@probe((None, None, None))
async def read_pipe_pause_resume_after_lost(t):
    tr, pr, w = await t.read_pipe()
    tr.close()
    lost = await t.lost(pr)
    return t.call(tr.pause_reading), t.call(tr.resume_reading), lost


@probe((None, "dflt"))
async def read_pipe_get_extra_info_int(t):
    tr, pr, w = await t.read_pipe()
    return t.call(tr.get_extra_info, 5), tr.get_extra_info(5, "dflt")


@probe(("TypeError", "unhashable"))
async def read_pipe_get_extra_info_unhashable(t):
    tr, pr, w = await t.read_pipe()
    return t.call(tr.get_extra_info, set())


@probe((None, False, True), reported=["AttributeError", "AttributeError"])
async def read_pipe_set_protocol_none(t):
    # a read pipe's data_received() error is not fatal (a socket's is):
    # reported, the pipe reads on; connection_lost() of None at the end
    tr, pr, w = await t.read_pipe()
    r = t.call(tr.set_protocol, None)
    os.write(w, b"data")
    await _until(lambda: t.seen)
    closing = tr.is_closing()
    tr.close()
    await _until(lambda: len(t.seen) >= 2)
    return r, closing, tr.is_closing()


class Raising(RecProto):
    def data_received(self, data):
        super().data_received(data)
        raise ZeroDivisionError

    def eof_received(self):
        super().eof_received()
        raise ArithmeticError


@probe(([("made",), ("data", b"ab"), ("eof",), ("lost", None)], False),
       reported=["ZeroDivisionError", "ZeroDivisionError", "ArithmeticError"])
async def read_pipe_callbacks_raise(t):
    # data_received() and eof_received() raising: reported, and the pipe
    # goes on (asyncio runs them as callbacks of their own); the end is a
    # clean connection_lost(None)
    tr, pr, w = await t.read_pipe()
    pr2 = Raising(t.loop)
    pr2.events = pr.events
    pr2.lost = pr.lost
    tr.set_protocol(pr2)
    os.write(w, b"a")
    await _until(lambda: t.seen)
    closing = tr.is_closing()
    os.write(w, b"b")
    await _until(lambda: len(t.seen) >= 2)
    t.close_now(w)
    await t.lost(pr)
    return pr.events, closing


class KeepOpen(RecProto):
    def eof_received(self):
        super().eof_received()
        return True


@probe([("made",), ("eof",), ("lost", None)])
async def read_pipe_eof_received_true(t):
    # a read pipe ends at EOF whatever eof_received() answers
    r, w = os.pipe()
    f = os.fdopen(r, "rb", 0)
    t.later(f.close)
    tr, pr = await t.loop.connect_read_pipe(lambda: KeepOpen(t.loop), f)
    t.later(tr.close)
    os.close(w)
    await t.lost(pr)
    return pr.events


class Buffered(asyncio.BufferedProtocol):
    def __init__(self, loop):
        self.lost = loop.create_future()
        self.got = b""
        self.buf = bytearray(10)

    def get_buffer(self, hint):
        return self.buf

    def buffer_updated(self, n):
        self.got += self.buf[:n]

    def connection_lost(self, exc):
        self.lost.set_result(exc)


@probe((b"", None), reported=["AttributeError"],
       differs="a read pipe serves a BufferedProtocol (asyncio 3.11's "
               "calls data_received(), which it has not)")
async def read_pipe_buffered_protocol(t):
    r, w = os.pipe()
    f = os.fdopen(r, "rb", 0)
    t.later(f.close)
    tr, pr = await t.loop.connect_read_pipe(lambda: Buffered(t.loop), f)
    t.later(tr.close)
    os.write(w, b"abc")
    os.close(w)
    await t.lost(pr)
    return bytes(pr.got), None


# ---- datagram transports

DGRAM_TYPE = "^data argument must be a bytes-like object, not 'str'$"


@probe(("TypeError", DGRAM_TYPE))
async def udp_sendto_str(t):
    tr, pr, peer = await t.udp()
    return t.call(tr.sendto, "str", peer.getsockname())


@probe(("TypeError", "^data argument must be a bytes-like object, not "
                     "'int'$"))
async def udp_sendto_int(t):
    tr, pr, peer = await t.udp()
    return t.call(tr.sendto, 123, peer.getsockname())


@probe((None, "TypeError", [("made",), ("lost", ("TypeError",))]),
       reported=["TypeError"])
async def udp_sendto_bad_address(t):
    tr, pr, peer = await t.udp()
    r = t.call(tr.sendto, b"x", "bad-addr")
    lost = await t.lost(pr)
    return r, lost, pr.events


@probe((None, "TypeError"), reported=["TypeError"])
async def udp_sendto_no_address(t):
    tr, pr, peer = await t.udp()
    r = t.call(tr.sendto, b"x")
    return r, await t.lost(pr)


@probe((None, "OverflowError"), reported=["OverflowError"])
async def udp_sendto_port_too_big(t):
    tr, pr, peer = await t.udp()
    r = t.call(tr.sendto, b"x", (LOCAL, 70000))
    return r, await t.lost(pr)


@probe((None, "TypeError"), reported=["TypeError"])
async def udp_sendto_address_one(t):
    tr, pr, peer = await t.udp()
    r = t.call(tr.sendto, b"x", (LOCAL,))
    return r, await t.lost(pr)


def _types(events):
    """Events with exceptions as type names only."""
    return [(e[0], e[1][0]) if e[0] in ("error", "lost") and e[1] else e
            for e in events]


@probe((None, [("made",), ("error", "gaierror")], False))
async def udp_sendto_unknown_host(t):
    tr, pr, peer = await t.udp()
    r = t.call(tr.sendto, b"x", ("no-such-host.invalid", 1))
    await pr.wait_events(2)
    return r, _types(pr.events), tr.is_closing()


@probe((None, [("made",), ("error", "gaierror")], False))
async def udp_sendto_ipv6_address(t):
    tr, pr, peer = await t.udp()
    r = t.call(tr.sendto, b"x", ("::1", 1))
    await pr.wait_events(2)
    return r, _types(pr.events), tr.is_closing()


@probe((None, [("made",)]))
async def udp_sendto_empty_bad_address(t):
    # nothing to send: asyncio returns before it looks at the address
    tr, pr, peer = await t.udp()
    r = t.call(tr.sendto, b"", "bad-addr")
    await spin()
    return r, list(pr.events)


@probe((("NotImplementedError",), ("NotImplementedError",),
        ("NotImplementedError",)))
async def udp_stream_methods(t):
    # 3.11's datagram transport is an asyncio.Transport: the stream methods
    # are the base class's
    tr, pr, peer = await t.udp()
    return (t.call(tr.write, b"x"), t.call(tr.pause_reading),
            t.call(tr.write_eof))


@probe(("ValueError", "^Invalid address: must be None or \\('127.0.0.1', "
                      "\\d+\\)$"))
async def udp_connected_sendto_other_address(t):
    tr, pr, peer = await t.udp(remote=True)
    return t.call(tr.sendto, b"x", (LOCAL, 1))


@probe(("TypeError", DGRAM_TYPE))
async def udp_connected_sendto_str(t):
    tr, pr, peer = await t.udp(remote=True)
    return t.call(tr.sendto, "str")


@probe((None, b"x"))
async def udp_connected_sendto_own_address(t):
    tr, pr, peer = await t.udp(remote=True)
    r = t.call(tr.sendto, b"x", peer.getsockname())
    peer.settimeout(TIMEOUT)
    return r, peer.recv(10)


UDP_AFTER_CLOSE = ("a datagram sent on an unconnected endpoint after close() "
                   "is dropped (asyncio 3.11 sends it until connection_lost, "
                   "then raises AttributeError)")


@probe((None, b"x"), differs=UDP_AFTER_CLOSE)
async def udp_sendto_after_close(t):
    tr, pr, peer = await t.udp()
    tr.close()
    r = t.call(tr.sendto, b"x", peer.getsockname())
    await t.lost(pr)
    peer.setblocking(False)
    try:
        got = peer.recv(10)
    except BlockingIOError:
        got = None
    return r, got


@probe(("AttributeError",), differs=UDP_AFTER_CLOSE)
async def udp_sendto_after_lost(t):
    tr, pr, peer = await t.udp()
    tr.close()
    await t.lost(pr)
    return t.call(tr.sendto, b"x", peer.getsockname())


@probe((None, None, None))
async def udp_connected_sendto_after_close(t):
    tr, pr, peer = await t.udp(remote=True)
    tr.close()
    r = t.call(tr.sendto, b"x")
    lost = await t.lost(pr)
    return r, t.call(tr.sendto, b"x"), lost


@probe((None, None, None))
async def udp_abort_twice_close(t):
    tr, pr, peer = await t.udp()
    return t.call(tr.abort), t.call(tr.abort), t.call(tr.close)


@probe(("ValueError", "must be >= low \\(-1\\) must be >= 0"))
async def udp_set_write_buffer_limits_negative(t):
    tr, pr, peer = await t.udp()
    return t.call(tr.set_write_buffer_limits, -1)


@probe(("ValueError", "^high \\(1\\) must be >= low \\(2\\) must be >= 0$"))
async def udp_set_write_buffer_limits_high_below_low(t):
    tr, pr, peer = await t.udp()
    return t.call(tr.set_write_buffer_limits, 1, 2)


@probe(("TypeError",))
async def udp_set_write_buffer_limits_str(t):
    tr, pr, peer = await t.udp()
    return t.call(tr.set_write_buffer_limits, "x")


@probe((None, "dflt"))
async def udp_get_extra_info_int(t):
    tr, pr, peer = await t.udp()
    return t.call(tr.get_extra_info, 123), tr.get_extra_info(123, "dflt")


@probe(("TypeError", "unhashable"))
async def udp_get_extra_info_unhashable(t):
    tr, pr, peer = await t.udp()
    return t.call(tr.get_extra_info, [])


@probe(None, reported=["AttributeError", "AttributeError"])
async def udp_set_protocol_none(t):
    # datagram_received() of None, then at the end connection_lost()
    tr, pr, peer = await t.udp()
    r = t.call(tr.set_protocol, None)
    peer.sendto(b"x", tr.get_extra_info("sockname"))
    await _until(lambda: t.seen)
    tr.close()
    await spin()
    return r


# ---- keyword arguments (asyncio's methods are Python functions)

@probe(([None, None, None, None, None,
         ("TypeError", "got multiple values for argument 'callback'"),
         ("TypeError", "got multiple values for argument 'delay'"),
         ("TypeError", "missing .*'when'"),
         ("TypeError", "got an unexpected keyword argument 'context'")],
        [0, 1, 2, 3, 4]))
def keywords_callbacks(t):
    seen = []
    lp = t.loop

    def cb():
        seen.append(len(seen))
    out = [t.call(lp.call_soon, callback=cb),
           t.call(lp.call_later, delay=0, callback=cb),
           t.call(lp.call_at, when=0, callback=cb),
           t.call(lp.call_soon_threadsafe, callback=cb),
           t.call(lp.call_later, 0, callback=cb, context=None),
           t.call(lp.call_soon, cb, callback=cb),
           t.call(lp.call_later, 0, delay=0, callback=cb),
           t.call(lp.call_at, callback=cb),
           t.call(lp.add_reader, 0, print, context=None)]
    lp.run_until_complete(spin())
    return out, seen


@probe([None, True, None, True])
def keywords_readers(t):
    a, b = socket.socketpair()
    t.later(a.close)
    t.later(b.close)
    lp = t.loop
    return [t.call(lp.add_reader, fd=a.fileno(), callback=print),
            lp.remove_reader(fd=a.fileno()),
            t.call(lp.add_writer, fd=a.fileno(), callback=print),
            lp.remove_writer(fd=a.fileno())]


@probe([None, None, None, None])
async def keywords_tcp(t):
    tr, pr, peer = await t.tcp()
    return [t.call(tr.write, data=b"x"), t.call(tr.writelines,
                                                list_of_data=[b"y"]),
            t.call(tr.set_protocol, protocol=pr),
            t.call(tr.set_write_buffer_limits, high=10, low=5)]


@probe([None, None])
async def keywords_write_pipe(t):
    tr, pr, r = await t.write_pipe()
    return [t.call(tr.write, data=b"x"), t.call(tr.set_protocol, protocol=pr)]


@probe([None])
async def keywords_udp(t):
    tr, pr, peer = await t.udp()
    return [t.call(tr.set_protocol, protocol=pr)]


# ---- protocol factories that fail or make no protocol

@probe(("TypeError", "object is not callable"))
async def create_connection_factory_none(t):
    lsock = raw_listener()
    t.later(lsock.close)
    return await t.make(t.loop.create_connection(None,
                                                 *lsock.getsockname()))


@probe(("AttributeError", "connection_made"))
async def create_connection_factory_not_a_protocol(t):
    lsock = raw_listener()
    t.later(lsock.close)
    return await t.make(t.loop.create_connection(lambda: 42,
                                                 *lsock.getsockname()))


@probe(("TypeError", "object is not callable"))
async def connect_read_pipe_factory_none(t):
    r, w = os.pipe()
    t.later(os.close, w)
    f = os.fdopen(r, "rb", 0)
    t.later(f.close)
    return await t.make(t.loop.connect_read_pipe(None, f))


@probe(("AttributeError", "connection_made"))
async def connect_write_pipe_factory_not_a_protocol(t):
    r, w = os.pipe()
    t.later(os.close, r)
    f = os.fdopen(w, "wb", 0)
    t.later(f.close)
    return await t.make(t.loop.connect_write_pipe(lambda: None, f))


@probe(("TypeError", "object is not callable"))
async def datagram_factory_none(t):
    return await _cde_factory(t, None)


@probe(("AttributeError", "connection_made"))
async def datagram_factory_not_a_protocol(t):
    return await _cde_factory(t, lambda: "x")


def _cde_factory(t, factory):
    return t.make(t.loop.create_datagram_endpoint(factory,
                                                  local_addr=(LOCAL, 0)))


@probe(("TypeError", "object is not callable"))
async def create_unix_connection_factory_none(t):
    d = _tmpdir(t)
    us = socket.socket(socket.AF_UNIX)
    t.later(us.close)
    us.bind(os.path.join(d, "s"))
    us.listen()
    return await t.make(t.loop.create_unix_connection(
        None, os.path.join(d, "s")))


@probe(("TypeError", "object is not callable"))
async def connect_accepted_socket_factory_none(t):
    a, b = socket.socketpair()
    t.later(a.close)
    t.later(b.close)
    return await t.make(t.loop.connect_accepted_socket(None, a))


@probe((b"", b""))
async def create_server_factory_fails(t):
    # a server's factory that raises or makes no protocol: nothing reported
    # (asyncio tells of it in debug mode only), the client sees the end
    out = []
    for factory in (lambda: 1 / 0, lambda: 42):
        srv = await t.loop.create_server(factory, LOCAL, 0)
        t.later(srv.close)
        c = socket.create_connection(srv.sockets[0].getsockname()[:2])
        t.later(c.close)
        c.setblocking(False)
        for _ in range(2000):
            await asyncio.sleep(0)
            gc.collect()   # asyncio's accepted socket goes with the collector
            try:
                out.append(c.recv(10))
                break
            except BlockingIOError:
                pass
    return tuple(out)


# ---- a closed loop

def _closed(t):
    t.loop.close()
    return t.loop


@probe([CLOSED] * 6)
def closed_loop_callbacks(t):
    lp = _closed(t)
    return [t.call(lp.call_soon, print), t.call(lp.call_later, 1, print),
            t.call(lp.call_at, 1, print), t.call(lp.call_soon_threadsafe, print),
            t.call(lp.add_reader, 0, print), t.call(lp.add_writer, 0, print)]


@probe([("ValueError", "^Invalid file object: 'x'$"),
        ("ValueError", "^Invalid file object: 'x'$"),
        False, False, CLOSED, CLOSED])
def closed_loop_readers_bad_fd(t):
    lp = _closed(t)

    def remove(fn, fd):
        try:
            return fn(fd)
        except Exception as exc:
            return Raised(exc)
    return [t.call(lp.add_reader, "x", print), remove(lp.remove_reader, "x"),
            remove(lp.remove_reader, -1), remove(lp.remove_writer, 10 ** 6),
            t.call(lp.add_reader, -1, print), t.call(lp.add_writer, -1, print)]


@probe([CLOSED, ("ValueError", "^invalid signal number 0$"),
        ("TypeError", "coroutines cannot be used"), False])
def closed_loop_signals(t):
    lp = _closed(t)

    def remove(sig):
        try:
            return lp.remove_signal_handler(sig)
        except Exception as exc:
            return Raised(exc)
    return [t.call(lp.add_signal_handler, signal.SIGUSR1, print),
            t.call(lp.add_signal_handler, 0, print),
            t.call(lp.add_signal_handler, signal.SIGUSR1, acoro),
            remove(signal.SIGUSR1)]


@probe([CLOSED] * 8)
def closed_loop_coroutine_calls(t):
    lp = _closed(t)
    a, b = socket.socketpair()
    t.later(a.close)
    t.later(b.close)
    r, w = os.pipe()
    t.later(os.close, r)
    t.later(os.close, w)
    rf = os.fdopen(os.dup(r), "rb", 0)
    t.later(rf.close)
    ls = raw_listener()
    t.later(ls.close)
    d = _tmpdir(t)
    us = socket.socket(socket.AF_UNIX)
    t.later(us.close)
    us.bind(os.path.join(d, "s"))
    us.listen()
    return [t.drive(lp.create_connection(Proto, LOCAL, 80)),
            t.drive(lp.create_connection(Proto, sock=a)),
            t.drive(lp.create_server(Proto, sock=ls)),
            t.drive(lp.create_datagram_endpoint(Proto,
                                                local_addr=(LOCAL, 0))),
            t.drive(lp.connect_read_pipe(Proto, rf)),
            t.drive(lp.create_unix_connection(Proto, os.path.join(d, "s"))),
            t.drive(lp.subprocess_exec(asyncio.SubprocessProtocol, "true")),
            t.call(lp.run_in_executor, None, print)]


@probe([CLOSED, CLOSED])
def closed_loop_run(t):
    lp = _closed(t)
    c = acoro()
    t.later(c.close)
    return [t.call(lp.run_forever), t.call(lp.run_until_complete, c)]


@probe([None, None, False, False])
def closed_loop_harmless(t):
    lp = _closed(t)
    return [t.call(lp.close), t.call(lp.stop), lp.is_running(),
            t.call(lp.time) is not None]


# ---- a running loop

@probe([("RuntimeError", "^This event loop is already running$"),
        ("RuntimeError", "^This event loop is already running$"),
        ("RuntimeError", "^Cannot close a running event loop$"),
        True])
async def running_loop_run_again(t):
    c = acoro()
    t.later(c.close)
    return [t.call(t.loop.run_forever), t.call(t.loop.run_until_complete, c),
            t.call(t.loop.close), t.loop.is_running()]


@probe([("RuntimeError", "^This event loop is already running$")])
def running_loop_run_from_callback(t):
    out = []
    t.loop.call_soon(lambda: out.append(t.call(t.loop.run_forever)))
    t.loop.run_until_complete(spin())
    return out


@probe([("RuntimeError", "^This event loop is already running$"),
        ("RuntimeError", "^Cannot close a running event loop$")])
async def running_loop_from_thread(t):
    return [_in_thread(lambda: t.call(t.loop.run_forever)),
            _in_thread(lambda: t.call(t.loop.close))]


# ---- another thread, debug mode

def _in_thread(fn):
    out = []

    def target():
        try:
            out.append(fn())
        except Exception as exc:
            out.append(Raised(exc))
    th = threading.Thread(target=target)
    th.start()
    th.join(TIMEOUT)
    return out[0] if out else "hung"


# the task made in the thread is destroyed pending: reported (no exception)
@probe([NOT_THREAD, NOT_THREAD, NOT_THREAD, NOT_THREAD, None],
       reported=[None])
async def other_thread_debug(t):
    lp = t.loop
    lp.set_debug(True)
    try:
        c = acoro()
        t.later(c.close)
        fut = lp.create_future()
        fut.add_done_callback(lambda f: None)
        out = [_in_thread(lambda: t.call(lp.call_soon, print)),
               _in_thread(lambda: t.call(lp.call_later, 1, print)),
               _in_thread(lambda: t.call(lp.call_at, 1, print)),
               _in_thread(lambda: t.call(lp.create_task, c)),
               ]
        got = lp.create_future()
        out.append(_in_thread(lambda: t.call(lp.call_soon_threadsafe,
                                             got.set_result, 1)))
        await got
        return out
    finally:
        lp.set_debug(False)


@probe([None, b"!"])
async def other_thread_add_reader(t):
    # asyncio checks no thread there, debug mode or not
    lp = t.loop
    lp.set_debug(True)
    a, b = socket.socketpair()
    t.later(a.close)
    t.later(b.close)
    t.later(lp.remove_reader, a.fileno())
    got = lp.create_future()

    def add():
        r = t.call(lp.add_reader, a.fileno(),
                   lambda: got.done() or got.set_result(a.recv(10)))
        lp.call_soon_threadsafe(b.send, b"!")
        return r
    try:
        return [_in_thread(add), await got]
    finally:
        lp.set_debug(False)


@probe([None, None, None])
async def other_thread_not_debug(t):
    lp = t.loop
    out = [_in_thread(lambda: t.call(lp.call_soon, print)),
           _in_thread(lambda: t.call(lp.call_later, 1, print)),
           _in_thread(lambda: t.call(lp.call_at, 1, print))]
    lp.call_soon_threadsafe(print)   # wakes the loop
    return out


# ---------------------------------------------------------------- the test

def _params():
    out = []
    for name in PROBES:
        marks = [MARKS[name]] if name in MARKS else []
        out.append(pytest.param(name, id=name, marks=marks))
    return out


def observe(loop, name):
    """Run one probe: (result, at_run, reported, still works, fd delta)."""
    fn = PROBES[name]
    fds = _fds()
    seen = []
    _record_handler(loop, seen)
    t = Probe(loop)
    t.seen = seen
    at_run = None
    try:
        try:
            if asyncio.iscoroutinefunction(fn):
                result = run(loop, fn(t))
            else:
                result = fn(t)
        except Exception as exc:
            result = Raised(exc)
        if not loop.is_closed():
            try:
                loop.run_until_complete(spin(5))
            except Exception as exc:
                at_run = Raised(exc)
    finally:
        t.finish()
        if not loop.is_closed():
            for _ in range(3):   # the cancelled handles leave the loop
                try:
                    loop.run_until_complete(spin(5))
                    break
                except Exception:
                    pass
    works = None
    if not loop.is_closed():
        loop.set_exception_handler(None)
        works = run(loop, _still_works(loop)) == ["soon", "later", b"!"]
    # a closed loop has let go of its own descriptors; an object that
    # holds one may wait for the collector
    leaked = 0 if loop.is_closed() else _fds() - fds
    if leaked:
        gc.collect()
        leaked = _fds() - fds
    return result, at_run, seen, works, leaked


@pytest.mark.parametrize("name", _params())
def test_probe(loop, loop_name, name, request):
    if loop_name == "tpio" and name in SUBPROCESS_KNOWN:
        request.node.add_marker(pytest.mark.xfail(
            strict=True, reason=SUBPROCESS_KNOWN[name]))
    result, at_run, seen, works, leaked = observe(loop, name)
    assert (result, at_run, seen) == EXPECT[name]
    assert works in (None, True), "the loop no longer works"
    assert leaked == 0, f"{leaked} descriptors left open"
