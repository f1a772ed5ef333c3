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
import sys as __sys
import threading as __threading
import warnings as __warnings

from ._tpio import tpio_version as __tpio_version
from ._loop import EventLoop
from ._server import Server

__all__ = ('EventLoop', 'EventLoopPolicy', 'Server', 'install', 'new_event_loop', 'run')

__version__ = __tpio_version


def new_event_loop():
    """A new tpio event loop."""
    return EventLoop()


# Names in the class body would be mangled: what it needs is out here.
_HAVE_WATCHERS = hasattr(__asyncio, 'AbstractChildWatcher')  # gone in Python 3.14
_watcher_lock = __threading.Lock()


class EventLoopPolicy(__asyncio.events.BaseDefaultEventLoopPolicy):
    """An event loop policy whose loops are tpio's.

    Its child watcher calls are asyncio's Unix policy's (Python 3.11 to
    3.13, deprecated from 3.12 with the same warnings), but tpio's loops
    never consult the watcher: each watches its own children through their
    pidfds. get_child_watcher() makes one (tpio._subprocess.child_watcher)
    if none was set, set_child_watcher() closes the old one, and
    set_event_loop() in the main thread attaches the loop to it, as
    asyncio's do."""

    def __init__(self):
        super().__init__()
        self._watcher = None

    def _loop_factory(self):
        return new_event_loop()

    if _HAVE_WATCHERS:
        def get_child_watcher(self):
            """The watcher for child processes; made when none was set."""
            if self._watcher is None:
                with _watcher_lock:
                    if self._watcher is None:
                        from ._subprocess import child_watcher
                        self._watcher = child_watcher()
                        if _in_main_thread():
                            self._watcher.attach_loop(getattr(self._local, '_loop', None))
            _deprecated('get_child_watcher')
            return self._watcher

        def set_child_watcher(self, watcher):
            """Set the watcher for child processes (closing the old one)."""
            assert watcher is None or _is_watcher(watcher)
            if self._watcher is not None:
                self._watcher.close()
            self._watcher = watcher
            _deprecated('set_child_watcher')

        def set_event_loop(self, loop):
            """Set the event loop; in the main thread, attach it to the child
            watcher if one was set (asyncio's side effect)."""
            super().set_event_loop(loop)
            if self._watcher is not None and _in_main_thread():
                self._watcher.attach_loop(loop)


def _in_main_thread():
    return __threading.current_thread() is __threading.main_thread()


def _is_watcher(obj):
    return isinstance(obj, __asyncio.AbstractChildWatcher)


def _deprecated(name):
    # asyncio's warning for these calls from 3.12 on; 3.11 gives none
    if __sys.version_info >= (3, 12):
        __warnings.warn(f"{name!r} is deprecated as of Python 3.12 and will be "
                        f"removed in Python 3.14.", DeprecationWarning, stacklevel=3)


def install():
    """Make tpio's loop asyncio's default: sets tpio's event loop policy."""
    __asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, debug=None):
    """Run the coroutine main on a new tpio loop, as asyncio.run() does, and
    return its result."""
    with __asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
