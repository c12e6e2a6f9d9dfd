"""Shared fixtures: run the real CLI in a subprocess; every JSON report is schema-validated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

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
) -> CliResult:
    """``python -m hfault ARGS [--json tmp/report.json]``; the report is parsed and validated."""
    report_path = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "hfault", *args]
    if json_report:
        # --json goes before any "--" so it is ours, not the script's.
        split = cmd.index("--") if "--" in cmd else len(cmd)
        cmd[split:split] = ["--json", str(report_path)]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd or ROOT
    )
    report = None
    if json_report and report_path.exists():
        report = json.loads(report_path.read_text())
        validate(report)
    return CliResult(proc.returncode, proc.stdout, proc.stderr, report)


def run_plain(script: Path, args: list[str], timeout: float = 300) -> None:
    subprocess.run(
        [sys.executable, str(script), *args], check=True, capture_output=True, timeout=timeout,
        cwd=ROOT,
    )


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
    ``pytestmark = pytest.mark.e2e`` themselves."""
    for item in items:
        if "cli" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
