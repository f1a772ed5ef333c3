"""tpio.EventLoop: asyncio's event loop API over tpio's C engine.

The C base (tpio._tpio.Loop) runs everything per event and per callback:
the ready queue, timers, descriptor watchers, signals, transports and the
protocol upcalls. asyncio.BaseEventLoop gives the parts asyncio itself
writes in Python and that no hot path goes through: run_until_complete,
tasks and futures, the exception handler, executors, getaddrinfo,
asynchronous generators. This module checks each call's arguments as
asyncio does and hands the work to the C side.
"""

import asyncio
import collections.abc
import os
import signal
import socket
import stat
import sys
import threading

from asyncio import base_events, coroutines, events, exceptions, protocols

from . import _tpio
from ._server import Server

__all__ = ('EventLoop',)


def _flag(value):
    """None -> -1 (the library's default), else 0/1."""
    return -1 if value is None else (1 if value else 0)


def _check_ssl(ssl, what='ssl'):
    if ssl:
        raise NotImplementedError(
            f'tpio: {what}= (TLS) is not available from Python yet')


def _is_stream_socket(sock):
    return sock.type == socket.SOCK_STREAM


class EventLoop(_tpio.Loop, base_events.BaseEventLoop):
    """An asyncio event loop running on tpio."""

    def __init__(self):
        base_events.BaseEventLoop.__init__(self)

    def __repr__(self):
        return (f'<{self.__class__.__name__} running={self.is_running()} '
                f'closed={self.is_closed()} debug={self.get_debug()}>')

    # ---- running ----------------------------------------------------------

    def run_forever(self):
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        old_agen_hooks = sys.get_asyncgen_hooks()
        try:
            self._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(firstiter=self._asyncgen_firstiter_hook,
                                   finalizer=self._asyncgen_finalizer_hook)
            events._set_running_loop(self)
            self._run()
        finally:
            self._thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)

    def close(self):
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        base_events.BaseEventLoop.close(self)
        self._close()

    def _write_to_self(self):
        # BaseEventLoop's threadsafe wake-up; call_soon_threadsafe wakes the
        # loop itself.
        self.call_soon_threadsafe(_noop)

    def _process_events(self, event_list):
        raise NotImplementedError

    # ---- requests ---------------------------------------------------------

    async def _wait(self, fut, request):
        try:
            return await fut
        except exceptions.CancelledError:
            self._cancel_request(request)
            raise

    # ---- TCP --------------------------------------------------------------

    async def create_connection(
            self, protocol_factory, host=None, port=None,
            *, ssl=None, family=0,
            proto=0, flags=0, sock=None,
            local_addr=None, server_hostname=None,
            ssl_handshake_timeout=None,
            ssl_shutdown_timeout=None,
            happy_eyeballs_delay=None, interleave=None):
        if server_hostname is not None and not ssl:
            raise ValueError('server_hostname is only meaningful with ssl')
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError(
                'ssl_handshake_timeout is only meaningful with ssl')
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError(
                'ssl_shutdown_timeout is only meaningful with ssl')
        _check_ssl(ssl)
        if happy_eyeballs_delay is not None and interleave is None:
            interleave = 1
        local_host, local_port = None, 0
        if host is not None or port is not None:
            if sock is not None:
                raise ValueError(
                    'host/port and sock can not be specified at the same time')
            if local_addr is not None:
                local_host, local_port = local_addr[0], local_addr[1] or 0
            hostname = host
            if hostname is None or hostname == '':
                hostname = 'localhost' if host is None else host
            port_n = _port_number(port)
        else:
            if sock is None:
                raise ValueError(
                    'host and port was not specified and no sock specified')
            if not _is_stream_socket(sock):
                raise ValueError(
                    f'A Stream Socket was expected, got {sock!r}')
            hostname, port_n = None, 0
        fut = self.create_future()
        try:
            request = self._create_connection(
                fut, protocol_factory, hostname, port_n, family, flags,
                local_host, local_port or 0,
                float(happy_eyeballs_delay or 0.0), int(interleave or 0),
                sock)
        except OSError as exc:
            raise _connect_error(exc, host, port) from None
        try:
            return await self._wait(fut, request)
        except socket.gaierror:
            raise
        except OSError as exc:
            if sock is not None:
                raise
            raise _connect_error(exc, host, port) from None

    async def create_server(
            self, protocol_factory, host=None, port=None,
            *,
            family=socket.AF_UNSPEC,
            flags=socket.AI_PASSIVE,
            sock=None,
            backlog=100,
            ssl=None,
            reuse_address=None,
            reuse_port=None,
            ssl_handshake_timeout=None,
            ssl_shutdown_timeout=None,
            start_serving=True):
        if isinstance(ssl, bool):
            raise TypeError('ssl argument must be an SSLContext or None')
        if ssl_handshake_timeout is not None and ssl is None:
            raise ValueError(
                'ssl_handshake_timeout is only meaningful with ssl')
        if ssl_shutdown_timeout is not None and ssl is None:
            raise ValueError(
                'ssl_shutdown_timeout is only meaningful with ssl')
        _check_ssl(ssl)
        socks = None
        if host is not None or port is not None:
            if sock is not None:
                raise ValueError(
                    'host/port and sock can not be specified at the same time')
            if host == '' or host is None:
                hosts = None
            elif (isinstance(host, str) or
                  not isinstance(host, collections.abc.Iterable)):
                hosts = [host]
            else:
                hosts = list(host)
            port_n = _port_number(port)
        else:
            if sock is None:
                raise ValueError('Neither host/port nor sock were specified')
            if not _is_stream_socket(sock):
                raise ValueError(f'A Stream Socket was expected, got {sock!r}')
            hosts, port_n, socks = None, 0, [sock]
        handle = self._create_server(
            protocol_factory, hosts, port_n, int(family), int(flags),
            int(backlog), _flag(reuse_address), _flag(reuse_port),
            False, socks)
        server = Server(self, handle, socks)
        if start_serving:
            server._start_serving()
            # As asyncio: give the server one loop iteration to start.
            await asyncio.sleep(0)
        return server

    async def connect_accepted_socket(
            self, protocol_factory, sock,
            *, ssl=None,
            ssl_handshake_timeout=None,
            ssl_shutdown_timeout=None):
        if not _is_stream_socket(sock):
            raise ValueError(f'A Stream Socket was expected, got {sock!r}')
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError(
                'ssl_handshake_timeout is only meaningful with ssl')
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError(
                'ssl_shutdown_timeout is only meaningful with ssl')
        _check_ssl(ssl)
        fut = self.create_future()
        request = self._connect_accepted_socket(fut, protocol_factory, sock)
        return await self._wait(fut, request)

    # ---- Unix sockets -----------------------------------------------------

    async def create_unix_connection(
            self, protocol_factory, path=None, *,
            ssl=None, sock=None,
            server_hostname=None,
            ssl_handshake_timeout=None,
            ssl_shutdown_timeout=None):
        if server_hostname is not None and not ssl:
            raise ValueError('server_hostname is only meaningful with ssl')
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError(
                'ssl_handshake_timeout is only meaningful with ssl')
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError(
                'ssl_shutdown_timeout is only meaningful with ssl')
        _check_ssl(ssl)
        if path is not None:
            if sock is not None:
                raise ValueError(
                    'path and sock can not be specified at the same time')
            path = os.fspath(path)
        else:
            if sock is None:
                raise ValueError('no path and sock were specified')
            if (sock.family != socket.AF_UNIX or
                    sock.type != socket.SOCK_STREAM):
                raise ValueError(
                    f'A UNIX Domain Stream Socket was expected, got {sock!r}')
        fut = self.create_future()
        request = self._create_unix_connection(fut, protocol_factory, path, sock)
        return await self._wait(fut, request)

    async def create_unix_server(
            self, protocol_factory, path=None, *,
            sock=None, backlog=100, ssl=None,
            ssl_handshake_timeout=None,
            ssl_shutdown_timeout=None,
            start_serving=True):
        if isinstance(ssl, bool):
            raise TypeError('ssl argument must be an SSLContext or None')
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError(
                'ssl_handshake_timeout is only meaningful with ssl')
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError(
                'ssl_shutdown_timeout is only meaningful with ssl')
        _check_ssl(ssl)
        socks = None
        if path is not None:
            if sock is not None:
                raise ValueError(
                    'path and sock can not be specified at the same time')
            path = os.fspath(path)
            if isinstance(path, str) and path.startswith('\0'):
                pass
            elif isinstance(path, bytes) and path.startswith(b'\0'):
                pass
            else:
                # a socket file left by an earlier run is replaced; anything
                # else at the path is an error, as asyncio says it
                try:
                    if stat.S_ISSOCK(os.stat(path).st_mode):
                        os.remove(path)
                except FileNotFoundError:
                    pass
        else:
            if sock is None:
                raise ValueError(
                    'path was not specified, and no sock specified')
            if (sock.family != socket.AF_UNIX or
                    sock.type != socket.SOCK_STREAM):
                raise ValueError(
                    f'A UNIX Domain Stream Socket was expected, got {sock!r}')
            socks = [sock]
        try:
            handle = self._create_unix_server(protocol_factory, path, sock,
                                              int(backlog), False)
        except OSError as exc:
            if exc.errno == 98 and path is not None:  # EADDRINUSE
                raise OSError(exc.errno, f'error while attempting to bind on '
                              f'address {path!r}: {exc.strerror.lower()}') from None
            raise
        server = Server(self, handle, socks)
        if start_serving:
            server._start_serving()
            await asyncio.sleep(0)
        return server

    # ---- pipes ------------------------------------------------------------

    async def connect_read_pipe(self, protocol_factory, pipe):
        fut = self.create_future()
        request = self._connect_pipe(fut, protocol_factory, pipe, False)
        return await self._wait(fut, request)

    async def connect_write_pipe(self, protocol_factory, pipe):
        fut = self.create_future()
        request = self._connect_pipe(fut, protocol_factory, pipe, True)
        return await self._wait(fut, request)

    # ---- signals ----------------------------------------------------------

    def add_signal_handler(self, sig, callback, *args):
        if (coroutines.iscoroutine(callback) or
                coroutines.iscoroutinefunction(callback)):
            raise TypeError("coroutines cannot be used "
                            "with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                'set_wakeup_fd only works in main thread of the main interpreter')
        self._add_signal(sig, callback, args)

    def remove_signal_handler(self, sig):
        self._check_signal(sig)
        return self._remove_signal(sig)

    def _check_signal(self, sig):
        if not isinstance(sig, int):
            raise TypeError(f'sig must be an int, not {sig!r}')
        if sig not in signal.valid_signals():
            raise ValueError(f'invalid signal number {sig}')

    # ---- what is not here yet ---------------------------------------------

    async def create_datagram_endpoint(self, protocol_factory, *args, **kw):
        raise NotImplementedError('create_datagram_endpoint')

    async def subprocess_exec(self, *args, **kw):
        raise NotImplementedError('subprocess_exec')

    async def subprocess_shell(self, *args, **kw):
        raise NotImplementedError('subprocess_shell')


def _noop():
    pass


def _port_number(port):
    if port is None:
        return 0
    if isinstance(port, str):
        try:
            return int(port)
        except ValueError:
            return socket.getservbyname(port, 'tcp')
    return int(port)


def _connect_error(exc, host, port):
    if isinstance(exc, socket.gaierror) or not exc.errno:
        return exc
    return OSError(exc.errno, f'Connect call failed {(host, port)}')
