"""The fork server's program: import torch once, then fork one child per request, which becomes
``python -m MODULE ARGS`` or ``python SCRIPT ARGS``.

``tests/forkserver.py`` starts it as a fresh interpreter (``python forkserver_main.py ADDRESS``)
with the test process's environment. It imports ``torch`` and ``torch._dynamo`` (torch's
``Optimizer.add_param_group`` imports dynamo on first use, so nearly every training script pays
for it), runs no torch op (so no thread pool exists when it forks), listens on an abstract Unix
socket, writes ``ready`` on stdout and serves until its stdin closes (the test process ended).

A request is one connection: a JSON line (argv, cwd, env) with the child's stdout and stderr
descriptors beside it. The server forks, answers ``{"pid": N}`` at once and ``{"status": S}``
(the wait status) when the child has ended. The child leaves the server's loop by returning
from :func:`serve`; the module's last statement then runs the program, so that its exit status,
atexit handlers, flushing and an uncaught exception's traceback go through the interpreter's own
shutdown, as in a fresh ``python``.

Every module imported here is one that ``import torch`` imports anyway: the child's
``sys.modules`` is what a fresh process has right after importing torch.
"""

import builtins
import contextlib
import importlib
import importlib.machinery
import io
import json
import logging
import os
import runpy
import select
import signal
import socket
import sys
import types
from typing import Any

import torch  # the point of the server: imported once, shared by every child)
import torch._dynamo  # noqa: F401

MAX_MESSAGE = 1 << 22  # one request: argv, cwd and the full environment
THIS_FILE = os.path.abspath(__file__)

Children = dict[int, tuple[int, socket.socket]]  # pidfd -> (pid, the client's connection)


def serve(address: str) -> dict[str, Any] | None:
    """Serve until stdin closes (then None, in the server), or return a request (in a forked
    child, where the server's descriptors are closed)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    children: Children = {}
    try:
        listener.bind("\0" + address)
        listener.listen(64)
        poller = select.poll()
        poller.register(listener, select.POLLIN)
        poller.register(0, select.POLLIN)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        while True:
            for fd, _ in poller.poll():
                if fd == 0:
                    if not os.read(0, 4096):
                        _stop(children)
                        return None
                elif fd == listener.fileno():
                    request = _fork(listener, children, poller)
                    if request is not None:
                        return request
                else:
                    pid, conn = children.pop(fd)
                    poller.unregister(fd)
                    os.close(fd)
                    _, status = os.waitpid(pid, 0)
                    _send(conn, {"status": status})
                    conn.close()
    finally:
        listener.close()  # in the child too: it keeps nothing of the server


def _fork(listener: socket.socket, children: Children, poller: select.poll
          ) -> dict[str, Any] | None:
    """Accept one request and fork for it: the request in the child, None in the server."""
    conn, _ = listener.accept()
    try:
        request, fds = _receive(conn)
    except (OSError, ValueError):  # the client sees the connection close without a pid
        conn.close()
        return None
    try:
        pid = os.fork()
    except OSError:
        for descriptor in fds:
            os.close(descriptor)
        conn.close()
        return None
    if pid == 0:
        for pidfd, (_, other) in children.items():
            os.close(pidfd)
            other.close()
        conn.close()
        request["fds"] = fds
        return request
    for descriptor in fds:
        os.close(descriptor)
    pidfd = os.pidfd_open(pid)
    children[pidfd] = (pid, conn)
    poller.register(pidfd, select.POLLIN)
    _send(conn, {"pid": pid})
    return None


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One request: its JSON line and the two output descriptors sent with its first bytes."""
    data, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 2)
    try:
        while not data.endswith(b"\n"):
            more = conn.recv(MAX_MESSAGE)
            if not more:
                raise ConnectionError("request cut short")
            data += more
        if len(fds) != 2:
            raise ConnectionError("a request carries its stdout and stderr")
        return json.loads(data), fds
    except (OSError, ValueError):
        for descriptor in fds:
            os.close(descriptor)
        raise


def _send(conn: socket.socket, message: dict[str, int]) -> None:
    with contextlib.suppress(OSError):  # the client went away; its child is reaped all the same
        conn.sendall(json.dumps(message).encode() + b"\n")


def _stop(children: Children) -> None:
    """The test process ended: kill the children still running (their process groups) and reap
    them, so that their CPU time counts in the test process's."""
    for pidfd, (pid, conn) in children.items():
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(pidfd)
        conn.close()
    children.clear()


# ------------------------------------------------------------------------------ in the child
def become(request: dict[str, Any]) -> None:
    """Turn this forked child into ``python ARGV[1:]`` run in the request's cwd and environment;
    the program's exceptions (SystemExit included) propagate to the interpreter."""
    argv: list[str] = request["argv"]
    env: dict[str, str] = request["env"]
    os.setsid()  # its own process group: a timeout kills it and whatever it started
    devnull = os.open(os.devnull, os.O_RDONLY)
    for target, fd in ((0, devnull), *zip((1, 2), request["fds"], strict=True)):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(env)
    _reopen_stdio(unbuffered=bool(env.get("PYTHONUNBUFFERED")))
    _reseed()
    importlib.invalidate_caches()  # folders the server listed may have changed since
    main = types.ModuleType("__main__")
    main.__annotations__ = {}
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    main.__loader__ = importlib.machinery.BuiltinImporter
    sys.modules["__main__"] = main
    sys.orig_argv = list(argv)
    try:
        if argv[1] == "-m":
            sys.argv = ["-m", *argv[3:]]
            sys.path[0] = os.getcwd()
            runpy._run_module_as_main(argv[2])  # type: ignore[attr-defined]  # what -m runs
        else:
            sys.argv = argv[1:]
            sys.path[0] = os.path.dirname(os.path.realpath(argv[1]))
            _run_script(main, argv[0], argv[1])
    except BaseException:
        sys.excepthook = _without_own_frames(sys.excepthook)
        raise


def _run_script(main: types.ModuleType, program: str, script: str) -> None:
    """What ``python SCRIPT`` does (CPython's ``_PyRun_SimpleFileObject``): compile the file
    with no inherited flags and run it in ``__main__``, whose ``__file__`` is the absolute path
    joined, not normalized."""
    path = script if os.path.isabs(script) else os.path.join(os.getcwd(), script)
    try:
        with open(path, "rb") as file:
            source = file.read()
    except OSError as exc:
        sys.stderr.write(f"{program}: can't open file {path!r}: [Errno {exc.errno}] "
                         f"{exc.strerror}\n")
        raise SystemExit(2) from None
    main.__file__ = path
    main.__cached__ = None  # type: ignore[attr-defined]
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    try:
        exec(compile(source, path, "exec", dont_inherit=True), main.__dict__)
    finally:
        main.__dict__.pop("__file__", None)
        main.__dict__.pop("__cached__", None)


def _reopen_stdio(*, unbuffered: bool) -> None:
    """New ``sys.stdin/stdout/stderr`` on descriptors 0-2, made as CPython's ``create_stdio``
    makes them for this environment (``PYTHONUNBUFFERED``: unbuffered binary layer and write
    through; else stderr line-buffered). torch's logging handlers, made at import, follow."""
    old_stderr = sys.stderr
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        old = getattr(sys, name)
        buffering = 0 if unbuffered and mode == "w" else -1
        buf: Any = open(fd, mode + "b", buffering=buffering, closefd=False)  # noqa: SIM115
        raw = buf if buffering == 0 else buf.raw
        raw.name = f"<{name}>"
        line_buffering = not unbuffered and (raw.isatty() or fd == 2)
        stream = io.TextIOWrapper(buf, encoding=old.encoding, errors=old.errors, newline="\n",
                                  line_buffering=line_buffering, write_through=unbuffered)
        stream.mode = mode  # type: ignore[misc]
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, logging.StreamHandler) and handler.stream is old_stderr:
                handler.setStream(sys.stderr)


def _reseed() -> None:
    """Fresh entropy where a fresh process has it: ``random`` reseeds itself at fork; numpy's
    global generator, seeded when torch imported numpy, does not."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()


def _without_own_frames(hook: Any) -> Any:
    """``hook`` (sys.excepthook), shown the traceback without this file's frames at its head:
    the traceback a fresh ``python`` prints."""

    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        while tb is not None and tb.tb_frame.f_code.co_filename == THIS_FILE:
            tb = tb.tb_next
        hook(kind, value.with_traceback(tb), tb)

    return excepthook


if __name__ == "__main__":
    request = serve(sys.argv[1])
    if request is not None:
        become(request)
