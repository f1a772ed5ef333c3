"""tpio's own entry points: new_event_loop, EventLoop, EventLoopPolicy,
install, run.  Run only when "tpio" is in TPIO_TEST_LOOPS (and then fail,
not skip, if tpio cannot be imported)."""

import asyncio
import importlib

import pytest

from conftest import _Unavailable

pytestmark = pytest.mark.usefixtures("tpio_requested", "test_timeout")


@pytest.fixture
def tpio():
    try:
        return importlib.import_module("tpio")
    except Exception as exc:
        return _Unavailable("tpio", exc)   # fails in the test body


@pytest.fixture
def saved_policy():
    old = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(old)


def test_module_surface(tpio):
    for name in ("EventLoop", "EventLoopPolicy", "install", "new_event_loop",
                 "run"):
        assert name in tpio.__all__
        assert hasattr(tpio, name)
    assert isinstance(tpio.__version__, str) and tpio.__version__


def test_new_event_loop(tpio):
    a = tpio.new_event_loop()
    b = tpio.EventLoop()
    try:
        assert a is not b
        assert type(a) is tpio.EventLoop and type(b) is tpio.EventLoop
        assert isinstance(a, asyncio.AbstractEventLoop)
        assert a.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    finally:
        a.close()
        b.close()


def test_policy(tpio, saved_policy):
    policy = tpio.EventLoopPolicy()
    assert isinstance(policy, asyncio.AbstractEventLoopPolicy)
    lp = policy.new_event_loop()
    try:
        assert type(lp) is tpio.EventLoop
        policy.set_event_loop(lp)
        assert policy.get_event_loop() is lp
    finally:
        policy.set_event_loop(None)
        lp.close()


def test_install(tpio, saved_policy):
    tpio.install()
    assert isinstance(asyncio.get_event_loop_policy(), tpio.EventLoopPolicy)

    async def main():
        return type(asyncio.get_running_loop())

    assert asyncio.run(main()) is tpio.EventLoop
    lp = asyncio.new_event_loop()
    try:
        assert type(lp) is tpio.EventLoop
    finally:
        lp.close()


def test_run(tpio):
    async def main(x):
        lp = asyncio.get_running_loop()
        await asyncio.sleep(0)
        return type(lp), lp.get_debug(), x

    assert tpio.run(main(1)) == (tpio.EventLoop, False, 1)
    assert tpio.run(main(2), debug=True) == (tpio.EventLoop, True, 2)

    async def fails():
        raise KeyError("k")

    with pytest.raises(KeyError):
        tpio.run(fails())
    with pytest.raises(ValueError) as ei:
        tpio.run(42)
    assert str(ei.value) == "a coroutine was expected, got 42"
