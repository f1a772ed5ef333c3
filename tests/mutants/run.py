#!/usr/bin/python3
"""Mutation testing: plant each small bug of mutants.txt in src/, one at a
time, rebuild, run the whole suite, and report the bugs it did not catch.

Too slow for CI (about a minute per mutant): run it by hand, `make mutate`,
before resolving an issue that reshapes code. Standard library only.

  run.py [--build DIR] [--only N,M] [--list | --check]

The build directory must be configured already (make mutate does it). The
source file is restored after each mutant whatever happens; src/ must have no
uncommitted changes at the start, so that `git diff` can prove it at the end.

--check is the quick test of the list after editing it or the code (seconds,
not an hour): every mutant must apply, and its mutated file must compile with
the build's own flags (-Werror included), fed to the compiler on stdin, so
that src/ is never written. It needs the build directory's
compile_commands.json (make mutate configures with it).
"""
import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIST = Path(__file__).resolve().with_name("mutants.txt")
FIELDS = ("file", "find", "replace", "why")
FIELD_RE = re.compile(r"^(file|find|replace|why):(.*)$")
# The values `make test` uses: any sanitizer report or leak fails the test.
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:halt_on_error=1:exitcode=86",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
}
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class ListError(Exception):
    pass


class Mutant:
    def __init__(self, ident, line, fields):
        self.id = ident
        self.line = line
        self.file = fields["file"]
        self.find = fields["find"]
        self.replace = fields["replace"]
        self.why = fields["why"]

    def stale_reason(self):
        """Why the mutant no longer applies to the code, or None."""
        path = ROOT / self.file
        if not path.is_file():
            return "no such file"
        n = read_text(path).count(self.find)
        if n == 1:
            return None
        return "snippet not found" if n == 0 else f"snippet found {n} times"


def read_text(path):
    # newline="": snippets and restores must see the file's bytes unchanged.
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def parse(text):
    """Blocks separated by blank lines; see the head of mutants.txt."""
    mutants, cur, key, start = [], None, None, 0

    def close_block():
        if cur is None:
            return
        missing = [k for k in FIELDS if k not in cur]
        if missing:
            raise ListError(f"line {start}: missing {', '.join(missing)}")
        if not cur["find"]:
            raise ListError(f"line {start}: empty find")
        if cur["find"] == cur["replace"]:
            raise ListError(f"line {start}: replace is the same as find")
        if not cur["file"].startswith("src/"):
            raise ListError(f"line {start}: only files under src/ may be mutated")
        mutants.append(Mutant(len(mutants) + 1, start, cur))

    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            close_block()
            cur, key = None, None
            continue
        if cur is None and line.startswith("#"):
            continue
        m = FIELD_RE.match(line)
        if m:
            if cur is None:
                cur, start = {}, no
            key = m.group(1)
            if key in cur:
                raise ListError(f"line {no}: second {key}:")
            cur[key] = m.group(2).strip()
        elif key in ("find", "replace"):
            # continuation lines are code: taken verbatim, indentation included
            cur[key] = f"{cur[key]}\n{line}" if cur[key] else line
        else:
            raise ListError(f"line {no}: neither a field nor a find/replace line")
    close_block()
    return mutants


def session_members(sid):
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            # the fields after the ")" that ends the command name: state ppid pgrp session
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid:
            pids.append(int(d.name))
    return pids


def run(cmd, log):
    """Run cmd with output to log; on any exception kill what it started."""
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        return p.wait()
    except BaseException:
        # ctest puts each test in a process group of its own, so killing
        # ctest's group would leave the tests running: kill its session.
        p.kill()
        for pid in session_members(p.pid):  # ctest is gone: no new members
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait()
        raise


def failed_tests(log_path):
    names, after = [], False
    for line in read_text(log_path).splitlines():
        if line.startswith("The following tests FAILED:"):
            after = True
        elif after:
            m = re.match(r"\s*\d+ - (\S+) \((.+)\)", line)
            if m:
                names.append(m.group(1) if m.group(2) == "Failed"
                             else f"{m.group(1)} ({m.group(2)})")
    return names


def build_and_test(build, log_path):
    """('ok' | 'build' | 'tests', [failed tests])."""
    with open(log_path, "w") as log:
        if run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)], log):
            return "build", []
        # --timeout only bounds tests without a TIMEOUT property of their own
        # (tests/CMakeLists.txt gives each one): a hung mutant costs up to that.
        rc = run(["ctest", "--test-dir", str(build), "-j", "2", "--timeout", "120",
                  "--output-on-failure"], log)
    if rc == 0:
        return "ok", []
    return "tests", failed_tests(log_path) or [f"ctest exit {rc}"]


def src_clean():
    return subprocess.run(["git", "diff", "--quiet", "--", "src"], cwd=ROOT).returncode == 0


def mutate_and_run(m, build, log_path):
    path = ROOT / m.file
    with open(path, "rb") as f:
        original = f.read()
    text = original.decode("utf-8")
    try:
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text.replace(m.find, m.replace, 1))
        return build_and_test(build, log_path)
    finally:
        # A second Ctrl-C must not cut the restore short.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            with open(path, "wb") as f:
                f.write(original)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def compile_commands(build):
    """{absolute source path: (directory, argv)} from compile_commands.json."""
    db = build / "compile_commands.json"
    if not db.is_file():
        sys.exit(f"{db} is missing: configure with -DCMAKE_EXPORT_COMPILE_COMMANDS=ON "
                 "(make mutate does)")
    out = {}
    for e in json.loads(db.read_text()):
        argv = e.get("arguments") or shlex.split(e["command"])
        src = os.path.normpath(os.path.join(e["directory"], e["file"]))
        out[src] = (e["directory"], argv)
    return out


def stdin_argv(argv, directory, src):
    """argv compiling `src`, changed to compile stdin as C into nothing."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("-o", "-MF", "-MT", "-MQ"):
            skip = True  # and its argument
        elif a in ("-MD", "-MMD"):
            pass
        elif os.path.normpath(os.path.join(directory, a)) == src:
            pass
        else:
            out.append(a)
    return out + ["-o", os.devnull, "-x", "c", "-"]


def check(mutants, build):
    """Each mutant applies and its mutated file compiles; 0 when all do."""
    cmds = compile_commands(build)
    bad = 0
    for m in mutants:
        head = f"#{m.id:<3} {m.file:<26}"
        problem = m.stale_reason()
        if problem is None:
            src = os.path.normpath(ROOT / m.file)
            if src not in cmds:
                problem = "not compiled by this build"
            else:
                directory, argv = cmds[src]
                text = read_text(Path(src)).replace(m.find, m.replace, 1)
                p = subprocess.run(stdin_argv(argv, directory, src), cwd=directory,
                                   input=text, capture_output=True, text=True)
                if p.returncode:
                    first = next((ln for ln in p.stderr.splitlines() if "error" in ln),
                                 p.stderr.strip()[:200])
                    problem = f"does not compile: {first}"
        if problem:
            bad += 1
            print(f"{head} {problem}", flush=True)
        else:
            print(f"{head} ok", flush=True)
    print(f"\n{len(mutants) - bad} / {len(mutants)} apply and compile")
    return 1 if bad else 0


def interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build-mutate", help="configured build directory")
    ap.add_argument("--only", help="comma-separated mutant ids")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--check", action="store_true",
                    help="check that each mutant applies and compiles (src/ untouched), and exit")
    args = ap.parse_args()

    try:
        mutants = parse(read_text(LIST))
    except ListError as e:
        sys.exit(f"{LIST.name}: {e}")
    if args.only:
        try:
            want = {int(x) for x in args.only.split(",") if x.strip()}
        except ValueError:
            sys.exit("--only takes ids like 3,7")
        unknown = want - {m.id for m in mutants}
        if unknown:
            sys.exit(f"no mutant {', '.join(map(str, sorted(unknown)))}")
        mutants = [m for m in mutants if m.id in want]

    if args.list:
        for m in mutants:
            stale = m.stale_reason()
            print(f"#{m.id:<3} {m.file:<26} {'STALE (' + stale + ') ' if stale else ''}{m.why}")
        return 0

    build = (ROOT / args.build).resolve()
    if not (build / "CMakeCache.txt").is_file():
        sys.exit(f"{build} is not configured: use `make mutate`")
    if args.check:
        return check(mutants, build)
    if not src_clean():
        sys.exit("src/ has uncommitted changes (a mutant left by a killed run?): "
                 "commit or stash them first, the restore check relies on git")
    for k, v in SANITIZER_ENV.items():
        os.environ.setdefault(k, v)
    # Ctrl-C already raises KeyboardInterrupt; make kill and hang-up do the
    # same so that the finally blocks restore the source (nohup keeps SIG_IGN).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, interrupt)

    logs = build / "mutants-logs"
    logs.mkdir(exist_ok=True)
    t0 = time.monotonic()
    results = []  # (mutant, outcome, detail, seconds)
    interrupted = False
    try:
        print("baseline: building and running the suite unmutated ...", flush=True)
        outcome, failed = build_and_test(build, logs / "baseline.log")
        if outcome != "ok":
            print(f"baseline is not green ({outcome}: {', '.join(failed) or 'see log'}); "
                  f"see {logs / 'baseline.log'}", file=sys.stderr)
            return 2
        print(f"baseline green in {time.monotonic() - t0:.0f} s", flush=True)
        for n, m in enumerate(mutants, 1):
            head = f"[{n}/{len(mutants)}] #{m.id} {m.file}"
            stale = m.stale_reason()
            if stale:
                results.append((m, "STALE", stale, 0))
                print(f"{head}: STALE ({stale})", flush=True)
                continue
            t = time.monotonic()
            outcome, failed = mutate_and_run(m, build, logs / f"{m.id}.log")
            secs = time.monotonic() - t
            if outcome == "ok":
                results.append((m, "SURVIVED", "", secs))
            elif outcome == "build":
                results.append((m, "caught (build)", "", secs))
            else:
                results.append((m, "caught", ", ".join(failed), secs))
            r = results[-1]
            print(f"{head}: {r[1]}{': ' + r[2] if r[2] else ''} ({secs:.0f} s)", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: partial report", file=sys.stderr)
    finally:
        clean = src_clean()

    report = summary(results, time.monotonic() - t0, len(mutants))
    if not clean:
        report += "\nERROR: src/ differs from git after the run: inspect `git diff -- src`\n"
    print("\n" + report, end="")
    (build / "mutants-report.txt").write_text(report)
    print(f"\nreport: {build / 'mutants-report.txt'}  logs: {logs}/")
    return 3 if not clean else 130 if interrupted else 0


def summary(results, seconds, planned):
    ran = [r for r in results if r[1] != "STALE"]
    caught = [r for r in ran if r[1].startswith("caught")]
    survived = [r for r in ran if r[1] == "SURVIVED"]
    stale = [r for r in results if r[1] == "STALE"]
    out = ["mutants"]
    for m, outcome, detail, secs in results:
        out.append(f"  #{m.id:<3} {m.file:<26} {outcome:<15} {detail}".rstrip())
    out.append("")
    out.append(f"caught {len(caught)} / {len(ran)}"
               f" ({sum(r[1] == 'caught (build)' for r in caught)} by the build)"
               f", {len(stale)} stale, {planned - len(results)} not run"
               f", {seconds / 60:.1f} min")
    out.append(f"survived: {len(survived)}")
    for m, *_ in survived:
        out.append(f"  #{m.id:<3} {m.file:<26} {m.why}")
    if stale:
        out.append(f"stale: {len(stale)} (fix their snippets in {LIST.name})")
        for m, _, detail, _ in stale:
            out.append(f"  #{m.id:<3} {m.file:<26} {detail} ({LIST.name}:{m.line}): {m.why}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
