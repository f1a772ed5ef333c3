"""Python echo server for the benchmark: the C servers' echo (bench/bench_common.h)
on an asyncio event loop.

    python3 py_echo.py --loop asyncio|uvloop|tpio --proto protocol|buffered [PORT [EXIT_AFTER]]

The contract of the C servers: binds 127.0.0.1:PORT (0: any free port),
backlog 1024, prints the bound port on stdout (one line, flushed) and serves;
TCP_NODELAY on every connection; write buffer limits 64 KiB / 16 KiB (high /
low), reading paused on pause_writing and resumed on resume_writing; EOF or
error: the transport closes; EXIT_AFTER > 0: exit(0) once that many
connections are lost (for the callgrind and strace runs). SIGPIPE is ignored
(Python does that itself) and RLIMIT_NOFILE raised to its hard limit.

--loop   asyncio: the standard library's loop (selector, epoll);
         uvloop: uvloop.new_event_loop();
         tpio: tpio.new_event_loop(), imported from PYTHONPATH (the driver
         sets it); an import error ends the server with status 2.
--proto  protocol: an asyncio.Protocol, data_received -> transport.write(data);
         buffered: an asyncio.BufferedProtocol; get_buffer returns a view of one
         preallocated 64 KiB bytearray shared by every connection (BENCH_BUF=N:
         N bytes), buffer_updated writes the slice view[:n]. On asyncio (and
         tpio, whose write sends or copies before it returns, as tpio's C
         write does) the view itself is written. uvloop's write keeps a
         reference to what it is given and sends it at the end of the loop
         iteration, after other connections have read into the same buffer,
         so on uvloop the slice is copied into bytes first (the loads check
         every byte of the echo: the view corrupts it there).
"""
import argparse
import asyncio
import os
import resource
import socket
import sys

BACKLOG = 1024
READ = 64 * 1024
HIGH, LOW = 64 * 1024, 16 * 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loop", choices=("asyncio", "uvloop", "tpio"), required=True)
    ap.add_argument("--proto", choices=("protocol", "buffered"), required=True)
    ap.add_argument("port", nargs="?", type=int, default=0)
    ap.add_argument("exit_after", nargs="?", type=int, default=0)
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    if a.loop == "asyncio":
        loop = asyncio.new_event_loop()
    elif a.loop == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
    else:
        try:
            import tpio
        except ImportError as e:
            print("py_echo: cannot import tpio (PYTHONPATH=%s): %s" % (
                os.environ.get("PYTHONPATH", ""), e), file=sys.stderr)
            sys.exit(2)
        loop = tpio.new_event_loop()
    asyncio.set_event_loop(loop)

    exit_after = a.exit_after
    closed = [0]

    def lost():
        closed[0] += 1
        if exit_after > 0 and closed[0] >= exit_after:
            sys.stdout.flush()
            os._exit(0)

    class Conn:
        """What both protocols do besides the echo: the C servers' socket
        options, write limits and flow control."""
        __slots__ = ()

        def connection_made(self, transport):
            self.transport = transport
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport.set_write_buffer_limits(high=HIGH, low=LOW)

        def pause_writing(self):
            self.transport.pause_reading()

        def resume_writing(self):
            self.transport.resume_reading()

        def connection_lost(self, exc):
            lost()

    class Echo(Conn, asyncio.Protocol):
        __slots__ = ("transport",)

        def data_received(self, data):
            self.transport.write(data)

    size = int(os.environ.get("BENCH_BUF", READ))
    if not 1 <= size <= READ:
        sys.exit("BENCH_BUF must be 1..%d" % READ)
    view = memoryview(bytearray(size))

    class EchoBuffered(Conn, asyncio.BufferedProtocol):
        __slots__ = ("transport",)

        def get_buffer(self, sizehint):
            return view

        def buffer_updated(self, nbytes):
            self.transport.write(view[:nbytes])

    class EchoBufferedCopy(EchoBuffered):
        __slots__ = ()

        def buffer_updated(self, nbytes):
            self.transport.write(bytes(view[:nbytes]))

    if a.proto == "protocol":
        factory = Echo
    else:
        factory = EchoBufferedCopy if a.loop == "uvloop" else EchoBuffered

    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", a.port))
    lsock.listen(BACKLOG)
    lsock.setblocking(False)
    port = lsock.getsockname()[1]
    server = loop.run_until_complete(loop.create_server(factory, sock=lsock, backlog=BACKLOG))
    print(port, flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()
    return 1


if __name__ == "__main__":
    sys.exit(main())
