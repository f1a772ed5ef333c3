"""add_signal_handler / remove_signal_handler (signals sent with os.kill)."""

import asyncio
import os
import signal
import threading

import pytest

from tputil import Handlers, run


@pytest.fixture(autouse=True)
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2,
                                             signal.SIGINT)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    signal.set_wakeup_fd(-1)


def test_handler_runs_as_loop_callback(loop):
    rec = []

    async def main():
        got = loop.create_future()

        def handler(*args):
            rec.append(("handler", args, loop.is_running(),
                        asyncio.get_running_loop() is loop,
                        threading.current_thread() is threading.main_thread()))
            got.set_result(None)

        rec.append(("ret", loop.add_signal_handler(signal.SIGUSR1, handler,
                                                   "a", 1)))
        os.kill(os.getpid(), signal.SIGUSR1)
        rec.append("after-kill")      # the handler is not run synchronously
        await got
        rec.append(("removed", loop.remove_signal_handler(signal.SIGUSR1)))
        rec.append(("removed", loop.remove_signal_handler(signal.SIGUSR1)))
        rec.append(("restored",
                    signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL))

    run(loop, main())
    assert rec == [("ret", None), "after-kill",
                   ("handler", ("a", 1), True, True, True),
                   ("removed", True), ("removed", False), ("restored", True)]


def test_getsignal_while_installed(loop):
    # asyncio installs a Python-level handler (so signal.getsignal() shows
    # neither SIG_DFL nor SIG_IGN) and puts SIG_DFL back on removal.
    loop.add_signal_handler(signal.SIGUSR1, print)
    during = signal.getsignal(signal.SIGUSR1)
    loop.remove_signal_handler(signal.SIGUSR1)
    assert during not in (signal.SIG_DFL, signal.SIG_IGN, None)
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_handler_repeated_and_replaced(loop):
    rec = []

    async def main():
        fut = [loop.create_future()]

        def h(tag):
            rec.append(tag)
            fut[0].set_result(None)

        loop.add_signal_handler(signal.SIGUSR1, h, "first")
        for i in range(3):
            os.kill(os.getpid(), signal.SIGUSR1)
            await fut[0]
            fut[0] = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, h, "replaced")
        os.kill(os.getpid(), signal.SIGUSR1)
        await fut[0]
        fut[0] = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR2, h, "usr2")
        os.kill(os.getpid(), signal.SIGUSR2)
        await fut[0]
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
        assert loop.remove_signal_handler(signal.SIGUSR2) is True

    run(loop, main())
    assert rec == ["first", "first", "first", "replaced", "usr2"]


def test_sigint_restores_default_int_handler(loop):
    async def main():
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGINT, got.set_result, "int")
        os.kill(os.getpid(), signal.SIGINT)
        r = await got
        return r, loop.remove_signal_handler(signal.SIGINT)

    assert run(loop, main()) == ("int", True)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_uncatchable_signals(loop):
    msgs = []
    for sig in (signal.SIGKILL, signal.SIGSTOP):
        try:
            loop.add_signal_handler(sig, print)
        except RuntimeError as e:
            msgs.append(str(e))
    assert msgs == ["sig 9 cannot be caught", "sig 19 cannot be caught"]
    assert loop.remove_signal_handler(signal.SIGKILL) is False


def test_bad_signal_numbers(loop):
    out = []
    for sig in (0, 1000, "x"):
        for call in (lambda: loop.add_signal_handler(sig, print),
                     lambda: loop.remove_signal_handler(sig)):
            try:
                call()
            except (TypeError, ValueError) as e:
                out.append((type(e).__name__, str(e)))
    assert out == [("ValueError", "invalid signal number 0")] * 2 + \
                  [("ValueError", "invalid signal number 1000")] * 2 + \
                  [("TypeError", "sig must be an int, not 'x'")] * 2


def test_coroutine_handler_rejected(loop):
    async def coro_fn():
        pass

    msgs = []
    c = coro_fn()
    try:
        for cb in (coro_fn, c):
            try:
                loop.add_signal_handler(signal.SIGUSR1, cb)
            except TypeError as e:
                msgs.append(str(e))
    finally:
        c.close()
    assert msgs == ["coroutines cannot be used with add_signal_handler()"] * 2
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_not_callable_handler(loop):
    # asyncio does not check callability up front: the handler is installed
    # and its failure is reported, like any callback's, when the signal
    # comes.
    h = Handlers(loop)

    async def main():
        loop.add_signal_handler(signal.SIGUSR1, 42)
        os.kill(os.getpid(), signal.SIGUSR1)
        ctx = await h.called
        return (type(ctx["exception"]).__name__,
                ctx["message"].startswith("Exception in callback"),
                loop.remove_signal_handler(signal.SIGUSR1))

    assert run(loop, main()) == ("TypeError", True, True)


def test_handler_exception_goes_to_exception_handler(loop):
    h = Handlers(loop)
    rec = []

    async def main():
        ok = loop.create_future()

        def bad():
            rec.append("bad")
            raise ValueError("in handler")

        loop.add_signal_handler(signal.SIGUSR1, bad)
        os.kill(os.getpid(), signal.SIGUSR1)
        ctx = await h.called
        # still installed after raising
        loop.add_signal_handler(signal.SIGUSR2, ok.set_result, "ok")
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR2)
        await ok
        return ctx

    ctx = run(loop, main())
    assert sorted(ctx) == ["exception", "handle", "message"]
    assert ctx["exception"].args == ("in handler",)
    assert ctx["message"].startswith("Exception in callback ")
    assert rec == ["bad", "bad"]
    assert len(h.contexts) == 2


def test_close_removes_handlers(loop):
    loop.add_signal_handler(signal.SIGUSR1, print)
    loop.add_signal_handler(signal.SIGUSR2, print)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
    with pytest.raises(RuntimeError) as ei:
        loop.add_signal_handler(signal.SIGUSR1, print)
    assert str(ei.value) == "Event loop is closed"


def test_not_main_thread(loop_factory):
    out = []

    def worker():
        lp = loop_factory()
        try:
            lp.add_signal_handler(signal.SIGUSR1, print)
            out.append("no error")
        except Exception as e:
            out.append(type(e).__name__)
        finally:
            lp.close()

    th = threading.Thread(target=worker)
    th.start()
    th.join()
    assert out == ["RuntimeError"]
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
