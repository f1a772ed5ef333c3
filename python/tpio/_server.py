"""tpio.Server: asyncio's Server object over a tpio server."""

import socket

from asyncio import events, exceptions, tasks, trsock

__all__ = ('Server',)


class Server(events.AbstractServer):
    """What create_server and create_unix_server return (asyncio.Server's
    behaviour, the Python 3.11 one: wait_closed() after close() returns at
    once)."""

    def __init__(self, loop, handle, user_socks=None):
        self._loop = loop
        self._handle = handle
        self._serving = False
        self._serving_forever_fut = None
        self._closed = False
        # The socket objects of `sockets`: the user's own (sock=), or made
        # here over the server's descriptors. Either way tpio owns the
        # descriptors: the objects let go of them at close().
        if user_socks is not None:
            self._socks = list(user_socks)
        else:
            self._socks = [socket.socket(fileno=fd) for fd in handle.fds()]

    def __repr__(self):
        return f'<{self.__class__.__name__} sockets={self.sockets!r}>'

    def _start_serving(self):
        if self._serving or self._closed:
            return
        self._serving = True
        self._handle.start_serving()

    def get_loop(self):
        return self._loop

    def is_serving(self):
        return self._serving

    @property
    def sockets(self):
        if self._closed:
            return ()
        return tuple(trsock.TransportSocket(s) for s in self._socks)

    def close(self):
        if self._closed:
            return
        self._closed = True
        for s in self._socks:
            s.detach()
        self._socks = []
        self._handle.close()
        self._serving = False
        if (self._serving_forever_fut is not None and
                not self._serving_forever_fut.done()):
            self._serving_forever_fut.cancel()
            self._serving_forever_fut = None

    async def start_serving(self):
        self._start_serving()
        # as asyncio: one loop iteration, so that accepting has started
        await tasks.sleep(0)

    async def serve_forever(self):
        if self._serving_forever_fut is not None:
            raise RuntimeError(
                f'server {self!r} is already being awaited on serve_forever()')
        if self._closed:
            raise RuntimeError(f'server {self!r} is closed')
        self._start_serving()
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except exceptions.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever_fut = None

    async def wait_closed(self):
        if self._closed:
            return
        waiter = self._loop.create_future()
        self._handle.wait_closed(waiter)
        await waiter
