"""TLS over TCP: create_server/create_connection with ssl=, and start_tls.
The certificate is a throwaway self-signed one made with the openssl tool."""

import asyncio
import shutil
import ssl
import subprocess

import pytest

from tputil import Handlers, RecProto, run

LOCAL = "127.0.0.1"


@pytest.fixture(scope="session")
def cert(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.fail("the openssl command is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-keyout", str(key), "-out", str(crt), "-days", "2",
         "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30)
    return str(crt), str(key)


@pytest.fixture
def contexts(cert):
    crt, key = cert
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(crt, key)
    client = ssl.create_default_context(cafile=crt)
    return server, client


def test_tls_echo(loop, contexts):
    sctx, cctx = contexts
    sprotos = []

    def sfactory():
        p = RecProto(loop, echo=True)
        sprotos.append(p)
        return p

    async def main():
        srv = await loop.create_server(sfactory, LOCAL, 0, ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        t, p = await loop.create_connection(
            lambda: RecProto(loop), LOCAL, port, ssl=cctx,
            server_hostname="localhost")
        obj = t.get_extra_info("ssl_object")
        cipher = t.get_extra_info("cipher")
        out = [list(p.events), isinstance(t, asyncio.Transport),
               isinstance(obj, (ssl.SSLObject, ssl.SSLSocket)),
               t.get_extra_info("sslcontext") is cctx,
               dict(x[0] for x in t.get_extra_info("peercert")["subject"]),
               type(cipher) is tuple and len(cipher) == 3,
               t.get_extra_info("peername") == (LOCAL, port),
               t.can_write_eof()]
        t.write(b"hello ")
        t.writelines([b"over ", b"tls"])
        out.append(await p.wait_bytes(14))
        st = sprotos[0].transport
        out.append(st.get_extra_info("peercert"))
        t.close()
        await p.lost
        await sprotos[0].lost
        srv.close()
        await srv.wait_closed()
        return out, p.events, sprotos[0].events

    out, cev, sev = run(loop, main())
    assert out == [[("made",)], True, True, True, {"commonName": "localhost"},
                   True, True, False, b"hello over tls", None]
    # 3.11: the side that closes first gets eof_received() too, when the
    # peer's close_notify comes back
    assert cev == [("made",), ("data", b"hello over tls"), ("eof",),
                   ("lost", None)]
    assert sev == [("made",), ("data", b"hello over tls"), ("eof",),
                   ("lost", None)]


def test_tls_large_transfer(loop, contexts):
    sctx, cctx = contexts
    payload = bytes(range(256)) * 8192       # 2 MiB

    async def main():
        srv = await loop.create_server(lambda: RecProto(loop, echo=True),
                                       LOCAL, 0, ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        t, p = await loop.create_connection(
            lambda: RecProto(loop), LOCAL, port, ssl=cctx,
            server_hostname="localhost")
        t.write(payload)
        got = await p.wait_bytes(len(payload))
        t.close()
        await p.lost
        srv.close()
        await srv.wait_closed()
        return got == payload

    assert run(loop, main()) is True


def test_tls_verify_failure(loop, contexts):
    sctx, _ = contexts
    strict = ssl.create_default_context()      # does not trust our cert

    async def main():
        Handlers(loop)
        srv = await loop.create_server(lambda: RecProto(loop), LOCAL, 0,
                                       ssl=sctx)
        port = srv.sockets[0].getsockname()[1]
        try:
            await loop.create_connection(lambda: RecProto(loop), LOCAL, port,
                                         ssl=strict,
                                         server_hostname="localhost")
            res = "connected"
        except ssl.SSLCertVerificationError as e:
            res = (type(e).__name__, e.verify_code)
        srv.close()
        await srv.wait_closed()
        return res

    assert run(loop, main()) == ("SSLCertVerificationError", 18)


def test_tls_argument_errors(loop, contexts):
    sctx, cctx = contexts

    async def main():
        out = []
        srv = await loop.create_server(lambda: RecProto(loop), LOCAL, 0)
        port = srv.sockets[0].getsockname()[1]
        for kw in (dict(server_hostname="localhost"),
                   dict(ssl=cctx, ssl_handshake_timeout=-1)):
            try:
                await loop.create_connection(lambda: RecProto(loop), LOCAL,
                                             port, **kw)
                out.append("no error")
            except ValueError as e:
                out.append(str(e))
        try:
            await loop.create_server(lambda: RecProto(loop), LOCAL, 0,
                                     ssl=True)
        except TypeError as e:
            out.append(str(e))
        srv.close()
        await srv.wait_closed()
        return out

    assert run(loop, main()) == [
        "server_hostname is only meaningful with ssl",
        "ssl_handshake_timeout should be a positive number, got -1",
        "ssl argument must be an SSLContext or None"]


def test_start_tls(loop, contexts):
    sctx, cctx = contexts
    sprotos = []

    class StartTLSServer(RecProto):
        tls = None

        def data_received(self, data):
            super().data_received(data)
            if self.tls is None:
                if bytes(self.received) == b"STARTTLS\n":
                    self.transport.write(b"OK\n")
                    self.transport.pause_reading()
                    self.tls = loop.create_task(loop.start_tls(
                        self.transport, self, sctx, server_side=True))
            else:
                # may come before start_tls() has returned the transport
                loop.create_task(self._echo(data))

        async def _echo(self, data):
            (await self.tls).write(data.upper())

    def sfactory():
        p = StartTLSServer(loop)
        sprotos.append(p)
        return p

    async def main():
        srv = await loop.create_server(sfactory, LOCAL, 0)
        port = srv.sockets[0].getsockname()[1]
        t, p = await loop.create_connection(lambda: RecProto(loop), LOCAL,
                                            port)
        t.write(b"STARTTLS\n")
        out = [await p.wait_bytes(3), t.get_extra_info("ssl_object")]
        tls = await loop.start_tls(t, p, cctx, server_hostname="localhost")
        p.transport = tls
        p.received.clear()
        out += [tls is not t, isinstance(tls, asyncio.Transport),
                tls.get_extra_info("ssl_object") is not None,
                tls.get_protocol() is p]
        tls.write(b"secret")
        out.append(await p.wait_bytes(6))
        tls.close()
        await p.lost
        await sprotos[0].lost
        srv.close()
        await srv.wait_closed()
        return out, p.events, sprotos[0].events

    out, cev, sev = run(loop, main())
    assert out == [b"OK\n", None, True, True, True, True, b"SECRET"]
    assert cev == [("made",), ("data", b"OK\nSECRET"), ("eof",),
                   ("lost", None)]
    assert sev == [("made",), ("data", b"STARTTLS\nsecret"), ("eof",),
                   ("lost", None)]
