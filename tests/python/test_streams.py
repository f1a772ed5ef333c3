"""The streams API on the loop: open_connection/start_server and the Unix
variants, StreamReader/StreamWriter over the loop's transports."""

import asyncio
import socket

from tputil import run

LOCAL = "127.0.0.1"


async def echo_lines(reader, writer):
    """Handler: echoes lines back upper-cased until EOF, then 'bye'."""
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write(line.upper())
            await writer.drain()
        writer.write(b"bye\n")
        await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


def test_tcp_streams(loop):
    async def main():
        srv = await asyncio.start_server(echo_lines, LOCAL, 0)
        addr = srv.sockets[0].getsockname()
        reader, writer = await asyncio.open_connection(*addr)
        out = [isinstance(reader, asyncio.StreamReader),
               isinstance(writer, asyncio.StreamWriter),
               writer.get_extra_info("peername") == addr,
               writer.can_write_eof(),
               isinstance(writer.transport, asyncio.Transport)]
        writer.write(b"first line\nsecond")
        writer.writelines([b" line\n", b"third\n"])
        await writer.drain()
        out.append(await reader.readline())
        out.append(await reader.readexactly(7))
        out.append(await reader.readuntil(b"\n"))
        out.append(await reader.readline())
        writer.write_eof()
        out.append(await reader.read())      # to EOF
        out.append(reader.at_eof())
        out.append(await reader.read())
        writer.close()
        out.append(writer.is_closing())
        await writer.wait_closed()
        srv.close()
        await srv.wait_closed()
        return out

    assert run(loop, main()) == [
        True, True, True, True, True, b"FIRST LINE\n", b"SECOND ",
        b"LINE\n", b"THIRD\n", b"bye\n", True, b"", True]


def test_stream_incomplete_read(loop):
    async def handler(reader, writer):
        writer.write(b"abc")
        writer.close()
        await writer.wait_closed()

    async def main():
        srv = await asyncio.start_server(handler, LOCAL, 0)
        reader, writer = await asyncio.open_connection(
            *srv.sockets[0].getsockname())
        try:
            await reader.readexactly(10)
        except asyncio.IncompleteReadError as e:
            res = (e.partial, e.expected, str(e))
        writer.close()
        await writer.wait_closed()
        srv.close()
        await srv.wait_closed()
        return res

    assert run(loop, main()) == (
        b"abc", 10, "3 bytes read on a total of 10 expected bytes")


def test_stream_limit(loop):
    async def handler(reader, writer):
        writer.write(b"x" * 100 + b"\nshort\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        srv = await asyncio.start_server(handler, LOCAL, 0)
        reader, writer = await asyncio.open_connection(
            *srv.sockets[0].getsockname(), limit=10)
        out = []
        try:
            await reader.readline()
        except ValueError as e:
            out.append(str(e))
        out.append(await reader.readline())
        writer.close()
        await writer.wait_closed()
        srv.close()
        await srv.wait_closed()
        return out

    out = run(loop, main())
    assert out[0] in ("Separator is not found, and chunk exceed the limit",
                      "Separator is found, but chunk is longer than limit")
    assert out[1:] == [b"short\n"]


def test_stream_drain_backpressure(loop):
    # A reader that only starts reading after the writer has written a lot:
    # drain() has to wait for the transport's resume_writing.
    size = 8 * 1024 * 1024
    got = []

    async def handler(reader, writer):
        await start_reading
        got.append(len(await reader.read()))
        writer.close()
        await writer.wait_closed()

    async def main():
        nonlocal start_reading
        start_reading = loop.create_future()
        srv = await asyncio.start_server(handler, LOCAL, 0)
        reader, writer = await asyncio.open_connection(
            *srv.sockets[0].getsockname())
        drains = 0
        written = 0
        chunk = b"d" * 65536
        while written < size:
            writer.write(chunk)
            written += len(chunk)
            if writer.transport.get_write_buffer_size() > 65536:
                if not start_reading.done():
                    start_reading.set_result(None)
                drains += 1
                await writer.drain()
        await writer.drain()
        writer.write_eof()
        await reader.read()
        writer.close()
        await writer.wait_closed()
        srv.close()
        await srv.wait_closed()
        return drains > 0

    start_reading = None
    assert run(loop, main()) is True
    assert got == [size]


def test_stream_reader_pauses_transport(loop):
    # With a small limit the StreamReader pauses the transport while its
    # buffer is over 2 * limit and resumes it as it is read.
    payload = bytes(range(256)) * 1024

    async def handler(reader, writer):
        writer.write(payload)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        srv = await asyncio.start_server(handler, LOCAL, 0)
        reader, writer = await asyncio.open_connection(
            *srv.sockets[0].getsockname(), limit=1024)
        data = await reader.readexactly(len(payload))
        eof = await reader.read()
        writer.close()
        await writer.wait_closed()
        srv.close()
        await srv.wait_closed()
        return data == payload, eof

    assert run(loop, main()) == (True, b"")


def test_unix_streams(loop, tmp_path):
    path = str(tmp_path / "streams.sock")

    async def main():
        srv = await asyncio.start_unix_server(echo_lines, path)
        reader, writer = await asyncio.open_unix_connection(path)
        out = [srv.sockets[0].getsockname() == path,
               writer.get_extra_info("peername") == path]
        writer.write(b"over unix\n")
        out.append(await reader.readline())
        writer.write_eof()
        out.append(await reader.read())
        writer.close()
        await writer.wait_closed()
        srv.close()
        await srv.wait_closed()
        return out

    assert run(loop, main()) == [True, True, b"OVER UNIX\n", b"bye\n"]


def test_stream_connection_reset(loop):
    import struct

    async def main():
        lst = socket.socket()
        lst.bind((LOCAL, 0))
        lst.listen(1)
        reader, writer = await asyncio.open_connection(*lst.getsockname())
        peer, _ = lst.accept()
        lst.close()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack("ii", 1, 0))
        peer.close()
        try:
            await reader.read(10)
            res = "no error"
        except ConnectionResetError as e:
            res = type(e).__name__
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionResetError:
            pass
        return res

    assert run(loop, main()) == "ConnectionResetError"


def test_start_server_serve_forever_and_clients(loop):
    async def main():
        srv = await asyncio.start_server(echo_lines, LOCAL, 0,
                                         start_serving=False)
        task = loop.create_task(srv.serve_forever())
        await asyncio.sleep(0)
        addr = srv.sockets[0].getsockname()

        async def client(i):
            reader, writer = await asyncio.open_connection(*addr)
            writer.write(b"client %d\n" % i)
            line = await reader.readline()
            writer.write_eof()
            rest = await reader.read()
            writer.close()
            await writer.wait_closed()
            return line + rest

        res = await asyncio.gather(*(client(i) for i in range(5)))
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return res, srv.is_serving()

    res, serving = run(loop, main())
    assert res == [b"CLIENT %d\nbye\n" % i for i in range(5)]
    assert serving is False
