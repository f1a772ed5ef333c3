#!/usr/bin/python3
"""Run one example, unchanged, on a chosen event loop.

    python3 -u launch.py LOOP EXAMPLE.py

LOOP: asyncio (stock, nothing installed), uvloop (uvloop.install()) or tpio
(tpio.install(), with tpio on PYTHONPATH). Both set an event loop policy, so
the example's asyncio.run() makes its loop through it. The example then runs
as __main__, as "python3 EXAMPLE.py" would run it.

Before running the example the launcher checks that the policy is the
chosen loop's and makes (and closes) one loop with it, to see that it is the
chosen loop's too; if TPIO_LAUNCH_INFO names a file, that loop's class is
written to it (run.py shows it). Nothing is printed: the example's output
must be its own.
"""
import asyncio
import os
import runpy
import signal
import sys
import warnings


def install(name):
    if name == "asyncio":
        return
    if name == "uvloop":
        import uvloop
        with warnings.catch_warnings():      # deprecated on newer Pythons
            warnings.simplefilter("ignore", DeprecationWarning)
            uvloop.install()
    elif name == "tpio":
        import tpio
        with warnings.catch_warnings():      # set_event_loop_policy, 3.14+
            warnings.simplefilter("ignore", DeprecationWarning)
            tpio.install()
    else:
        raise SystemExit("launch.py: unknown loop %r "
                         "(asyncio, uvloop or tpio)" % name)


def check(name):
    """The policy and the loops it makes must be the chosen loop's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = asyncio.get_event_loop_policy()
    owner = type(policy).__module__.split(".")[0]
    if owner != name:
        raise SystemExit("launch.py: after installing %s the event loop "
                         "policy is %s.%s" % (name, type(policy).__module__,
                                              type(policy).__qualname__))
    loop = policy.new_event_loop()
    try:
        cls = type(loop)
        if cls.__module__.split(".")[0] != name:
            raise SystemExit("launch.py: the %s policy made a %s.%s"
                             % (name, cls.__module__, cls.__qualname__))
    finally:
        loop.close()
    return "%s.%s" % (cls.__module__, cls.__qualname__)


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: launch.py asyncio|uvloop|tpio EXAMPLE.py")
    name, path = sys.argv[1], sys.argv[2]
    # Ctrl-C raises KeyboardInterrupt, even where SIGINT came in ignored
    # (a shell's background job), as in a terminal; before the loop is
    # installed, which may look at it. run.py stops the servers with SIGINT.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    install(name)
    loop_class = check(name)
    info = os.environ.get("TPIO_LAUNCH_INFO")
    if info:
        with open(info, "w") as f:
            f.write(loop_class + "\n")
    # As "python3 EXAMPLE.py": argv and sys.path[0] are the example's.
    sys.argv = [path]
    sys.path[0] = os.path.dirname(os.path.abspath(path))
    runpy.run_path(path, run_name="__main__")


if __name__ == "__main__":
    main()
