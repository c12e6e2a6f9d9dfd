"""The test suite's fork server (tests/forkserver.py): a forked run behaves as a fresh ``python``.

Each test runs a small real script through the server and, where a fresh interpreter is the
reference, through ``subprocess.run`` too, and compares. Every forked run is checked to have
been forked (its parent is the server, not this process), so a silent fallback to a fresh
process cannot pass for the server working; ``HFAULT_TEST_FRESH`` is cleared here so that these
tests exercise the server in the suite's fresh mode as well, and they use a server of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import forkserver
from tests.conftest import ROOT

PPID = "import os; print('ppid', os.getppid())\n"


@pytest.fixture(scope="module")
def own_server() -> Iterator[forkserver._Servers]:
    """A server of this module's own, started with the environment these tests run in (the
    suite's may have been started before an earlier test's imports set variables)."""
    servers = forkserver._Servers()
    yield servers
    servers.close()


@pytest.fixture(autouse=True)
def server_mode(monkeypatch: pytest.MonkeyPatch, own_server: forkserver._Servers) -> None:
    monkeypatch.delenv(forkserver.FRESH_ENV, raising=False)
    monkeypatch.setattr(forkserver, "_SERVERS", own_server)


def script(tmp_path: Path, body: str, name: str = "prog.py") -> Path:
    path = tmp_path / name
    path.write_text(PPID + textwrap.dedent(body))
    return path


def forked(result: subprocess.CompletedProcess[Any]) -> bool:
    """Whether the run was a child of the server (a fresh run is this process's child)."""
    out = result.stdout if isinstance(result.stdout, str) else result.stdout.decode()
    ppids = [line.split()[1] for line in out.splitlines() if line.startswith("ppid ")]
    assert ppids, out
    return ppids[0] != str(os.getpid())


def both(cmd: list[str], **kwargs: Any) -> tuple[subprocess.CompletedProcess[str],
                                                  subprocess.CompletedProcess[str]]:
    """The forked run and the fresh one, the ppid line left out of their outputs."""
    served = forkserver.run(cmd, text=True, **kwargs)
    fresh = forkserver.run(cmd, text=True, fresh=True, **kwargs)
    assert forked(served) and not forked(fresh)
    for result in (served, fresh):
        result.stdout = "".join(line for line in result.stdout.splitlines(keepends=True)
                                if not line.startswith("ppid "))
    return served, fresh


def test_exit_status_of_sys_exit(tmp_path: Path):
    prog = script(tmp_path, "import sys; sys.exit(3)")
    result = forkserver.run([sys.executable, str(prog)], text=True)
    assert forked(result) and result.returncode == 3


def test_os_exit_status(tmp_path: Path):
    prog = script(tmp_path, "import sys; sys.stdout.flush(); os._exit(7)")
    result = forkserver.run([sys.executable, str(prog)], text=True)
    assert forked(result) and result.returncode == 7


def test_killed_by_a_signal_is_a_negative_returncode(tmp_path: Path):
    prog = script(tmp_path, "import signal, sys; sys.stdout.flush(); "
                            "os.kill(os.getpid(), signal.SIGKILL)")
    result = forkserver.run([sys.executable, str(prog)], text=True)
    assert forked(result) and result.returncode == -9


@pytest.mark.parametrize("how", ["script", "module"])
def test_uncaught_exception_prints_the_fresh_traceback_and_exits_1(tmp_path: Path, how: str):
    body = """\
        def fail():
            raise ValueError("boom")
        fail()
    """
    if how == "module":
        script(tmp_path, body, "failing.py")
        cmd = [sys.executable, "-m", "failing"]
    else:
        cmd = [sys.executable, str(script(tmp_path, body))]
    served, fresh = both(cmd, cwd=tmp_path)
    assert served.returncode == fresh.returncode == 1
    assert "ValueError: boom" in served.stderr
    assert served.stderr == fresh.stderr  # no frame of the server's


def test_atexit_output_and_the_separate_streams(tmp_path: Path):
    prog = script(tmp_path, """\
        import atexit, sys
        atexit.register(lambda: print("at exit"))
        print("to stdout")
        print("to stderr", file=sys.stderr)
    """)
    served, fresh = both([sys.executable, str(prog)])
    assert served.stdout == fresh.stdout == "to stdout\nat exit\n"
    assert served.stderr == fresh.stderr == "to stderr\n"
    assert served.returncode == fresh.returncode == 0


def test_cwd_and_environment_are_the_runs(tmp_path: Path):
    """The run's environment replaces the server's: ``PYTEST_CURRENT_TEST``, set when the server
    started (within a test), is not in the run's and must not appear."""
    prog = script(tmp_path, """\
        print(os.getcwd(), os.environ.get("FORKSERVER_PROBE"))
        print(sorted(os.environ.items()))
    """)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env["FORKSERVER_PROBE"] = "seen"
    result = forkserver.run([sys.executable, str(prog)], cwd=work, env=env, text=True)
    assert forked(result)
    lines = result.stdout.splitlines()
    assert lines[1] == f"{work} seen"
    assert lines[2] == str(sorted(env.items()))


def test_timeout_kills_the_process_group_and_raises(tmp_path: Path):
    prog = script(tmp_path, """\
        import subprocess, sys, time
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print("pids", os.getpid(), sleeper.pid, flush=True)
        time.sleep(600)
    """)
    with pytest.raises(subprocess.TimeoutExpired) as caught:
        forkserver.run([sys.executable, str(prog)], timeout=5)
    output = caught.value.stdout or b""
    pids = [line.split()[1:] for line in output.decode().splitlines() if line.startswith("pids")]
    assert pids, output
    for pid in pids[0]:  # the child and its own child: killed, not left running
        assert _gone_or_zombie(int(pid)), pid


def _gone_or_zombie(pid: int) -> bool:
    for _ in range(200):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_torch_threads_as_in_a_fresh_process(tmp_path: Path):
    prog = script(tmp_path, "import torch; print(torch.get_num_threads())")
    served, fresh = both([sys.executable, str(prog)])
    assert served.stdout == fresh.stdout


def test_a_start_up_variable_of_its_own_gets_a_fresh_process(tmp_path: Path):
    """OMP_NUM_THREADS is read when torch loads: a run that changes it cannot be forked."""
    prog = script(tmp_path, "import torch; print(torch.get_num_threads())")
    threads = "2" if os.environ.get("OMP_NUM_THREADS") != "2" else "1"
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    result = forkserver.run([sys.executable, str(prog)], env=env, text=True)
    assert not forked(result) and result.stdout.splitlines()[1] == threads


def test_fresh_mode_and_fresh_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    prog = script(tmp_path, "")
    assert not forked(forkserver.run([sys.executable, str(prog)], fresh=True))
    monkeypatch.setenv(forkserver.FRESH_ENV, "1")
    assert not forked(forkserver.run([sys.executable, str(prog)]))


@pytest.mark.parametrize("how", ["absolute", "relative", "module"])
def test_argv_path_and_main_as_in_a_fresh_process(tmp_path: Path, how: str):
    body = """\
        import sys, __main__
        print(sys.argv, sys.path[0], sys.orig_argv)
        print(sorted((k, type(v).__name__) for k, v in vars(__main__).items()))
        print(__main__.__file__, __main__.__package__, __main__.__spec__ and __main__.__spec__.name)
        print(__name__, __file__, __package__)
    """
    if how == "module":
        package = tmp_path / "fspkg"
        package.mkdir()
        (package / "__init__.py").write_text("")
        script(package, body, "__main__.py")
        cmd = [sys.executable, "-m", "fspkg", "a", "--b"]
    else:
        prog = script(tmp_path, body)
        cmd = [sys.executable, str(prog) if how == "absolute" else prog.name, "a", "--b"]
    served, fresh = both(cmd, cwd=tmp_path)
    assert served.returncode == fresh.returncode == 0, served.stderr
    assert served.stdout == fresh.stdout


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_stdio_as_in_a_fresh_process(tmp_path: Path, unbuffered: str):
    prog = script(tmp_path, """\
        import sys
        for s in (sys.stdin, sys.stdout, sys.stderr):
            print(s.name, type(s.buffer).__name__, s.encoding, s.errors, s.line_buffering,
                  s.write_through, s.mode, s is getattr(sys, "__%s__" % s.name[1:-1]))
        print(sys.stdin.read() == "")
    """)
    env = {**os.environ, "PYTHONUNBUFFERED": unbuffered}
    served, fresh = both([sys.executable, str(prog)], env=env)
    assert served.stdout == fresh.stdout


def test_hfault_cli_runs_forked():
    served = forkserver.run([sys.executable, "-m", "hfault", "--version"], cwd=ROOT, text=True)
    fresh = forkserver.run([sys.executable, "-m", "hfault", "--version"], cwd=ROOT, text=True,
                           fresh=True)
    assert (served.returncode, served.stdout) == (fresh.returncode, fresh.stdout) == (
        0, "hfault 0.1.0\n")
