"""One fix per root cause: consequences and identical fixes on crafted findings and report data,
and how the terminal, HTML and SARIF reports show them."""

from __future__ import annotations

import io
from typing import Any

import jsonschema
import pytest
from rich.console import Console

from hfault.findings import Finding, Fix, rank
from hfault.fixes.dedupe import relate, relation_text, same_fix, step_window
from hfault.report.html import to_html
from hfault.report.model import Report, RunInfo
from hfault.report.sarif import to_sarif
from hfault.report.terminal import render
from hfault.rules.engine import fingerprint
from tests.conftest import SCHEMA


def lr_fix(component: str, factor: float = 0.01, lr: float = 100.0) -> Fix:
    return Fix(f"Lower the learning rate of {component}",
               {"kind": "lower_lr", "component": component, "lr": lr, "new_lr": lr * factor,
                "factor": factor}, snippet=f"# split {component}\n")


def finding(rule: str, component: str | None, score: float, *, step: int | None = 75,
            fix: Fix | None = None, severity: str = "error", **kw: Any) -> Finding:
    return Finding(rule=rule, name=rule.lower(), severity=severity, message=f"{rule} on "
                   f"{component}", component=component, step=step, score=score, fix=fix,
                   fingerprint=fingerprint(rule, component, "train.py"), **kw)


def snapshots(*steps: int, edges: dict[int, list[tuple[str, str, float]]] | None = None
              ) -> list[dict[str, Any]]:
    out = []
    for s in steps:
        snap: dict[str, Any] = {"step": s, "loss": 1.0, "metrics": {}}
        if edges and s in edges:
            snap["graph"] = {"nodes": [], "edges": [
                {"source": a, "target": b, "kappa": k} for a, b, k in edges[s]]}
        out.append(snap)
    return out


def ranked(*findings: Finding, report: dict[str, Any] | None = None) -> list[Finding]:
    out = rank(list(findings))
    relate(out, report or {"snapshots": snapshots(1, 25, 50, 75, 100)})
    return out


# ---------------------------------------------------------------- identical fixes
def test_the_same_split_of_the_same_component_is_shown_once() -> None:
    first, second = ranked(finding("HF201", "word_rnn", 5.0, fix=lr_fix("word_rnn")),
                           finding("HF006", "word_rnn", 2.0, step=100, fix=lr_fix("word_rnn")))
    assert (first.fix_of, first.consequence_of, first.relation) == (None, None, None)
    assert (second.fix_of, second.consequence_of) == (1, None)
    assert second.relation == "the same as #1's (HF201)"
    assert second.fix is not None  # the report keeps it: only presentation changes


def test_another_factor_or_component_is_another_fix() -> None:
    a = finding("HF201", "word_rnn", 5.0, fix=lr_fix("word_rnn", 0.01))
    assert not same_fix(a, finding("HF006", "word_rnn", 2.0, fix=lr_fix("word_rnn", 0.0133)))
    assert not same_fix(a, finding("HF006", "sent_rnn", 2.0, fix=lr_fix("sent_rnn", 0.01)))
    assert not same_fix(a, finding("HF006", "word_rnn", 2.0, fix=Fix(
        "clip", {"kind": "clip_grad", "max_norm": 1.0})))


def test_clipping_is_one_fix_whatever_the_component_and_manual_fixes_compare_their_text() -> None:
    clip = {"kind": "clip_grad", "max_norm": 1.0}
    assert same_fix(finding("HF201", "word_rnn", 5.0, fix=Fix("Clip it.", dict(clip))),
                    finding("HF001", None, 2.0, fix=Fix("Clip the norm.", dict(clip))))
    manual = Fix("Reconnect it.", {"kind": "manual"}, "x = y")
    assert same_fix(finding("HF003", "a", 2.0, fix=manual),
                    finding("HF010", "a", 1.0, fix=Fix("Reconnect it.", {"kind": "manual"},
                                                       "x = y")))
    assert not same_fix(finding("HF003", "a", 2.0, fix=manual),
                        finding("HF003", "b", 1.0, fix=manual))


# ---------------------------------------------------------------- consequences
def test_ranked_lower_alone_is_never_a_consequence() -> None:
    _, symptom = ranked(finding("HF201", "word_rnn", 5.0, fix=lr_fix("word_rnn")),
                        finding("HF201", "embeddings", 3.0, severity="warning",
                                fix=lr_fix("embeddings", 0.00173, 1.0)))
    assert (symptom.consequence_of, symptom.fix_of, symptom.relation) == (None, None, None)


def test_a_component_downstream_on_the_propagation_path_is_a_consequence() -> None:
    report = {"snapshots": snapshots(1, 25, 50, 75, 100), "propagation": {"step": 100, "paths": [
        {"source": "word_rnn", "path": ["word_rnn", "embeddings", "classifier"],
         "strength": 0.4}]}}
    cause, symptom = ranked(
        finding("HF201", "word_rnn", 5.0, fix=lr_fix("word_rnn")),
        finding("HF201", "embeddings", 3.0, severity="warning",
                fix=lr_fix("embeddings", 0.00173, 1.0)), report=report)
    assert symptom.consequence_of == 1 and symptom.fix_of is None
    assert symptom.relation == ("downstream of word_rnn on the coupling path word_rnn → "
                                "embeddings → classifier")
    text = relation_text(symptom.to_dict())
    assert text is not None and text.startswith("consequence of #1: downstream of word_rnn")
    # the path runs from the cause: the other way round it is no evidence
    report["propagation"]["paths"][0]["path"] = ["embeddings", "word_rnn"]
    assert ranked(cause, symptom, report=report)[1].consequence_of is None


def test_a_strong_coupling_in_the_window_is_a_consequence_a_weak_or_late_one_is_not() -> None:
    def symptom_of(edges: dict[int, list[tuple[str, str, float]]], step: int = 75
                   ) -> Finding:
        report = {"snapshots": snapshots(1, 25, 50, 75, 100, edges=edges)}
        return ranked(finding("HF204", "q_proj", 5.0, fix=lr_fix("q_proj")),
                      finding("HF006", "k_proj", 2.0, step=step, fix=lr_fix("k_proj")),
                      report=report)[1]

    strong = symptom_of({75: [("k_proj", "q_proj", 0.7)]})
    assert strong.consequence_of == 1
    assert strong.relation == "coupled to q_proj (κ = 0.70 at step 75)"
    assert symptom_of({75: [("k_proj", "q_proj", 0.3)]}).consequence_of is None
    assert symptom_of({1: [("k_proj", "q_proj", 0.9)]}).consequence_of is None  # another window
    assert symptom_of({75: [("k_proj", "q_proj", 0.9)]}, step=1).consequence_of is None


def test_the_coupling_threshold_is_hf203s_as_the_report_was_judged() -> None:
    report = {"snapshots": snapshots(50, 75, edges={75: [("a", "b", 0.6)]}),
              "rules": [{"id": "HF203", "params": {"kappa_min": 0.65}}]}
    _, effect = ranked(finding("HF201", "a", 5.0, fix=lr_fix("a")),
                       finding("HF201", "b", 3.0, fix=lr_fix("b")), report=report)
    assert effect.consequence_of is None


def test_a_rule_recorded_relation_counts_in_any_window() -> None:
    _, pushed = ranked(finding("HF201", "word_rnn", 5.0, fix=lr_fix("word_rnn")),
                       finding("HF201", "embeddings", 3.0, step=1,
                               evidence={"pushed_by": "word_rnn"}))
    assert pushed.consequence_of == 1
    assert pushed.relation == "embeddings is pushed by word_rnn (HF201)"
    coupling = finding("HF203", "blocks.0.mlp", 4.0, related=["blocks.1.attn.k_proj"],
                       evidence={"downstream_component": "blocks.1.attn.k_proj"},
                       fix=lr_fix("blocks.0.mlp", 0.5, 1.0))
    _, downstream = ranked(coupling, finding("HF006", "blocks.1.attn.k_proj", 2.0,
                                             fix=lr_fix("blocks.1.attn.k_proj", 0.1, 1.0)))
    assert downstream.consequence_of == 1
    assert downstream.relation == "downstream of blocks.0.mlp, coupled to it (HF203)"


def test_only_a_root_cause_with_a_fix_explains_another_finding() -> None:
    path = {"path": ["a", "b", "c"]}
    report = {"snapshots": snapshots(50, 75), "propagation": {"paths": [path]}}
    no_fix = ranked(finding("HF201", "a", 5.0), finding("HF201", "b", 3.0, fix=lr_fix("b")),
                    report=report)
    assert no_fix[1].consequence_of is None
    # c is downstream of b, b a consequence of a: c points to the root, not to b
    report["propagation"]["paths"] = [path, {"path": ["b", "c"]}]
    chain = ranked(finding("HF201", "a", 5.0, fix=lr_fix("a")),
                   finding("HF201", "b", 3.0, fix=lr_fix("b")),
                   finding("HF201", "c", 2.0, fix=lr_fix("c")), report=report)
    assert [f.consequence_of for f in chain] == [None, 1, 1]


def test_a_consequence_with_the_causes_fix_is_a_consequence_not_a_duplicate() -> None:
    report = {"snapshots": snapshots(50, 75), "propagation": {"paths": [{"path": ["a", "b"]}]}}
    _, effect = ranked(finding("HF201", "a", 5.0, fix=lr_fix("a")),
                       finding("HF006", "b", 3.0, fix=lr_fix("a")), report=report)
    assert (effect.consequence_of, effect.fix_of) == (1, None)


def test_step_window_is_the_largest_snapshot_gap() -> None:
    assert step_window({"snapshots": snapshots(1, 25, 50, 100)}) == 50
    assert step_window({"snapshots": snapshots(7)}) == 0


# ---------------------------------------------------------------- rendered
@pytest.fixture
def report() -> dict[str, Any]:
    findings = rank([
        finding("HF201", "word_rnn", 5.0, fix=lr_fix("word_rnn")),
        finding("HF006", "word_rnn", 2.0, step=100, fix=lr_fix("word_rnn")),
        finding("HF201", "embeddings", 3.0, severity="warning",
                fix=lr_fix("embeddings", 0.00173, 1.0), evidence={"pushed_by": "word_rnn"}),
    ])
    run = RunInfo(script="train.py", argv=[], status="completed", error=None, steps=100,
                  seconds=1.0, device="cpu", torch="2", python="3.11")
    data = Report(run=run, components=[], snapshots=[], losses=[], findings=findings).to_dict()
    relate(findings, data)
    data = Report(run=run, components=[], snapshots=[], losses=[], findings=findings).to_dict()
    jsonschema.validate(data, SCHEMA)
    return data


def test_report_fields(report: dict[str, Any]) -> None:
    got = [(f["rank"], f["consequence_of"], f["fix_of"]) for f in report["findings"]]
    assert got == [(1, None, None), (2, None, 1), (3, 1, None)]
    assert all(f["fix"] is not None for f in report["findings"])


def test_terminal_shows_one_fix_and_the_relations(report: dict[str, Any]) -> None:
    out = io.StringIO()
    render(report, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert text.count("fix: Lower the learning rate") == 1
    assert "fix: the same as #1's (HF201), shown there" in text
    assert "consequence of #2" not in text and "consequence of #1: embeddings is pushed by " \
        "word_rnn (HF201); apply #1's fix, not one of its own" in text
    assert "fix for #1" in text and "fix for #2" not in text and "fix for #3" not in text
    assert text.count("# split") == 1


def test_html_shows_the_relation_in_place_of_the_fix(report: dict[str, Any]) -> None:
    page = to_html(report)
    assert page.count('class="snippet"') == 1 and page.count('<p class="fix">') == 1
    assert page.count('<p class="relation">') == 2
    assert "consequence of #1: embeddings is pushed by word_rnn" in page


def test_sarif_says_it_in_the_message_and_properties(report: dict[str, Any]) -> None:
    results = to_sarif(report, [])["runs"][0]["results"]
    props = [r["properties"] for r in results]
    assert [p.get("fixOf") for p in props] == [None, 1, None]
    assert [p.get("consequenceOf") for p in props] == [None, None, 1]
    assert results[0]["message"]["text"].endswith("Fix: Lower the learning rate of word_rnn")
    assert results[2]["message"]["text"].endswith(
        "Consequence of #1: embeddings is pushed by word_rnn (HF201); apply #1's fix, not one "
        "of its own.")


# ---------------------------------------------------------------- one cut, many dead components
def _dead_report(names: list[str]) -> dict[str, Any]:
    return {"snapshots": snapshots(1, 50, 100), "components": [{"name": n} for n in names]}


def _dead(*components: str) -> list[Finding]:
    """HF003 on each component, scored like the rule (10 + forward position)."""
    manual = Fix("Reconnect it to the loss.", {"kind": "manual"}, "x = y")
    order = ["embed", "blocks.0.attn", "blocks.0.ffn", "blocks.1.attn", "blocks.1.ffn", "head"]
    return [finding("HF003", c, 10 + order.index(c) / 5, step=1,
                    fix=Fix(manual.summary, dict(manual.values), manual.snippet))
            for c in components]


def test_components_upstream_of_where_the_gradient_stops_are_its_consequences() -> None:
    names = ["embed", "blocks.0.attn", "blocks.0.ffn", "blocks.1.attn", "blocks.1.ffn", "head"]
    out = rank(_dead("embed", "blocks.0.attn", "blocks.0.ffn", "blocks.1.attn"))
    relate(out, _dead_report(names))
    assert [(f.component, f.consequence_of) for f in out] == [
        ("blocks.1.attn", None), ("blocks.0.ffn", 1), ("blocks.0.attn", 1), ("embed", 1)]
    assert "where the gradient stops" in (out[1].relation or "")


def test_a_live_component_between_two_dead_ones_is_a_second_cut() -> None:
    names = ["embed", "blocks.0.attn", "blocks.0.ffn", "blocks.1.attn", "blocks.1.ffn", "head"]
    out = rank(_dead("embed", "blocks.0.attn", "blocks.1.attn"))  # blocks.0.ffn learns
    relate(out, _dead_report(names))
    assert [(f.component, f.consequence_of) for f in out] == [
        ("blocks.1.attn", None), ("blocks.0.attn", None), ("embed", 2)]


def test_terminal_folds_same_rule_consequences_under_their_cause() -> None:
    names = ["embed", "blocks.0.attn", "blocks.0.ffn", "blocks.1.attn", "blocks.1.ffn", "head"]
    findings = rank(_dead("embed", "blocks.0.attn", "blocks.0.ffn", "blocks.1.attn"))
    run = RunInfo(script="train.py", argv=[], status="completed", error=None, steps=100,
                  seconds=1.0, device="cpu", torch="2", python="3.11")
    relate(findings, _dead_report(names))
    data = Report(run=run, components=[], snapshots=[], losses=[], findings=findings).to_dict()
    out = io.StringIO()
    render(data, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "blocks.1.attn (+3 upstream)" in text
    assert "+ 3 more HF003 finding(s), consequences of #1: blocks.0.ffn, blocks.0.attn, embed" \
        in text
    assert text.count("fix: Reconnect it to the loss.") == 1
    assert len(data["findings"]) == 4  # the JSON report keeps every one
