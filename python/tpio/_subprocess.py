"""subprocess_exec / subprocess_shell of tpio.EventLoop, after asyncio's
checks (in _loop.py): Popen's handling of the arguments, then the C call
(_tpio.Loop._subprocess), whose transport is tpio.SubprocessTransport.

The child is started by tpio (no fork of the interpreter, no child
watcher: its exit is watched through a pidfd). What Popen could do and
tpio cannot is refused here with NotImplementedError rather than ignored.
"""

import errno
import os
import subprocess

__all__ = ('start',)

# Popen's keyword arguments beyond env and cwd: the values tpio's child
# gets anyway are accepted (Popen's defaults), anything else is refused.
_DEFAULTS = {
    'executable': None,
    'preexec_fn': None,
    'close_fds': True,
    'pass_fds': (),
    'restore_signals': True,
    'start_new_session': False,
    'process_group': None,
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
            # does not keep (it keeps 0, 1 and 2 only).
            pass
        elif name == 'pass_fds':
            if value:
                raise NotImplementedError(
                    'tpio: pass_fds= is not supported (the child keeps only 0, 1 and 2)')
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


def _start_error(exc, program, cwd):
    """OSError of a start that failed, named as Popen names it."""
    if exc.errno not in _EXEC_ERRORS or exc.filename is not None:
        return exc
    filename = program
    if cwd is not None and not (os.path.isdir(cwd) and os.access(cwd, os.X_OK)):
        filename = cwd  # Popen: the child's chdir failed
    return OSError(exc.errno, os.strerror(exc.errno), filename)


async def start(loop, protocol, args, shell, stdin, stdout, stderr, kwargs):
    """Start the child for protocol; returns the transport once
    protocol.connection_made() has run (asyncio's _make_subprocess_transport)."""
    kwargs = dict(kwargs)
    env = kwargs.pop('env', None)
    cwd = kwargs.pop('cwd', None)
    extra = kwargs.pop('extra', None)
    _check_kwargs(kwargs)
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
                                     args if shell else program)
    except OSError as exc:
        raise _start_error(exc, program, cwd) from None
    try:
        await fut
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        transport.close()
        await transport._wait()
        raise
    return transport

