"""Find, while the tests run on stock asyncio, which ones depend on asyncio's
implementation rather than on public behaviour.

A test is "private" when its own code (a frame in a test_asyncio module other
than utils.py) does any of:
  - reads or writes an _underscore attribute of an object the loop provides
    (the loop, a transport, a server, a handle);
  - sets any attribute on such an object (monkeypatching loop.getaddrinfo,
    loop.call_exception_handler, ... to steer the loop's internals);
  - mock.patch()es an attribute of asyncio's loop implementation modules
    (asyncio.base_events, asyncio.unix_events, ...) or of the stdlib modules
    they call (os, socket, signal, ssl, ...), or of an object/class above.

Only objects of the loops under test count (not test_utils.TestLoop, nor a
bare BaseEventLoop a test builds itself).  This is only installed for the
asyncio run: the classes are asyncio's.
"""

import os
import sys
import types
from unittest import mock

import asyncio
from asyncio import base_events, base_subprocess, events, transports

import test.test_asyncio as _pkg

TEST_DIR = os.path.dirname(os.path.abspath(_pkg.__file__))
_SKIP_FILES = {'utils.py'}

KINDS = (
    (base_events.BaseEventLoop, 'loop'),
    (base_subprocess.BaseSubprocessTransport, 'transport'),
    (transports.BaseTransport, 'transport'),
    (base_events.Server, 'server'),
    (events.Handle, 'handle'),
)
# Patching these modules' attributes changes what asyncio's loop does, and
# nothing a loop written elsewhere does.
IMPL_MODULES = {'os', 'socket', '_socket', 'signal', 'select', 'selectors',
                'ssl', '_ssl', 'subprocess', 'errno', 'time', 'threading'}

# Documented as settable (asyncio-eventloop.html, "Enabling debug mode").
PUBLIC_SETTABLE = {'slow_callback_duration'}

current = None          # set of findings for the running test
loop_class = None       # the class of the loops under test


def _is_test_frame(code):
    fn = code.co_filename
    return (os.path.dirname(fn) == TEST_DIR
            and os.path.basename(fn) not in _SKIP_FILES)


def _kind(obj):
    """'loop', 'transport', ... if obj is a loop under test or belongs to
    one; None otherwise (test_utils.TestLoop, a bare BaseEventLoop, mocks)."""
    for cls, kind in KINDS:
        if isinstance(obj, cls):
            break
    else:
        return None
    if kind != 'loop':
        try:
            obj = object.__getattribute__(obj, '_loop')
        except AttributeError:
            return kind
    return kind if isinstance(obj, loop_class) else None


def _note(s):
    if current is not None:
        current.add(s)


def install(target_loop_class):
    global loop_class
    loop_class = target_loop_class
    for cls, kind in KINDS:
        _hook(cls, kind)
    _hook_patch()


def _hook(cls, kind):
    orig_get = cls.__getattribute__
    orig_set = cls.__setattr__
    getframe = sys._getframe

    def __getattribute__(self, name):
        if name[:1] == '_' and name[1:2] != '_' and current is not None:
            if _is_test_frame(getframe(1).f_code):
                k = _kind(self)
                if k:
                    current.add(f'reads {k}.{name}')
        return orig_get(self, name)

    def __setattr__(self, name, value):
        if (name[:2] != '__' and name not in PUBLIC_SETTABLE
                and current is not None):
            if _is_test_frame(getframe(1).f_code):
                k = _kind(self)
                if k:
                    current.add(f'sets {k}.{name}')
        return orig_set(self, name, value)

    cls.__getattribute__ = __getattribute__
    cls.__setattr__ = __setattr__


def _hook_patch():
    orig_enter = mock._patch.__enter__

    def __enter__(self):
        try:
            target = self.getter()
        except Exception:
            target = None
        attr = self.attribute
        if isinstance(target, types.ModuleType):
            name = target.__name__
            if ((name.startswith('asyncio.') and name != 'asyncio.log')
                    or name in IMPL_MODULES):
                _note(f'patches {name}.{attr}')
        elif isinstance(target, type):
            if any(issubclass(target, c) for c, _ in KINDS) and (
                    issubclass(loop_class, target) or issubclass(target, loop_class)
                    or not issubclass(target, base_events.BaseEventLoop)):
                _note(f'patches {target.__name__}.{attr}')
        elif target is not None:
            k = _kind(target)
            if k:
                _note(f'patches {k}.{attr}')
        return orig_enter(self)

    mock._patch.__enter__ = __enter__
