"""``subprocess.run`` for the tests' ``python -m hfault ...`` and ``python SCRIPT ...`` runs, served
by forking a process that has imported torch already.

A fresh interpreter spends ~3 s of CPU importing torch and ``torch._dynamo`` before hfault's
own code starts, and the suite starts some 330 of them. :func:`run` instead asks a per-process
server (``tests/forkserver_main.py``, a fresh ``python`` started on first use with this
process's environment, that imported torch and nothing else) to fork. Each run is still a
separate OS process running the real ``python -m hfault`` main (or the script) in its own
cwd, environment, ``sys.argv``, ``sys.path[0]``, stdio and process group, with the exit status,
atexit handlers and uncaught-exception traceback of a fresh interpreter; only the import of
torch is shared.

A genuinely fresh ``subprocess.run`` is used instead when ``HFAULT_TEST_FRESH=1`` is set (the
faithful mode), when the caller asks (``fresh=True``: tests of import-time behaviour), when the
command is not ``sys.executable -m MODULE ...`` or ``sys.executable SCRIPT.py ...``, when the
run's environment differs from the server's in a variable read at interpreter or torch start-up
(:func:`read_at_startup`), and whenever the server cannot serve (it is restarted once, then given
up for the session). The server itself never fails a test.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import locale
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

FRESH_ENV = "HFAULT_TEST_FRESH"
LOG_ENV = "HFAULT_TEST_FORKSERVER_LOG"
SERVER_PROGRAM = Path(__file__).with_name("forkserver_main.py")
START_TIMEOUT = 180.0  # importing torch on a loaded 2-core machine
KILL_GRACE = 60.0  # for a killed child's status to arrive

# Environment variables read when the interpreter starts or torch (with dynamo) is imported:
# the server read them once, so a run that sets them differently must start fresh. Found by
# tracing getenv (LD_PRELOAD) and os.environ during `import torch, torch._dynamo` (torch 2.13).
STARTUP_PREFIXES = (
    "PYTHON", "_PYTHON", "LC_", "LD_", "OMP_", "GOMP_", "KMP_", "MKL", "DNNL_", "ONEDNN_",
    "OPENBLAS_", "GOTO_", "I_MPI_", "MPI_", "OMPI_", "INTEL_", "GFORTRAN_", "ACC_", "OPENSSL_",
    "CUDA", "NCCL_", "NVPL_", "TORCH", "PYTORCH_", "KINETO_", "INDUCTOR_", "AOT", "FX_",
    "PARTITIONER_", "COMPILE_STROBELIGHT_", "CUTLASS_", "CUTEDSL_", "ENABLE_", "LOG_", "PT2_",
    "DUMP_AOTI", "NPY_", "NUMPY_", "SYMPY_", "MPMATH_",
)
STARTUP_NAMES = frozenset({
    "LANG", "LANGUAGE", "TZ", "HOME", "TMPDIR", "TEMP", "TMP", "USER", "LOGNAME", "LNAME",
    "USERNAME", "PATH", "CI", "CC", "CXX", "SAGE_ROOT", "FAKE_ALLOW_META",
    "UNSAFE_SKIP_FSDP_MODULE_GUARDS", "__PYVENV_LAUNCHER__",
})
# Matched above but read later, when the child can apply them: PYTHONUNBUFFERED (the child makes
# its stdio by it) and two that the test process comes to have without asking (torch's inductor
# sets its cache dir when dynamo is imported, lightning.fabric the NVML-based CUDA check when it
# is imported), which torch reads when it uses them.
READ_LATER = frozenset({
    "PYTHONUNBUFFERED", "TORCHINDUCTOR_CACHE_DIR", "PYTORCH_NVML_BASED_CUDA_CHECK",
})


def read_at_startup(name: str) -> bool:
    """Whether the variable ``name`` is read before a forked child could apply it."""
    if name in READ_LATER:
        return False
    return name in STARTUP_NAMES or name.startswith(STARTUP_PREFIXES)


def run(cmd: Sequence[str | os.PathLike[str]], *, cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None, timeout: float | None = None,
        check: bool = False, text: bool = False, fresh: bool = False
        ) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run(cmd, stdin=DEVNULL, capture_output=True, cwd=cwd, env=env,
    timeout=timeout, check=check, text=text)``, served by a forked child of the torch-importing
    server where that is faithful (see the module's docstring)."""
    argv = [os.fspath(part) for part in cmd]
    run_env = dict(os.environ if env is None else env)
    run_cwd = os.path.abspath(os.getcwd() if cwd is None else cwd)
    result = None
    if not (fresh or os.environ.get(FRESH_ENV) == "1") and _servable(argv, run_cwd):
        result = _SERVERS.run(argv, run_cwd, run_env, timeout)
    if result is None:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, cwd=cwd,
                              env=env, timeout=timeout, check=check, text=text)
    returncode, stdout, stderr = result
    out: Any = _decode(stdout) if text else stdout
    err: Any = _decode(stderr) if text else stderr
    if check and returncode:
        raise subprocess.CalledProcessError(returncode, argv, out, err)
    return subprocess.CompletedProcess(argv, returncode, out, err)


def _servable(argv: list[str], cwd: str) -> bool:
    """``sys.executable -m MODULE ...`` or ``sys.executable SCRIPT.py ...`` (an existing file),
    without interpreter options."""
    if len(argv) < 2 or argv[0] != sys.executable:
        return False
    if argv[1] == "-m":
        return len(argv) >= 3 and not argv[2].startswith("-")
    script = argv[1]
    return script.endswith(".py") and os.path.isfile(os.path.join(cwd, script))


def _note_fresh(argv: list[str], why: str) -> None:
    """Say why a servable run gets a fresh interpreter, in the file ``HFAULT_TEST_FORKSERVER_LOG``
    names (if set): a fallback costs seconds of CPU a run and is otherwise silent."""
    log = os.environ.get(LOG_ENV)
    if log:
        with open(log, "a") as file:
            file.write(f"{os.getpid()} {' '.join(argv[1:3])}: {why}\n")


def _decode(data: bytes) -> str:
    """As ``subprocess.run(text=True)`` decodes: the locale's encoding, universal newlines."""
    return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace(
        "\r", "\n")


class _ServerError(Exception):
    """The server could not take the request (it is restarted once, then given up)."""


class _Server:
    """One running server process: started with this process's environment, which its
    children's start-up variables must match."""

    def __init__(self) -> None:
        self.env = dict(os.environ)
        self.address = f"hfault-forkserver-{os.getpid()}-{secrets.token_hex(8)}"
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER_PROGRAM), self.address], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=self.env, cwd=SERVER_PROGRAM.parent)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        line = self.proc.stdout.readline() if ready else b""
        self.proc.stdout.close()
        if line != b"ready\n":
            self.close()
            raise _ServerError("the fork server did not start")

    def startup_differences(self, env: Mapping[str, str]) -> list[str]:
        """The start-up variables that ``env`` sets otherwise than the server's environment."""
        names = {k for k in (*env, *self.env) if read_at_startup(k)}
        return sorted(k for k in names if env.get(k) != self.env.get(k))

    def start(self, argv: list[str], cwd: str, env: dict[str, str], stdout: int, stderr: int
              ) -> tuple[socket.socket, int, bytes]:
        """Ask for a child: the connection its status will come on, its pid, bytes read past
        the pid's line."""
        if self.proc.poll() is not None:
            raise _ServerError("the fork server has exited")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect("\0" + self.address)
            payload = json.dumps({"argv": argv, "cwd": cwd, "env": env}).encode() + b"\n"
            sent = socket.send_fds(sock, [payload], [stdout, stderr])
            sock.sendall(payload[sent:])
            sock.settimeout(START_TIMEOUT)
            data = b""
            while b"\n" not in data:
                more = sock.recv(4096)
                if not more:
                    raise _ServerError("the fork server closed the connection")
                data += more
        except OSError as exc:
            sock.close()
            raise _ServerError(str(exc)) from exc
        except _ServerError:
            sock.close()
            raise
        line, rest = data.split(b"\n", 1)
        return sock, int(json.loads(line)["pid"]), rest

    def close(self) -> None:
        """End the server (its stdin closes) and reap it, so that the CPU time of every child
        it reaped counts in this process's."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=KILL_GRACE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Servers:
    """This process's server, started on first use; restarted once if it breaks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._owner = os.getpid()
        self._starts_left = 2  # the first start and one restart
        atexit.register(self.close)

    def run(self, argv: list[str], cwd: str, env: dict[str, str], timeout: float | None
            ) -> tuple[int, bytes, bytes] | None:
        """(returncode, stdout, stderr) of a forked run; None where a fresh run must serve."""
        if os.getpid() != self._owner:  # a forked test process: the server is its parent's
            return None
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            started = self._start(argv, cwd, env, out_w, err_w)
        finally:
            os.close(out_w)
            os.close(err_w)
        if started is None:
            os.close(out_r)
            os.close(err_r)
            return None
        sock, pid, rest = started
        try:
            return _Child(argv, sock, pid, rest, out_r, err_r).wait(timeout)
        except _ServerError:  # the server died during the run: start it over, fresh
            _note_fresh(argv, "the fork server died during the run")
            _kill_group(pid)
            self._drop()
            return None

    def _start(self, argv: list[str], cwd: str, env: dict[str, str], stdout: int, stderr: int
               ) -> tuple[socket.socket, int, bytes] | None:
        with self._lock:
            while True:
                if self._server is None:
                    if self._starts_left == 0:
                        _note_fresh(argv, "the fork server could not be started")
                        return None
                    self._starts_left -= 1
                    try:
                        self._server = _Server()
                    except (_ServerError, OSError):
                        continue
                if differences := self._server.startup_differences(env):
                    _note_fresh(argv, "start-up variables differ: " + " ".join(differences))
                    return None
                try:
                    return self._server.start(argv, cwd, env, stdout, stderr)
                except _ServerError:
                    self._drop_locked()

    def _drop(self) -> None:
        with self._lock:
            self._drop_locked()

    def _drop_locked(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def close(self) -> None:
        if os.getpid() == self._owner:
            self._drop()


class _Child:
    """A forked run in progress: its output pipes and the connection its status comes on."""

    def __init__(self, argv: list[str], sock: socket.socket, pid: int, rest: bytes,
                 stdout: int, stderr: int) -> None:
        self.argv, self.sock, self.pid, self.status_data = argv, sock, pid, rest
        self.outputs: dict[int, list[bytes]] = {stdout: [], stderr: []}
        self.stdout, self.stderr = stdout, stderr

    def wait(self, timeout: float | None) -> tuple[int, bytes, bytes]:
        """Read both outputs to their end and the wait status, as ``communicate`` does; past
        ``timeout``, kill the child's process group and raise ``TimeoutExpired``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pipes = [self.stdout, self.stderr]
        status = self._status()
        try:
            while pipes or status is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self._kill_and_reap(pipes)
                    raise subprocess.TimeoutExpired(self.argv, timeout or 0, self._joined(
                        self.stdout), self._joined(self.stderr))
                waiting = pipes if status is not None else [*pipes, self.sock.fileno()]
                for fd in select.select(waiting, [], [], left)[0]:
                    if fd == self.sock.fileno():
                        status = self._receive_status()
                    elif data := os.read(fd, 1 << 16):
                        self.outputs[fd].append(data)
                    else:
                        pipes.remove(fd)
        finally:
            self.sock.close()
            os.close(self.stdout)
            os.close(self.stderr)
        return os.waitstatus_to_exitcode(status), self._joined(self.stdout), self._joined(
            self.stderr)

    def _receive_status(self) -> int | None:
        more = self.sock.recv(4096)
        if not more:
            raise _ServerError("the fork server died during a run")
        self.status_data += more
        return self._status()

    def _status(self) -> int | None:
        if b"\n" not in self.status_data:
            return None
        return int(json.loads(self.status_data.split(b"\n", 1)[0])["status"])

    def _kill_and_reap(self, pipes: list[int]) -> None:
        """Kill the process group; wait (bounded) for the server to reap the child; keep what
        it wrote before it died."""
        _kill_group(self.pid)
        self.sock.settimeout(KILL_GRACE)
        try:
            while self._status() is None and self._receive_status() is None:
                pass
        except (OSError, _ServerError):
            pass
        for fd in pipes:
            while select.select([fd], [], [], 0)[0] and (data := os.read(fd, 1 << 16)):
                self.outputs[fd].append(data)

    def _joined(self, fd: int) -> bytes:
        return b"".join(self.outputs[fd])


def _kill_group(pid: int) -> None:
    """SIGKILL the child's process group (its own since ``setsid``), or the child alone if it
    had not got that far."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


_SERVERS = _Servers()
