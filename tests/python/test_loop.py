"""The loop itself: callbacks, timers, running/stopping, errors, tasks,
executors, name resolution, async generators, Runner."""

import asyncio
import concurrent.futures
import contextvars
import gc
import logging
import re
import socket
import sys
import threading
import time

import pytest

from tputil import Handlers, run, spin

var = contextvars.ContextVar("var", default="default")


# ---------------------------------------------------------------- callbacks

def test_is_abstract_event_loop(loop):
    assert isinstance(loop, asyncio.AbstractEventLoop)
    assert loop.is_running() is False
    assert loop.is_closed() is False
    assert loop.get_debug() is False


def test_call_soon_fifo_and_args(loop):
    rec = []

    def cb(*args):
        rec.append(args)

    def chain(tag):
        rec.append(("chain", tag))
        loop.call_soon(cb, "scheduled-by-" + tag)

    for i in range(20):
        loop.call_soon(cb, i)
    loop.call_soon(chain, "c1")
    loop.call_soon(cb, "x", None, 3.5)
    loop.call_soon(cb)
    loop.call_soon(chain, "c2")
    fut = loop.create_future()
    loop.call_soon(lambda: loop.call_soon(lambda: fut.set_result(None)))
    loop.run_until_complete(fut)
    assert rec == ([(i,) for i in range(20)] +
                   [("chain", "c1"), ("x", None, 3.5), (), ("chain", "c2"),
                    ("scheduled-by-c1",), ("scheduled-by-c2",)])


def test_call_soon_returns_handle(loop):
    rec = []
    h1 = loop.call_soon(rec.append, 1)
    h2 = loop.call_soon(rec.append, 2)
    h3 = loop.call_soon(rec.append, 3)
    assert isinstance(h1, asyncio.Handle)
    assert not isinstance(h1, asyncio.TimerHandle)
    assert (h1.cancelled(), h2.cancelled()) == (False, False)
    assert h2.cancel() is None
    h2.cancel()  # twice is fine
    assert h2.cancelled() is True
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert rec == [1, 3]
    # cancelling a handle that already ran is allowed and marks it
    h3.cancel()
    assert h3.cancelled() is True


def test_call_soon_bad_kwarg(loop):
    with pytest.raises(TypeError):
        loop.call_soon(print, x=1)


def test_call_soon_context(loop):
    rec = []

    def cb(tag):
        rec.append((tag, var.get()))
        var.set("set-by-" + tag)

    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")
    token = var.set("outer")
    done = loop.create_future()
    try:
        loop.call_soon(cb, "implicit")          # a copy of the current ctx
        var.set("changed")
        loop.call_soon(cb, "implicit2")
        loop.call_soon(cb, "explicit", context=ctx)
        loop.call_soon(cb, "explicit2", context=ctx)
        loop.call_soon_threadsafe(cb, "threadsafe", context=ctx)
        loop.call_later(0.001, cb, "later", context=ctx)
        loop.call_at(loop.time() + 0.002, cb, "at", context=ctx)
        loop.call_later(0.003, done.set_result, None)
        loop.run_until_complete(done)
        assert var.get() == "changed"   # callbacks never leak into ours
    finally:
        var.reset(token)
    assert rec == [("implicit", "outer"), ("implicit2", "changed"),
                   ("explicit", "in-ctx"), ("explicit2", "set-by-explicit"),
                   ("threadsafe", "set-by-explicit2"),
                   ("later", "set-by-threadsafe"), ("at", "set-by-later")]
    assert ctx[var] == "set-by-at"


def test_callback_exception_goes_to_handler(loop):
    rec = []
    h = Handlers(loop)

    def bad(x):
        raise ValueError("boom", x)

    handle = loop.call_soon(bad, 1)
    loop.call_soon(rec.append, "next")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert rec == ["next"]
    assert len(h.contexts) == 1
    ctx = h.contexts[0]
    assert sorted(ctx) == ["exception", "handle", "message"]
    assert ctx["handle"] is handle
    assert type(ctx["exception"]) is ValueError
    assert ctx["exception"].args == ("boom", 1)
    assert ctx["message"].startswith("Exception in callback ")


def test_callback_exception_message(loop):
    h = Handlers(loop)

    def bad(x):
        raise ValueError(x)

    loop.call_soon(bad, 1)
    loop.call_soon(loop.stop)
    loop.run_forever()
    src = asyncio.format_helpers._format_callback_source(bad, (1,))
    assert h.contexts[0]["message"] == "Exception in callback " + src


def test_base_exception_in_callback_propagates(loop):
    rec = []

    def interrupt():
        raise KeyboardInterrupt("ki")

    loop.call_soon(rec.append, 1)
    loop.call_soon(interrupt)
    loop.call_soon(rec.append, 2)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert loop.is_running() is False
    # the loop is still usable and the rest of the queue runs next time
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert rec == [1, 2]

    async def exiting():
        raise SystemExit(3)

    with pytest.raises(SystemExit) as ei:
        loop.run_until_complete(exiting())
    assert ei.value.code == 3
    assert loop.run_until_complete(asyncio.sleep(0, "again")) == "again"


# ------------------------------------------------------------------- timers

def test_time_is_monotonic_clock(loop):
    t = loop.time()
    assert isinstance(t, float)
    assert abs(t - time.monotonic()) < 0.5
    assert loop.time() >= t


def test_call_later_order_and_when(loop):
    rec = []
    handles = {}
    t0 = loop.time()
    for name, delay in [("c", 0.03), ("a", 0.01), ("neg", -1), ("b", 0.02),
                        ("zero", 0)]:
        handles[name] = loop.call_later(
            delay, lambda n=name: rec.append((n, loop.time())))
    t1 = loop.time()
    loop.call_later(0.035, loop.stop)
    loop.run_forever()
    assert [n for n, _ in rec] == ["neg", "zero", "a", "b", "c"]
    for name, delay in [("c", 0.03), ("a", 0.01), ("b", 0.02)]:
        when = handles[name].when()
        assert t0 + delay - 0.001 <= when <= t1 + delay + 0.001
        fired = dict(rec)[name]
        assert fired >= when - 0.001, (name, fired, when)


def test_call_at_order_and_when(loop):
    rec = []
    base = loop.time()
    h1 = loop.call_at(base + 0.02, rec.append, "second")
    h2 = loop.call_at(base + 0.01, rec.append, "first")
    h3 = loop.call_at(base + 0.03, loop.stop)
    assert h1.when() == base + 0.02
    assert h2.when() == base + 0.01
    assert h3.when() == base + 0.03
    loop.run_forever()
    assert rec == ["first", "second"]
    assert loop.time() >= base + 0.03 - 0.001


def test_timer_due_runs_after_ready_callbacks(loop):
    # A timer that is already due when the loop iterates goes to the back
    # of the ready queue, after callbacks scheduled with call_soon().
    rec = []
    loop.call_later(0, rec.append, "later0")
    loop.call_at(loop.time() - 1, rec.append, "at-past")
    loop.call_soon(rec.append, "soon")
    fut = loop.create_future()
    loop.call_later(0.01, fut.set_result, None)
    loop.run_until_complete(fut)
    assert rec == ["soon", "at-past", "later0"]


def test_timer_handle(loop):
    rec = []
    th = loop.call_later(0.001, rec.append, "a")
    tc = loop.call_later(0.002, rec.append, "cancelled")
    assert isinstance(th, asyncio.TimerHandle)
    assert isinstance(th, asyncio.Handle)
    assert tc.cancelled() is False
    tc.cancel()
    assert tc.cancelled() is True
    tc.cancel()
    fut = loop.create_future()
    loop.call_later(0.01, fut.set_result, "done")
    assert loop.run_until_complete(fut) == "done"
    assert rec == ["a"]
    assert th.cancelled() is False


def test_call_later_none(loop):
    with pytest.raises(TypeError) as e1:
        loop.call_later(None, print)
    with pytest.raises(TypeError) as e2:
        loop.call_at(None, print)
    assert (str(e1.value), str(e2.value)) == (
        "delay must not be None", "when cannot be None")


def test_sleep_wait_for_timeout(loop):
    async def main():
        t0 = loop.time()
        r = await asyncio.sleep(0.02, result="slept")
        t1 = loop.time()
        out = [r, t1 - t0 >= 0.02 - 0.001]
        try:
            await asyncio.wait_for(loop.create_future(), 0.01)
        except asyncio.TimeoutError as e:
            out.append(type(e).__name__)
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(5)
        except TimeoutError as e:
            out.append(type(e).__name__)
        return out

    assert run(loop, main()) == ["slept", True, "TimeoutError",
                                 "TimeoutError"]


# ----------------------------------------------------------- threadsafe

def test_call_soon_threadsafe(loop):
    rec = []

    async def main():
        fut = loop.create_future()
        handles = []

        def worker():
            for i in range(50):
                handles.append(loop.call_soon_threadsafe(rec.append, i))
            loop.call_soon_threadsafe(
                lambda: rec.append(threading.get_ident()))
            loop.call_soon_threadsafe(fut.set_result, threading.get_ident())

        th = threading.Thread(target=worker)
        th.start()
        worker_id = await fut
        th.join()
        assert all(isinstance(h, asyncio.Handle) for h in handles)
        return worker_id

    worker_id = run(loop, main())
    assert worker_id != threading.get_ident()
    assert rec == list(range(50)) + [threading.get_ident()]


def test_call_soon_threadsafe_wakes_idle_loop(loop):
    # run_forever with nothing scheduled: only the thread can wake it.
    rec = []
    started = threading.Event()

    def worker():
        started.wait(5)
        loop.call_soon_threadsafe(rec.append, "from-thread")
        loop.call_soon_threadsafe(loop.stop)

    th = threading.Thread(target=worker)
    loop.call_soon(started.set)
    th.start()
    loop.run_forever()
    th.join()
    assert rec == ["from-thread"]


# ------------------------------------------------- running and stopping

def test_stop_runs_current_batch_only(loop):
    rec = []

    def b():
        rec.append("b")
        loop.call_soon(rec.append, "c")

    loop.call_soon(rec.append, "a")
    loop.call_soon(loop.stop)
    loop.call_soon(b)
    loop.run_forever()
    assert rec == ["a", "b"]
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert rec == ["a", "b", "c"]


def test_stop_before_run_forever(loop):
    rec = []
    loop.stop()
    loop.call_soon(rec.append, "ran")
    loop.call_later(5, rec.append, "never")
    loop.run_forever()        # one iteration, then returns
    assert rec == ["ran"]
    loop.stop()
    loop.stop()
    loop.run_forever()
    assert rec == ["ran"]


def test_is_running_and_running_loop(loop):
    rec = []

    def cb():
        rec.append(loop.is_running())
        rec.append(asyncio.get_running_loop() is loop)
        rec.append(asyncio._get_running_loop() is loop)
        loop.stop()

    assert loop.is_running() is False
    loop.call_soon(cb)
    loop.run_forever()
    assert rec == [True, True, True]
    assert loop.is_running() is False
    assert asyncio._get_running_loop() is None
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_run_until_complete_results(loop):
    async def coro(x):
        await asyncio.sleep(0)
        return x * 2

    assert loop.run_until_complete(coro(21)) == 42
    fut = loop.create_future()
    loop.call_soon(fut.set_result, "fut")
    assert loop.run_until_complete(fut) == "fut"
    assert loop.run_until_complete(fut) == "fut"   # already done

    async def fails():
        raise KeyError("k")

    with pytest.raises(KeyError) as ei:
        loop.run_until_complete(fails())
    assert ei.value.args == ("k",)

    class Awaitable:
        def __await__(self):
            yield from asyncio.sleep(0).__await__()
            return "awaitable"

    assert loop.run_until_complete(Awaitable()) == "awaitable"

    with pytest.raises(TypeError) as ei:
        loop.run_until_complete(42)
    assert str(ei.value) == ("An asyncio.Future, a coroutine or an "
                             "awaitable is required")


def test_run_until_complete_stopped_early(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError) as ei:
        loop.run_until_complete(fut)
    assert str(ei.value) == "Event loop stopped before Future completed."


def test_run_until_complete_foreign_future(loop, loop_factory):
    other = loop_factory()
    try:
        fut = other.create_future()
        with pytest.raises(ValueError) as ei:
            loop.run_until_complete(fut)
        assert str(ei.value) == ("The future belongs to a different loop "
                                 "than the one specified as the loop "
                                 "argument")
    finally:
        other.close()


def test_running_a_running_loop(loop, loop_factory):
    other = loop_factory()
    msgs = []

    async def main():
        fut = loop.create_future()
        for call in (loop.run_forever, lambda: loop.run_until_complete(fut),
                     loop.close,
                     other.run_forever,
                     lambda: other.run_until_complete(other.create_future())):
            try:
                call()
            except RuntimeError as e:
                msgs.append(str(e))
        return loop.is_running()

    try:
        assert run(loop, main()) is True
    finally:
        other.close()
    assert msgs == ["This event loop is already running",
                    "This event loop is already running",
                    "Cannot close a running event loop",
                    "Cannot run the event loop while another loop is running",
                    "Cannot run the event loop while another loop is running"]


def test_closed_loop(loop):
    loop.close()
    assert loop.is_closed() is True
    loop.close()   # twice is fine
    msgs = []

    async def coro():
        pass

    c = coro()
    fut = asyncio.Future(loop=loop)
    for call in (lambda: loop.call_soon(print),
                 lambda: loop.call_later(1, print),
                 lambda: loop.call_at(1, print),
                 lambda: loop.call_soon_threadsafe(print),
                 loop.run_forever,
                 lambda: loop.run_until_complete(fut),
                 lambda: loop.create_task(c),
                 lambda: loop.run_in_executor(None, print)):
        try:
            call()
            msgs.append("no error")
        except RuntimeError as e:
            msgs.append(str(e))
    c.close()
    assert msgs == ["Event loop is closed"] * 8


def test_close_discards_pending_callbacks(loop):
    rec = []
    loop.call_soon(rec.append, "soon")
    loop.call_later(0.001, rec.append, "later")
    loop.call_later(3600, rec.append, "much later")
    loop.close()
    assert rec == []
    assert loop.is_closed()


def test_task_cancel(loop):
    rec = []

    async def sleeper():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError as e:
            rec.append(("cancelled", e.args))
            raise

    async def main():
        t = loop.create_task(sleeper())
        await asyncio.sleep(0)
        t.cancel("why")
        try:
            await t
        except asyncio.CancelledError:
            rec.append("awaited")
        return t.cancelled()

    assert run(loop, main()) is True
    assert rec == [("cancelled", ("why",)), "awaited"]


# -------------------------------------------------------- exception handler

def test_exception_handler_get_set(loop):
    assert loop.get_exception_handler() is None

    def handler(lp, ctx):
        pass

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None
    with pytest.raises(TypeError) as ei:
        loop.set_exception_handler(42)
    assert str(ei.value) == "A callable object or None is expected, got 42"


def test_call_exception_handler_custom(loop):
    got = []
    loop.set_exception_handler(lambda lp, ctx: got.append((lp, ctx)))
    ctx = {"message": "hello", "exception": ValueError("v"), "extra": 1}
    loop.call_exception_handler(ctx)
    assert len(got) == 1
    assert got[0][0] is loop
    assert got[0][1] == ctx


def test_default_exception_handler_logs(loop, caplog):
    exc = ValueError("v")
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "hello", "exception": exc,
                                     "zz": "last", "aa": 1})
        loop.default_exception_handler({"message": "direct"})
        loop.default_exception_handler({})
    recs = [r for r in caplog.records if r.name == "asyncio"]
    assert [r.getMessage() for r in recs] == [
        "hello\naa: 1\nzz: 'last'", "direct",
        "Unhandled exception in event loop"]
    assert recs[0].exc_info[1] is exc
    assert [r.levelname for r in recs] == ["ERROR"] * 3


def test_exception_handler_that_raises(loop, caplog):
    def handler(lp, ctx):
        raise RuntimeError("handler broke")

    loop.set_exception_handler(handler)
    rec = []
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(lambda: 1 / 0)
        loop.call_soon(rec.append, "still running")
        loop.call_soon(loop.stop)
        loop.run_forever()
    recs = [r for r in caplog.records if r.name == "asyncio"]
    assert rec == ["still running"]
    assert len(recs) == 1
    assert recs[0].getMessage().startswith(
        "Unhandled error in exception handler\ncontext: {'message': "
        "'Exception in callback ")
    assert type(recs[0].exc_info[1]) is RuntimeError


def test_task_exception_never_retrieved(loop):
    h = Handlers(loop)

    async def fails():
        raise ValueError("lost")

    task = loop.create_task(fails())
    loop.run_until_complete(asyncio.wait([task]))
    del task
    gc.collect()
    assert len(h.contexts) == 1
    ctx = h.contexts[0]
    assert sorted(ctx) == ["exception", "future", "message"]
    assert ctx["message"] == "Task exception was never retrieved"
    assert ctx["exception"].args == ("lost",)
    assert isinstance(ctx["future"], asyncio.Task)


def test_future_exception_never_retrieved(loop):
    h = Handlers(loop)
    fut = loop.create_future()
    fut.set_exception(KeyError("k"))
    del fut
    gc.collect()
    assert [c["message"] for c in h.contexts] == [
        "Future exception was never retrieved"]
    assert sorted(h.contexts[0]) == ["exception", "future", "message"]


# --------------------------------------------------------- futures, tasks

def test_create_future(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    assert fut.done() is False
    loop.call_soon(fut.set_result, 7)
    assert loop.run_until_complete(fut) == 7


def test_create_task(loop):
    rec = []

    async def coro(x):
        rec.append(asyncio.current_task() is task)
        rec.append(task in asyncio.all_tasks())
        await asyncio.sleep(0)
        return x

    task = loop.create_task(coro(5), name="my-task")
    assert isinstance(task, asyncio.Task)
    assert task.get_loop() is loop
    assert task.get_name() == "my-task"
    assert loop.run_until_complete(task) == 5
    assert rec == [True, True]
    t2 = loop.create_task(coro(6))
    task = t2
    assert re.fullmatch(r"Task-\d+", t2.get_name())
    assert loop.run_until_complete(t2) == 6
    with pytest.raises(TypeError):
        loop.create_task(42)


def test_create_task_context(loop):
    async def coro():
        before = var.get()
        var.set("set-in-task")
        return before

    ctx = contextvars.copy_context()
    ctx.run(var.set, "ctx-value")
    t = loop.create_task(coro(), context=ctx)
    assert loop.run_until_complete(t) == "ctx-value"
    assert ctx[var] == "set-in-task"
    assert var.get() == "default"
    t = loop.create_task(coro())
    assert loop.run_until_complete(t) == "default"
    assert var.get() == "default"


def test_task_factory(loop):
    calls = []

    def factory(lp, coro, **kw):
        calls.append((lp is loop, sorted(kw)))
        return asyncio.Task(coro, loop=lp, **kw)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def child():
        return var.get()

    async def main():
        t = asyncio.create_task(child(), name="via-asyncio")
        assert t.get_name() == "via-asyncio"
        return await t

    ctx = contextvars.copy_context()
    ctx.run(var.set, "ctxv")
    t = loop.create_task(child(), name="named", context=ctx)
    assert t.get_name() == "named"
    assert loop.run_until_complete(t) == "ctxv"
    assert loop.run_until_complete(main()) == "default"
    assert calls == [(True, ["context"]),   # create_task(context=)
                     (True, []),            # run_until_complete(coro)
                     (True, [])]            # asyncio.create_task
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    with pytest.raises(TypeError) as ei:
        loop.set_task_factory(1)
    assert str(ei.value) == "task factory must be a callable or None"


# --------------------------------------------------------------- executors

def test_run_in_executor_default(loop):
    def work(a, b):
        return a + b, threading.get_ident()

    def fails():
        raise OSError(5, "io")

    async def main():
        fut = loop.run_in_executor(None, work, 2, 3)
        assert isinstance(fut, asyncio.Future)
        res, tid = await fut
        try:
            await loop.run_in_executor(None, fails)
        except OSError as e:
            err = (type(e).__name__, e.errno, e.strerror)
        return res, tid, err

    res, tid, err = run(loop, main())
    assert res == 5
    assert tid != threading.get_ident()
    assert err == ("OSError", 5, "io")


def test_run_in_executor_custom_and_default(loop):
    def name():
        return threading.current_thread().name

    ex = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="own")
    dflt = concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix="dflt")
    try:
        assert run(loop, loop.run_in_executor(ex, name)).startswith("own")
        loop.set_default_executor(dflt)
        assert run(loop, loop.run_in_executor(None, name)).startswith("dflt")
        try:
            loop.set_default_executor(object())
            raised = None
        except TypeError as e:
            raised = str(e)
        if raised is None:   # keep the loop's teardown working
            loop.set_default_executor(dflt)
        assert raised == "executor must be ThreadPoolExecutor instance"
        run(loop, loop.shutdown_default_executor())
        with pytest.raises(RuntimeError) as ei:
            loop.run_in_executor(None, name)
        assert str(ei.value) == "Executor shutdown has been called"
    finally:
        ex.shutdown()
        dflt.shutdown()


# ------------------------------------------------------------- resolution

@pytest.mark.parametrize("args,kwargs", [
    (("127.0.0.1", 80), dict(type=socket.SOCK_STREAM)),
    (("127.0.0.1", "80"), dict(family=socket.AF_INET)),
    (("::1", 0), dict(family=socket.AF_INET6, proto=socket.IPPROTO_UDP)),
    (("localhost", 8080), dict(type=socket.SOCK_STREAM)),
    ((None, 0), dict(flags=socket.AI_PASSIVE, type=socket.SOCK_DGRAM)),
    ((b"127.0.0.1", b"9"), {}),
])
def test_getaddrinfo_matches_socket(loop, args, kwargs):
    got = run(loop, loop.getaddrinfo(*args, **kwargs))
    assert isinstance(got, list)
    assert got == socket.getaddrinfo(*args, **kwargs)


def test_getaddrinfo_error(loop):
    async def main():
        try:
            await loop.getaddrinfo("not a number", 80,
                                   flags=socket.AI_NUMERICHOST)
        except socket.gaierror as e:
            return type(e), e.args

    try:
        socket.getaddrinfo("not a number", 80, flags=socket.AI_NUMERICHOST)
    except socket.gaierror as e:
        expected = (type(e), e.args)
    assert run(loop, main()) == expected


def test_getnameinfo(loop):
    for sa, flags in [(("127.0.0.1", 80),
                       socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
                      (("::1", 443, 0, 0),
                       socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)]:
        got = run(loop, loop.getnameinfo(sa, flags))
        assert got == socket.getnameinfo(sa, flags)
        assert isinstance(got, tuple)


# ---------------------------------------------------------- async generators

def test_shutdown_asyncgens(loop):
    rec = []
    keep = []

    async def agen(tag):
        try:
            yield 1
            yield 2
        finally:
            rec.append(("finally", tag))
            await asyncio.sleep(0)
            rec.append(("after-await", tag))

    async def main():
        for tag in ("g1", "g2"):
            g = agen(tag)
            keep.append(g)
            assert await g.__anext__() == 1

    run(loop, main())
    assert rec == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert sorted(rec) == [("after-await", "g1"), ("after-await", "g2"),
                           ("finally", "g1"), ("finally", "g2")]


def test_asyncgen_finalizer_hook(loop):
    # An async generator garbage-collected while the loop runs is closed
    # by a task the loop schedules (its finally can await).
    rec = []

    async def agen():
        try:
            yield 1
        finally:
            await asyncio.sleep(0)
            rec.append("closed")

    async def main():
        g = agen()
        await g.__anext__()
        del g
        gc.collect()
        await spin(10)

    run(loop, main())
    assert rec == ["closed"]


def test_asyncgen_hooks_restored(loop):
    before = sys.get_asyncgen_hooks()

    async def main():
        return sys.get_asyncgen_hooks()

    inside = run(loop, main())
    assert inside.firstiter is not None and inside.finalizer is not None
    assert sys.get_asyncgen_hooks() == before


# ------------------------------------------------------ Runner, asyncio.run

def test_runner_with_loop_factory(loop_factory):
    rec = []

    async def main(x):
        return asyncio.get_running_loop(), x

    async def lingering():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            rec.append("cancelled at close")
            raise

    async def start_lingering():
        asyncio.get_running_loop().create_task(lingering())
        await asyncio.sleep(0)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        lp, x = runner.run(main(1))
        assert lp is runner.get_loop()
        assert runner.run(main(2))[1] == 2
        runner.run(start_lingering())
    assert x == 1
    assert lp.is_closed()
    assert rec == ["cancelled at close"]
    probe = loop_factory()
    try:
        assert type(lp) is type(probe)
    finally:
        probe.close()


def test_runner_sigint_cancels_main(loop_factory):
    import os
    import signal
    rec = []

    async def main():
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(),
                                             signal.SIGINT)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            rec.append("cancelled")
            raise

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        with pytest.raises(KeyboardInterrupt):
            runner.run(main())
    assert rec == ["cancelled"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_asyncio_run_with_policy(policy_factory, loop_factory):
    async def main():
        await asyncio.sleep(0)
        return asyncio.get_running_loop()

    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(policy_factory())
    try:
        lp = asyncio.run(main())
        lp2 = asyncio.new_event_loop()
        lp2.close()
    finally:
        asyncio.set_event_loop_policy(old)
    probe = loop_factory()
    probe.close()
    assert type(lp) is type(probe)
    assert type(lp2) is type(probe)
    assert lp.is_closed()


# ---------------------------------------------------------------- debug

def test_debug_mode_checks_callbacks(loop):
    loop.set_debug(True)
    assert loop.get_debug() is True

    async def coro():
        pass

    msgs = []
    for cb in (42, coro):
        try:
            loop.call_soon(cb)
        except TypeError as e:
            msgs.append(str(e))
    assert msgs == ["a callable object was expected by call_soon(), got 42",
                    "coroutines cannot be used with call_soon()"]
    loop.set_debug(False)
