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
import errno
import operator
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
        self._tpio_signals = set()

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
        # as asyncio's Unix loop: the signal handlers go with the loop
        if not sys.is_finalizing():
            for sig in list(self._tpio_signals):
                self.remove_signal_handler(sig)
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
            # The arguments as asyncio reads them (its exceptions): numeric
            # addresses skip getaddrinfo(), so their port is checked by
            # connect() / bind(); anything else is getaddrinfo()'s.
            hostname, port_n, resolved = _address_arg(
                host, port, family, proto, 'connect')
            if hostname is None:
                hostname = 'localhost'
            if local_addr is not None:
                lhost, lport = local_addr[:2]
                local_host, local_port, lresolved = _address_arg(
                    lhost, lport, family, proto, 'bind', *local_addr[2:])
                if local_host is None:
                    local_host = 'localhost'
                resolved = resolved and lresolved
            if not resolved:
                flags = operator.index(flags)
                family = operator.index(family)
                if (family not in _INET_FAMILIES or
                        proto not in (0, socket.IPPROTO_TCP)):
                    # what getaddrinfo() says of them, as asyncio asks it
                    await self.getaddrinfo(
                        hostname, port_n, family=family,
                        type=socket.SOCK_STREAM, proto=proto, flags=flags)
            elif not isinstance(flags, int):
                flags = 0   # asyncio does not look at them
            if happy_eyeballs_delay is not None:
                # asyncio starts the next attempt at once for a delay <= 0
                happy_eyeballs_delay = float(happy_eyeballs_delay)
                if not happy_eyeballs_delay > 0:
                    happy_eyeballs_delay = 1e-9
        else:
            if sock is None:
                raise ValueError(
                    'host and port was not specified and no sock specified')
            if not _is_stream_socket(sock):
                raise ValueError(
                    f'A Stream Socket was expected, got {sock!r}')
            sock.setblocking(False)
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
            # as asyncio reads them: a numeric host skips getaddrinfo()
            # (bind() checks the port), the others go through it
            family = operator.index(family)
            port_n, resolved, names = None, True, []
            for h in (hosts if hosts is not None else [None]):
                name, p, numeric = _address_arg(h, port, family, 0, 'bind')
                names.append(name)
                if port_n is None or not numeric:
                    port_n = p
                resolved = resolved and numeric
            if hosts is not None:
                hosts = names
            if not resolved:
                flags = operator.index(flags)
            elif not isinstance(flags, int):
                flags = 0
        else:
            if sock is None:
                raise ValueError('Neither host/port nor sock were specified')
            if not _is_stream_socket(sock):
                raise ValueError(f'A Stream Socket was expected, got {sock!r}')
            sock.setblocking(False)
            hosts, port_n, socks = None, 0, [sock]
        handle = self._create_server(
            protocol_factory, hosts, port_n, int(family), int(flags),
            _backlog(backlog), _flag(reuse_address), _flag(reuse_port),
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
        sock.setblocking(False)
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
            path = _unix_path(path)
        else:
            if sock is None:
                raise ValueError('no path and sock were specified')
            if (sock.family != socket.AF_UNIX or
                    sock.type != socket.SOCK_STREAM):
                raise ValueError(
                    f'A UNIX Domain Stream Socket was expected, got {sock!r}')
            sock.setblocking(False)
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
        if path is not None:
            if sock is not None:
                raise ValueError(
                    'path and sock can not be specified at the same time')
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # A socket file left by an earlier server is replaced (not an
            # abstract name, nor anything that is not a socket).
            if path[0] not in (0, '\x00'):
                try:
                    if stat.S_ISSOCK(os.stat(path).st_mode):
                        os.remove(path)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    base_events.logger.error(
                        'Unable to check or remove stale UNIX socket %r: %r',
                        path, err)
            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    msg = f'Address {path!r} is already in use'
                    raise OSError(errno.EADDRINUSE, msg) from None
                raise
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError(
                    'path was not specified, and no sock specified')
            if (sock.family != socket.AF_UNIX or
                    sock.type != socket.SOCK_STREAM):
                raise ValueError(
                    f'A UNIX Domain Stream Socket was expected, got {sock!r}')
        sock.setblocking(False)
        socks = [sock]
        try:
            handle = self._create_unix_server(protocol_factory, None, sock,
                                              _backlog(backlog), False)
        except BaseException:
            if path is not None:
                sock.close()
            raise
        server = Server(self, handle, socks)
        if start_serving:
            server._start_serving()
            await asyncio.sleep(0)
        return server

    # ---- pipes ------------------------------------------------------------

    async def connect_read_pipe(self, protocol_factory, pipe):
        pipe.fileno()   # as asyncio's transport asks it (AttributeError...)
        fut = self.create_future()
        request = self._connect_pipe(fut, protocol_factory, pipe, False)
        return await self._wait(fut, request)

    async def connect_write_pipe(self, protocol_factory, pipe):
        pipe.fileno()
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
        # Python's table of handlers names a no-op, as with asyncio (so
        # signal.getsignal() answers the same); tpio's own handler, installed
        # over it, is the one that runs.
        if sig in self._tpio_signals:  # tpio's handler is in place already
            self._add_signal(sig, callback, args)
            return
        try:
            signal.signal(sig, _sighandler_noop)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f'sig {sig:d} cannot be caught')
            raise
        try:
            self._add_signal(sig, callback, args)
        except BaseException:
            signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT
                          else signal.default_int_handler)
            raise
        self._tpio_signals.add(sig)

    def remove_signal_handler(self, sig):
        self._check_signal(sig)
        if not self._remove_signal(sig):
            return False
        self._tpio_signals.discard(sig)
        handler = (signal.default_int_handler if sig == signal.SIGINT
                   else signal.SIG_DFL)
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f'sig {sig:d} cannot be caught')
            raise
        return True

    def _check_signal(self, sig):
        if not isinstance(sig, int):
            raise TypeError(f'sig must be an int, not {sig!r}')
        if sig not in signal.valid_signals():
            raise ValueError(f'invalid signal number {sig}')

    # ---- what is not here yet ---------------------------------------------

    async def create_datagram_endpoint(self, protocol_factory,
                                       local_addr=None, remote_addr=None, *,
                                       family=0, proto=0, flags=0,
                                       reuse_port=None,
                                       allow_broadcast=None, sock=None):
        """Create datagram connection (asyncio 3.11: no reuse_address)."""
        # Addresses are resolved here as asyncio resolves them, and the C
        # side makes one socket per (family, proto) pair: bound to the local
        # address, connected to the remote one (not with allow_broadcast).
        # Each attempt: (family, proto, local, remote to connect, _address).
        if sock is not None:
            if sock.type != socket.SOCK_DGRAM:
                raise ValueError(
                    f'A UDP Socket was expected, got {sock!r}')
            if (local_addr or remote_addr or
                    family or proto or flags or
                    reuse_port or allow_broadcast):
                # show the problematic kwargs in exception msg
                opts = dict(local_addr=local_addr, remote_addr=remote_addr,
                            family=family, proto=proto, flags=flags,
                            reuse_port=reuse_port,
                            allow_broadcast=allow_broadcast)
                problems = ', '.join(f'{k}={v}' for k, v in opts.items() if v)
                raise ValueError(
                    f'socket modifier keyword arguments can not be used '
                    f'when sock is specified. ({problems})')
            sock.setblocking(False)
            attempts = [(0, 0, None, None, None)]
        elif not (local_addr or remote_addr):
            if family == 0:
                raise ValueError('unexpected address family')
            attempts = [(family, proto, None, None, None)]
        elif hasattr(socket, 'AF_UNIX') and family == socket.AF_UNIX:
            for addr in (local_addr, remote_addr):
                if addr is not None and not isinstance(addr, str):
                    raise TypeError('string is expected')
                if addr:
                    _unix_path(addr)   # bind() / connect()'s own checks
            if local_addr and local_addr[0] not in (0, '\x00'):
                try:
                    if stat.S_ISSOCK(os.stat(local_addr).st_mode):
                        os.remove(local_addr)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    # Directory may have permissions only to create socket.
                    base_events.logger.error(
                        'Unable to check or remove stale UNIX socket '
                        '%r: %r', local_addr, err)
            r_addr = remote_addr if remote_addr else None
            attempts = [(family, proto, local_addr or None,
                         None if allow_broadcast else r_addr, r_addr)]
        else:
            # join address by (family, protocol)
            addr_infos = {}  # Using order preserving dict
            for idx, addr in ((0, local_addr), (1, remote_addr)):
                if addr is not None:
                    if not (isinstance(addr, tuple) and len(addr) == 2):
                        raise TypeError('2-tuple is expected')

                    infos = await self._ensure_resolved(
                        addr, family=family, type=socket.SOCK_DGRAM,
                        proto=proto, flags=flags, loop=self)
                    if not infos:
                        raise OSError('getaddrinfo() returned empty list')

                    for fam, _, pro, _, address in infos:
                        key = (fam, pro)
                        if key not in addr_infos:
                            addr_infos[key] = [None, None]
                        addr_infos[key][idx] = address

            # each addr has to have info for each (family, proto) pair
            addr_pairs_info = [
                (key, addr_pair) for key, addr_pair in addr_infos.items()
                if not ((local_addr and addr_pair[0] is None) or
                        (remote_addr and addr_pair[1] is None))]

            if not addr_pairs_info:
                raise ValueError('can not get address information')
            attempts = []
            for (fam, pro), (local_address, remote_address) in addr_pairs_info:
                r_addr = remote_address if remote_addr else None
                attempts.append((fam, pro,
                                 local_address if local_addr else None,
                                 None if allow_broadcast else r_addr, r_addr))

        factory_failed = False

        def factory():
            nonlocal factory_failed
            try:
                return protocol_factory()
            except BaseException:
                factory_failed = True
                raise

        exceptions = []
        for fam, pro, local, remote, r_addr in attempts:
            fut = self.create_future()
            try:
                request = self._create_datagram_endpoint(
                    fut, factory, fam, pro, local, remote,
                    bool(reuse_port), bool(allow_broadcast), sock, r_addr)
                transport, protocol = await self._wait(fut, request)
            except OSError as exc:
                if factory_failed or sock is not None:
                    raise
                exceptions.append(exc)
            else:
                break
        else:
            raise exceptions[0]

        if self._debug:
            if local_addr:
                base_events.logger.info(
                    "Datagram endpoint local_addr=%r remote_addr=%r "
                    "created: (%r, %r)",
                    local_addr, remote_addr, transport, protocol)
            else:
                base_events.logger.debug(
                    "Datagram endpoint remote_addr=%r created: "
                    "(%r, %r)",
                    remote_addr, transport, protocol)
        return transport, protocol

    # -1 is subprocess.PIPE, as in asyncio's signatures.
    async def subprocess_exec(self, protocol_factory, program, *args,
                              stdin=-1, stdout=-1, stderr=-1,
                              universal_newlines=False, shell=False, bufsize=0,
                              encoding=None, errors=None, text=None, **kwargs):
        if universal_newlines:
            raise ValueError("universal_newlines must be False")
        if shell:
            raise ValueError("shell must be False")
        if bufsize != 0:
            raise ValueError("bufsize must be 0")
        if text:
            raise ValueError("text must be False")
        if encoding is not None:
            raise ValueError("encoding must be None")
        if errors is not None:
            raise ValueError("errors must be None")
        from . import _subprocess
        protocol = protocol_factory()
        debug_log = None
        if self._debug:
            # as asyncio: no parameters (they may hold passwords)
            debug_log = f'execute program {program!r}'
            self._log_subprocess(debug_log, stdin, stdout, stderr)
        transport = await _subprocess.start(
            self, protocol, (program,) + args, False, stdin, stdout, stderr, kwargs)
        if self._debug and debug_log is not None:
            base_events.logger.info('%s: %r', debug_log, transport)
        return transport, protocol

    async def subprocess_shell(self, protocol_factory, cmd, *,
                               stdin=-1, stdout=-1, stderr=-1,
                               universal_newlines=False, shell=True, bufsize=0,
                               encoding=None, errors=None, text=None, **kwargs):
        if not isinstance(cmd, (bytes, str)):
            raise ValueError("cmd must be a string")
        if universal_newlines:
            raise ValueError("universal_newlines must be False")
        if not shell:
            raise ValueError("shell must be True")
        if bufsize != 0:
            raise ValueError("bufsize must be 0")
        if text:
            raise ValueError("text must be False")
        if encoding is not None:
            raise ValueError("encoding must be None")
        if errors is not None:
            raise ValueError("errors must be None")
        from . import _subprocess
        protocol = protocol_factory()
        debug_log = None
        if self._debug:
            debug_log = 'run shell command %r' % cmd
            self._log_subprocess(debug_log, stdin, stdout, stderr)
        transport = await _subprocess.start(
            self, protocol, cmd, True, stdin, stdout, stderr, kwargs)
        if self._debug and debug_log is not None:
            base_events.logger.info('%s: %r', debug_log, transport)
        return transport, protocol


def _noop():
    pass


def _sighandler_noop(signum, frame):
    """Dummy signal handler."""


_INET_FAMILIES = (socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6)


def _address_arg(host, port, family, proto, call, *rest):
    """(host, port) as asyncio reads them before it connects or binds:
    (host for the C side, port number, numeric). A numeric host skips
    getaddrinfo() there (base_events._ipaddr_info), and connect() / bind()
    check its port; any other goes to getaddrinfo(), whose reading of the
    port (service names, its errors) is taken here, and whose checks of the
    host are the C side's (a str, or None)."""
    info = base_events._ipaddr_info(host, port, family, socket.SOCK_STREAM,
                                    proto, *rest)
    if info is not None:
        p = info[4][1]
        if not 0 <= p <= 0xffff:
            raise OverflowError(f'{call}(): port must be 0-65535.')
        return info[4][0], p, True
    if isinstance(host, bytes):
        host = host.decode('idna')
    return host, _service_port(port), False


def _service_port(port):
    """The port getaddrinfo() makes of port (number, service name...)."""
    if port is None:
        return 0
    if type(port) is int and 0 <= port <= 0xffff:
        return port
    return socket.getaddrinfo(None, port, type=socket.SOCK_STREAM,
                              flags=socket.AI_PASSIVE)[0][4][1]


def _backlog(backlog):
    """listen()'s reading of backlog: an integer, a negative one is 0."""
    backlog = operator.index(backlog)
    return 0 if -2 ** 31 <= backlog < 0 else backlog


def _unix_path(path):
    """A Unix socket path as bytes, with the socket module's checks."""
    path = os.fsencode(path)
    if len(path) > 108:     # sizeof(sun_path)
        raise OSError('AF_UNIX path too long')
    if not path:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    return path


def _connect_error(exc, host, port):
    if isinstance(exc, socket.gaierror) or not exc.errno:
        return exc
    return OSError(exc.errno, f'Connect call failed {(host, port)}')
