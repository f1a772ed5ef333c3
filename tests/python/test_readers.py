"""add_reader / add_writer / remove_reader / remove_writer."""

import asyncio
import errno
import os
import socket

import pytest

from tputil import Handlers, fd_readable, run, spin


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_add_reader(loop, pair):
    a, b = pair

    async def main():
        got = loop.create_future()
        rec = []

        def on_read(*args):
            rec.append((args, a.recv(100)))
            if not got.done():
                got.set_result(None)

        rec.append(("ret", loop.add_reader(a.fileno(), on_read, "r", 1)))
        await spin()
        rec.append("nothing yet")
        b.send(b"ping")
        await got
        rec.append(("removed", loop.remove_reader(a.fileno())))
        rec.append(("removed", loop.remove_reader(a.fileno())))
        b.send(b"unseen")
        fd_readable(a.fileno())
        await spin()
        return rec

    assert run(loop, main()) == [
        ("ret", None), "nothing yet", (("r", 1), b"ping"),
        ("removed", True), ("removed", False)]


def test_reader_is_level_triggered(loop, pair):
    a, b = pair

    async def main():
        done = loop.create_future()
        calls = []

        def on_read():      # never reads: keeps being called
            calls.append(1)
            if len(calls) == 3:
                loop.remove_reader(a.fileno())
                done.set_result(None)

        loop.add_reader(a.fileno(), on_read)
        b.send(b"x")
        await done
        await spin()
        return len(calls), a.recv(10)

    assert run(loop, main()) == (3, b"x")


def test_reader_with_file_object(loop, pair):
    a, b = pair

    async def main():
        got = loop.create_future()
        loop.add_reader(a, lambda: got.set_result(a.recv(10)))
        b.send(b"fileobj")
        data = await got
        return data, loop.remove_reader(a), loop.remove_reader(a.fileno())

    assert run(loop, main()) == (b"fileobj", True, False)


def test_reader_replaced(loop, pair):
    a, b = pair

    async def main():
        got = loop.create_future()
        rec = []
        loop.add_reader(a.fileno(), lambda: rec.append("first"))
        loop.add_reader(a.fileno(),
                        lambda: (rec.append("second"),
                                 got.set_result(a.recv(10))))
        b.send(b"r")
        await got
        loop.remove_reader(a.fileno())
        return rec

    assert run(loop, main()) == ["second"]


def test_add_writer(loop, pair):
    a, b = pair

    async def main():
        got = loop.create_future()
        rec = []

        def on_write(tag):
            rec.append(tag)
            loop.remove_writer(a.fileno())
            got.set_result(None)

        rec.append(loop.add_writer(a.fileno(), on_write, "w"))
        await got
        rec.append(loop.remove_writer(a.fileno()))
        # a writer that fills the socket: called again once it drains
        n = 0
        while True:
            try:
                n += a.send(b"f" * 65536)
            except BlockingIOError:
                break
        again = loop.create_future()
        loop.add_writer(a.fileno(), lambda: again.set_result("drained"))
        await spin()
        rec.append(again.done())
        left = n
        while left:
            left -= len(b.recv(left))
        rec.append(await again)
        rec.append(loop.remove_writer(a.fileno()))
        return rec

    assert run(loop, main()) == [None, "w", False, False, "drained", True]


def test_reader_and_writer_same_fd(loop, pair):
    a, b = pair

    async def main():
        r = loop.create_future()
        w = loop.create_future()
        loop.add_reader(a.fileno(), lambda: r.done() or r.set_result(
            a.recv(10)))
        loop.add_writer(a.fileno(), lambda: w.done() or w.set_result("w"))
        b.send(b"rw")
        out = [await w, await r]
        out.append(loop.remove_writer(a.fileno()))
        # the reader is still there
        r2 = loop.create_future()
        loop.add_reader(a.fileno(), lambda: r2.set_result(a.recv(10)))
        b.send(b"again")
        out.append(await r2)
        out.append(loop.remove_reader(a.fileno()))
        out.append(loop.remove_writer(a.fileno()))
        return out

    assert run(loop, main()) == ["w", b"rw", True, b"again", True, False]


def test_reader_on_pipe_and_eof(loop):
    r, w = os.pipe()
    os.set_blocking(r, False)

    async def main():
        chunks = []
        done = loop.create_future()

        def on_read():
            data = os.read(r, 100)
            chunks.append(data)
            if not data:
                loop.remove_reader(r)
                done.set_result(None)

        loop.add_reader(r, on_read)
        os.write(w, b"piped")
        os.close(w)
        await done
        return chunks

    try:
        assert run(loop, main()) == [b"piped", b""]
    finally:
        os.close(r)


def test_reader_callback_raises(loop, pair):
    a, b = pair

    async def main():
        h = Handlers(loop)
        calls = []
        done = loop.create_future()

        def bad():
            calls.append(1)
            if len(calls) == 2:
                a.recv(10)
                loop.remove_reader(a.fileno())
                done.set_result(None)
                return
            raise ValueError("in reader")

        loop.add_reader(a.fileno(), bad)
        b.send(b"x")
        await done
        return len(calls), h.contexts

    n, contexts = run(loop, main())
    assert n == 2          # still registered after raising
    assert len(contexts) == 1
    assert sorted(contexts[0]) == ["exception", "handle", "message"]
    assert contexts[0]["message"].startswith("Exception in callback ")
    assert isinstance(contexts[0]["handle"], asyncio.Handle)


def test_bad_file_descriptors(loop, tmp_path):
    path = tmp_path / "regular"
    path.write_bytes(b"")
    out = []
    with open(path, "rb") as f:
        r, w = os.pipe()      # two descriptor numbers that are then closed
        os.close(r)
        os.close(w)
        for target in (-1, "x", r, f.fileno()):
            try:
                loop.add_reader(target, print)
                out.append("no error")
                loop.remove_reader(target)
            except (ValueError, OSError) as e:
                out.append((type(e).__name__,
                            getattr(e, "errno", None) if isinstance(
                                e, OSError) else str(e)))
    assert out == [("ValueError", "Invalid file descriptor: -1"),
                   ("ValueError", "Invalid file object: 'x'"),
                   ("OSError", errno.EBADF),
                   ("PermissionError", errno.EPERM)]
    assert loop.remove_reader(12345) is False
    assert loop.remove_writer(12345) is False


def test_readers_on_closed_loop(loop, pair):
    a, b = pair
    loop.close()
    with pytest.raises(RuntimeError) as ei:
        loop.add_reader(a.fileno(), print)
    assert str(ei.value) == "Event loop is closed"
    with pytest.raises(RuntimeError):
        loop.add_writer(a.fileno(), print)
    assert loop.remove_reader(a.fileno()) is False
    assert loop.remove_writer(a.fileno()) is False
