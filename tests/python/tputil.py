"""Shared helpers: recording protocols and small scenario utilities.

The recording protocols keep an ordered list of the callbacks they get
(``events``).  Consecutive data callbacks are merged into one
``("data", bytes)`` entry, because how a byte stream is cut into
data_received() calls is not part of asyncio's contract; everything else
(which callbacks, their order, their arguments) is recorded as is.
"""

import asyncio
import os
import socket

TIMEOUT = float(os.environ.get("TPIO_TEST_TIMEOUT", "10"))


def run(loop, coro, timeout=TIMEOUT):
    """Run one scenario to completion on ``loop``."""
    from conftest import TestTimeout, _Unavailable, timed_out
    if isinstance(loop, _Unavailable):
        coro.close()
        loop._raise()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, timeout))
    except RuntimeError:
        if timed_out():
            raise TestTimeout(f"test exceeded its {TIMEOUT:g} s timeout")
        raise


def exc_rec(exc):
    """A comparable record of an exception (or None)."""
    if exc is None:
        return None
    rec = (type(exc).__name__,)
    if isinstance(exc, OSError) and exc.errno is not None:
        rec += (exc.errno,)
    return rec


def addr_shape(addr):
    """Shape of a socket address: host kept, port replaced by its type."""
    if isinstance(addr, tuple):
        return (addr[0], type(addr[1]).__name__) + tuple(addr[2:])
    return addr


class Handlers:
    """An exception handler that records the contexts it is called with."""

    def __init__(self, loop):
        self.contexts = []
        self.loop = loop
        self.called = loop.create_future()
        loop.set_exception_handler(self)

    def __call__(self, loop, context):
        assert loop is self.loop
        self.contexts.append(context)
        if not self.called.done():
            self.called.set_result(context)


def _merge_data(events, tag, data):
    if events and events[-1][0] == tag and len(events[-1]) == 2:
        events[-1] = (tag, events[-1][1] + bytes(data))
    else:
        events.append((tag, bytes(data)))


class RecProto(asyncio.Protocol):
    """A Protocol that records every callback.

    eof_result: what eof_received() returns.
    echo: write back whatever arrives.
    close_on_eof: close the transport in eof_received().
    """

    def __init__(self, loop=None, eof_result=None, echo=False,
                 close_on_eof=False):
        loop = loop or asyncio.get_running_loop()
        self.loop = loop
        self.events = []
        self.transport = None
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.eof = loop.create_future()
        self.paused = loop.create_future()
        self.resumed = loop.create_future()
        self.eof_result = eof_result
        self.echo = echo
        self.close_on_eof = close_on_eof
        self.received = bytearray()
        self._want = None

    def connection_made(self, transport):
        self.events.append(("made",))
        self.transport = transport
        self.made.set_result(transport)

    def data_received(self, data):
        assert isinstance(data, bytes), type(data)
        assert data, "data_received() with empty data"
        _merge_data(self.events, "data", data)
        self.received += data
        if self.echo:
            self.transport.write(data)
        self._check_want()

    def eof_received(self):
        self.events.append(("eof",))
        self.eof.set_result(None)
        if self.close_on_eof:
            self.transport.close()
        return self.eof_result

    def connection_lost(self, exc):
        self.events.append(("lost", exc_rec(exc)))
        self.lost.set_result(exc)
        if self._want and not self._want[1].done():
            self._want[1].set_exception(
                AssertionError(f"connection lost with {len(self.received)}"
                               f" bytes received, waiting for "
                               f"{self._want[0]}"))

    def pause_writing(self):
        self.events.append(("pause_writing",))
        if not self.paused.done():
            self.paused.set_result(None)

    def resume_writing(self):
        self.events.append(("resume_writing",))
        if not self.resumed.done():
            self.resumed.set_result(None)

    def _check_want(self):
        if self._want and len(self.received) >= self._want[0]:
            if not self._want[1].done():
                self._want[1].set_result(bytes(self.received))

    async def wait_bytes(self, n):
        """Wait until at least n bytes have arrived in total."""
        self._want = (n, self.loop.create_future())
        self._check_want()
        return await self._want[1]


class RecBufProto(asyncio.BufferedProtocol):
    """A BufferedProtocol that records every callback.

    get_buffer/buffer_updated pairs are recorded as merged "data" entries;
    a get_buffer() not followed by buffer_updated() shows as ("get_buffer",).
    """

    def __init__(self, loop=None, bufsize=7, eof_result=None, echo=False):
        loop = loop or asyncio.get_running_loop()
        self.loop = loop
        self.events = []
        self.buf = bytearray(bufsize)
        self.transport = None
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.eof = loop.create_future()
        self.received = bytearray()
        self.sizehints = []
        self.eof_result = eof_result
        self.echo = echo
        self._pending = False
        self._want = None

    def connection_made(self, transport):
        self.events.append(("made",))
        self.transport = transport
        self.made.set_result(transport)

    def get_buffer(self, sizehint):
        assert not self._pending, "get_buffer() twice without buffer_updated()"
        self.sizehints.append(sizehint)
        self._pending = True
        return memoryview(self.buf)

    def buffer_updated(self, nbytes):
        assert self._pending, "buffer_updated() without get_buffer()"
        self._pending = False
        assert 0 < nbytes <= len(self.buf), nbytes
        data = bytes(self.buf[:nbytes])
        _merge_data(self.events, "data", data)
        self.received += data
        if self.echo:
            self.transport.write(data)
        if self._want and len(self.received) >= self._want[0]:
            if not self._want[1].done():
                self._want[1].set_result(bytes(self.received))

    def eof_received(self):
        self.events.append(("eof",))
        self.eof.set_result(None)
        return self.eof_result

    def connection_lost(self, exc):
        self.events.append(("lost", exc_rec(exc)))
        self.lost.set_result(exc)

    async def wait_bytes(self, n):
        self._want = (n, self.loop.create_future())
        if len(self.received) >= n:
            self._want[1].set_result(bytes(self.received))
        return await self._want[1]


class RecDgram(asyncio.DatagramProtocol):
    def __init__(self, loop=None):
        loop = loop or asyncio.get_running_loop()
        self.loop = loop
        self.events = []
        self.transport = None
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self._waiters = []

    def connection_made(self, transport):
        self.events.append(("made",))
        self.transport = transport
        self.made.set_result(transport)

    def datagram_received(self, data, addr):
        assert isinstance(data, bytes), type(data)
        self.events.append(("dgram", data, addr))
        self._wake()

    def error_received(self, exc):
        self.events.append(("error", exc_rec(exc)))
        self._wake()

    def connection_lost(self, exc):
        self.events.append(("lost", exc_rec(exc)))
        self.lost.set_result(exc)
        self._wake()

    def _wake(self):
        for n, fut in self._waiters:
            if len(self.events) >= n and not fut.done():
                fut.set_result(None)

    async def wait_events(self, n):
        """Wait until at least n events have been recorded."""
        fut = self.loop.create_future()
        self._waiters.append((n, fut))
        self._wake()
        await fut
        return self.events


class RecSubproc(asyncio.SubprocessProtocol):
    def __init__(self, loop=None):
        loop = loop or asyncio.get_running_loop()
        self.events = []
        self.transport = None
        self.data = {}
        self._waiters = []
        self.made = loop.create_future()
        self.exited = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.events.append(("made",))
        self.transport = transport
        self.made.set_result(transport)

    def pipe_data_received(self, fd, data):
        assert isinstance(data, bytes), type(data)
        ev = ("pipe_data", fd)
        if self.events and self.events[-1][:2] == ev:
            self.events[-1] = ev + (self.events[-1][2] + data,)
        else:
            self.events.append(ev + (data,))
        self.data[fd] = self.data.get(fd, b"") + data
        for w in list(self._waiters):
            if w[1] in self.data.get(w[0], b"") and not w[2].done():
                w[2].set_result(None)

    async def wait_data(self, fd, needle):
        """Wait until the data from fd contain needle."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((fd, needle, fut))
        if needle in self.data.get(fd, b""):
            fut.set_result(None)
        await fut

    def pipe_connection_lost(self, fd, exc):
        self.events.append(("pipe_lost", fd, exc_rec(exc)))

    def process_exited(self):
        self.events.append(("exited",))
        self.exited.set_result(None)

    def connection_lost(self, exc):
        self.events.append(("lost", exc_rec(exc)))
        self.lost.set_result(exc)


def raw_listener(family=socket.AF_INET, host="127.0.0.1"):
    """A plain listening socket on an OS-chosen port."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.listen(8)
    return s


def refused_port(host="127.0.0.1", type=socket.SOCK_STREAM):
    """A socket bound to a free port but not listening (TCP) / not read
    from and then closed (UDP).  Returns (sock_or_None, port)."""
    s = socket.socket(socket.AF_INET, type)
    s.bind((host, 0))
    port = s.getsockname()[1]
    if type == socket.SOCK_DGRAM:
        s.close()
        return None, port
    return s, port


def recv_exactly(sock, n):
    """Blocking read of exactly n bytes from a plain socket (b'' at EOF)."""
    sock.settimeout(TIMEOUT)
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def recv_all(sock):
    """Blocking read until EOF from a plain socket."""
    sock.settimeout(TIMEOUT)
    out = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(out)
        out += chunk


def fd_readable(fd, timeout=TIMEOUT):
    import select
    r, _, _ = select.select([fd], [], [], timeout)
    return bool(r)


async def spin(n=5):
    """Let the loop run n iterations (not a timed wait)."""
    for _ in range(n):
        await asyncio.sleep(0)
