"""End to end on the demo (``make demo``): one fault, one finding, one fix, and that fix, pasted
where its snippet says, is valid Python that removes the fault."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import SAMPLES, CliResult

DEMO = SAMPLES / "han_lr_fault.py"


def test_demo_shows_one_fix_and_pasting_it_where_it_says_removes_the_fault(
        cli: Callable[..., CliResult], tmp_path: Path) -> None:
    result = cli("diagnose", str(DEMO), "--max-steps", "100", "--fail-on", "never")
    assert result.report is not None
    findings = result.findings()
    fixes = [f for f in findings if f["fix"] and not f.get("consequence_of") and not f.get(
        "fix_of")]
    assert [(f["rule"], f["component"]) for f in fixes] == [("HF023", "word_rnn")], findings
    assert result.stdout.count("fix for #") == 1
    snippet = fixes[0]["fix"]["snippet"]
    compile(snippet, "<snippet>", "exec")
    where = re.search(r"lines (\d+)-(\d+) of (\S+),", snippet.replace("\n# ", " "))
    assert where is not None and Path(where[3]).name == DEMO.name, snippet
    first, last = int(where[1]), int(where[2])
    assert first == fixes[0]["location"]["line"]

    lines = DEMO.read_text().splitlines()
    indent = re.match(r"\s*", lines[first - 1])[0]  # type: ignore[index]
    pasted = [indent + line if line else line for line in snippet.splitlines()]
    fixed = tmp_path / DEMO.name
    fixed.write_text("\n".join(lines[:last] + pasted + lines[last:]) + "\n")
    after = cli("diagnose", str(fixed), "--max-steps", "100", "--fail-on", "never")
    assert after.report is not None and after.report["run"]["status"] == "stopped"
    errors: list[Any] = [(f["rule"], f["component"]) for f in after.findings()
                         if f["severity"] == "error"]
    assert errors == []
    word_rnn = after.report["snapshots"][-1]["metrics"]["word_rnn"]
    assert word_rnn["lr"] == 1.0  # 100 × 0.01: the group's own rate times the factor
