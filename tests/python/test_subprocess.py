"""Subprocesses: subprocess_exec / subprocess_shell with a SubprocessProtocol,
and asyncio.create_subprocess_exec / _shell (the Process API)."""

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from tputil import RecSubproc, run

PY = sys.executable
SH = "/bin/sh"

# A child that echoes stdin to stdout (upper-cased), writes to stderr, exits 3.
CHILD = ("import sys\n"
         "data = sys.stdin.buffer.read()\n"
         "sys.stdout.buffer.write(b'out:' + data.upper()); "
         "sys.stdout.flush()\n"
         "sys.stderr.buffer.write(b'err:' + data); sys.stderr.flush()\n"
         "sys.exit(3)\n")


def check_subprocess_events(ev):
    """The ordering rules of asyncio's subprocess transport: connection_made
    first, connection_lost(None) last, after process_exited and every
    pipe_connection_lost; a pipe's data precede its pipe_connection_lost."""
    assert ev[0] == ("made",)
    assert ev[-1] == ("lost", None)
    assert ev.count(("exited",)) == 1
    for fd in (1, 2):
        lost_at = ev.index(("pipe_lost", fd, None))
        data_at = [i for i, e in enumerate(ev) if e[:2] == ("pipe_data", fd)]
        assert all(i < lost_at for i in data_at), ev


def test_subprocess_exec_protocol(loop):
    async def main():
        t, p = await loop.subprocess_exec(lambda: RecSubproc(loop),
                                          PY, "-c", CHILD)
        out = [p.transport is t, isinstance(t, asyncio.SubprocessTransport),
               isinstance(t, asyncio.BaseTransport),
               type(t.get_pid()) is int and t.get_pid() > 0,
               t.get_returncode(),
               isinstance(t.get_pipe_transport(0), asyncio.WriteTransport),
               isinstance(t.get_pipe_transport(1), asyncio.ReadTransport),
               isinstance(t.get_pipe_transport(2), asyncio.ReadTransport),
               t.get_pipe_transport(3)]
        stdin = t.get_pipe_transport(0)
        stdin.write(b"hello ")
        stdin.writelines([b"child"])
        stdin.close()
        await p.lost
        out += [t.get_returncode(), t.is_closing()]
        t.close()
        out.append(t.is_closing())
        return out, p

    out, p = run(loop, main())
    assert out == [True, True, True, True, None, True, True, True, None,
                   3, False, True]
    assert p.data == {1: b"out:HELLO CHILD", 2: b"err:hello child"}
    check_subprocess_events(p.events)
    assert sorted(e for e in p.events if e[0] == "pipe_lost") == [
        ("pipe_lost", 0, None), ("pipe_lost", 1, None),
        ("pipe_lost", 2, None)]
    assert len(p.events) == 8    # made, 2 data, 3 pipe_lost, exited, lost


@pytest.mark.tpio_differs(reason="no Popen object: tpio's child is not Popen's")
def test_subprocess_extra_info_popen(loop):
    # asyncio's subprocess transport gives its subprocess.Popen object
    async def main():
        t, p = await loop.subprocess_exec(lambda: RecSubproc(loop),
                                          PY, "-c", "pass")
        popen = t.get_extra_info("subprocess")
        await p.lost
        t.close()
        return type(popen).__name__, getattr(popen, "pid", None) == t.get_pid()

    assert run(loop, main()) == ("Popen", True)


def test_subprocess_pipe_data_order(loop):
    # Many writes from the child on one pipe arrive in order.
    code = ("import sys, os\n"
            "for i in range(200):\n"
            "    os.write(1, b'%d,' % i)\n")

    async def main():
        t, p = await loop.subprocess_exec(lambda: RecSubproc(loop),
                                          PY, "-c", code, stdin=None,
                                          stderr=None)
        await p.lost
        t.close()
        return p, t.get_pipe_transport(0), t.get_pipe_transport(2)

    p, t0, t2 = run(loop, main())
    assert p.data == {1: b"".join(b"%d," % i for i in range(200))}
    assert (t0, t2) == (None, None)
    assert p.events[0] == ("made",) and p.events[-1] == ("lost", None)
    assert [e for e in p.events if e[0] != "pipe_data"] == [
        ("made",), ("pipe_lost", 1, None), ("exited",), ("lost", None)] or \
        [e for e in p.events if e[0] != "pipe_data"] == [
        ("made",), ("exited",), ("pipe_lost", 1, None), ("lost", None)]


def test_subprocess_shell(loop):
    async def main():
        t, p = await loop.subprocess_shell(
            lambda: RecSubproc(loop),
            "echo hi; echo oops 1>&2; read x; echo got $x; exit 7")
        t.get_pipe_transport(0).write(b"line\n")
        await p.lost
        t.close()
        return t.get_returncode(), p

    rc, p = run(loop, main())
    assert rc == 7
    assert p.data == {1: b"hi\ngot line\n", 2: b"oops\n"}
    check_subprocess_events(p.events)


def test_subprocess_devnull_and_stderr_stdout(loop):
    async def main():
        t, p = await loop.subprocess_shell(
            lambda: RecSubproc(loop), "echo a; echo b 1>&2",
            stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        await p.lost
        pipes = [t.get_pipe_transport(i) is None for i in range(3)]
        t.close()
        return pipes, p.data, t.get_returncode()

    pipes, data, rc = run(loop, main())
    assert pipes == [True, False, True]
    assert data == {1: b"a\nb\n"}
    assert rc == 0


@pytest.mark.parametrize("how,rc", [
    ("send_signal", -signal.SIGUSR1), ("terminate", -signal.SIGTERM),
    ("kill", -signal.SIGKILL)])
def test_subprocess_signals(loop, how, rc):
    async def main():
        t, p = await loop.subprocess_exec(
            lambda: RecSubproc(loop), PY, "-c",
            "import sys; print('ready', flush=True); sys.stdin.read()")
        await p.wait_data(1, b"ready")
        if how == "send_signal":
            t.send_signal(signal.SIGUSR1)
        else:
            getattr(t, how)()
        await p.exited
        r1 = t.get_returncode()
        await p.lost
        err = None
        try:
            t.kill()
        except ProcessLookupError as e:
            err = type(e).__name__
        t.close()
        return r1, err

    assert run(loop, main()) == (rc, "ProcessLookupError")


def test_subprocess_close_kills(loop):
    async def main():
        t, p = await loop.subprocess_exec(
            lambda: RecSubproc(loop), PY, "-c",
            "import sys; print('ready', flush=True); sys.stdin.read()")
        await p.wait_data(1, b"ready")
        t.close()
        out = [t.is_closing()]
        await p.lost
        out.append(t.get_returncode())
        return out, p.events

    out, ev = run(loop, main())
    assert out == [True, -signal.SIGKILL]
    assert ev[0] == ("made",) and ev[-1] == ("lost", None)
    assert ("exited",) in ev


def test_subprocess_exec_errors(loop):
    async def main():
        out = []
        for kw in (dict(universal_newlines=True), dict(shell=True),
                   dict(bufsize=1), dict(text=True), dict(encoding="utf-8"),
                   dict(errors="strict")):
            try:
                await loop.subprocess_exec(lambda: RecSubproc(loop), PY,
                                           "-c", "pass", **kw)
                out.append("no error")
            except ValueError as e:
                out.append(str(e))
        for cmd, kw in ((["echo"], {}), ("echo", dict(shell=False))):
            try:
                await loop.subprocess_shell(lambda: RecSubproc(loop), cmd,
                                            **kw)
                out.append("no error")
            except ValueError as e:
                out.append(str(e))
        try:
            await loop.subprocess_exec(lambda: RecSubproc(loop),
                                       "/nonexistent/program")
        except FileNotFoundError as e:
            out.append(type(e).__name__)
        return out

    assert run(loop, main()) == [
        "universal_newlines must be False", "shell must be False",
        "bufsize must be 0", "text must be False", "encoding must be None",
        "errors must be None", "cmd must be a string", "shell must be True",
        "FileNotFoundError"]


def test_subprocess_env_cwd(loop, tmp_path):
    async def main():
        t, p = await loop.subprocess_shell(
            lambda: RecSubproc(loop), 'echo "$TPIO_X"; pwd',
            env={"TPIO_X": "from-env", "PATH": os.environ.get("PATH", "")},
            cwd=str(tmp_path))
        await p.lost
        t.close()
        return p.data[1]

    assert run(loop, main()) == b"from-env\n" + str(tmp_path).encode() + b"\n"


# ------------------------------------------------------- the Process API

def test_create_subprocess_exec_communicate(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", CHILD, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        out, err = await proc.communicate(b"data")
        return out, err, proc.returncode, type(proc.pid)

    assert run(loop, main()) == (b"out:DATA", b"err:data", 3, int)


def test_create_subprocess_shell(loop):
    async def main():
        proc = await asyncio.create_subprocess_shell(
            "cat; echo done", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        proc.stdin.write(b"line 1\nline 2\n")
        await proc.stdin.drain()
        first = await proc.stdout.readline()
        proc.stdin.close()
        rest = await proc.stdout.read()
        rc = await proc.wait()
        return first, rest, rc, proc.returncode

    assert run(loop, main()) == (b"line 1\n", b"line 2\ndone\n", 0, 0)


def test_create_subprocess_large_output(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; sys.stdout.buffer.write(b'x' * 3000000)",
            stdout=subprocess.PIPE)
        out, err = await proc.communicate()
        return len(out), err, proc.returncode

    assert run(loop, main()) == (3000000, None, 0)


def test_create_subprocess_terminate_wait(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; print('ready', flush=True); "
                      "sys.stdin.read()",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert await proc.stdout.readline() == b"ready\n"
        proc.terminate()
        rc = await proc.wait()
        rc2 = await proc.wait()
        return rc, rc2

    assert run(loop, main()) == (-signal.SIGTERM, -signal.SIGTERM)


def test_many_subprocesses(loop):
    async def one(i):
        proc = await asyncio.create_subprocess_exec(
            SH, "-c", f"echo {i}; exit {i % 5}", stdout=subprocess.PIPE)
        out, _ = await proc.communicate()
        return out, proc.returncode

    async def main():
        return await asyncio.gather(*(one(i) for i in range(10)))

    assert run(loop, main()) == [(b"%d\n" % i, i % 5) for i in range(10)]
