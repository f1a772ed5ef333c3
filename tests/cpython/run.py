#!/usr/bin/python3
"""Run CPython's own asyncio test suite (test.test_asyncio, Debian's
libpython3.11-testsuite) against an event loop: stock asyncio, uvloop or
tpio.  See README.md.

Each (loop, module) runs in a worker subprocess (worker.py).  A test that
hangs past --test-timeout is reported as a hang, with where it was stuck; a
worker that crashes is reported as a crash of the test it was running; in
both cases the module goes on in a new worker without the tests already done.

Stock asyncio always runs too (unless --baseline gives its JSON): it is the
baseline for "passed on <loop> out of those that pass on asyncio", and its
run tells which tests depend on asyncio's internals (classify.py).
"""

import argparse
import collections
import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

OUTCOMES = ('pass', 'fail', 'error', 'skip', 'hang', 'crash', 'notrun')


def default_python():
    return '/usr/bin/python3' if os.path.exists('/usr/bin/python3') else sys.executable


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--loop', default=os.environ.get('TPIO_TEST_LOOP', 'tpio'),
                    help='loop(s) under test, comma-separated: asyncio, uvloop, tpio '
                         '(default: $TPIO_TEST_LOOP or tpio)')
    ap.add_argument('--json', metavar='PATH', help='write the machine-readable summary here')
    ap.add_argument('--group', choices=('core', 'extra', 'all'), default='all')
    ap.add_argument('--modules', help='comma-separated subset of modules (e.g. test_events)')
    ap.add_argument('--baseline', metavar='JSON',
                    help='reuse the asyncio results of an earlier --json instead of running asyncio')
    ap.add_argument('-j', '--jobs', type=int, default=max(2, min(6, (os.cpu_count() or 2) * 2)))
    ap.add_argument('--test-timeout', type=float, default=20.0,
                    help='seconds before a test counts as hung (default 20)')
    ap.add_argument('--module-timeout', type=float, default=300.0,
                    help='seconds for all of one module (default 300)')
    ap.add_argument('--python', default=default_python(),
                    help='interpreter with the test suite (default /usr/bin/python3)')
    ap.add_argument('--tpio-path', default=os.environ.get(
        'TPIO_PYTHONPATH', os.path.join(REPO, 'build', 'python')),
        help='directory holding the tpio extension (default build/python)')
    ap.add_argument('--logs', metavar='DIR', help='keep the workers\' output here')
    ap.add_argument('--expect', metavar='FILE',
                    help='check mode: exit 1 if a core test that passes on asyncio does not '
                         'pass on a loop under test, unless FILE lists it (one test id a line, '
                         '"#" comments)')
    ap.add_argument('-v', '--verbose', action='store_true',
                    help='also list skipped and loop-independent tests, and tracebacks')
    return ap.parse_args()


# ---------------------------------------------------------------- workers

def worker_env(args):
    env = dict(os.environ)
    paths = [args.tpio_path] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p]
    env['PYTHONPATH'] = os.pathsep.join(paths)
    env['PYTHONFAULTHANDLER'] = '1'
    env.pop('PYTHONASYNCIODEBUG', None)
    return env


def check_loop(args, loop):
    code = ('import asyncio, targets; t = targets.make(%r); '
            'l = t.new_loop(); l.run_until_complete(asyncio.sleep(0)); l.close()' % loop)
    p = subprocess.run([args.python, '-c', code], cwd=HERE, env=worker_env(args),
                       capture_output=True, text=True, timeout=60)
    if p.returncode:
        lines = [line for line in p.stderr.strip().splitlines() if line.strip()]
        return lines[-1] if lines else f'exit status {p.returncode}'
    return None


def run_module(args, loop, module, logdir):
    """Run one module on one loop, restarting the worker after a hang or a
    crash.  Returns {"tests": {id: record}, "fatal": str|None, "restarts": n}."""
    tests = {}
    plan = []
    fatal = None
    restarts = 0
    deadline = time.monotonic() + args.module_timeout
    base = os.path.join(logdir, f'{loop}.{module}')
    while True:
        n = restarts
        out = f'{base}.{n}.jsonl'
        err = f'{base}.{n}.stderr'
        skip = f'{base}.{n}.skip'
        with open(skip, 'w') as f:
            f.write(''.join(t + '\n' for t in tests))
        cmd = [args.python, os.path.join(HERE, 'worker.py'), '--loop', loop,
               '--module', module, '--out', out, '--skip', skip,
               '--test-timeout', str(args.test_timeout)]
        if loop == 'asyncio':
            cmd.append('--classify')
        with open(err, 'w') as ferr:
            p = subprocess.Popen(cmd, cwd=HERE, env=worker_env(args),
                                 stdin=subprocess.DEVNULL, stdout=ferr, stderr=ferr,
                                 start_new_session=True)
            killed = False
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                killed = True
                # faulthandler dumps the stacks on SIGABRT.
                os.kill(p.pid, signal.SIGABRT)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            # Whatever the tests left behind in the worker's process group.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        events = read_jsonl(out)
        running = None
        done = False
        for ev in events:
            if ev['ev'] == 'plan':
                if not plan:
                    plan = ev['ids']
            elif ev['ev'] == 'start':
                running = ev['id']
            elif ev['ev'] == 'end':
                ev.pop('ev')
                tests[ev['id']] = ev
                if ev['id'] == running:
                    running = None
            elif ev['ev'] == 'fatal':
                fatal = ev['error']
                done = True
            elif ev['ev'] == 'done':
                done = True
        if done:
            break
        stderr = read_text(err)
        if running is None:
            fatal = (f'worker died outside a test (exit status {p.returncode}): '
                     + stderr_reason(stderr))
            break
        if killed:
            outcome, reason = 'hang', f'module time limit ({args.module_timeout:.0f} s) reached'
        elif 'Timeout (' in stderr:
            outcome, reason = 'hang', f'no progress in {args.test_timeout:.0f} s'
        else:
            outcome, reason = 'crash', stderr_reason(stderr) or f'exit status {p.returncode}'
        tests[running] = dict(id=running, outcome=outcome, reason=reason,
                              where=stuck_where(stderr), tb=stderr[-4000:],
                              uses_loop=None, duration=None)
        restarts += 1
        if killed or time.monotonic() >= deadline:
            fatal = reason + '; the rest of the module did not run'
            break
    for tid in plan:
        if tid not in tests:
            tests[tid] = dict(id=tid, outcome='notrun', reason=fatal or 'not run',
                              where='', tb='', uses_loop=None, duration=None)
    return dict(tests=tests, fatal=fatal, restarts=restarts)


def read_jsonl(path):
    events = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass        # a line cut short by a crash
    except FileNotFoundError:
        pass
    return events


def read_text(path):
    try:
        with open(path, errors='replace') as f:
            return f.read()
    except FileNotFoundError:
        return ''


def stderr_reason(stderr):
    m = re.search(r'^Fatal Python error: (.*)$', stderr, re.M)
    if m:
        return 'Fatal Python error: ' + m.group(1)
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ''


FRAME_RE = re.compile(r'^\s+File "([^"]+)", line (\d+) in (\S+)', re.M)


def stuck_where(stderr):
    """From faulthandler's dump: the innermost frame of the main thread that
    is in a test module, and the innermost frame overall."""
    start = max(stderr.rfind('Timeout ('), stderr.rfind('Fatal Python error'))
    dump = stderr[start:] if start >= 0 else stderr
    # Threads are dumped one after the other; the main thread's block is the
    # one that ends with the worker's own frames.
    blocks = re.split(r'\n(?=(?:Current thread|Thread) 0x)', dump)
    main = next((b for b in blocks if 'worker.py' in b), blocks[-1] if blocks else '')
    frames = FRAME_RE.findall(main)        # most recent call first
    if not frames:
        return ''
    inner = frames[0]
    test = next((f for f in frames if '/test_asyncio/' in f[0]), None)
    fmt = lambda f: f'{os.path.basename(f[0])}:{f[1]} {f[2]}'
    if test and test != inner:
        return f'{fmt(test)} -> {fmt(inner)}'
    return fmt(inner)


# ---------------------------------------------------------------- analysis

def classify_tests(results, baseline):
    """Give every test a category, with the asyncio run's findings:
       loop     runs on the loop under test, public behaviour only
       patches  runs on the loop under test, but mocks or sets attributes of
                asyncio's loop, transports, servers or handles, or patches
                asyncio's loop modules or the stdlib functions they call
       reads    runs on the loop under test and only reads _private
                attributes of those objects
       indep    never creates a loop under test (TestLoop, mocks, ABCs)
    and a group: core, or extra (extra modules, SSL/sendfile/sock_* tests)."""
    import config
    for module, res in results.items():
        spec = config.MODULES[module]
        base = (baseline or {}).get(module, {}).get('tests', {})
        for tid, rec in res['tests'].items():
            b = base.get(tid, {})
            uses = rec.get('uses_loop')
            if uses is None:        # hung or crashed: as on asyncio
                uses = b.get('uses_loop', True)
            uses = uses or b.get('uses_loop', False)
            private = b.get('private', rec.get('private', [])) or []
            if not uses:
                cat = 'indep'
            elif any(p.startswith(('sets ', 'patches ')) for p in private):
                cat = 'patches'
            elif private:
                cat = 'reads'
            else:
                cat = 'loop'
            rec['category'] = cat
            rec['internals'] = private
            cls, _, meth = tid.split('.', 1)[1].rpartition('.')
            group = spec['group']
            if group == 'core' and (config.OUT_OF_SCOPE_RE.search(meth)
                                    or f'{module}.{cls}' in config.OUT_OF_SCOPE_CLASSES
                                    or tid in config.OUT_OF_SCOPE_TESTS):
                group = 'extra'
            rec['group'] = group


def summarize(results, group_filter=None):
    """Per (module, group): counts of category 'loop' tests, plus counts of
    the private and loop-independent ones."""
    rows = collections.OrderedDict()
    for module, res in results.items():
        for rec in res['tests'].values():
            key = (module, rec['group'])
            row = rows.setdefault(key, dict(module=module, group=rec['group'],
                                            run=0, **{o: 0 for o in OUTCOMES},
                                            patches_run=0, patches_pass=0,
                                            reads_run=0, reads_pass=0, indep=0,
                                            failing=[]))
            cat = rec['category']
            if cat == 'indep':
                row['indep'] += 1
                continue
            outcome = norm_outcome(rec['outcome'])
            if cat in ('patches', 'reads'):
                row[cat + '_run'] += 1
                row[cat + '_pass'] += outcome == 'pass'
                continue
            row['run'] += 1
            row[outcome] += 1
            if outcome not in ('pass', 'skip', 'notrun'):
                row['failing'].append(rec['id'])
        if res.get('fatal'):
            for key in rows:
                if key[0] == module:
                    rows[key]['fatal'] = res['fatal']
            if not any(k[0] == module for k in rows):
                rows[(module, '?')] = dict(module=module, group='?', run=0,
                                           **{o: 0 for o in OUTCOMES}, patches_run=0,
                                           patches_pass=0, reads_run=0, reads_pass=0,
                                           indep=0, failing=[],
                                           fatal=res['fatal'])
    return list(rows.values())


def norm_outcome(o):
    return {'xfail': 'pass', 'upass': 'fail'}.get(o, o)


def compare(results, baseline):
    """Of the category 'loop' tests that pass on asyncio, how many pass here."""
    out = {}
    for group in ('core', 'extra'):
        base_pass = set()
        for module, res in baseline.items():
            if module not in results:
                continue
            for tid, rec in res['tests'].items():
                if (rec['category'] == 'loop' and rec['group'] == group
                        and norm_outcome(rec['outcome']) == 'pass'):
                    base_pass.add((module, tid))
        passed = set()
        lost = []
        for module, tid in sorted(base_pass):
            rec = results.get(module, {}).get('tests', {}).get(tid)
            if rec and norm_outcome(rec['outcome']) == 'pass':
                passed.add((module, tid))
            else:
                lost.append(tid)
        out[group] = dict(baseline_pass=len(base_pass), pass_=len(passed), lost=lost)
    return out


NUM_RE = re.compile(r'0x[0-9a-f]+|\b\d+(\.\d+)?\b')
QUOTE_RE = re.compile(r"'[^']*'|\"[^\"]*\"|<[^<>]*>")


def causes(results):
    """Failing category 'loop' tests, grouped by their reason with numbers,
    addresses and quoted text stripped."""
    groups = collections.defaultdict(list)
    for module, res in results.items():
        for rec in res['tests'].values():
            if rec['category'] != 'loop' or norm_outcome(rec['outcome']) in (
                    'pass', 'skip', 'notrun'):
                continue
            reason = rec['reason'] or rec['outcome']
            if ':' not in reason and rec.get('where'):
                # A bare exception: where it came from tells causes apart.
                inner = rec['where'].split(' -> ')[-1].split(':')
                reason += f" ({inner[0]} {inner[-1].split(' ')[-1]})"
            if rec['outcome'] in ('hang', 'crash'):
                key = f"{rec['outcome']}: {reason}"
            else:
                key = QUOTE_RE.sub('…', NUM_RE.sub('N', reason))[:160]
            groups[(rec['group'], key)].append(rec['id'])
    return sorted(groups.items(), key=lambda kv: (kv[0][0], -len(kv[1]), kv[0][1]))


# ---------------------------------------------------------------- report

LEGEND = '''\
run..nrun: tests that run on the loop under test and use public behaviour only
  (nrun: not run, the module's time ran out); failing ones are listed below.
patches: passed/run of the tests that mock or set attributes of asyncio's loop,
  transports, servers or handles, or patch asyncio's loop modules or the
  stdlib functions they call; reads: passed/run of those that only read
  _private attributes of those objects; indep: tests that never create a loop
  under test (TestLoop, mocks, abstract classes).  These are not in the counts.'''


def print_loop(loop, results, rows, args, comparison=None):
    import config
    print(f'\n=== {loop} ' + '=' * (66 - len(loop)))
    hdr = (f'{"module":28} {"run":>4} {"pass":>4} {"fail":>4} {"err":>4} {"skip":>4} '
           f'{"hang":>4} {"crsh":>4} {"nrun":>4}   {"patches":>8} {"reads":>7} {"indep":>5}')
    for group in ('core', 'extra'):
        grows = [r for r in rows if r['group'] == group or (
            r['group'] == '?' and config.MODULES[r['module']]['group'] == group)]
        if not grows:
            continue
        print(f'-- {group}')
        print(hdr)
        tot = collections.Counter()
        for r in grows:
            name = r['module'] + (' [ssl etc.]' if group == 'extra' and
                                  _is_core(r['module']) else '')
            print(f'{name:28} {r["run"]:4} {r["pass"]:4} {r["fail"]:4} {r["error"]:4} '
                  f'{r["skip"]:4} {r["hang"]:4} {r["crash"]:4} {r["notrun"]:4}   '
                  f'{r["patches_pass"]:4}/{r["patches_run"]:<3} {r["reads_pass"]:3}/{r["reads_run"]:<3} '
                  f'{r["indep"]:5}'
                  + (f'   !! {r["fatal"]}' if r.get('fatal') else ''))
            for k in ('run', 'pass', 'fail', 'error', 'skip', 'hang', 'crash', 'notrun',
                      'patches_run', 'patches_pass', 'reads_run', 'reads_pass', 'indep'):
                tot[k] += r[k]
        print(f'{"total":28} {tot["run"]:4} {tot["pass"]:4} {tot["fail"]:4} {tot["error"]:4} '
              f'{tot["skip"]:4} {tot["hang"]:4} {tot["crash"]:4} {tot["notrun"]:4}   '
              f'{tot["patches_pass"]:4}/{tot["patches_run"]:<3} {tot["reads_pass"]:3}/{tot["reads_run"]:<3} '
              f'{tot["indep"]:5}')
        if comparison:
            c = comparison[group]
            print(f'passed on {loop} out of those that pass on asyncio: '
                  f'{c["pass_"]}/{c["baseline_pass"]}')
    failing = []
    for module, res in results.items():
        for rec in res['tests'].values():
            o = norm_outcome(rec['outcome'])
            # On asyncio, anything that fails is worth seeing: the baseline
            # (or this runner's adaptation of it) is broken.
            if ((rec['category'] == 'loop' or loop == 'asyncio')
                    and o not in ('pass', 'skip', 'notrun')):
                failing.append(rec)
            elif args.verbose and rec['category'] == 'loop' and o == 'skip':
                failing.append(rec)
    if failing:
        print(f'-- failing ({len(failing)}; public tests on the loop under test)')
        for rec in sorted(failing, key=lambda r: (r['group'], r['id'])):
            print(f'  [{rec["group"]}] {rec["id"]}: {rec["outcome"].upper()}: '
                  f'{rec["reason"]}' + (f'  @ {rec["where"]}' if rec.get('where') else ''))
            if args.verbose and rec.get('tb'):
                print('    ' + rec['tb'].rstrip().replace('\n', '\n    '))
    if loop != 'asyncio':
        cs = causes(results)
        if cs:
            print('-- failures grouped by reason')
            for (group, key), ids in cs:
                print(f'  [{group}] {len(ids):3}  {key}')


def _is_core(module):
    import config
    return config.MODULES[module]['group'] == 'core'


# ---------------------------------------------------------------- main

def main():
    args = parse_args()
    import config
    loops = [x.strip() for x in args.loop.split(',') if x.strip()]
    for loop in loops:
        if loop not in ('asyncio', 'uvloop', 'tpio'):
            sys.exit(f'unknown loop {loop!r}')
    modules = [m for m, s in config.MODULES.items()
               if args.group == 'all' or s['group'] == args.group]
    if args.modules:
        wanted = [m.strip() for m in args.modules.split(',')]
        bad = [m for m in wanted if m not in config.MODULES]
        if bad:
            sys.exit(f'unknown module(s): {", ".join(bad)}')
        modules = [m for m in modules if m in wanted]

    baseline = None
    if args.baseline:
        with open(args.baseline) as f:
            baseline = json.load(f)['loops']['asyncio']['modules']
    run_loops = list(loops)
    if baseline is None and 'asyncio' not in run_loops:
        run_loops.insert(0, 'asyncio')

    unavailable = {}
    for loop in run_loops:
        why = check_loop(args, loop)
        if why:
            unavailable[loop] = why
            print(f'{loop}: not available: {why}', file=sys.stderr)
    run_loops = [x for x in run_loops if x not in unavailable]

    logdir = args.logs or tempfile.mkdtemp(prefix='tpio-cpython-')
    os.makedirs(logdir, exist_ok=True)
    t0 = time.monotonic()
    results = {loop: {} for loop in run_loops}
    jobs = [(loop, m) for m in modules for loop in run_loops]
    # Slow modules first, so that they don't finish last alone.
    slow = ('test_tasks', 'test_subprocess', 'test_ssl', 'test_events', 'test_taskgroups')
    jobs.sort(key=lambda j: (j[1] not in slow, slow.index(j[1]) if j[1] in slow else 0))
    lock = threading.Lock()
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as ex:
        futs = {ex.submit(run_module, args, loop, m, logdir): (loop, m) for loop, m in jobs}
        for fut in concurrent.futures.as_completed(futs):
            loop, m = futs[fut]
            res = fut.result()
            with lock:
                results[loop][m] = res
            n = len(res['tests'])
            print(f'[{time.monotonic() - t0:5.0f}s] {loop:8} {m:22} {n:4} tests'
                  + (f', {res["restarts"]} restart(s)' if res['restarts'] else '')
                  + (f'  !! {res["fatal"]}' if res['fatal'] else ''),
                  file=sys.stderr, flush=True)
    # Module order as in config.
    for loop in results:
        results[loop] = {m: results[loop][m] for m in modules if m in results[loop]}

    if baseline is None:
        baseline = results.get('asyncio')
    classify_tests(baseline, None)
    for loop, res in results.items():
        if res is not baseline:
            classify_tests(res, baseline)

    summary = dict(
        python=subprocess.run([args.python, '-c', 'import sys; print(sys.version)'],
                              capture_output=True, text=True).stdout.strip(),
        elapsed=round(time.monotonic() - t0, 1),
        unavailable=unavailable,
        excluded={m: s['exclude'] for m, s in config.MODULES.items() if m in modules},
        out_of_scope_tests=config.OUT_OF_SCOPE_TESTS,
        not_run_modules=config.NOT_RUN,
        loops={})
    print(LEGEND)
    for loop, res in results.items():
        rows = summarize(res)
        comparison = compare(res, baseline) if loop != 'asyncio' else None
        print_loop(loop, res, rows, args, comparison)
        entry = dict(modules=res, summary=rows)
        if comparison:
            entry['vs_asyncio'] = {g: dict(baseline_pass=c['baseline_pass'],
                                           passed=c['pass_'], not_passed=c['lost'])
                                   for g, c in comparison.items()}
            entry['causes'] = [dict(group=g, reason=k, count=len(ids), tests=ids)
                               for (g, k), ids in causes(res)]
        summary['loops'][loop] = entry
    if baseline is not None and 'asyncio' not in results:
        summary['loops']['asyncio'] = dict(modules=baseline, summary=summarize(baseline))
    print(f'\n{time.monotonic() - t0:.0f} s; worker logs in {logdir}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(summary, f, indent=1)
        print(f'summary written to {args.json}')
    if args.expect:
        return check_expected(args.expect, summary, unavailable, loops)
    return 0


def check_expected(path, summary, unavailable, loops):
    """The regression check: every core test that passes on asyncio passes
    on the loops under test, except those the file lists (a listed test
    that passes again is reported, so that the list can shrink)."""
    expected = set()
    with open(path) as f:
        for line in f:
            tid = line.split('#', 1)[0].strip()
            if tid:
                expected.add(tid)
    status = 0
    for loop in loops:
        if loop == 'asyncio':
            continue
        if loop in unavailable:
            print(f'CHECK FAILED: {loop} is not available: {unavailable[loop]}')
            return 1
        lost = set(summary['loops'][loop].get('vs_asyncio', {}).get('core', {})
                   .get('not_passed', []))
        for tid in sorted(lost - expected):
            print(f'CHECK FAILED: {loop}: {tid} passes on asyncio, not here')
            status = 1
        for tid in sorted(expected - lost):
            print(f'note: {loop}: {tid} is listed in {path} but did not fail')
        if not status:
            print(f'check: {loop}: every core test that passes on asyncio passes, '
                  f'{len(lost & expected)} listed exception(s)')
    return status


if __name__ == '__main__':
    sys.exit(main())
