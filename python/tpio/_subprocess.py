"""subprocess_exec / subprocess_shell of tpio.EventLoop, after asyncio's
checks (in _loop.py): Popen's handling of the arguments, then the C call
(_tpio.Loop._subprocess), whose transport is tpio.SubprocessTransport.

The child is started by tpio (no fork of the interpreter, no child
watcher: its exit is watched through a pidfd). What Popen could do and
tpio cannot is refused here with NotImplementedError rather than ignored.

The transport's get_extra_info('subprocess') is a Popen here too (asyncio
gives its subprocess.Popen), one that never reaps: tpio does, and a status
taken from under it would be lost. So Popen waits with WNOWAIT on a copy of
tpio's pidfd and signals through it; ChildWatcher is what the policy's
get_child_watcher() gives, since tpio needs none.
"""

import errno
import operator
import os
import select
import signal
import subprocess
import warnings
import weakref

__all__ = ('start', 'Popen', 'child_watcher')

# Popen's keyword arguments beyond env, cwd, start_new_session,
# process_group and pass_fds (which tpio does): the values tpio's child gets
# anyway are accepted (Popen's defaults), anything else is refused.
_DEFAULTS = {
    'executable': None,
    'preexec_fn': None,
    'close_fds': True,
    'restore_signals': True,
    'user': None,
    'group': None,
    'extra_groups': None,
    'umask': -1,
    'pipesize': -1,
}

# What a failed start means about the program (or cwd), as Popen names it.
_EXEC_ERRORS = {errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR, errno.ELOOP,
                errno.ENAMETOOLONG, errno.EPERM, errno.E2BIG, errno.ETXTBSY, errno.EISDIR}


def _check_kwargs(kwargs):
    for name, value in kwargs.items():
        if name == 'startupinfo':
            if value is not None:
                raise ValueError("startupinfo is only supported on Windows platforms")
        elif name == 'creationflags':
            if value != 0:
                raise ValueError("creationflags is only supported on Windows platforms")
        elif name not in _DEFAULTS:
            raise TypeError(
                f"Popen.__init__() got an unexpected keyword argument '{name}'")
        elif name == 'close_fds':
            # Accepted either way: Python's own descriptors are not
            # inheritable (PEP 446), so close_fds=False changes something
            # only for one made inheritable on purpose -- which tpio's child
            # does not keep (it keeps 0, 1, 2 and pass_fds only).
            pass
        elif value is not _DEFAULTS[name] and value != _DEFAULTS[name]:
            raise NotImplementedError(
                f'tpio: subprocess {name}={value!r} is not supported')


def _fsarg(arg):
    b = os.fsencode(arg)  # Popen's TypeError for what is no path
    if b'\0' in b:
        raise ValueError('embedded null byte')
    return b


def _env_list(env):
    out = []
    for k, v in env.items():
        k = os.fsencode(k)
        if b'=' in k:
            raise ValueError('illegal environment variable name')
        item = k + b'=' + os.fsencode(v)
        if b'\0' in item:
            raise ValueError('embedded null byte')
        out.append(item)
    return out


def _stdio(value):
    """None, PIPE, STDOUT, DEVNULL or a descriptor, as Popen._get_handles."""
    if value is None or isinstance(value, int):
        return value
    return value.fileno()


def _pass_fds(value, close_fds):
    """Popen's pass_fds: sorted descriptors, no duplicates (a tuple)."""
    fds = tuple(sorted(map(int, set(value))))
    if fds and not close_fds:
        warnings.warn("pass_fds overriding close_fds.", RuntimeWarning, stacklevel=4)
    if any(fd < 0 or fd > 0x7fffffff for fd in fds):
        raise ValueError("bad value(s) in fds_to_keep")
    return fds


def _process_group(value):
    """Popen's process_group: None or a negative one asks for nothing."""
    if value is None:
        return None
    value = operator.index(value)
    return value if value >= 0 else None


def _empty_program_error(env):
    """An empty program name: tpio follows execvp (ENOENT at once), Popen
    joins it to each directory of the search path and so tries to run the
    directories themselves (EACCES for one that exists)."""
    for d in os.get_exec_path(env):
        if os.path.isdir(d):
            return OSError(errno.EACCES, os.strerror(errno.EACCES))
    return OSError(errno.ENOENT, os.strerror(errno.ENOENT))


def _start_error(exc, program, cwd, grouped):
    """OSError of a start that failed, named as Popen names it."""
    if exc.errno not in _EXEC_ERRORS or exc.filename is not None:
        return exc
    filename = program
    if grouped and exc.errno == errno.EPERM:
        filename = cwd  # Popen: setsid/setpgid, before exec: named as chdir
    elif cwd is not None and not (os.path.isdir(cwd) and os.access(cwd, os.X_OK)):
        filename = cwd  # Popen: the child's chdir failed
    return OSError(exc.errno, os.strerror(exc.errno), filename)


class Popen:
    """What asyncio's transport gives as get_extra_info('subprocess'): the
    subprocess.Popen attributes and methods that make sense for a child
    that the transport owns (args, pid, returncode, stdin/stdout/stderr --
    the pipe transports' files --, poll, wait, send_signal, terminate, kill;
    communicate only without pipes).

    It never reaps the child: tpio does, through its pidfd. poll() and
    wait() look with WNOWAIT, so the transport still gets the status; the
    returncode they find may come before the transport's own
    (get_returncode() is None until the loop has seen the exit, as with
    asyncio when Popen.wait() ran first). Signals go through the pidfd, so
    they never reach a process that reused the pid."""

    universal_newlines = False
    text_mode = False
    encoding = None
    errors = None

    def __init__(self, transport, args):
        self._transport = weakref.ref(transport)
        self.args = args
        # set by the transport at connection_made / at the exit
        self.pid = None
        self.stdin = self.stdout = self.stderr = None
        self.returncode = None

    def __repr__(self):
        r = (f"<{self.__class__.__name__}: "
             f"returncode: {self.returncode} args: {self.args!r}>")
        if len(r) > 80:
            r = r[:76] + "...>"
        return r

    def _status(self, block, timeout=None):
        """The exit status if the child has exited (waiting for it with
        block), else None; without reaping it."""
        if self.returncode is not None:
            return self.returncode
        t = self._transport()
        if t is None:  # gone after its connection_lost: returncode was set
            return self.returncode
        code = t.get_returncode()
        fd = None if code is not None else t._pidfd()
        if fd is None:  # tpio has the status (or has let go of the child)
            code = t.get_returncode()
        else:
            try:
                code = self._waitid(t, fd, block, timeout)
            finally:
                os.close(fd)
        if code is not None and self.returncode is None:
            self.returncode = code
        return self.returncode

    def _waitid(self, t, fd, block, timeout):
        if block and timeout is not None:
            p = select.poll()
            p.register(fd, select.POLLIN)  # a pidfd is readable once exited
            if not p.poll(max(0, timeout) * 1000):
                raise subprocess.TimeoutExpired(self.args, timeout)
        flags = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
        try:
            info = os.waitid(os.P_PIDFD, fd, flags)
        except ChildProcessError:
            # Reaped meanwhile: by tpio (the loop runs in another thread),
            # or elsewhere (waitpid(-1)), when tpio will say 255.
            code = t.get_returncode()
            return 255 if code is None else code
        if info is None:
            return None
        if info.si_code == os.CLD_EXITED:
            return info.si_status
        return -info.si_status

    def poll(self):
        """The returncode if the child has exited, else None."""
        return self._status(False)

    def wait(self, timeout=None):
        """Wait for the child to exit (blocking the thread, as Popen does)
        and return its returncode; subprocess.TimeoutExpired after timeout
        seconds."""
        return self._status(True, timeout)

    def communicate(self, input=None, timeout=None):
        """Popen.communicate for a child without pipes (wait, then (None,
        None)); the pipes, if any, are the transport's."""
        if self.stdin is not None or self.stdout is not None or self.stderr is not None:
            raise NotImplementedError(
                "tpio: the child's pipes belong to the transport: use its pipe "
                "transports (or asyncio's Process.communicate)")
        self.wait(timeout)
        return None, None

    def send_signal(self, sig):
        """Send sig to the child, unless it is known to have exited."""
        self.poll()
        if self.returncode is not None:
            return
        t = self._transport()
        fd = None if t is None else t._pidfd()
        if fd is None:
            return
        try:
            signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            pass
        finally:
            os.close(fd)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)


async def start(loop, protocol, args, shell, stdin, stdout, stderr, kwargs):
    """Start the child for protocol; returns the transport once
    protocol.connection_made() has run (asyncio's _make_subprocess_transport)."""
    kwargs = dict(kwargs)
    env = kwargs.pop('env', None)
    cwd = kwargs.pop('cwd', None)
    extra = kwargs.pop('extra', None)
    new_session = kwargs.pop('start_new_session', False)
    group = kwargs.pop('process_group', None)
    pass_fds = kwargs.pop('pass_fds', ())
    _check_kwargs(kwargs)
    new_session = bool(operator.index(new_session))
    group = _process_group(group)
    pass_fds = _pass_fds(pass_fds, kwargs.get('close_fds', True))
    popen_args = args
    if shell:
        program = '/bin/sh'
        cmd = _fsarg(args)
    else:
        args = list(args)
        program = args[0]
        cmd = [_fsarg(a) for a in args]
    stdio = [_stdio(stdin), _stdio(stdout), _stdio(stderr)]
    env_list = None if env is None else _env_list(env)
    cwd_b = None if cwd is None else _fsarg(cwd)
    fut = loop.create_future()
    try:
        transport = loop._subprocess(fut, protocol, cmd, shell, *stdio, env_list, cwd_b,
                                     None if extra is None else dict(extra),
                                     args if shell else program,
                                     new_session, group, pass_fds)
    except OSError as exc:
        if program in ('', b'') and exc.errno == errno.ENOENT:
            exc = _empty_program_error(env)
        raise _start_error(exc, program, cwd, new_session or group is not None) from None
    # connection_made has not run yet: the protocol finds it there
    transport._set_popen(Popen(transport, popen_args))
    try:
        await fut
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        transport.close()
        await transport._wait()
        raise
    return transport



# ---- the policy's child watcher -------------------------------------------

_watcher_class = None


def child_watcher():
    """A new watcher for the policy's get_child_watcher().

    tpio's loops need none: each watches its children's exits through their
    pidfds. The watcher still does what asyncio's PidfdChildWatcher does for
    the pids given to its add_child_handler() (processes started without the
    loop, which are the caller's to reap): wait for each through a pidfd on
    the running loop (or the one attached), reap it, call back. Its class
    is made on first use: from Python 3.12 on, subclassing asyncio's
    AbstractChildWatcher is itself deprecated (a warning at class creation),
    as the calls that lead here are."""
    global _watcher_class
    if _watcher_class is None:
        with warnings.catch_warnings():  # the caller has had the warning
            warnings.simplefilter('ignore', DeprecationWarning)
            _watcher_class = _make_watcher_class()
    return _watcher_class()


def _make_watcher_class():
    import asyncio
    from asyncio import events
    from asyncio.log import logger

    class ChildWatcher(asyncio.AbstractChildWatcher):
        __doc__ = child_watcher.__doc__

        def __init__(self):
            self._loop = None
            self._callbacks = {}  # pid: (pidfd, loop, callback, args)

        def __enter__(self):
            return self

        def __exit__(self, exc_type, exc_value, exc_traceback):
            pass

        def is_active(self):
            return True  # works on whatever loop runs (as 3.12's pidfd one)

        def close(self):
            self.attach_loop(None)

        def attach_loop(self, loop):
            if self._loop is not None and loop is None and self._callbacks:
                warnings.warn('A loop is being detached from a child watcher '
                              'with pending handlers', RuntimeWarning)
            for pid in list(self._callbacks):
                self.remove_child_handler(pid)
            self._loop = loop

        def add_child_handler(self, pid, callback, *args):
            old = self._callbacks.get(pid)
            if old is not None:
                self._callbacks[pid] = old[:2] + (callback, args)
                return
            loop = events._get_running_loop() or self._loop
            if loop is None:
                raise RuntimeError('no running event loop, and none attached to '
                                   'the child watcher')
            pidfd = os.pidfd_open(pid)
            try:
                loop.add_reader(pidfd, self._do_wait, pid)
            except BaseException:
                os.close(pidfd)
                raise
            self._callbacks[pid] = (pidfd, loop, callback, args)

        def remove_child_handler(self, pid):
            entry = self._callbacks.pop(pid, None)
            if entry is None:
                return False
            pidfd, loop = entry[:2]
            if not loop.is_closed():
                loop.remove_reader(pidfd)
            os.close(pidfd)
            return True

        def _do_wait(self, pid):
            _, _, callback, args = self._callbacks[pid]
            self.remove_child_handler(pid)
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                returncode = 255  # reaped elsewhere: asyncio's answer
                logger.warning('child process pid %d exit status already read: '
                               ' will report returncode 255', pid)
            else:
                returncode = os.waitstatus_to_exitcode(status)
            callback(pid, returncode, *args)

    ChildWatcher.__qualname__ = 'ChildWatcher'
    return ChildWatcher
