"""The loops under test: how to make one, and the policy that makes them.

A Target counts the loops it made; the worker reads the count around each
test to know whether the test ran anything on the loop under test.
"""

import asyncio
import asyncio.events as _events

NAMES = ('asyncio', 'uvloop', 'tpio')


class Target:
    def __init__(self, name, factory, policy_base):
        self.name = name
        self.factory = factory
        self.created = 0
        self.policy_cls = _policy_class(self, policy_base)

    def new_loop(self):
        loop = self.factory()
        self.created += 1
        return loop

    def install(self):
        """Install a fresh policy; a later set_event_loop_policy(None) (the
        modules' tearDownModule, test_runners' tearDown) brings ours back,
        not asyncio's default one."""
        asyncio.set_event_loop_policy(self.policy_cls())

        def _init_event_loop_policy():
            with _events._lock:
                if _events._event_loop_policy is None:
                    _events._event_loop_policy = self.policy_cls()
        _events._init_event_loop_policy = _init_event_loop_policy

    def ensure_installed(self):
        if not isinstance(_events._event_loop_policy, self.policy_cls):
            asyncio.set_event_loop_policy(self.policy_cls())


def _policy_class(target, base):
    try:
        class Policy(base):
            def new_event_loop(self):
                return target.new_loop()
    except TypeError:
        # The loop's policy type can't be subclassed: delegate to it.
        class Policy(asyncio.AbstractEventLoopPolicy):
            def __init__(self):
                self._inner = base()

            def get_event_loop(self):
                return self._inner.get_event_loop()

            def set_event_loop(self, loop):
                return self._inner.set_event_loop(loop)

            def new_event_loop(self):
                return target.new_loop()

            def __getattr__(self, name):
                return getattr(self._inner, name)
    Policy.__qualname__ = Policy.__name__ = f'{target.name}_TestPolicy'
    return Policy


def make(name):
    if name == 'asyncio':
        base = asyncio.DefaultEventLoopPolicy
        return Target(name, base._loop_factory, base)
    if name == 'uvloop':
        import uvloop
        return Target(name, uvloop.new_event_loop, uvloop.EventLoopPolicy)
    if name == 'tpio':
        import tpio
        return Target(name, tpio.new_event_loop, tpio.EventLoopPolicy)
    raise ValueError(f'unknown loop {name!r} (one of {", ".join(NAMES)})')
