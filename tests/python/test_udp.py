"""UDP (and Unix datagram) endpoints: create_datagram_endpoint."""

import asyncio
import errno
import socket

from tputil import Handlers, RecDgram, addr_shape, refused_port, run

LOCAL = "127.0.0.1"


async def recvfrom(loop, sock):
    """A datagram from a plain socket, read in a thread (the loop may have
    to run for it to be sent)."""
    sock.settimeout(5)
    return await loop.run_in_executor(None, sock.recvfrom, 65536)


def test_udp_roundtrip(loop, loop_name):
    async def main():
        st, sp = await loop.create_datagram_endpoint(
            lambda: RecDgram(loop), local_addr=(LOCAL, 0))
        saddr = st.get_extra_info("sockname")
        ct, cp = await loop.create_datagram_endpoint(
            lambda: RecDgram(loop), remote_addr=saddr)
        caddr = ct.get_extra_info("sockname")
        out = [list(sp.events), list(cp.events),
               addr_shape(saddr), addr_shape(caddr),
               st.get_extra_info("peername"),
               ct.get_extra_info("peername") == saddr,
               st.get_extra_info("socket").type,
               # 3.11's selector datagram transport is an asyncio.Transport
               # and not an asyncio.DatagramTransport (fixed in 3.12), and
               # CPython's tests check the first: tpio's is both
               isinstance(st, asyncio.Transport),
               loop_name == "asyncio" or isinstance(st, asyncio.DatagramTransport),
               all(callable(getattr(st, m, None)) for m in (
                   "sendto", "abort", "close", "is_closing",
                   "get_write_buffer_size", "get_extra_info")),
               st.get_write_buffer_size()]
        ct.sendto(b"one")
        ct.sendto(bytearray(b"two"), saddr)   # its own peer: allowed
        ct.sendto(memoryview(b"three"))
        await sp.wait_events(4)
        for _, data, addr in sp.events[1:]:
            out.append(addr == caddr)
            st.sendto(data.upper(), addr)
        await cp.wait_events(4)
        ct.close()
        st.close()
        await cp.lost
        await sp.lost
        return out, sp.events, cp.events, caddr, saddr

    out, sev, cev, caddr, saddr = run(loop, main())
    assert out == [[("made",)], [("made",)], (LOCAL, "int"), (LOCAL, "int"),
                   None, True, socket.SOCK_DGRAM, True, True, True,
                   0, True, True, True]
    assert sev == [("made",), ("dgram", b"one", caddr),
                   ("dgram", b"two", caddr), ("dgram", b"three", caddr),
                   ("lost", None)]
    assert cev == [("made",), ("dgram", b"ONE", saddr),
                   ("dgram", b"TWO", saddr), ("dgram", b"THREE", saddr),
                   ("lost", None)]
    assert type(sev[1][2]) is tuple


def test_udp_local_and_remote(loop):
    async def main():
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind((LOCAL, 0))
        t, p = await loop.create_datagram_endpoint(
            lambda: RecDgram(loop), local_addr=(LOCAL, 0),
            remote_addr=peer.getsockname())
        t.sendto(b"hi")
        data, addr = await recvfrom(loop, peer)
        out = [data, addr == t.get_extra_info("sockname")]
        peer.sendto(b"back", addr)
        await p.wait_events(2)
        t.close()
        await p.lost
        peer.close()
        return out, p.events, peer

    out, ev, peer = run(loop, main())
    assert out == [b"hi", True]
    assert [e[:2] for e in ev] == [("made",), ("dgram", b"back"),
                                   ("lost", None)]


def test_udp_ipv6_addr(loop):
    async def main():
        st, sp = await loop.create_datagram_endpoint(
            lambda: RecDgram(loop), local_addr=("::1", 0))
        c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        c.sendto(b"v6", st.get_extra_info("sockname"))
        await sp.wait_events(2)
        st.close()
        await sp.lost
        cname = c.getsockname()
        c.close()
        return sp.events[1], cname

    (kind, data, addr), cname = run(loop, main())
    assert (kind, data) == ("dgram", b"v6")
    assert type(addr) is tuple and len(addr) == 4
    assert (addr[0], addr[1]) == ("::1", cname[1])


def test_udp_icmp_refused(loop):
    async def main():
        h = Handlers(loop)
        _, port = refused_port(type=socket.SOCK_DGRAM)
        t, p = await loop.create_datagram_endpoint(
            lambda: RecDgram(loop), remote_addr=(LOCAL, port))
        t.sendto(b"nobody home")
        await p.wait_events(2)
        out = [t.is_closing()]
        t.close()
        await p.lost
        return out, p.events, h.contexts

    assert run(loop, main()) == (
        [False], [("made",), ("error", ("ConnectionRefusedError",
                                        errno.ECONNREFUSED)),
                  ("lost", None)], [])


def test_udp_sendto_errors(loop):
    async def main():
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind((LOCAL, 0))
        t, p = await loop.create_datagram_endpoint(
            lambda: RecDgram(loop), remote_addr=peer.getsockname())
        out = []
        for args in (("text",), (42,), (b"x", (LOCAL, 1))):
            try:
                t.sendto(*args)
                out.append("no error")
            except (TypeError, ValueError) as e:
                out.append((type(e).__name__, str(e)))
        t.close()
        await p.lost
        pname = peer.getsockname()
        peer.close()
        return out, pname

    out, pname = run(loop, main())
    assert out == [
        ("TypeError", "data argument must be a bytes-like object, not 'str'"),
        ("TypeError", "data argument must be a bytes-like object, not 'int'"),
        ("ValueError", f"Invalid address: must be None or {pname}")]


def test_udp_empty_datagram_dropped(loop):
    # 3.11's selector transport drops empty datagrams.
    async def main():
        st, sp = await loop.create_datagram_endpoint(
            lambda: RecDgram(loop), local_addr=(LOCAL, 0))
        ct, cp = await loop.create_datagram_endpoint(
            lambda: RecDgram(loop), remote_addr=st.get_extra_info("sockname"))
        ct.sendto(b"")
        ct.sendto(b"x")
        await sp.wait_events(2)
        ct.close()
        st.close()
        await sp.lost
        return [e[:2] for e in sp.events]

    assert run(loop, main()) == [("made",), ("dgram", b"x"), ("lost", None)]


def test_udp_family_only_and_sock(loop):
    async def main():
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind((LOCAL, 0))
        t, p = await loop.create_datagram_endpoint(
            lambda: RecDgram(loop), family=socket.AF_INET)
        t.sendto(b"unbound", peer.getsockname())
        d1 = (await recvfrom(loop, peer))[0]
        t.close()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((LOCAL, 0))
        t2, p2 = await loop.create_datagram_endpoint(lambda: RecDgram(loop),
                                                     sock=s)
        out = [d1, t2.get_extra_info("sockname") == s.getsockname(),
               s.getblocking()]
        peer.sendto(b"to sock", s.getsockname())
        await p2.wait_events(2)
        t2.close()
        await p2.lost
        peer.close()
        return out, [e[:2] for e in p2.events], s.fileno()

    assert run(loop, main()) == (
        [b"unbound", True, False],
        [("made",), ("dgram", b"to sock"), ("lost", None)], -1)


def test_udp_bad_arguments(loop):
    async def main():
        out = []
        tcp = socket.socket()
        udp = socket.socket(type=socket.SOCK_DGRAM)
        try:
            for kw in (dict(), dict(sock=tcp),
                       dict(sock=udp, local_addr=(LOCAL, 0)),
                       dict(local_addr="x"),
                       dict(family=socket.AF_UNIX, local_addr=("a", 1))):
                try:
                    await loop.create_datagram_endpoint(
                        lambda: RecDgram(loop), **kw)
                    out.append("no error")
                except (TypeError, ValueError) as e:
                    out.append((type(e).__name__, str(e).split(", got")[0]))
        finally:
            tcp.close()
            udp.close()
        return out

    assert run(loop, main()) == [
        ("ValueError", "unexpected address family"),
        ("ValueError", "A UDP Socket was expected"),
        ("ValueError", "socket modifier keyword arguments can not be used "
                       "when sock is specified. (local_addr=('127.0.0.1', "
                       "0))"),
        ("TypeError", "2-tuple is expected"),
        ("TypeError", "string is expected")]


def test_udp_socket_options(loop):
    async def main():
        t, p = await loop.create_datagram_endpoint(
            lambda: RecDgram(loop), local_addr=(LOCAL, 0), reuse_port=True,
            allow_broadcast=True)
        s = t.get_extra_info("socket")
        out = [bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)),
               bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST))]
        t.close()
        await p.lost
        return out

    assert run(loop, main()) == [True, True]


def test_udp_abort_and_close(loop):
    async def main():
        t, p = await loop.create_datagram_endpoint(
            lambda: RecDgram(loop), local_addr=(LOCAL, 0))
        t.abort()
        out = [t.is_closing(), list(p.events)]
        await p.lost
        t2, p2 = await loop.create_datagram_endpoint(
            lambda: RecDgram(loop), local_addr=(LOCAL, 0))
        t2.close()
        t2.close()
        out += [t2.is_closing(), list(p2.events)]
        await p2.lost
        return out, p.events, p2.events

    assert run(loop, main()) == (
        [True, [("made",)], True, [("made",)]],
        [("made",), ("lost", None)], [("made",), ("lost", None)])


def test_datagram_received_raises(loop):
    # asyncio reports it like any callback's error; the endpoint stays open.
    class Bad(RecDgram):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"bad":
                raise ValueError("in datagram_received")

    async def main():
        h = Handlers(loop)
        st, sp = await loop.create_datagram_endpoint(
            lambda: Bad(loop), local_addr=(LOCAL, 0))
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.sendto(b"bad", st.get_extra_info("sockname"))
        ctx = await h.called
        c.sendto(b"good", st.get_extra_info("sockname"))
        await sp.wait_events(3)
        out = [st.is_closing(), type(ctx["exception"]).__name__,
               [e[:2] for e in sp.events]]
        st.close()
        await sp.lost
        c.close()
        return out

    assert run(loop, main()) == [
        False, "ValueError", [("made",), ("dgram", b"bad"),
                              ("dgram", b"good")]]


def test_unix_datagram(loop, tmp_path):
    spath = str(tmp_path / "srv.dgram")
    cpath = str(tmp_path / "cli.dgram")

    async def main():
        st, sp = await loop.create_datagram_endpoint(
            lambda: RecDgram(loop), local_addr=spath, family=socket.AF_UNIX)
        ct, cp = await loop.create_datagram_endpoint(
            lambda: RecDgram(loop), local_addr=cpath, remote_addr=spath,
            family=socket.AF_UNIX)
        out = [st.get_extra_info("sockname"), ct.get_extra_info("peername")]
        ct.sendto(b"unix dgram")
        await sp.wait_events(2)
        st.sendto(b"reply", cpath)
        await cp.wait_events(2)
        ct.close()
        st.close()
        await sp.lost
        await cp.lost
        return out, sp.events, cp.events

    out, sev, cev = run(loop, main())
    assert out == [spath, spath]
    assert sev == [("made",), ("dgram", b"unix dgram", cpath), ("lost", None)]
    assert cev == [("made",), ("dgram", b"reply", spath), ("lost", None)]
