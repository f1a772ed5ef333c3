"""TCP: servers, connections, the socket transport and its protocols."""

import asyncio
import socket
import struct

import pytest

from tputil import (Handlers, RecBufProto, RecProto, addr_shape, exc_rec,
                    fd_readable, raw_listener, recv_all, recv_exactly,
                    refused_port, run, spin)

LOCAL = "127.0.0.1"


def test_sock_methods(loop):
    async def main():
        lst = socket.socket()
        lst.bind((LOCAL, 0))
        lst.listen(1)
        lst.setblocking(False)
        c = socket.socket()
        c.setblocking(False)
        accept = loop.create_task(loop.sock_accept(lst))
        await loop.sock_connect(c, lst.getsockname())
        conn, addr = await accept
        out = [addr == c.getsockname(), conn.getblocking()]
        conn.setblocking(False)
        await loop.sock_sendall(c, b"x" * 100000)
        got = b""
        while len(got) < 100000:
            got += await loop.sock_recv(conn, 65536)
        out.append(len(got))
        buf = bytearray(10)
        await loop.sock_sendall(conn, b"into")
        n = await loop.sock_recv_into(c, buf)
        out.append(bytes(buf[:n]))
        c.shutdown(socket.SHUT_WR)
        out.append(await loop.sock_recv(conn, 10))
        for s in (c, conn, lst):
            s.close()
        return out

    assert run(loop, main()) == [True, False, 100000, b"into", b""]


def test_sendfile(loop, tmp_path):
    data = bytes(range(256)) * 1000
    path = tmp_path / "f.bin"
    path.write_bytes(data)

    async def main():
        ct, cp, peer = await raw_peer(loop)
        with open(path, "rb") as f:
            n1 = await loop.sendfile(ct, f)
            n2 = await loop.sendfile(ct, f, offset=10, count=90)
            pos = f.tell()
        ct.write(b"END")
        ct.close()
        got = await loop.run_in_executor(None, recv_all, peer)
        await cp.lost
        peer.close()
        return n1, n2, pos, got

    n1, n2, pos, got = run(loop, main())
    assert (n1, n2, pos) == (len(data), 90, 100)
    assert got == data + data[10:100] + b"END"
