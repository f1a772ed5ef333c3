"""TCP: servers, connections, the socket transport and its protocols."""

import asyncio
import os
import socket
import threading
import struct

import pytest

from tputil import (Handlers, RecBufProto, RecProto, addr_shape, exc_rec,
                    fd_readable, raw_listener, recv_all, recv_exactly,
                    refused_port, run, spin)

LOCAL = "127.0.0.1"


async def tcp_pair(loop, server_proto=None, client_proto=None):
    """A server (on port 0) and one client connected to it.

    Returns (server, client_transport, client_protocol, server_protocol)."""
    server_protos = []
    server_proto = server_proto or (lambda: RecProto(loop))

    def sfactory():
        p = server_proto()
        server_protos.append(p)
        return p

    srv = await loop.create_server(sfactory, LOCAL, 0)
    addr = srv.sockets[0].getsockname()
    ct, cp = await loop.create_connection(
        client_proto or (lambda: RecProto(loop)), *addr)
    while not server_protos:
        await asyncio.sleep(0)
    sp = server_protos[0]
    await sp.made
    return srv, ct, cp, sp


async def raw_peer(loop, client_proto=None):
    """A connection from the loop to a plain accepted socket.

    Returns (client_transport, client_protocol, peer_socket)."""
    lst = raw_listener()
    try:
        ct, cp = await loop.create_connection(
            client_proto or (lambda: RecProto(loop)), *lst.getsockname())
        peer, _ = lst.accept()
    finally:
        lst.close()
    return ct, cp, peer


async def close_server(srv):
    srv.close()
    await srv.wait_closed()


def rst_close(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                    struct.pack("ii", 1, 0))
    sock.close()


# ------------------------------------------------------------------ servers

def test_server_basics(loop):
    async def main():
        srv = await loop.create_server(lambda: RecProto(loop), LOCAL, 0)
        out = [isinstance(srv, asyncio.AbstractServer),
               srv.get_loop() is loop, srv.is_serving()]
        socks = srv.sockets
        out.append(len(socks))
        s = socks[0]
        out.append((s.family, s.type, addr_shape(s.getsockname())))
        out.append(bool(s.getsockopt(socket.SOL_SOCKET,
                                     socket.SO_REUSEADDR)))
        srv.close()
        out.append(srv.is_serving())
        await srv.wait_closed()
        out.append(len(srv.sockets))
        srv.close()   # twice is fine
        return out

    assert run(loop, main()) == [
        True, True, True, 1,
        (socket.AF_INET, socket.SOCK_STREAM, (LOCAL, "int")), True,
        False, 0]


def test_server_sockets_type(loop):
    async def main():
        srv = await loop.create_server(lambda: RecProto(loop), LOCAL, 0)
        socks = srv.sockets
        await close_server(srv)
        return type(socks), type(srv.sockets)

    assert run(loop, main()) == (tuple, tuple)


def test_server_echo_with_raw_clients(loop):
    protos = []

    def factory():
        p = RecProto(loop, echo=True)
        protos.append(p)
        return p

    async def main():
        srv = await loop.create_server(factory, LOCAL, 0)
        addr = srv.sockets[0].getsockname()
        replies = []
        for i in range(3):
            c = socket.create_connection(addr)
            c.sendall(b"hello %d" % i)
            c.shutdown(socket.SHUT_WR)
            replies.append(await loop.run_in_executor(None, recv_all, c))
            cname = c.getsockname()
            await protos[i].lost
            c.close()
            t = protos[i].transport
            assert t.get_extra_info("peername") == cname
            assert t.get_extra_info("sockname") == addr
        await close_server(srv)
        return replies

    assert run(loop, main()) == [b"hello 0", b"hello 1", b"hello 2"]
    assert [p.events for p in protos] == [
        [("made",), ("data", b"hello %d" % i), ("eof",), ("lost", None)]
        for i in range(3)]


def test_server_host_none_binds_all(loop):
    async def main():
        srv = await loop.create_server(lambda: RecProto(loop, echo=True),
                                       None, 0)
        socks = srv.sockets
        fams = sorted(s.family for s in socks)
        v6only = [bool(s.getsockopt(socket.IPPROTO_IPV6,
                                    socket.IPV6_V6ONLY))
                  for s in socks if s.family == socket.AF_INET6]
        got = []
        for s in socks:
            host = "127.0.0.1" if s.family == socket.AF_INET else "::1"
            c = socket.create_connection((host, s.getsockname()[1]))
            c.sendall(b"x")
            c.shutdown(socket.SHUT_WR)
            got.append(await loop.run_in_executor(None, recv_all, c))
            c.close()
        await close_server(srv)
        return fams, v6only, got

    assert run(loop, main()) == (
        [socket.AF_INET, socket.AF_INET6], [True], [b"x", b"x"])


def test_server_host_list(loop):
    async def main():
        srv = await loop.create_server(lambda: RecProto(loop),
                                       [LOCAL, "::1"], 0)
        a = sorted((s.family, s.getsockname()[0]) for s in srv.sockets)
        await close_server(srv)
        srv = await loop.create_server(lambda: RecProto(loop),
                                       [LOCAL, LOCAL], 0)
        b = len(srv.sockets)
        await close_server(srv)
        return a, b

    assert run(loop, main()) == (
        [(socket.AF_INET, LOCAL), (socket.AF_INET6, "::1")], 1)


def test_server_start_serving_false(loop):
    async def main():
        srv = await loop.create_server(lambda: RecProto(loop, echo=True),
                                       LOCAL, 0, start_serving=False)
        out = [srv.is_serving(), len(srv.sockets)]
        addr = srv.sockets[0].getsockname()
        try:
            socket.create_connection(addr).close()
            out.append("connected")
        except ConnectionRefusedError:
            out.append("refused")
        await srv.start_serving()
        out.append(srv.is_serving())
        await srv.start_serving()   # again: no-op
        c = socket.create_connection(addr)
        c.sendall(b"ok")
        c.shutdown(socket.SHUT_WR)
        out.append(await loop.run_in_executor(None, recv_all, c))
        c.close()
        await close_server(srv)
        return out

    assert run(loop, main()) == [False, 1, "refused", True, b"ok"]


def test_server_async_with(loop):
    async def main():
        srv = await loop.create_server(lambda: RecProto(loop), LOCAL, 0)
        async with srv as entered:
            out = [entered is srv, srv.is_serving()]
        out += [srv.is_serving(), len(srv.sockets)]
        await srv.wait_closed()
        return out

    assert run(loop, main()) == [True, True, False, 0]


def test_server_serve_forever_cancel(loop):
    async def main():
        srv = await loop.create_server(lambda: RecProto(loop, echo=True),
                                       LOCAL, 0, start_serving=False)
        addr = srv.sockets[0].getsockname()
        task = loop.create_task(srv.serve_forever())
        await asyncio.sleep(0)
        out = [srv.is_serving()]
        c = socket.create_connection(addr)
        c.sendall(b"ping")
        c.shutdown(socket.SHUT_WR)
        out.append(await loop.run_in_executor(None, recv_all, c))
        c.close()
        try:
            await srv.serve_forever()
        except RuntimeError as e:
            out.append(("again", str(e).startswith("server ") and str(e)
                        .endswith(" is already being awaited on "
                                  "serve_forever()")))
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            out.append("cancelled")
        out += [srv.is_serving(), len(srv.sockets)]
        try:
            await srv.serve_forever()
        except RuntimeError as e:
            out.append(("closed", str(e).startswith("server ") and
                        str(e).endswith(" is closed")))
        return out

    assert run(loop, main()) == [True, b"ping", ("again", True), "cancelled",
                                 False, 0, ("closed", True)]


def test_server_close_ends_serve_forever(loop):
    async def main():
        srv = await loop.create_server(lambda: RecProto(loop), LOCAL, 0)
        task = loop.create_task(srv.serve_forever())
        await asyncio.sleep(0)
        srv.close()
        try:
            await task
            return "returned"
        except asyncio.CancelledError:
            return "cancelled"

    assert run(loop, main()) == "cancelled"


def test_server_close_keeps_connections(loop):
    async def main():
        srv, ct, cp, sp = await tcp_pair(
            loop, server_proto=lambda: RecProto(loop, echo=True))
        early = loop.create_task(srv.wait_closed())
        await asyncio.sleep(0)
        srv.close()
        await srv.wait_closed()   # 3.11: returns at once once closed
        await spin()
        out = [srv.is_serving(), early.done()]
        ct.write(b"still works")
        out.append(await cp.wait_bytes(11))
        ct.close()
        await cp.lost
        await sp.lost
        await early      # the waiter from before close() ends with the
        out.append(early.done())   # last connection
        return out

    assert run(loop, main()) == [False, False, b"still works", True]


def test_server_with_sock(loop):
    async def main():
        s = socket.socket()
        s.bind((LOCAL, 0))
        name = s.getsockname()
        srv = await loop.create_server(lambda: RecProto(loop, echo=True),
                                       sock=s)
        out = [srv.sockets[0].getsockname() == name]
        c = socket.create_connection(name)
        c.sendall(b"s")
        c.shutdown(socket.SHUT_WR)
        out.append(await loop.run_in_executor(None, recv_all, c))
        c.close()
        await close_server(srv)
        out.append(s.fileno())    # the server closed the socket it was given
        return out

    assert run(loop, main()) == [True, b"s", -1]


def test_server_bad_arguments(loop):
    async def main():
        out = []
        s = socket.socket()
        u = socket.socket(type=socket.SOCK_DGRAM)
        try:
            for kw in (dict(host=LOCAL, port=0, sock=s), dict(sock=u),
                       dict(host=LOCAL, port=0, ssl_handshake_timeout=1)):
                try:
                    await loop.create_server(lambda: RecProto(loop), **kw)
                    out.append("no error")
                except ValueError as e:
                    out.append(str(e))
        finally:
            s.close()
            u.close()
        return out, repr(u)

    out, urepr = run(loop, main())
    assert out[0] == "host/port and sock can not be specified at the same time"
    assert out[1].startswith("A Stream Socket was expected, got <socket")
    assert out[2] == "ssl_handshake_timeout is only meaningful with ssl"


def test_server_address_in_use(loop):
    async def main():
        taken = raw_listener()
        try:
            await loop.create_server(lambda: RecProto(loop), LOCAL,
                                     taken.getsockname()[1],
                                     reuse_address=False)
            return "no error"
        except OSError as e:
            return type(e).__name__, e.errno
        finally:
            taken.close()

    import errno
    assert run(loop, main()) == ("OSError", errno.EADDRINUSE)


# ----------------------------------------------------------- connections

def test_create_connection(loop):
    calls = []

    def factory():
        p = RecProto(loop)
        calls.append(p)
        return p

    async def main():
        srv = await loop.create_server(lambda: RecProto(loop), LOCAL, 0)
        addr = srv.sockets[0].getsockname()
        t, p = await loop.create_connection(factory, LOCAL, addr[1])
        out = [len(calls), p is calls[0], p.transport is t, list(p.events)]
        out.append(t.get_extra_info("peername") == addr)
        sockname = t.get_extra_info("sockname")
        out.append(addr_shape(sockname))
        s = t.get_extra_info("socket")
        out.append((s.family, s.type, s.getsockname() == sockname,
                    s.fileno() >= 0))
        out.append(bool(s.getsockopt(socket.IPPROTO_TCP,
                                     socket.TCP_NODELAY)))
        out.append(t.get_extra_info("nonexistent"))
        out.append(t.get_extra_info("nonexistent", "dflt"))
        out.append((t.is_closing(), t.is_reading(), t.can_write_eof(),
                    t.get_write_buffer_size(), t.get_protocol() is p))
        t.close()
        await p.lost
        await close_server(srv)
        out.append(p.events)
        return out

    assert run(loop, main()) == [
        1, True, True, [("made",)], True, (LOCAL, "int"),
        (socket.AF_INET, socket.SOCK_STREAM, True, True), True, None, "dflt",
        (False, True, True, 0, True), [("made",), ("lost", None)]]


def test_server_side_transport_info(loop):
    async def main():
        srv, ct, cp, sp = await tcp_pair(loop)
        st = sp.transport
        s = st.get_extra_info("socket")
        out = [st.get_extra_info("peername") == ct.get_extra_info("sockname"),
               st.get_extra_info("sockname") == ct.get_extra_info("peername"),
               bool(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)),
               isinstance(st, asyncio.Transport)]
        ct.close()
        await sp.lost
        await close_server(srv)
        return out

    assert run(loop, main()) == [True, True, True, True]


def test_transport_isinstance(loop):
    async def main():
        srv, ct, cp, sp = await tcp_pair(loop)
        out = []
        for t in (ct, sp.transport):
            out.append([isinstance(t, c) for c in (
                asyncio.BaseTransport, asyncio.ReadTransport,
                asyncio.WriteTransport, asyncio.Transport,
                asyncio.DatagramTransport, asyncio.SubprocessTransport)])
        ct.close()
        await sp.lost
        await close_server(srv)
        return out

    assert run(loop, main()) == [[True, True, True, True, False, False]] * 2


def test_create_connection_sock(loop):
    async def main():
        srv = await loop.create_server(lambda: RecProto(loop, echo=True),
                                       LOCAL, 0)
        s = socket.create_connection(srv.sockets[0].getsockname())
        t, p = await loop.create_connection(lambda: RecProto(loop), sock=s)
        out = [s.getblocking(),
               t.get_extra_info("sockname") == s.getsockname()]
        t.write(b"via sock")
        t.write_eof()
        await p.lost
        await close_server(srv)
        return out, p.events

    out, events = run(loop, main())
    assert events == [("made",), ("data", b"via sock"), ("eof",),
                      ("lost", None)]
    assert out == [False, True]     # the socket was made non-blocking


def test_create_connection_local_addr(loop):
    async def main():
        srv = await loop.create_server(lambda: RecProto(loop), LOCAL, 0)
        addr = srv.sockets[0].getsockname()
        t, p = await loop.create_connection(lambda: RecProto(loop), *addr,
                                            local_addr=(LOCAL, 0))
        a = addr_shape(t.get_extra_info("sockname"))
        t.close()
        tmp, port = refused_port()
        tmp.close()
        t, p = await loop.create_connection(lambda: RecProto(loop), *addr,
                                            local_addr=(LOCAL, port))
        b = t.get_extra_info("sockname") == (LOCAL, port)
        t.close()
        await p.lost
        await close_server(srv)
        return a, b

    assert run(loop, main()) == ((LOCAL, "int"), True)


def test_create_connection_refused(loop):
    import errno

    async def main():
        s, port = refused_port()
        try:
            await loop.create_connection(lambda: RecProto(loop), LOCAL, port)
            return "connected"
        except OSError as e:
            return type(e).__name__, e.errno
        finally:
            s.close()

    assert run(loop, main()) == ("ConnectionRefusedError", errno.ECONNREFUSED)


def test_create_connection_refused_message(loop):
    async def main():
        s, port = refused_port()
        try:
            await loop.create_connection(lambda: RecProto(loop), LOCAL, port)
        except OSError as e:
            return port, str(e)
        finally:
            s.close()

    port, msg = run(loop, main())
    assert msg == f"[Errno 111] Connect call failed ('127.0.0.1', {port})"


def test_create_connection_bad_arguments(loop):
    async def main():
        out = []
        s = socket.socket()
        u = socket.socket(type=socket.SOCK_DGRAM)
        try:
            for kw in (dict(host=LOCAL, port=1, sock=s), dict(),
                       dict(sock=u),
                       dict(host=LOCAL, port=1, ssl_handshake_timeout=1)):
                try:
                    await loop.create_connection(lambda: RecProto(loop),
                                                 **kw)
                    out.append("no error")
                except ValueError as e:
                    out.append(str(e))
        finally:
            s.close()
            u.close()
        return out

    out = run(loop, main())
    assert out[0] == "host/port and sock can not be specified at the same time"
    assert out[1] == "host and port was not specified and no sock specified"
    assert out[2].startswith("A Stream Socket was expected, got <socket")
    assert out[3] == "ssl_handshake_timeout is only meaningful with ssl"


# ---------------------------------------------------------------- echoes

def test_echo_protocol(loop):
    async def main():
        srv, ct, cp, sp = await tcp_pair(
            loop, server_proto=lambda: RecProto(loop, echo=True))
        ct.write(b"hello ")
        ct.writelines([b"wor", bytearray(b"ld"), memoryview(b"!")])
        ct.write(b"")
        out = [ct.can_write_eof()]
        ct.write_eof()
        out.append(ct.is_closing())
        await cp.lost
        await sp.lost
        out.append(ct.is_closing())
        await close_server(srv)
        return out, cp.events, sp.events

    out, cev, sev = run(loop, main())
    assert out == [True, False, True]
    expected = [("made",), ("data", b"hello world!"), ("eof",),
                ("lost", None)]
    assert cev == expected
    assert sev == expected


def test_echo_large(loop):
    payload = bytes(range(256)) * 4096     # 1 MiB

    async def main():
        srv, ct, cp, sp = await tcp_pair(
            loop, server_proto=lambda: RecProto(loop, echo=True))
        for i in range(0, len(payload), 100000):
            ct.write(payload[i:i + 100000])
        ct.write_eof()
        await cp.lost
        await close_server(srv)
        return bytes(cp.received), [e[0] for e in cp.events]

    data, kinds = run(loop, main())
    assert data == payload
    if os.environ.get("TPIO_BACKEND") == "io_uring":
        # io_uring sends from the loop: 1 MiB waits above the high
        # watermark first (asyncio's proactor loop pauses the same way)
        # (and the data events a resume split are one run of data)
        kinds = [k for k in kinds
                 if k not in ("pause_writing", "resume_writing")]
        kinds = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    assert kinds == ["made", "data", "eof", "lost"]


def test_loop_run_by_one_thread_after_another(loop):
    """asyncio lets one thread run a loop after another: a connection made
    on one goes on on the next, both ways, and back (tpio's io_uring ring,
    which the kernel ties to one thread, moves with the loop)."""
    payload = bytes(range(256)) * 1024   # 256 KiB: more than one send takes
    srv, ct, cp, sp = run(loop, tcp_pair(
        loop, server_proto=lambda: RecProto(loop, echo=True)))
    got = []

    async def echo(k):
        ct.write(payload)
        return await cp.wait_bytes(k * len(payload))

    got.append(run(loop, echo(1)))
    th = threading.Thread(target=lambda: got.append(run(loop, echo(2))))
    th.start()
    th.join()
    got.append(run(loop, echo(3)))

    async def finish():
        ct.close()
        await cp.lost
        await sp.lost
        await close_server(srv)

    run(loop, finish())
    assert [len(g) for g in got] == [len(payload) * k for k in (1, 2, 3)]
    assert got[2] == payload * 3
    assert [e[0] for e in cp.events][-1:] == ["lost"]
    assert sp.events[-1] == ("lost", None)


def test_echo_buffered_protocol(loop):
    payload = bytes(range(256)) * 4

    async def main():
        srv, ct, cp, sp = await tcp_pair(
            loop,
            server_proto=lambda: RecBufProto(loop, bufsize=7, echo=True),
            client_proto=lambda: RecBufProto(loop, bufsize=13))
        ct.write(payload)
        ct.write_eof()
        await cp.lost
        await sp.lost
        await close_server(srv)
        return cp, sp

    cp, sp = run(loop, main())
    expected = [("made",), ("data", payload), ("eof",), ("lost", None)]
    assert cp.events == expected
    assert sp.events == expected
    assert all(isinstance(h, int) for h in cp.sizehints + sp.sizehints)
    assert len(sp.sizehints) >= len(payload) // 7


def test_half_close(loop):
    class Replier(RecProto):
        def eof_received(self):
            super().eof_received()
            self.transport.write(b"bye:" + bytes(self.received))
            self.transport.close()
            return True

    async def main():
        srv, ct, cp, sp = await tcp_pair(
            loop, server_proto=lambda: Replier(loop))
        ct.write(b"ping")
        ct.write_eof()
        ct.write_eof()        # twice: no-op
        out = [ct.is_closing(), ct.is_reading()]
        await cp.lost
        await sp.lost
        await close_server(srv)
        return out, cp.events, sp.events

    out, cev, sev = run(loop, main())
    assert out == [False, True]
    assert cev == [("made",), ("data", b"bye:ping"), ("eof",), ("lost", None)]
    assert sev == [("made",), ("data", b"ping"), ("eof",), ("lost", None)]


def test_eof_received_true_keeps_transport_open(loop):
    async def main():
        ct, cp, peer = await raw_peer(
            loop, client_proto=lambda: RecProto(loop, eof_result=True))
        peer.shutdown(socket.SHUT_WR)
        await cp.eof
        await spin()
        out = [ct.is_closing(), list(cp.events)]
        ct.write(b"after eof")
        ct.close()
        out.append(await loop.run_in_executor(None, recv_all, peer))
        await cp.lost
        peer.close()
        return out, cp.events

    out, ev = run(loop, main())
    assert out == [False, [("made",), ("eof",)], b"after eof"]
    assert ev == [("made",), ("eof",), ("lost", None)]


# ----------------------------------------------------------- write errors

def test_write_type_errors(loop):
    async def main():
        srv, ct, cp, sp = await tcp_pair(loop)
        msgs = []
        for bad in ("text", 42, None, [b"x"]):
            try:
                ct.write(bad)
            except TypeError as e:
                msgs.append(str(e))
        try:
            ct.writelines(["text"])
            msgs.append("no error")
        except TypeError:
            msgs.append("TypeError")
        ct.close()
        await sp.lost
        await close_server(srv)
        return msgs, sp.events

    msgs, sev = run(loop, main())
    assert msgs == [
        "data argument must be a bytes-like object, not 'str'",
        "data argument must be a bytes-like object, not 'int'",
        "data argument must be a bytes-like object, not 'NoneType'",
        "data argument must be a bytes-like object, not 'list'",
        "TypeError"]
    assert sev == [("made",), ("eof",), ("lost", None)]


def test_write_after_write_eof(loop):
    async def main():
        srv, ct, cp, sp = await tcp_pair(loop)
        ct.write_eof()
        try:
            ct.write(b"x")
            msg = "no error"
        except RuntimeError as e:
            msg = str(e)
        ct.close()
        await sp.lost
        await close_server(srv)
        return msg

    assert run(loop, main()) == "Cannot call write() after write_eof()"


def test_write_after_close_ignored(loop):
    async def main():
        srv, ct, cp, sp = await tcp_pair(loop)
        ct.close()
        out = [ct.is_closing(), ct.is_reading(), list(cp.events)]
        ct.write(b"dropped")         # silently ignored
        ct.writelines([b"dropped"])
        ct.close()                   # twice is fine
        ct.write_eof()               # after close: no-op
        await cp.lost
        ct.write(b"dropped again")   # after connection_lost: ignored too
        await sp.lost
        await close_server(srv)
        return out, cp.events, sp.events

    out, cev, sev = run(loop, main())
    assert out == [True, False, [("made",)]]
    assert cev == [("made",), ("lost", None)]
    assert sev == [("made",), ("eof",), ("lost", None)]


def test_close_flushes_pending_data(loop):
    payload = b"z" * (4 * 1024 * 1024)

    async def main():
        ct, cp, peer = await raw_peer(loop)
        ct.set_write_buffer_limits(high=len(payload))
        ct.write(payload)
        pending = ct.get_write_buffer_size()
        ct.close()
        got = await loop.run_in_executor(None, recv_all, peer)
        await cp.lost
        peer.close()
        return pending > 0, len(got), cp.events

    assert run(loop, main()) == (True, len(payload),
                                 [("made",), ("lost", None)])


def test_abort(loop):
    async def main():
        srv, ct, cp, sp = await tcp_pair(loop)
        ct.abort()
        out = [list(cp.events), ct.is_closing()]
        ct.abort()
        ct.close()
        await cp.lost
        await sp.lost
        await close_server(srv)
        return out, cp.events, sp.events

    out, cev, sev = run(loop, main())
    assert out == [[("made",)], True]
    assert cev == [("made",), ("lost", None)]
    assert sev == [("made",), ("eof",), ("lost", None)]


def test_abort_discards_buffer(loop):
    async def main():
        ct, cp, peer = await raw_peer(loop)
        ct.set_write_buffer_limits(high=1 << 30)
        chunk = b"a" * 65536
        for _ in range(400):
            ct.write(chunk)
            if ct.get_write_buffer_size():
                break
        buffered = ct.get_write_buffer_size()
        ct.abort()
        await cp.lost
        got = await loop.run_in_executor(None, recv_all, peer)
        peer.close()
        return buffered > 0, len(got) < 400 * 65536, cp.events

    assert run(loop, main()) == (True, True, [("made",), ("lost", None)])


def test_peer_reset(loop):
    import errno

    async def main():
        h = Handlers(loop)
        ct, cp, peer = await raw_peer(loop)
        rst_close(peer)
        exc = await cp.lost
        return cp.events, h.contexts, str(exc)

    ev, contexts, msg = run(loop, main())
    assert ev == [("made",), ("lost", ("ConnectionResetError",
                                       errno.ECONNRESET))]
    assert contexts == []
    assert msg == "[Errno 104] Connection reset by peer"


def test_peer_close_with_pending_writes(loop):
    # The peer resets while we still have data queued: connection_lost gets
    # an OSError (which one depends on timing) and no exception handler call.
    async def main():
        h = Handlers(loop)
        ct, cp, peer = await raw_peer(loop)
        ct.set_write_buffer_limits(high=1 << 30)
        while not ct.get_write_buffer_size():
            ct.write(b"q" * 65536)
        rst_close(peer)
        exc = await cp.lost
        return isinstance(exc, OSError), [e[0] for e in cp.events], h.contexts

    assert run(loop, main()) == (True, ["made", "lost"], [])


# --------------------------------------------------------- reading control

def test_pause_resume_reading(loop):
    async def main():
        ct, cp, peer = await raw_peer(loop)
        fd = ct.get_extra_info("socket").fileno()
        out = [ct.is_reading()]
        peer.sendall(b"one")
        await cp.wait_bytes(3)
        ct.pause_reading()
        ct.pause_reading()           # twice: no-op
        out.append(ct.is_reading())
        peer.sendall(b"two")
        out.append(fd_readable(fd))  # the bytes are there, unread
        await spin(10)
        out.append(bytes(cp.received))
        ct.resume_reading()
        ct.resume_reading()          # twice: no-op
        out.append(ct.is_reading())
        out.append(await cp.wait_bytes(6))
        # EOF is held back while paused, too
        ct.pause_reading()
        peer.shutdown(socket.SHUT_WR)
        out.append(fd_readable(fd))
        await spin(10)
        out.append(list(cp.events))
        ct.resume_reading()
        await cp.lost
        peer.close()
        return out, cp.events

    out, ev = run(loop, main())
    assert out == [True, False, True, b"one", True, b"onetwo", True,
                   [("made",), ("data", b"onetwo")]]
    assert ev == [("made",), ("data", b"onetwo"), ("eof",), ("lost", None)]


def test_pause_reading_in_data_received(loop):
    class Pauser(RecProto):
        def data_received(self, data):
            super().data_received(data)
            self.transport.pause_reading()

    async def main():
        ct, cp, peer = await raw_peer(loop, client_proto=lambda: Pauser(loop))
        peer.sendall(b"a")
        await cp.wait_bytes(1)
        peer.sendall(b"b")
        fd_readable(ct.get_extra_info("socket").fileno())
        await spin(10)
        first = bytes(cp.received)
        ct.resume_reading()
        await cp.wait_bytes(2)
        ct.close()
        await cp.lost
        peer.close()
        return first, bytes(cp.received)

    assert run(loop, main()) == (b"a", b"ab")


# ----------------------------------------------------------- flow control

def test_write_buffer_limits(loop):
    async def main():
        srv, ct, cp, sp = await tcp_pair(loop)
        out = [ct.get_write_buffer_limits()]
        ct.set_write_buffer_limits(high=100)
        out.append(ct.get_write_buffer_limits())
        ct.set_write_buffer_limits(low=10)
        out.append(ct.get_write_buffer_limits())
        ct.set_write_buffer_limits(high=20, low=5)
        out.append(ct.get_write_buffer_limits())
        ct.set_write_buffer_limits()
        out.append(ct.get_write_buffer_limits())
        for kw in (dict(high=5, low=20), dict(high=-1), dict(low=-4)):
            try:
                ct.set_write_buffer_limits(**kw)
                out.append("no error")
            except ValueError as e:
                out.append(str(e))
        out.append(ct.get_write_buffer_limits())
        out.append(type(ct.get_write_buffer_limits()))
        ct.close()
        await sp.lost
        await close_server(srv)
        return out

    assert run(loop, main()) == [
        (16384, 65536), (25, 100), (10, 40), (5, 20), (16384, 65536),
        "high (5) must be >= low (20) must be >= 0",
        "high (-1) must be >= low (-1) must be >= 0",
        "high (-16) must be >= low (-4) must be >= 0",
        (16384, 65536), tuple]


class FlowProto(RecProto):
    def pause_writing(self):
        super().pause_writing()
        self.events[-1] += (self.transport.get_write_buffer_size(),)

    def resume_writing(self):
        super().resume_writing()
        self.events[-1] += (self.transport.get_write_buffer_size(),)


def test_pause_resume_writing(loop):
    high, low = 200000, 50000
    chunk = b"w" * 65536

    async def main():
        ct, cp, peer = await raw_peer(loop,
                                      client_proto=lambda: FlowProto(loop))
        ct.set_write_buffer_limits(high=high, low=low)
        out = [ct.get_write_buffer_size()]
        total = 0
        while not cp.paused.done():
            assert total < 512 * 1024 * 1024, "pause_writing never came"
            ct.write(chunk)
            total += len(chunk)
        size_paused = ct.get_write_buffer_size()
        out.append(size_paused > high)
        # the peer starts reading: the buffer drains, resume_writing comes
        reader = loop.run_in_executor(None, recv_exactly, peer, total)
        await cp.resumed
        out.append(ct.get_write_buffer_size() <= low)
        got = await reader
        out.append(len(got) == total)
        out.append(ct.get_write_buffer_size())
        ct.close()
        await cp.lost
        peer.close()
        return out, cp.events, size_paused

    out, ev, size_paused = run(loop, main())
    assert out == [0, True, True, True, 0]
    assert [e[0] for e in ev] == ["made", "pause_writing", "resume_writing",
                                  "lost"]
    assert ev[1][1] > high       # size seen inside pause_writing()
    assert ev[2][1] <= low       # size seen inside resume_writing()


def test_set_limits_can_pause(loop):
    async def main():
        ct, cp, peer = await raw_peer(loop,
                                      client_proto=lambda: FlowProto(loop))
        ct.set_write_buffer_limits(high=1 << 30)
        while not ct.get_write_buffer_size():
            ct.write(b"p" * 65536)
        out = [list(cp.events)]
        ct.set_write_buffer_limits(high=0)     # pauses right away
        out.append([e[0] for e in cp.events])
        out.append(ct.get_write_buffer_limits())
        reader = loop.run_in_executor(None, recv_all, peer)
        await cp.resumed
        out.append(cp.events[-1])               # resumed at size 0
        ct.close()
        await reader
        await cp.lost
        peer.close()
        return out

    assert run(loop, main()) == [
        [("made",)], ["made", "pause_writing"], (0, 0),
        ("resume_writing", 0)]


# ------------------------------------------------------- protocol errors

def _fatal_scenario(loop, client_proto, send=b"boom", eof=False):
    async def main():
        h = Handlers(loop)
        ct, cp, peer = await raw_peer(loop, client_proto=client_proto)
        if send:
            peer.sendall(send)
        if eof:
            peer.shutdown(socket.SHUT_WR)
        exc = await cp.lost
        ctx = await h.called
        peer.close()
        return ct, cp, exc, ctx, h.contexts
    return run(loop, main())


def test_data_received_raises(loop):
    class Bad(RecProto):
        def data_received(self, data):
            raise ZeroDivisionError("in data_received")

    ct, cp, exc, ctx, contexts = _fatal_scenario(loop, lambda: Bad(loop))
    assert cp.events == [("made",), ("lost", ("ZeroDivisionError",))]
    assert len(contexts) == 1
    assert sorted(ctx) == ["exception", "message", "protocol", "transport"]
    assert ctx["message"] == ("Fatal error: protocol.data_received() call "
                              "failed.")
    assert ctx["exception"] is exc
    assert ctx["transport"] is ct
    assert ctx["protocol"] is cp
    assert exc.args == ("in data_received",)
    assert ct.is_closing()


def test_eof_received_raises(loop):
    class Bad(RecProto):
        def eof_received(self):
            super().eof_received()
            raise KeyError("in eof_received")

    ct, cp, exc, ctx, contexts = _fatal_scenario(
        loop, lambda: Bad(loop), send=b"d", eof=True)
    assert cp.events == [("made",), ("data", b"d"), ("eof",),
                         ("lost", ("KeyError",))]
    assert ctx["message"] == ("Fatal error: protocol.eof_received() call "
                              "failed.")
    assert (ctx["exception"], ctx["transport"], ctx["protocol"]) == (
        exc, ct, cp)


def test_get_buffer_raises(loop):
    class Bad(RecBufProto):
        def get_buffer(self, sizehint):
            raise ValueError("in get_buffer")

    ct, cp, exc, ctx, contexts = _fatal_scenario(loop, lambda: Bad(loop))
    assert cp.events == [("made",), ("lost", ("ValueError",))]
    assert ctx["message"] == ("Fatal error: protocol.get_buffer() call "
                              "failed.")
    assert (ctx["exception"], ctx["transport"], ctx["protocol"]) == (
        exc, ct, cp)


def test_get_buffer_empty(loop):
    class Bad(RecBufProto):
        def get_buffer(self, sizehint):
            return bytearray()

    ct, cp, exc, ctx, contexts = _fatal_scenario(loop, lambda: Bad(loop))
    assert cp.events == [("made",), ("lost", ("RuntimeError",))]
    assert ctx["message"] == ("Fatal error: protocol.get_buffer() call "
                              "failed.")
    assert str(exc) == "get_buffer() returned an empty buffer"


def test_buffer_updated_raises(loop):
    class Bad(RecBufProto):
        def buffer_updated(self, nbytes):
            raise ValueError("in buffer_updated", nbytes)

    ct, cp, exc, ctx, contexts = _fatal_scenario(loop, lambda: Bad(loop))
    assert cp.events == [("made",), ("lost", ("ValueError",))]
    assert ctx["message"] == ("Fatal error: protocol.buffer_updated() call "
                              "failed.")
    assert exc.args == ("in buffer_updated", 4)


# ----------------------------------------------------------- set_protocol

def test_set_protocol(loop):
    async def main():
        ct, p1, peer = await raw_peer(loop)
        peer.sendall(b"first")
        await p1.wait_bytes(5)
        p2 = RecProto(loop)
        ct.set_protocol(p2)
        out = [ct.get_protocol() is p2]
        peer.sendall(b"second")
        peer.shutdown(socket.SHUT_WR)
        await p2.lost
        peer.close()
        return out, p1.events, p2.events

    out, e1, e2 = run(loop, main())
    assert out == [True]
    assert e1 == [("made",), ("data", b"first")]
    assert e2 == [("data", b"second"), ("eof",), ("lost", None)]


def test_set_protocol_buffered(loop):
    async def main():
        ct, p1, peer = await raw_peer(loop)
        peer.sendall(b"plain")
        await p1.wait_bytes(5)
        p2 = RecBufProto(loop, bufsize=3)
        ct.set_protocol(p2)
        peer.sendall(b"buffered")
        peer.shutdown(socket.SHUT_WR)
        await p2.lost
        peer.close()
        return p1.events, p2.events

    e1, e2 = run(loop, main())
    assert e1 == [("made",), ("data", b"plain")]
    assert e2 == [("data", b"buffered"), ("eof",), ("lost", None)]


# ----------------------------------------------------------- misc

def test_add_reader_on_transport_fd(loop):
    async def main():
        ct, cp, peer = await raw_peer(loop)
        fd = ct.get_extra_info("socket").fileno()
        out = []
        for call in (lambda: loop.add_reader(fd, print),
                     lambda: loop.add_writer(fd, print),
                     lambda: loop.remove_reader(fd)):
            try:
                call()
                out.append("no error")
            except RuntimeError as e:
                out.append(str(e).startswith(
                    f"File descriptor {fd!r} is used by transport"))
        ct.close()
        await cp.lost
        peer.close()
        return out

    assert run(loop, main()) == [True, True, True]


def test_connect_accepted_socket(loop):
    async def main():
        lst = raw_listener()
        c = socket.create_connection(lst.getsockname())
        conn, _ = lst.accept()
        lst.close()
        t, p = await loop.connect_accepted_socket(
            lambda: RecProto(loop, echo=True), conn)
        out = [isinstance(t, asyncio.Transport), p.transport is t,
               t.get_extra_info("peername") == c.getsockname()]
        c.sendall(b"accepted")
        c.shutdown(socket.SHUT_WR)
        out.append(await loop.run_in_executor(None, recv_all, c))
        await p.lost
        c.close()
        u = socket.socket(type=socket.SOCK_DGRAM)
        try:
            await loop.connect_accepted_socket(lambda: RecProto(loop), u)
        except ValueError as e:
            out.append(str(e).startswith("A Stream Socket was expected"))
        finally:
            u.close()
        return out, p.events

    out, ev = run(loop, main())
    assert out == [True, True, True, b"accepted", True]
    assert ev == [("made",), ("data", b"accepted"), ("eof",), ("lost", None)]


def test_server_protocol_factory_raises(loop):
    # asyncio reports a failing protocol factory only in debug mode (and
    # leaves the accepted socket to the garbage collector).
    async def main():
        h = Handlers(loop)

        def factory():
            raise ValueError("no protocol for you")

        loop.set_debug(True)
        srv = await loop.create_server(factory, LOCAL, 0)
        c = socket.create_connection(srv.sockets[0].getsockname())
        ctx = await h.called
        loop.set_debug(False)
        c.close()
        srv.close()
        await srv.wait_closed()
        return ctx, len(h.contexts)

    ctx, n = run(loop, main())
    assert n == 1
    assert sorted(ctx) == ["exception", "message"]
    assert ctx["message"] == ("Error on transport creation for incoming "
                              "connection")
    assert ctx["exception"].args == ("no protocol for you",)


def test_client_protocol_factory_raises(loop):
    async def main():
        lst = raw_listener()

        def factory():
            raise ValueError("client factory")

        try:
            await loop.create_connection(factory, *lst.getsockname())
            res = "no error"
        except ValueError as e:
            res = str(e)
        # the connection that was made is closed again
        peer, _ = lst.accept()
        got = await loop.run_in_executor(None, recv_all, peer)
        peer.close()
        lst.close()
        return res, got

    assert run(loop, main()) == ("client factory", b"")


def test_many_concurrent_connections(loop):
    n = 50

    async def main():
        srv = await loop.create_server(lambda: RecProto(loop, echo=True),
                                       LOCAL, 0, backlog=n)
        addr = srv.sockets[0].getsockname()

        async def client(i):
            t, p = await loop.create_connection(lambda: RecProto(loop),
                                                *addr)
            msg = b"client %d " % i * 100
            t.write(msg)
            t.write_eof()
            await p.lost
            return bytes(p.received) == msg, p.events[-1]

        res = await asyncio.gather(*(client(i) for i in range(n)))
        srv.close()
        await srv.wait_closed()
        return res

    assert run(loop, main()) == [(True, ("lost", None))] * n
