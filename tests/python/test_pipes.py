"""Pipes: connect_read_pipe / connect_write_pipe on os.pipe()."""

import asyncio
import os
import socket

import pytest

from tputil import Handlers, RecProto, fd_readable, run, spin


@pytest.fixture
def pipe():
    r, w = os.pipe()
    rf = os.fdopen(r, "rb", 0)
    wf = os.fdopen(w, "wb", 0)
    yield rf, wf
    for f in (rf, wf):
        try:
            f.close()
        except OSError:
            pass


def read_all_fd(fd):
    out = bytearray()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return bytes(out)
        out += chunk


def test_read_pipe(loop, pipe):
    rf, wf = pipe

    async def main():
        t, p = await loop.connect_read_pipe(lambda: RecProto(loop), rf)
        out = [p.transport is t, list(p.events),
               t.get_extra_info("pipe") is rf,
               [isinstance(t, c) for c in (
                   asyncio.BaseTransport, asyncio.ReadTransport,
                   asyncio.WriteTransport, asyncio.Transport)],
               t.is_closing(), os.get_blocking(rf.fileno())]
        wf.write(b"hello ")
        await p.wait_bytes(6)
        wf.write(b"pipe")
        wf.close()
        await p.lost
        out += [t.is_closing(), rf.closed]
        return out, p.events

    out, ev = run(loop, main())
    assert out == [True, [("made",)], True, [True, True, False, False],
                   False, False, True, True]
    assert ev == [("made",), ("data", b"hello pipe"), ("eof",),
                  ("lost", None)]


def test_read_pipe_pause_resume(loop, pipe):
    rf, wf = pipe

    async def main():
        t, p = await loop.connect_read_pipe(lambda: RecProto(loop), rf)
        wf.write(b"a")
        await p.wait_bytes(1)
        t.pause_reading()
        t.pause_reading()
        out = []
        wf.write(b"b")
        wf.close()
        fd_readable(rf.fileno())
        await spin(10)
        out.append(list(p.events))
        t.resume_reading()
        await p.lost
        return out, p.events

    out, ev = run(loop, main())
    assert out == [[("made",), ("data", b"a")]]
    assert ev == [("made",), ("data", b"ab"), ("eof",), ("lost", None)]


def test_read_pipe_close(loop, pipe):
    rf, wf = pipe

    async def main():
        t, p = await loop.connect_read_pipe(lambda: RecProto(loop), rf)
        t.close()
        out = [t.is_closing(), list(p.events)]
        t.close()
        await p.lost
        out.append(rf.closed)
        return out, p.events

    out, ev = run(loop, main())
    assert out == [True, [("made",)], True]
    assert ev == [("made",), ("lost", None)]


def test_write_pipe(loop, pipe):
    rf, wf = pipe

    async def main():
        t, p = await loop.connect_write_pipe(lambda: RecProto(loop), wf)
        out = [p.transport is t, t.get_extra_info("pipe") is wf,
               # (3.11's write pipe transport also passes for
               # ReadTransport, through _FlowControlMixin: not checked)
               [isinstance(t, c) for c in (
                   asyncio.BaseTransport, asyncio.WriteTransport)],
               t.can_write_eof(), t.get_write_buffer_size(),
               t.get_write_buffer_limits()]
        t.write(b"to ")
        t.writelines([b"the ", bytearray(b"pipe")])
        t.write_eof()
        out.append(t.is_closing())
        await p.lost
        out.append(wf.closed)
        out.append(read_all_fd(rf.fileno()))
        return out, p.events

    out, ev = run(loop, main())
    assert out == [True, True, [True, True], True, 0,
                   (16384, 65536), True, True, b"to the pipe"]
    assert ev == [("made",), ("lost", None)]


def test_write_pipe_close_and_write_after(loop, pipe):
    rf, wf = pipe

    async def main():
        t, p = await loop.connect_write_pipe(lambda: RecProto(loop), wf)
        t.write(b"before")
        t.close()
        t.write(b"after")     # ignored
        out = [t.is_closing()]
        await p.lost
        out.append(read_all_fd(rf.fileno()))
        return out, p.events

    assert run(loop, main()) == ([True, b"before"],
                                 [("made",), ("lost", None)])


def test_write_pipe_reader_closes(loop, pipe):
    # The read end goes away while nothing is buffered: connection_lost(None)
    # without any write.
    rf, wf = pipe

    async def main():
        h = Handlers(loop)
        t, p = await loop.connect_write_pipe(lambda: RecProto(loop), wf)
        await spin()
        rf.close()
        await p.lost
        return p.events, h.contexts

    assert run(loop, main()) == ([("made",), ("lost", None)], [])


def test_write_pipe_broken(loop, pipe):
    rf, wf = pipe

    async def main():
        h = Handlers(loop)
        t, p = await loop.connect_write_pipe(lambda: RecProto(loop), wf)
        rf.close()
        t.write(b"nobody reads")    # fails right away: EPIPE
        await p.lost
        return p.events, h.contexts

    assert run(loop, main()) == (
        [("made",), ("lost", ("BrokenPipeError", 32))], [])


def test_write_pipe_flow_control(loop, pipe):
    rf, wf = pipe
    chunk = b"f" * 65536

    async def main():
        t, p = await loop.connect_write_pipe(lambda: RecProto(loop), wf)
        t.set_write_buffer_limits(high=100000, low=1000)
        total = 0
        while not p.paused.done():
            assert total < 64 * 1024 * 1024
            t.write(chunk)
            total += len(chunk)
        size = t.get_write_buffer_size()
        reader = loop.run_in_executor(None, read_all_fd, rf.fileno())
        await p.resumed
        after = t.get_write_buffer_size()
        t.close()
        got = await reader
        await p.lost
        return size > 100000, after <= 1000, len(got) == total, p.events

    assert run(loop, main()) == (True, True, True, [
        ("made",), ("pause_writing",), ("resume_writing",), ("lost", None)])


def test_write_pipe_abort(loop, pipe):
    rf, wf = pipe

    async def main():
        t, p = await loop.connect_write_pipe(lambda: RecProto(loop), wf)
        t.set_write_buffer_limits(high=1 << 30)
        while not t.get_write_buffer_size():
            t.write(b"x" * 65536)
        t.abort()
        out = [list(p.events), t.is_closing()]
        await p.lost
        return out, p.events

    assert run(loop, main()) == ([[("made",)], True],
                                 [("made",), ("lost", None)])


def test_pipes_on_socketpair(loop):
    a, b = socket.socketpair()

    async def main():
        rt, rp = await loop.connect_read_pipe(lambda: RecProto(loop), a)
        wt, wp = await loop.connect_write_pipe(lambda: RecProto(loop), b)
        wt.write(b"over a socket")
        wt.close()
        await wp.lost
        await rp.lost
        return rp.events, wp.events

    r_ev, w_ev = run(loop, main())
    assert r_ev == [("made",), ("data", b"over a socket"), ("eof",),
                    ("lost", None)]
    assert w_ev == [("made",), ("lost", None)]


@pytest.mark.crashes_on("uvloop", reason="libuv assertion, abort()")
def test_pipe_rejects_regular_file(loop, tmp_path):
    path = tmp_path / "regular"
    path.write_bytes(b"data")

    async def main():
        out = []
        with open(path, "rb") as f:
            try:
                await loop.connect_read_pipe(lambda: RecProto(loop), f)
            except ValueError as e:
                out.append(str(e))
        with open(path, "ab") as f:
            try:
                await loop.connect_write_pipe(lambda: RecProto(loop), f)
            except ValueError as e:
                out.append(str(e))
        return out

    assert run(loop, main()) == [
        "Pipe transport is for pipes/sockets only.",
        "Pipe transport is only for pipes, sockets and character devices"]


@pytest.mark.crashes_on("uvloop", reason="libuv assertion, abort()")
def test_write_pipe_char_device(loop):
    async def main():
        with open("/dev/null", "wb", 0) as f:
            t, p = await loop.connect_write_pipe(lambda: RecProto(loop), f)
            t.write(b"into the void")
            t.close()
            await p.lost
        return p.events

    assert run(loop, main()) == [("made",), ("lost", None)]
