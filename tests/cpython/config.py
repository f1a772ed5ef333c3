"""Which of CPython's test_asyncio modules run, and how each is pointed at the
loop under test.

Each entry of MODULES says:
  group    "core" (the issue's scope) or "extra" (reported separately)
  exclude  {class name: reason}: classes that are not run at all
  adapt    function(module, target) -> [classes]: subclasses of the module's
           mixins whose loop is the loop under test (they replace the
           excluded classes that hardcode asyncio.SelectorEventLoop etc.)

Every class of the module that is neither excluded nor replaced runs as it
is: it gets its loop from asyncio.new_event_loop(), asyncio.run(), a Runner
or IsolatedAsyncioTestCase, which all ask the event loop policy, and the
worker installs the loop under test's policy.  Tests that never create a
loop under test (they use test_utils.TestLoop, mocks or abstract classes) are
detected at run time and reported as "loop-independent", outside the counts.

Tests of core modules whose name matches OUT_OF_SCOPE_RE (SSL, start_tls,
sendfile, sock_*) are reported in the extra group, as are the classes in
OUT_OF_SCOPE_CLASSES and the tests in OUT_OF_SCOPE_TESTS (their names say
nothing, but they call loop.sock_*()).
"""

import re

OUT_OF_SCOPE_RE = re.compile(r'ssl|tls|sendfile|(^|_)sock_(recv|send|connect|accept)')
OUT_OF_SCOPE_CLASSES = {
    'test_unix_events.SelectorEventLoopUnixSockSendfileTests': 'sendfile',
}
OUT_OF_SCOPE_TESTS = {
    'test_events.EventLoopTests.test_write_pipe_disconnect_on_close':
        'reads the other end of the pipe with loop.sock_recv()',
    'test_events.EventLoopTests.test_prompt_cancellation':
        'cancels a loop.sock_recv()',
}

WIN = 'Windows only (Proactor / IOCP)'
HARDCODED = 'hardcodes asyncio.SelectorEventLoop; replaced by {} on the loop under test'


def _name(cls, module, name):
    cls.__name__ = cls.__qualname__ = name
    cls.__module__ = module.__name__
    return cls


def _loop_setup(module, base, name, target):
    """base's setUp only does super().setUp() and self.loop = <some loop>;
    the subclass does the same with the loop under test."""
    from test.test_asyncio import utils as test_utils

    class Adapted(base):
        def setUp(self):
            test_utils.TestCase.setUp(self)
            self.loop = target.new_loop()
            self.set_event_loop(self.loop)
    return _name(Adapted, module, name)


def _mixin(module, bases, name, target, method='create_event_loop'):
    cls = type(name, tuple(bases), {method: lambda self: target.new_loop()})
    return _name(cls, module, name)


# --- core ---------------------------------------------------------------

def adapt_events(m, target):
    from test.test_asyncio import utils as test_utils
    return [_mixin(m, (m.EventLoopTestsMixin, m.SubprocessTestsMixin,
                       test_utils.TestCase), 'EventLoopTests', target)]


def adapt_server(m, target):
    # SelectorStartServerTests adds test_start_unix_server_1 to the mixin.
    return [_mixin(m, (m.SelectorStartServerTests,), 'StartServerTests',
                   target, 'new_loop')]


def adapt_buffered_proto(m, target):
    import unittest
    return [_mixin(m, (m.BaseTestBufferedProtocol, unittest.TestCase),
                   'BufferedProtocolTests', target, 'new_loop')]


def adapt_unix_events(m, target):
    return [_loop_setup(m, m.SelectorEventLoopUnixSocketTests,
                        'UnixSocketTests', target)]


def adapt_subprocess(m, target):
    from test.test_asyncio import utils as test_utils

    class SubprocessTests(m.SubprocessMixin, test_utils.TestCase):
        def setUp(self):
            super().setUp()
            self.loop = target.new_loop()
            self.set_event_loop(self.loop)
    return [_name(SubprocessTests, m, 'SubprocessTests')]


WATCHER = ('the same SubprocessMixin tests with one of asyncio\'s own child '
           'watchers attached (asyncio internals); run once as SubprocessTests '
           'with the loop under test\'s own process handling')

# --- extra --------------------------------------------------------------

def adapt_runners(m, target):
    # BaseTest.new_loop builds a BaseEventLoop with a mocked selector; the
    # adapted one gives the loop under test, and notes shutdown_asyncgens()
    # when the loop lets us wrap it (tearDown checks it ran).
    import asyncio
    import unittest
    ran = {}

    def new_loop(self):
        loop = target.new_loop()
        orig = loop.shutdown_asyncgens

        async def shutdown_asyncgens():
            ran[id(loop)] = True
            return await orig()
        try:
            loop.shutdown_asyncgens = shutdown_asyncgens
            ran[id(loop)] = False
        except (AttributeError, TypeError):
            pass
        return loop

    def tearDown(self):
        policy = asyncio.get_event_loop_policy()
        loop = getattr(policy, 'loop', None)
        if loop is not None:
            self.assertTrue(loop.is_closed())
            if id(loop) in ran:
                self.assertTrue(ran[id(loop)], 'shutdown_asyncgens() not run')
        asyncio.set_event_loop_policy(None)
        unittest.TestCase.tearDown(self)

    out = []
    for base in (m.RunTests, m.RunnerTests):
        cls = type(base.__name__, (base,), {'new_loop': new_loop,
                                            'tearDown': tearDown})
        out.append(_name(cls, m, base.__name__))
    return out


def adapt_pep492(m, target):
    # BaseTest.setUp builds a BaseEventLoop with a mocked selector.
    return [_loop_setup(m, getattr(m, n), n, target)
            for n in ('LockTests', 'StreamReaderTests', 'CoroutineTests')]


def adapt_sock_lowlevel(m, target):
    from test.test_asyncio import utils as test_utils
    return [_mixin(m, (m.BaseSockTestsMixin, test_utils.TestCase),
                   'SockTests', target)]


def adapt_sendfile(m, target):
    from test.test_asyncio import utils as test_utils
    return [_mixin(m, (m.SendfileTestsBase, test_utils.TestCase),
                   'SendfileTests', target)]


def adapt_sslproto(m, target):
    import unittest
    return [_mixin(m, (m.BaseStartTLS, unittest.TestCase), 'StartTLSTests',
                   target, 'new_loop')]


def adapt_base_events(m, target):
    return [_loop_setup(m, m.BaseEventLoopWithSelectorTests,
                        'BaseEventLoopWithLoopTests', target)]


MODULES = {
    # ---- core
    'test_events': dict(group='core', adapt=adapt_events, exclude={
        'SelectEventLoopTests': HARDCODED.format('EventLoopTests'),
        'EPollEventLoopTests': HARDCODED.format('EventLoopTests'),
        'PollEventLoopTests': HARDCODED.format('EventLoopTests'),
        'KqueueEventLoopTests': 'BSD/macOS only',
        'ProactorEventLoopTests': WIN,
        'TestPyGetEventLoop': 'swaps asyncio.events\' private _get/_set_running_loop for '
                              'its pure-Python versions: tests asyncio\'s functions, and '
                              'assumes the loop looks them up in asyncio.events',
        'TestCGetEventLoop': 'the same with the C versions',
    }),
    'test_server': dict(group='core', adapt=adapt_server, exclude={
        'SelectorStartServerTests': HARDCODED.format('StartServerTests'),
        'ProactorStartServerTests': WIN,
    }),
    'test_streams': dict(group='core', exclude={}),
    'test_protocols': dict(group='core', exclude={}),
    'test_buffered_proto': dict(group='core', adapt=adapt_buffered_proto, exclude={
        'BufferedProtocolSelectorTests': HARDCODED.format('BufferedProtocolTests'),
        'BufferedProtocolProactorTests': WIN,
    }),
    'test_unix_events': dict(group='core', adapt=adapt_unix_events, exclude={
        'SelectorEventLoopSignalTests': 'SelectorEventLoop signal internals: every test '
                                        'mocks asyncio.unix_events.signal or pokes '
                                        'loop._signal_handlers/_handle_signal/_check_signal',
        'SelectorEventLoopUnixSocketTests': HARDCODED.format('UnixSocketTests'),
    }),
    'test_subprocess': dict(group='core', adapt=adapt_subprocess, exclude={
        'SubprocessThreadedWatcherTests': WATCHER,
        'SubprocessMultiLoopWatcherTests': WATCHER + ' (skipped by CPython anyway: bpo-38323)',
        'SubprocessSafeWatcherTests': WATCHER,
        'SubprocessFastWatcherTests': WATCHER,
        'SubprocessPidfdWatcherTests': WATCHER,
        'GenericWatcherTests': 'checks that asyncio\'s Unix loop consults a (mock) child '
                               'watcher: asyncio\'s process-watching mechanism, which other '
                               'loops do not use (watchers are deprecated in 3.12)',
        'SubprocessProactorTests': WIN,
    }),
    # ---- extra
    'test_tasks': dict(group='extra', exclude={}),
    'test_futures': dict(group='extra', exclude={}),
    'test_futures2': dict(group='extra', exclude={}),
    'test_locks': dict(group='extra', exclude={}),
    'test_queues': dict(group='extra', exclude={}),
    'test_timeouts': dict(group='extra', exclude={}),
    'test_taskgroups': dict(group='extra', exclude={}),
    'test_runners': dict(group='extra', adapt=adapt_runners, exclude={
        'RunTests': 'its new_loop() is a BaseEventLoop with a mocked selector; replaced '
                    'by RunTests whose new_loop() gives the loop under test',
        'RunnerTests': 'the same, replaced by RunnerTests',
    }),
    'test_context': dict(group='extra', exclude={}),
    'test_pep492': dict(group='extra', adapt=adapt_pep492, exclude={
        'LockTests': 'BaseEventLoop with a mocked selector; replaced (same name) with the loop under test',
        'StreamReaderTests': 'the same',
        'CoroutineTests': 'the same',
    }),
    'test_waitfor': dict(group='extra', exclude={}),
    'test_threads': dict(group='extra', exclude={}),
    'test_sock_lowlevel': dict(group='extra', adapt=adapt_sock_lowlevel, exclude={
        'SelectEventLoopTests': HARDCODED.format('SockTests'),
        'EPollEventLoopTests': HARDCODED.format('SockTests'),
        'PollEventLoopTests': HARDCODED.format('SockTests'),
        'KqueueEventLoopTests': 'BSD/macOS only',
        'ProactorEventLoopTests': WIN,
    }),
    'test_sendfile': dict(group='extra', adapt=adapt_sendfile, exclude={
        'SelectEventLoopTests': HARDCODED.format('SendfileTests'),
        'EPollEventLoopTests': HARDCODED.format('SendfileTests'),
        'PollEventLoopTests': HARDCODED.format('SendfileTests'),
        'KqueueEventLoopTests': 'BSD/macOS only',
        'ProactorEventLoopTests': WIN,
    }),
    'test_ssl': dict(group='extra', exclude={}),
    'test_sslproto': dict(group='extra', adapt=adapt_sslproto, exclude={
        'SslProtoHandshakeTests': 'drives asyncio.sslproto.SSLProtocol (asyncio\'s SSL '
                                  'implementation) directly, with mocked transports',
        'SelectorStartTLSTests': HARDCODED.format('StartTLSTests'),
        'ProactorStartTLSTests': WIN,
    }),
    'test_base_events': dict(group='extra', adapt=adapt_base_events, exclude={
        'BaseEventLoopTests': 'BaseEventLoop internals with mocks (_run_once, _ready, '
                              '_selector, ...)',
        'BaseEventLoopWithSelectorTests': HARDCODED.format('BaseEventLoopWithLoopTests'),
        'BaseLoopSockSendfileTests': 'BaseSelectorEventLoop\'s sendfile fallback internals',
    }),
}

# Modules of test_asyncio that are not run at all, and why.
NOT_RUN = {
    'test_selector_events': 'selector loop and selector transports internals with mocks',
    'test_proactor_events': WIN,
    'test_windows_events': WIN,
    'test_windows_utils': WIN,
    'test_transports': 'abstract transport classes only; no loop',
}
