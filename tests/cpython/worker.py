"""Run one test_asyncio module against one loop; run.py starts it.

Writes one JSON object a line to --out as it goes ({"ev": "start", "id": ...}
before each test, {"ev": "end", ...} after it), so that run.py knows which
test was running when a worker hangs or crashes.  A test that runs longer
than --test-timeout makes faulthandler dump every thread's stack to stderr
and end the process.
"""

import argparse
import faulthandler
import importlib
import json
import os
import sys
import time
import traceback
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def first_line(text, limit=300):
    text = text.strip()
    line = text.splitlines()[0] if text else ''
    return line[:limit]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--loop', required=True)
    ap.add_argument('--module', required=True)
    ap.add_argument('--out', required=True)
    ap.add_argument('--skip', help='file of test ids not to run (one a line)')
    ap.add_argument('--only', action='append', default=[],
                    help='run only this test id (repeatable), for debugging')
    ap.add_argument('--test-timeout', type=float, default=20)
    ap.add_argument('--classify', action='store_true')
    args = ap.parse_args()

    out = open(args.out, 'a', buffering=1)

    def emit(**kw):
        out.write(json.dumps(kw) + '\n')

    faulthandler.enable()
    sys.path.insert(0, HERE)

    from test import support
    # Shorter waits than regrtest's (30 s / 5 min), below the per-test
    # timeout, so that a test waiting for something that never comes
    # fails rather than hangs.  They must be set before the tests import.
    support.SHORT_TIMEOUT = min(support.SHORT_TIMEOUT, 10.0)
    support.LONG_TIMEOUT = min(support.LONG_TIMEOUT, 10.0)

    import config
    import targets
    try:
        target = targets.make(args.loop)
    except Exception as e:
        emit(ev='fatal', error=f'cannot make the {args.loop} loop: '
             + first_line(''.join(traceback.format_exception_only(type(e), e))))
        return 2

    classify = None
    if args.classify:
        import classify
        classify.install(target.factory)

    import asyncio.futures
    from test.test_asyncio import utils as test_utils
    test_utils.TestCase.close_loop = staticmethod(close_loop)
    # test_utils.run_until() raises futures.TimeoutError when its wait runs
    # out, a name 3.11 no longer has: give it one, or a timeout reads as an
    # AttributeError.
    if not hasattr(asyncio.futures, 'TimeoutError'):
        asyncio.futures.TimeoutError = TimeoutError

    target.install()
    spec = config.MODULES[args.module]
    try:
        mod = importlib.import_module('test.test_asyncio.' + args.module)
    except unittest.SkipTest as e:
        emit(ev='fatal', error=f'module skipped: {e}')
        return 0
    except Exception as e:
        emit(ev='fatal', error='import failed: ' + first_line(
            ''.join(traceback.format_exception_only(type(e), e))))
        return 2

    classes = []
    for name, obj in list(vars(mod).items()):
        if (isinstance(obj, type) and issubclass(obj, unittest.TestCase)
                and obj.__module__ == mod.__name__
                and name not in spec['exclude']):
            classes.append(obj)
    if spec.get('adapt'):
        classes += spec['adapt'](mod, target)

    skip = set()
    if args.skip:
        with open(args.skip) as f:
            skip = {line.strip() for line in f if line.strip()}
    only = set(args.only)

    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for cls in sorted(classes, key=lambda c: c.__name__):
        for t in loader.loadTestsFromTestCase(cls):
            tid = short_id(t)
            if tid in skip or (only and tid not in only):
                continue
            suite.addTest(t)

    emit(ev='plan', ids=[short_id(t) for t in suite])
    result = Result(emit, target, classify, args.test_timeout)
    suite.run(result)
    emit(ev='done')
    return 0


def short_id(test):
    # test.test_asyncio.test_events.EventLoopTests.test_x -> test_events.EventLoopTests.test_x
    return test.id().replace('test.test_asyncio.', '', 1)


def close_loop(loop):
    """test_utils.TestCase.close_loop, for loops without asyncio's private
    _default_executor attribute too: those get shutdown_default_executor()."""
    import asyncio
    from test import support
    executor = getattr(loop, '_default_executor', close_loop)
    if executor is close_loop:
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_default_executor())
    elif executor is not None:      # as the original does
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_default_executor())
        else:
            executor.shutdown(wait=True)
    loop.close()
    policy = support.maybe_get_event_loop_policy()
    get_watcher = getattr(policy, 'get_child_watcher', None)
    if get_watcher is not None:
        try:
            watcher = get_watcher()
        except NotImplementedError:
            return
        if isinstance(watcher, asyncio.ThreadedChildWatcher):
            for thread in list(watcher._threads.values()):
                thread.join()


RANK = {'pass': 0, 'skip': 1, 'xfail': 1, 'upass': 2, 'fail': 3, 'error': 4}


class Result(unittest.TestResult):
    def __init__(self, emit, target, classify, timeout):
        super().__init__()
        self.emit = emit
        self.target = target
        self.classify = classify
        self.timeout = timeout
        self.rec = None

    def startTest(self, test):
        super().startTest(test)
        self.target.ensure_installed()
        tid = short_id(test)
        self.emit(ev='start', id=tid)
        self.rec = dict(ev='end', id=tid, outcome='pass', reason='', where='',
                        tb='', t0=time.monotonic(), created0=self.target.created)
        if self.classify:
            self.classify.current = set()
        faulthandler.dump_traceback_later(self.timeout, exit=True)

    def stopTest(self, test):
        faulthandler.cancel_dump_traceback_later()
        rec = self.rec
        self.rec = None
        if rec is not None:
            rec['duration'] = round(time.monotonic() - rec.pop('t0'), 3)
            rec['uses_loop'] = self.target.created > rec.pop('created0')
            if self.classify:
                rec['private'] = sorted(self.classify.current)
                self.classify.current = None
            self.emit(**rec)
        super().stopTest(test)

    def _set(self, test, outcome, err=None, reason=''):
        rec = self.rec
        if rec is None or short_id(test) != rec['id']:
            # An error outside a test (setUpClass, setUpModule, ...).
            rec = dict(ev='end', id=short_id(test), outcome=outcome,
                       uses_loop=False, duration=0)
            if err is not None:
                rec.update(describe(err))
            self.emit(**rec)
            return
        if RANK[outcome] >= RANK[rec['outcome']]:
            rec['outcome'] = outcome
            if err is not None and not rec['tb']:
                rec.update(describe(err))
            elif reason:
                rec['reason'] = first_line(reason)

    def addSuccess(self, test):
        super().addSuccess(test)

    def addError(self, test, err):
        super().addError(test, err)
        self._set(test, 'error', err)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set(test, 'fail', err)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._set(test, 'skip', reason=str(reason))

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set(test, 'xfail')

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set(test, 'upass', reason='unexpected success')

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            failure = issubclass(err[0], test.failureException)
            self._set(test, 'fail' if failure else 'error', err)


def describe(err):
    etype, value, tb = err
    reason = first_line(''.join(traceback.format_exception_only(etype, value)))
    frames = traceback.extract_tb(tb)
    where = ''
    test_dir = os.path.dirname(sys.modules['test.test_asyncio'].__file__)
    for fr in reversed(frames):
        if os.path.dirname(fr.filename) == test_dir:
            where = f'{os.path.basename(fr.filename)}:{fr.lineno} {fr.name}'
            break
    if frames:
        last = frames[-1]
        inner = f'{os.path.basename(last.filename)}:{last.lineno} {last.name}'
        if inner != where:
            where = f'{where} -> {inner}' if where else inner
    text = ''.join(traceback.format_exception(etype, value, tb))
    return dict(reason=reason, where=where, tb=text[-4000:])


if __name__ == '__main__':
    sys.exit(main())
