"""tpio: asyncio's event loop on tpio's C engine.

Use it by changing one line:

    import tpio
    tpio.install()              # asyncio.run() and friends use tpio's loop
    tpio.run(main())            # or: run one coroutine on a new tpio loop
    loop = tpio.new_event_loop()
    asyncio.run(main(), loop_factory=tpio.new_event_loop)   # Python 3.12+

See docs/python.md for what maps to what and the differences from asyncio.
"""

import asyncio as __asyncio

from ._tpio import tpio_version as __tpio_version
from ._loop import EventLoop
from ._server import Server

__all__ = ('EventLoop', 'EventLoopPolicy', 'Server', 'install', 'new_event_loop', 'run')

__version__ = __tpio_version


def new_event_loop():
    """A new tpio event loop."""
    return EventLoop()


class EventLoopPolicy(__asyncio.events.BaseDefaultEventLoopPolicy):
    """An event loop policy whose loops are tpio's."""

    def _loop_factory(self):
        return new_event_loop()


def install():
    """Make tpio's loop asyncio's default: sets tpio's event loop policy."""
    __asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, debug=None):
    """Run the coroutine main on a new tpio loop, as asyncio.run() does, and
    return its result."""
    with __asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
