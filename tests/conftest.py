"""Shared fixtures: run the real CLI in a subprocess (forked from a torch-importing server, see
tests/forkserver.py); every JSON report is schema-validated."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from tests import forkserver

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "scripts"
SAMPLES = ROOT / "sample_programs"
SCHEMA = json.loads((ROOT / "docs" / "report.schema.json").read_text())


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    report: dict[str, Any] | None

    def findings(self, rule: str | None = None) -> list[dict[str, Any]]:
        assert self.report is not None
        return [f for f in self.report["findings"] if rule is None or f["rule"] == rule]

    def component(self, name: str) -> dict[str, Any]:
        assert self.report is not None
        for comp in self.report["components"]:
            if comp["name"] == name:
                return comp
        raise AssertionError(f"no component {name}: {self.names()}")

    def names(self) -> list[str]:
        assert self.report is not None
        return [c["name"] for c in self.report["components"]]


def validate(report: dict[str, Any]) -> None:
    jsonschema.validate(report, SCHEMA)


def run_cli(
    args: list[str],
    tmp_path: Path,
    *,
    json_report: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
    fresh: bool = False,
) -> CliResult:
    """``python -m hfault ARGS [--json tmp/report.json]``; the report is parsed and validated.
    ``fresh``: in a new interpreter, not forked from the fork server."""
    report_path = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "hfault", *args]
    if json_report:
        # --json goes before any "--" so it is ours, not the script's.
        split = cmd.index("--") if "--" in cmd else len(cmd)
        cmd[split:split] = ["--json", str(report_path)]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = forkserver.run(
        cmd, text=True, timeout=timeout, env=full_env, cwd=cwd or ROOT, fresh=fresh
    )
    report = None
    if json_report and report_path.exists():
        report = json.loads(report_path.read_text())
        validate(report)
    return CliResult(proc.returncode, proc.stdout, proc.stderr, report)


def run_plain(script: Path, args: list[str], timeout: float = 300) -> None:
    """``python SCRIPT ARGS`` without hfault (forked from the fork server), which must succeed."""
    forkserver.run([sys.executable, str(script), *args], check=True, timeout=timeout, cwd=ROOT)


def assert_same_training(plain: Path, watched: Path) -> dict[str, Any]:
    """Losses and every state_dict tensor bit-identical with and without hfault."""
    a, b = torch.load(plain), torch.load(watched)
    assert a["losses"] == b["losses"]
    for sa, sb in zip(a["states"], b["states"], strict=True):
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
    return b


@pytest.fixture(scope="module")
def one_math_thread() -> Iterator[None]:
    """One intra-op thread for in-process training and tiny float64 models: the machine's 2
    cores are shared, and 2 OpenMP threads per process busy-waiting under contention made the
    suite ~20x slower. The previous setting is restored after the test module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def cli(tmp_path: Path):
    def call(*args: str, **kwargs: Any) -> CliResult:
        return run_cli(list(args), tmp_path, **kwargs)

    return call


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark end-to-end tests (``-m e2e`` / ``-m "not e2e"``): every test that runs the CLI in a
    subprocess (the ``cli`` fixture); modules that run training scripts in-process declare
    ``pytestmark = pytest.mark.e2e`` themselves.

    Then order the modules for two xdist workers: those with end-to-end tests first, the sample
    programs (the longest tests) first of all, so that the quick unit tests fill the end of the
    run on whichever worker is free and no long test starts last. Modules stay whole, in their
    own order, so that their module fixtures are set up once."""
    for item in items:
        if "cli" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
    e2e = {_module_of(i.nodeid) for i in items if i.get_closest_marker("e2e")}

    def rank(item: pytest.Item) -> int:
        module = _module_of(item.nodeid)
        return 0 if module.endswith("tests/test_samples.py") else 1 if module in e2e else 2

    items.sort(key=rank)  # stable


def _module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@functools.cache
def shares_module_fixture(module: str) -> bool:
    """Whether the test module defines a module-scoped fixture (one CLI run or measurement
    shared by its tests)."""
    path = ROOT / module
    return path.suffix == ".py" and '@pytest.fixture(scope="module"' in path.read_text()


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # before pytest-xdist's own scheduler
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``pytest -n 2`` (``--dist load``): tests go one by one to whichever worker is free,
    except that a module with a module-scoped fixture goes whole to one worker, so that the
    fixture (a CLI run of tens of seconds) runs once, not once per worker. Such modules start
    first. (pytest-xdist's own ``--dist loadgroup`` cannot do this under pytest 9: it renames
    ``item._nodeid``, which pytest 9 no longer reads.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = _module_of(nodeid)
            return module if shares_module_fixture(module) else nodeid

    return SharedFixtureScheduling(config, log)
