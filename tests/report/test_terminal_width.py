"""The terminal report at 80, 100, 120 and 160 columns: no line wider than the terminal, every
component named recognisably (shortened from the left, never wrapped), the most important
columns kept, messages wrapped at words; ``COLUMNS`` honoured by the real CLI."""

from __future__ import annotations

import copy
import io
import re
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len

from hfault.report.columns import Column, fit, shorten, table_width
from hfault.report.terminal import COMPONENT_COLUMN_PRIORITY, render, report_console
from tests.conftest import SCRIPTS, run_cli

pytestmark = pytest.mark.e2e

WIDTHS = (80, 100, 120, 160)
SHORT_HEADERS = {"tr H": "tr H ± se"}  # the abbreviated headers, by their column


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Deep module paths, curvature, attention, a finding and a verified LR fix: every table."""
    tmp = tmp_path_factory.mktemp("terminal_width")
    result = run_cli(["diagnose", "--curvature", "--verify-fix", "--quiet",
                      str(SCRIPTS / "long_names_train.py"), "--max-steps", "8", "--at", "1,8"],
                     tmp)
    assert result.report is not None, result.stderr
    assert result.report["findings"] and result.report["verify_fix"]["fixes"]
    return result.report


def first_order(report: dict[str, Any]) -> dict[str, Any]:
    """The same report as a run without --curvature renders it (no curvature at any step)."""
    plain = copy.deepcopy(report)
    for snap in plain["snapshots"]:
        snap.pop("curvature", None)
        snap.pop("graph", None)
    plain.pop("verify_fix")
    return plain


def rendered(report: dict[str, Any], width: int) -> str:
    out = io.StringIO()
    console = report_console(width)
    console.file = out
    render(report, console)
    return out.getvalue()


def table(text: str, title: str) -> tuple[list[str], list[list[str]]]:
    """Header cells and row cells of the table whose title starts with ``title``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(title))
    body = lines[start + 1:]
    head = next(i for i, line in enumerate(body) if line.strip())
    assert set(body[head + 1].strip()) == {"─"}, body[head + 1]
    rows = []
    for line in body[head + 2:]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return re.split(r"\s{2,}", body[head].strip()), rows


def recognisable(cell: str, name: str) -> bool:
    """The name whole, or an ellipsis and its last dotted parts (cut at a dot)."""
    if cell == name:
        return True
    tail = cell.removeprefix("…")
    return (cell.startswith("…") and name.endswith("." + tail)
            and tail.endswith(name.rsplit(".", 1)[-1]))


@pytest.mark.parametrize("width", WIDTHS)
def test_no_line_is_wider_than_the_terminal(report: dict[str, Any], width: int) -> None:
    full = rendered(report, width)
    assert "Fix verification" in full and "Strongest couplings" in full and "Attention" in full
    for text in (full, rendered(first_order(report), width)):
        assert max(cell_len(line) for line in text.splitlines()) <= width


@pytest.mark.parametrize("width", WIDTHS)
def test_every_component_row_names_its_component(report: dict[str, Any], width: int) -> None:
    text = rendered(report, width)
    names = [c["name"] for c in report["components"]]
    assert max(map(len, names)) > 30  # long enough to be shortened at 80
    _, rows = table(text, "Components at step")
    assert len(rows) == len(names)
    for row, name in zip(rows, names, strict=True):
        assert recognisable(row[0], name), (row[0], name)
    _, rows = table(text, "Findings, ranked")
    by_rank = {str(f["rank"]): f["component"] for f in report["findings"]}
    ranked = [row for row in rows if row[0] in by_rank]
    assert len(ranked) == len(by_rank)
    for row in ranked:
        assert any(recognisable(cell, by_rank[row[0]]) for cell in row), row
    _, rows = table(text, "Strongest couplings")
    shown = {(a, b) for a, b, *_ in rows}
    assert len(shown) == len(rows)  # shortened names still tell the couplings apart
    edges = report["snapshots"][-1]["graph"]["edges"]
    for a, b, *_ in rows:
        assert any(recognisable(a, e["source"]) and recognisable(b, e["target"])
                   for e in edges), (a, b)
    if width == 80:
        assert any(row[0].startswith("…") for row in table(text, "Components at step")[1])


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("curvature", [True, False])
def test_narrow_tables_keep_the_highest_priority_columns(report: dict[str, Any], width: int,
                                                         curvature: bool) -> None:
    data = report if curvature else first_order(report)
    text = rendered(data, width)
    header, _ = table(text, "Components at step")
    assert header[0] == "component"
    kept = [SHORT_HEADERS.get(h, h) for h in header[1:]]
    absent = {"zero g"} if curvature else {"tr H ± se", "λmin", "λmax", "r"}
    offered = [k for k in COMPONENT_COLUMN_PRIORITY if k not in absent]
    ranked = [k for k in offered if k in kept]
    assert set(kept) <= set(offered)
    assert ranked == offered[:len(ranked)], (width, kept)
    if curvature:
        assert {"r", "λmax", "‖g‖"} <= set(kept)
    if width == 160:
        assert ranked == offered
    if ranked != offered:  # the report says what it left out
        left = [k for k in offered if k not in kept]
        assert f"not shown at {width} columns: {', '.join(left)}" in " ".join(text.split())


@pytest.mark.parametrize("width", (80, 100))
def test_findings_messages_wrap_at_word_boundaries(report: dict[str, Any], width: int) -> None:
    text = rendered(report, width)
    flat = " ".join(text.split())
    lines = text.splitlines()
    for f in report["findings"]:
        assert " ".join(f["message"].split()) in flat  # no word cut in two
        assert " ".join(f["fix"]["summary"].split()) in flat
        # the message's own lines hang under its first word, beside rank and rule
        word = re.escape(f["message"].split()[0])
        first = next(i for i, line in enumerate(lines)
                     if re.match(rf"\s*{f['rank']}\s+{f['rule']}\s+{word}", line))
        head = lines[first]
        indent = head.index(f["message"].split()[0], head.index(f["rule"]) + len(f["rule"]))
        left = len(f["message"].split()) - len(head[indent:].split())
        for line in lines[first + 1:]:
            if left <= 0:
                break
            assert line[:indent].strip() == "" and line[indent] != " ", (line, indent)
            left -= len(line.split())
        assert left == 0


def test_columns_is_honoured_by_the_cli(report: dict[str, Any], tmp_path: Path) -> None:
    import json

    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(report))
    for columns, width in (("80", 80), ("160", 160), ("", 120)):  # unset and piped: 120
        result = run_cli(["report", str(saved)], tmp_path, json_report=False,
                         env={"COLUMNS": columns})
        assert result.returncode in (0, 1), result.stderr  # 1: the report has an error
        assert result.stdout == rendered(report, width)
        assert max(cell_len(line) for line in result.stdout.splitlines()) == width


def test_shorten_keeps_the_last_dotted_parts() -> None:
    name = "model.layers.0.self_attn.q_proj"
    assert shorten(name, 40) == name
    assert shorten(name, 26) == "…layers.0.self_attn.q_proj"
    assert shorten(name, 20) == "…0.self_attn.q_proj"
    assert shorten(name, 3) == "…q_proj"  # the last part stays whole


def test_fit_gives_way_in_priority_order() -> None:
    cells = ["12345678"]
    columns = [Column("component", ["a.b"], justify="left", kind="name"),
               *(Column(key, cells) for key in ("x", "y", "z"))]
    assert [c.key for c in fit(columns, ("x", "y", "z"), 200).columns] == [
        "component", "x", "y", "z"]
    narrow = fit(columns, ("z", "x", "y"), table_width([9, 8, 8]))  # room for two of three
    assert [c.key for c in narrow.columns] == ["component", "x", "z"]
    assert narrow.dropped == ["y"]


def test_rules_list_fits_columns_with_every_rule_name_whole(tmp_path: Path) -> None:
    result = run_cli(["rules"], tmp_path, json_report=False, env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(cell_len(line) for line in lines) <= 80
    names = [line.split()[1] for line in lines if re.match(r"\s+HF\d{3}\s", line)]
    assert len(names) >= 20 and all(re.fullmatch(r"[a-z0-9-]+", n) for n in names), names
