"""Subprocesses: subprocess_exec / subprocess_shell with a SubprocessProtocol,
and asyncio.create_subprocess_exec / _shell (the Process API)."""

import asyncio
import os
import signal
import subprocess
import sys
import warnings
from unittest import mock

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


# ------------------------------------- session, process group, pass_fds

IDS = "import os; print(os.getpid(), os.getpgrp(), os.getsid(0))"


async def child_ids(**kw):
    """(pid, process group, session) of a child started with kw, as the
    child sees them, and its returncode."""
    proc = await asyncio.create_subprocess_exec(PY, "-c", IDS,
                                                stdout=subprocess.PIPE, **kw)
    out, _ = await proc.communicate()
    pid, pgrp, sid = map(int, out.split())
    assert pid == proc.pid
    return pid, pgrp, sid, proc.returncode


def test_subprocess_start_new_session(loop):
    async def main():
        out = []
        pid, pgrp, sid, rc = await child_ids()
        out.append((pgrp == os.getpgrp(), sid == os.getsid(0), rc))
        pid, pgrp, sid, rc = await child_ids(start_new_session=True)
        out.append((pgrp == pid, sid == pid, rc))
        # the shell's way, as CPython's test_subprocess_wait_no_same_group
        t, p = await loop.subprocess_shell(lambda: RecSubproc(loop), "exit 7",
                                           stdin=None, stdout=None, stderr=None,
                                           start_new_session=True)
        await p.lost
        t.close()
        out.append(t.get_returncode())
        return out

    assert run(loop, main()) == [(True, True, 0), (True, True, 0), 7]


def test_subprocess_process_group(loop):
    async def main():
        out = []
        pid, pgrp, sid, _ = await child_ids(process_group=0)
        out.append((pgrp == pid, sid == os.getsid(0)))
        pid, pgrp, sid, _ = await child_ids(process_group=os.getpgrp())
        out.append(pgrp == os.getpgrp())
        pid, pgrp, sid, _ = await child_ids(process_group=-5)  # Popen: none
        out.append(pgrp == os.getpgrp())
        # joining the group another child leads
        leader = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; sys.stdin.read()", stdin=subprocess.PIPE,
            process_group=0)
        pid, pgrp, sid, _ = await child_ids(process_group=leader.pid)
        out.append(pgrp == leader.pid)
        leader.stdin.close()
        out.append(await leader.wait())
        # the kernel's refusals: a group of another session (init's), a
        # session leader changing group
        for kw in (dict(process_group=1),
                   dict(start_new_session=True, process_group=0)):
            try:
                await asyncio.create_subprocess_exec(PY, "-c", "pass", **kw)
                out.append("no error")
            except OSError as e:
                out.append((type(e).__name__, e.errno, e.filename))
        for bad in ("x", 2 ** 40):
            try:
                await asyncio.create_subprocess_exec(PY, "-c", "pass",
                                                     process_group=bad)
                out.append("no error")
            except (TypeError, OverflowError) as e:
                out.append(type(e).__name__)
        return out

    assert run(loop, main()) == [
        (True, True), True, True, True, 0,
        ("PermissionError", 1, None), ("PermissionError", 1, None),
        "TypeError", "OverflowError"]


# The child reports, for each descriptor given as an argument, whether it is
# open in the child, and writes b"data" to the first.
PASSED = ("import os, sys\n"
          "fds = [int(a) for a in sys.argv[1:]]\n"
          "def is_open(fd):\n"
          "    try:\n"
          "        os.fstat(fd)\n"
          "        return True\n"
          "    except OSError:\n"
          "        return False\n"
          "print(*[is_open(fd) for fd in fds])\n"
          "os.write(fds[0], b'data')\n")


def test_subprocess_pass_fds(loop):
    async def main():
        r, w = os.pipe()
        r2, w2 = os.pipe()
        os.set_inheritable(w2, True)  # inheritable, but not passed: closed
        try:
            out = []
            reader = asyncio.StreamReader()
            rt, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), open(r, "rb", 0))
            proc = await asyncio.create_subprocess_exec(
                PY, "-c", PASSED, str(w), str(r2), str(w2),
                stdout=subprocess.PIPE, pass_fds={w, w, 1})
            stdout, _ = await proc.communicate()
            out.append((stdout, proc.returncode))
            os.close(w)
            w = None
            out.append(await reader.read())    # EOF: the child's copy is gone
            out.append((os.get_inheritable(r2), os.get_inheritable(w2)))
            rt.close()
            # Popen's checks
            for kw in (dict(pass_fds=(-1,)), dict(pass_fds=(r2, 1000))):
                try:
                    await asyncio.create_subprocess_exec(PY, "-c", "pass", **kw)
                    out.append("no error")
                except (ValueError, OSError) as e:
                    out.append((type(e).__name__, getattr(e, "errno", None)))
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                proc = await asyncio.create_subprocess_exec(
                    PY, "-c", "pass", pass_fds=(r2,), close_fds=False)
                out.append(await proc.wait())
            out.append([(w_.category.__name__, str(w_.message)) for w_ in rec])
            return out
        finally:
            for fd in (w, r2, w2):
                if fd is not None:
                    os.close(fd)

    assert run(loop, main()) == [
        (b"True False False\n", 0), b"data", (False, True),
        ("ValueError", None), ("OSError", 9), 0,
        [("RuntimeWarning", "pass_fds overriding close_fds.")]]


def test_subprocess_stream_from_pass_fds_child(loop):
    # CPython's test_read_all_from_pipe_reader: the child writes to a pipe
    # it got through pass_fds, read through connect_read_pipe with a small
    # StreamReader limit.
    async def main():
        rfd, wfd = os.pipe()
        reader = asyncio.StreamReader(limit=1)
        t, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), open(rfd, "rb", 0))
        code = "import os, sys; fd = int(sys.argv[1]); os.write(fd, b'data'); os.close(fd)"
        proc = await asyncio.create_subprocess_exec(PY, "-c", code, str(wfd),
                                                    pass_fds={wfd})
        rc = await proc.wait()
        os.close(wfd)
        data = await reader.read(-1)
        t.close()
        return rc, data

    assert run(loop, main()) == (0, b"data")


# ------------------------------------------------ the Popen object

BLOCKED = "import sys; print('ready', flush=True); sys.stdin.read()"


def test_subprocess_popen_poll_wait_kill(loop):
    async def main():
        t, p = await loop.subprocess_exec(lambda: RecSubproc(loop), PY, "-c",
                                          BLOCKED)
        popen = t.get_extra_info("subprocess")
        await p.wait_data(1, b"ready")
        out = [popen is t.get_extra_info("subprocess"),
               type(popen).__name__, popen.pid == t.get_pid(), popen.args,
               popen.stdin is t.get_pipe_transport(0).get_extra_info("pipe"),
               popen.stdout is t.get_pipe_transport(1).get_extra_info("pipe"),
               popen.stderr is t.get_pipe_transport(2).get_extra_info("pipe"),
               popen.stdin is not None, popen.returncode, popen.poll()]
        try:
            popen.wait(timeout=0.01)
            out.append("no timeout")
        except subprocess.TimeoutExpired as e:
            out.append((type(e).__name__, e.cmd == popen.args, e.timeout))
        popen.kill()
        await p.exited
        out += [t.get_returncode(), popen.returncode, popen.poll(),
                popen.wait(), popen.wait(timeout=0)]
        await p.lost
        popen.kill()      # known to have exited: nothing, as Popen
        popen.terminate()
        popen.send_signal(signal.SIGUSR1)
        t.close()
        out += [popen.returncode, t.get_extra_info("subprocess") is popen]
        return out

    assert run(loop, main()) == [
        True, "Popen", True, (PY, "-c", BLOCKED), True, True, True, True,
        None, None, ("TimeoutExpired", True, 0.01),
        -signal.SIGKILL, -signal.SIGKILL, -signal.SIGKILL, -signal.SIGKILL,
        -signal.SIGKILL, -signal.SIGKILL, True]


@pytest.mark.parametrize("how,rc", [
    ("send_signal", -signal.SIGUSR1), ("terminate", -signal.SIGTERM)])
def test_subprocess_popen_signals(loop, how, rc):
    async def main():
        t, p = await loop.subprocess_shell(
            lambda: RecSubproc(loop), "echo ready; read x", stdin=subprocess.PIPE,
            stderr=None)
        popen = t.get_extra_info("subprocess")
        await p.wait_data(1, b"ready")
        if how == "send_signal":
            popen.send_signal(signal.SIGUSR1)
        else:
            popen.terminate()
        await p.lost
        t.close()
        return (popen.args, popen.stderr, t.get_returncode(),
                popen.returncode)

    assert run(loop, main()) == ("echo ready; read x", None, rc, rc)


def test_subprocess_close_kills_running_through_popen(loop):
    # asyncio's close(): a child still running is killed with Popen.kill()
    async def main():
        t, p = await loop.subprocess_exec(lambda: RecSubproc(loop), PY, "-c",
                                          BLOCKED)
        await p.wait_data(1, b"ready")
        popen = t.get_extra_info("subprocess")
        calls = []
        orig_kill = popen.kill

        def kill():
            calls.append("kill")
            orig_kill()

        popen.kill = kill
        rc = t.get_returncode()
        t.close()
        await p.lost
        return rc, calls, t.get_returncode()

    assert run(loop, main()) == (None, ["kill"], -signal.SIGKILL)


def test_subprocess_close_dont_kill_finished(loop):
    # A child that has exited (Popen.wait() saw it) before the loop heard of
    # it is not killed by close().
    async def main():
        t, p = await loop.subprocess_exec(lambda: RecSubproc(loop), PY, "-c",
                                          BLOCKED)
        await p.wait_data(1, b"ready")
        popen = t.get_extra_info("subprocess")
        popen.kill()
        popen.wait()     # blocks: the loop has not run since
        popen.kill = mock.Mock()
        out = [popen.poll() is not None, t.get_returncode()]
        t.close()
        await p.lost
        out += [popen.kill.called, t.get_returncode() is not None]
        return out

    assert run(loop, main()) == [True, None, False, True]


def test_subprocess_popen_without_pipes(loop):
    async def main():
        t, p = await loop.subprocess_exec(lambda: RecSubproc(loop), PY, "-c",
                                          "import sys; sys.exit(4)",
                                          stdin=None, stdout=None, stderr=None)
        popen = t.get_extra_info("subprocess")
        await p.exited
        out = [popen.stdin, popen.stdout, popen.stderr,
               popen.communicate(), popen.returncode]
        await p.lost
        t.close()
        return out

    assert run(loop, main()) == [None, None, None, (None, None), 4]


# ------------------------------------------------- child watchers

class RecWatcher(asyncio.AbstractChildWatcher):
    def __init__(self):
        self.calls = []

    def attach_loop(self, loop):
        self.calls.append(("attach", loop))

    def close(self):
        self.calls.append(("close",))

    def is_active(self):
        return True

    def add_child_handler(self, pid, callback, *args):
        raise AssertionError("not to be called here")

    def remove_child_handler(self, pid):
        raise AssertionError("not to be called here")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def test_policy_child_watcher_calls(policy_factory, loop_factory):
    old = asyncio.get_event_loop_policy()
    pol = policy_factory()
    lp = loop_factory()
    out = []
    try:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            asyncio.set_event_loop_policy(pol)
            w = asyncio.get_child_watcher()
            out += [isinstance(w, asyncio.AbstractChildWatcher),
                    asyncio.get_child_watcher() is w, pol.get_child_watcher() is w]
            mine = RecWatcher()
            asyncio.set_child_watcher(mine)    # closes w
            out.append(pol.get_child_watcher() is mine)
            pol.set_event_loop(lp)             # main thread: attaches lp
            pol.set_event_loop(None)
            pol.set_child_watcher(None)        # closes mine
            out.append(mine.calls == [("attach", lp), ("attach", None), ("close",)])
            try:
                pol.set_child_watcher(42)
                out.append("no error")
            except AssertionError:
                out.append("AssertionError")
        cats = {r.category for r in rec}
        out.append(cats <= {DeprecationWarning} if sys.version_info >= (3, 12)
                   else cats == set())
    finally:
        asyncio.set_event_loop_policy(old)
        lp.close()
    assert out == [True, True, True, True, True, "AssertionError", True]


def test_policy_child_watcher_add_child_handler(policy_factory, loop_factory):
    # The default watcher watches a pid given to it (a process the loop did
    # not start), on the running loop.
    old = asyncio.get_event_loop_policy()
    pol = policy_factory()
    lp = loop_factory()
    try:
        asyncio.set_event_loop_policy(pol)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            w = pol.get_child_watcher()

        async def main():
            proc = subprocess.Popen([SH, "-c", "exit 5"])
            fut = lp.create_future()
            w.add_child_handler(proc.pid, lambda pid, rc, tag: fut.set_result(
                (pid == proc.pid, rc, tag)), "tag")
            res = await fut
            proc.returncode = res[1]   # reaped by the watcher, not by Popen
            return res

        assert run(lp, main()) == (True, 5, "tag")
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pol.set_child_watcher(None)
        asyncio.set_event_loop_policy(old)
        lp.close()


def test_subprocess_with_a_child_watcher_set(policy_factory, loop):
    # A watcher set through the policy (CPython's tests set SafeChildWatcher
    # so) does not keep children of the loop from being seen to exit.
    old = asyncio.get_event_loop_policy()
    pol = policy_factory()
    try:
        asyncio.set_event_loop_policy(pol)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            watcher = asyncio.SafeChildWatcher()
            watcher.attach_loop(loop)
            asyncio.set_child_watcher(watcher)

        async def main():
            proc = await asyncio.create_subprocess_exec(SH, "-c", "exit 6")
            return await proc.wait()

        assert run(loop, main()) == 6
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(None)
        asyncio.set_event_loop_policy(old)
