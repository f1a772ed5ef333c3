"""Fixtures for the tpio-as-asyncio-loop conformance suite.

Every test that takes the ``loop`` (or ``loop_factory``/``policy_factory``)
fixture runs once per loop implementation named in TPIO_TEST_LOOPS
(comma separated, default "asyncio,tpio").  Known names:

  asyncio  stock asyncio.SelectorEventLoop (the reference)
  uvloop   Debian's python3-uvloop (to validate the suite itself)
  tpio     tpio.new_event_loop (PYTHONPATH=build/python)

A requested loop that cannot be imported makes its tests FAIL, not skip.
Every test runs under a hard per-test timeout (TPIO_TEST_TIMEOUT, default 10 s).
"""

import asyncio
import faulthandler
import gc
import os
import signal
import sys
import threading

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from tputil import TIMEOUT  # noqa: E402

LOOP_NAMES = [n.strip() for n in
              os.environ.get("TPIO_TEST_LOOPS", "asyncio,tpio").split(",")
              if n.strip()]


class TestTimeout(BaseException):
    """Raised from SIGALRM when a test exceeds its time budget."""


class _Unavailable:
    """Stands for a loop implementation that failed to import.

    Any use raises the import error, so the test fails in its body (a
    FAILED, never a skip)."""

    def __init__(self, name, exc):
        self._name = name
        self._exc = exc

    def _raise(self, *a, **k):
        raise RuntimeError(f"loop implementation {self._name!r} is not "
                           f"importable: {self._exc!r}") from self._exc

    __call__ = _raise

    def __getattr__(self, attr):
        self._raise()


def _module(name):
    if name == "asyncio":
        return None
    if name == "uvloop":
        import uvloop
        return uvloop
    if name == "tpio":
        import tpio
        return tpio
    raise ValueError(f"unknown loop implementation {name!r} in "
                     f"TPIO_TEST_LOOPS (known: asyncio, uvloop, tpio)")


def make_factories(name):
    """(loop_factory, policy_factory) for a loop implementation name."""
    try:
        mod = _module(name)
    except Exception as exc:  # ImportError or anything the import raised
        broken = _Unavailable(name, exc)
        return broken, broken
    if mod is None:
        return asyncio.SelectorEventLoop, asyncio.DefaultEventLoopPolicy
    return mod.new_event_loop, mod.EventLoopPolicy


_active_loops = []          # loops made by the fixtures, for the watchdog
_timed_out = threading.Event()


def timed_out():
    return _timed_out.is_set()


def _real_stderr(config):
    """The terminal's stderr even while pytest captures fd 2."""
    try:
        capman = config.pluginmanager.getplugin("capturemanager")
        fd = capman._global_capturing.err.targetfd_save
        return open(os.dup(fd), "w")
    except Exception:
        return sys.__stderr__


@pytest.fixture(autouse=True)
def test_timeout(request):
    """Hard per-test timeout.

    After TIMEOUT seconds: SIGALRM raises TestTimeout in the main thread (for
    a test stuck in Python code), and a watchdog thread stops every loop the
    fixtures made, again each second (for a test stuck inside a loop, whose
    signal handling may not run Python handlers); tputil.run() turns that
    stop into TestTimeout.  faulthandler ends the whole process with a
    traceback if even that does not get the test unstuck."""

    def on_alarm(signum, frame):
        _timed_out.set()
        raise TestTimeout(f"test exceeded its {TIMEOUT:g} s timeout")

    done = threading.Event()

    def watchdog():
        if done.wait(TIMEOUT):
            return
        _timed_out.set()
        while not done.is_set():
            for lp in list(_active_loops):
                try:
                    lp.call_soon_threadsafe(lp.stop)
                except Exception:
                    pass
            done.wait(1)

    _timed_out.clear()
    err = _real_stderr(request.config)
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT)
    faulthandler.dump_traceback_later(TIMEOUT + 20, exit=True, file=err)
    wd = threading.Thread(target=watchdog, daemon=True)
    wd.start()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        done.set()
        wd.join()
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, old)
        if err is not sys.__stderr__:
            err.close()
        _active_loops.clear()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "crashes_on(*names, reason): the named loop "
        "implementations kill the interpreter in this test (not tpio: a "
        "tpio crash must be seen)")
    config.addinivalue_line(
        "markers", "tpio_differs(reason): a difference from asyncio that tpio "
        "still has, listed in docs/python.md; expected to fail on tpio (strict: "
        "the day it passes, the mark must go)")


@pytest.fixture(params=LOOP_NAMES)
def loop_name(request):
    m = request.node.get_closest_marker("crashes_on")
    if m and request.param in m.args and request.param != "tpio":
        pytest.skip(f"{request.param} kills the interpreter here: "
                    f"{m.kwargs.get('reason', '')}")
    d = request.node.get_closest_marker("tpio_differs")
    if d and request.param == "tpio":
        request.node.add_marker(pytest.mark.xfail(
            strict=True, reason=d.kwargs.get("reason", "")))
    return request.param


@pytest.fixture
def loop_factory(test_timeout, loop_name):
    factory = make_factories(loop_name)[0]
    if isinstance(factory, _Unavailable):
        return factory

    def new_loop():
        lp = factory()
        _active_loops.append(lp)
        return lp
    return new_loop


@pytest.fixture
def policy_factory(loop_name):
    return make_factories(loop_name)[1]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.tpio_call_failed = rep.failed


@pytest.fixture
def loop(request, test_timeout, loop_factory):
    """A fresh loop of the implementation under test, closed afterwards.

    Teardown cancels leftover tasks, shuts down async generators and the
    default executor, closes the loop and collects garbage; an error there
    is reported unless the test itself already failed (then the loop may be
    in any state)."""
    if isinstance(loop_factory, _Unavailable):
        yield loop_factory          # every use fails inside the test body
        return
    lp = loop_factory()
    try:
        yield lp
    finally:
        try:
            if not lp.is_closed() and not lp.is_running() and not timed_out():
                for t in asyncio.all_tasks(lp):
                    t.cancel()
                lp.run_until_complete(asyncio.sleep(0))
                lp.run_until_complete(lp.shutdown_asyncgens())
                lp.run_until_complete(lp.shutdown_default_executor())
        except Exception:
            if not getattr(request.node, "tpio_call_failed", False):
                raise
        finally:
            if not lp.is_closed() and not lp.is_running():
                lp.close()
            asyncio.set_event_loop(None)
            gc.collect()


@pytest.fixture
def tpio_requested():
    if "tpio" not in LOOP_NAMES:
        pytest.skip("tpio not in TPIO_TEST_LOOPS")
