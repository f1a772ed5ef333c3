"""Unix stream sockets: create_unix_server / create_unix_connection."""

import asyncio
import errno
import os
import socket
import uuid

from tputil import RecBufProto, RecProto, recv_all, run


async def unix_pair(loop, path, server_proto=None, client_proto=None):
    protos = []

    def sfactory():
        p = (server_proto or (lambda: RecProto(loop)))()
        protos.append(p)
        return p

    srv = await loop.create_unix_server(sfactory, path)
    ct, cp = await loop.create_unix_connection(
        client_proto or (lambda: RecProto(loop)), path)
    while not protos:
        await asyncio.sleep(0)
    await protos[0].made
    return srv, ct, cp, protos[0]


def test_unix_echo_and_names(loop, tmp_path):
    path = str(tmp_path / "echo.sock")

    async def main():
        srv, ct, cp, sp = await unix_pair(
            loop, path, server_proto=lambda: RecProto(loop, echo=True))
        s = srv.sockets[0]
        st = sp.transport
        out = [(s.family, s.type, s.getsockname()),
               srv.is_serving(),
               ct.get_extra_info("peername"), ct.get_extra_info("sockname"),
               st.get_extra_info("peername"), st.get_extra_info("sockname"),
               ct.get_extra_info("socket").family,
               isinstance(ct, asyncio.Transport), ct.can_write_eof()]
        ct.write(b"unix ")
        ct.writelines([b"echo"])
        ct.write_eof()
        await cp.lost
        await sp.lost
        srv.close()
        await srv.wait_closed()
        return out, cp.events, sp.events

    out, cev, sev = run(loop, main())
    assert out == [(socket.AF_UNIX, socket.SOCK_STREAM, path), True,
                   path, "", "", path, socket.AF_UNIX, True, True]
    expected = [("made",), ("data", b"unix echo"), ("eof",), ("lost", None)]
    assert cev == expected
    assert sev == expected


def test_unix_pathlike_and_socket_file_kept(loop, tmp_path):
    path = tmp_path / "p.sock"

    async def main():
        srv, ct, cp, sp = await unix_pair(loop, path)
        name = srv.sockets[0].getsockname()
        ct.close()
        await sp.lost
        srv.close()
        await srv.wait_closed()
        exists_after_close = path.exists()
        # a stale socket file is replaced by the next server
        srv2 = await loop.create_unix_server(lambda: RecProto(loop), path)
        c = socket.socket(socket.AF_UNIX)
        c.connect(str(path))
        c.close()
        srv2.close()
        await srv2.wait_closed()
        return name, exists_after_close

    assert run(loop, main()) == (str(path), True)


def test_unix_half_close_buffered(loop, tmp_path):
    path = str(tmp_path / "h.sock")

    class Replier(RecBufProto):
        def eof_received(self):
            super().eof_received()
            self.transport.write(bytes(self.received[::-1]))
            self.transport.close()
            return True

    async def main():
        srv, ct, cp, sp = await unix_pair(
            loop, path, server_proto=lambda: Replier(loop, bufsize=4),
            client_proto=lambda: RecBufProto(loop, bufsize=3))
        ct.write(b"abcdefghij")
        ct.write_eof()
        await cp.lost
        await sp.lost
        srv.close()
        await srv.wait_closed()
        return cp.events, sp.events

    cev, sev = run(loop, main())
    assert cev == [("made",), ("data", b"jihgfedcba"), ("eof",),
                   ("lost", None)]
    assert sev == [("made",), ("data", b"abcdefghij"), ("eof",),
                   ("lost", None)]


def test_unix_abstract_namespace(loop):
    name = "\0tpio-test-" + uuid.uuid4().hex

    async def main():
        srv = await loop.create_unix_server(lambda: RecProto(loop, echo=True),
                                            name)
        t, p = await loop.create_unix_connection(lambda: RecProto(loop),
                                                 name)
        out = [srv.sockets[0].getsockname(), t.get_extra_info("peername")]
        t.write(b"abs")
        t.write_eof()
        await p.lost
        srv.close()
        await srv.wait_closed()
        return out, p.events

    out, ev = run(loop, main())
    assert out == [name.encode(), name.encode()]
    assert ev == [("made",), ("data", b"abs"), ("eof",), ("lost", None)]


def test_unix_with_sockets(loop, tmp_path):
    path = str(tmp_path / "s.sock")

    async def main():
        ls = socket.socket(socket.AF_UNIX)
        ls.bind(path)
        srv = await loop.create_unix_server(lambda: RecProto(loop, echo=True),
                                            sock=ls)
        c = socket.socket(socket.AF_UNIX)
        c.connect(path)
        t, p = await loop.create_unix_connection(lambda: RecProto(loop),
                                                 sock=c)
        t.write(b"sock")
        t.write_eof()
        await p.lost
        srv.close()
        await srv.wait_closed()
        return p.events, ls.fileno()

    ev, fd = run(loop, main())
    assert ev == [("made",), ("data", b"sock"), ("eof",), ("lost", None)]
    assert fd == -1


def test_unix_start_serving_false(loop, tmp_path):
    path = str(tmp_path / "l.sock")

    async def main():
        srv = await loop.create_unix_server(lambda: RecProto(loop, echo=True),
                                            path, start_serving=False)
        out = [srv.is_serving()]
        c = socket.socket(socket.AF_UNIX)
        try:
            c.connect(path)
            out.append("connected")
        except ConnectionRefusedError:
            out.append("refused")
        c.close()
        await srv.start_serving()
        out.append(srv.is_serving())
        c = socket.socket(socket.AF_UNIX)
        c.connect(path)
        c.sendall(b"late")
        c.shutdown(socket.SHUT_WR)
        out.append(await loop.run_in_executor(None, recv_all, c))
        c.close()
        srv.close()
        await srv.wait_closed()
        return out

    assert run(loop, main()) == [False, "refused", True, b"late"]


def test_unix_connection_errors(loop, tmp_path):
    missing = str(tmp_path / "missing.sock")
    dead = str(tmp_path / "dead.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(dead)        # a socket file nobody listens on
    s.close()

    async def main():
        out = []
        for p in (missing, dead):
            try:
                await loop.create_unix_connection(lambda: RecProto(loop), p)
                out.append("connected")
            except OSError as e:
                out.append((type(e).__name__, e.errno))
        return out

    assert run(loop, main()) == [("FileNotFoundError", errno.ENOENT),
                                 ("ConnectionRefusedError",
                                  errno.ECONNREFUSED)]


def test_unix_server_address_in_use(loop, tmp_path):
    path = tmp_path / "regular-file"
    path.write_text("not a socket")

    async def main():
        try:
            await loop.create_unix_server(lambda: RecProto(loop), str(path))
            return "no error"
        except OSError as e:
            return type(e).__name__, e.errno, str(e)

    assert run(loop, main()) == (
        "OSError", errno.EADDRINUSE,
        f"[Errno 98] Address {str(path)!r} is already in use")
    assert path.read_text() == "not a socket"


def test_unix_bad_arguments(loop, tmp_path):
    path = str(tmp_path / "b.sock")

    async def main():
        out = []
        us = socket.socket(socket.AF_UNIX)
        ts = socket.socket(socket.AF_INET)
        try:
            for call in (
                    lambda: loop.create_unix_connection(
                        lambda: RecProto(loop), path, sock=us),
                    lambda: loop.create_unix_connection(
                        lambda: RecProto(loop)),
                    lambda: loop.create_unix_connection(
                        lambda: RecProto(loop), sock=ts),
                    lambda: loop.create_unix_server(
                        lambda: RecProto(loop), path, sock=us),
                    lambda: loop.create_unix_server(lambda: RecProto(loop)),
                    lambda: loop.create_unix_server(
                        lambda: RecProto(loop), sock=ts)):
                try:
                    await call()
                    out.append("no error")
                except ValueError as e:
                    out.append(str(e).split(", got")[0])
        finally:
            us.close()
            ts.close()
        return out

    assert run(loop, main()) == [
        "path and sock can not be specified at the same time",
        "no path and sock were specified",
        "A UNIX Domain Stream Socket was expected",
        "path and sock can not be specified at the same time",
        "path was not specified, and no sock specified",
        "A UNIX Domain Stream Socket was expected"]
    assert not os.path.exists(path)
