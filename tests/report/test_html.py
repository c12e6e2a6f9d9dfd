"""The HTML report (``--html``): one self-contained file, every report string escaped, every
section present for real runs (a localized LR fault, a NaN, a crash), the future ``verify_fix``
block, and a real headless browser that renders it without errors or network requests."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from hfault import ExitCode
from hfault.numbers import fmt
from hfault.report.html import to_html, write_html
from tests.conftest import SAMPLES, SCRIPTS, CliResult, run_cli

HOSTILE = "<script>alert('x')</script>&<img src=x onerror=alert(1)>"


# ---------------------------------------------------------------- helpers


def assert_self_contained(page: str) -> None:
    """Nothing to fetch at view time: no remote src/href, no external script or stylesheet."""
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert not re.search(r"<link\b", page, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?(?:https?:)?//", page, re.I)
    assert page.count("<script") == 1  # ours, inline


class _Balance(HTMLParser):
    VOID = frozenset({"meta", "br", "wbr", "input", "img", "hr", "link"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-6:], self.getpos())
        self.stack.pop()


def svgs(page: str) -> list[ET.Element]:
    """Every tag closed in order, and every inline SVG parsed as XML (well-formed, so any SVG
    viewer or extractor reads it)."""
    checker = _Balance()
    checker.feed(page)
    checker.close()
    assert not checker.stack, checker.stack
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", page, re.S)]


def row(page: str, component: str) -> str:
    """The timeline row of one component."""
    start = page.index(f'data-name="{component}"')
    end = page.find('<div class="tl-row', start)
    return page[start : end if end > 0 else None]


def diagnose(tmp: Path, script: Path, *args: str) -> tuple[CliResult, str]:
    html = tmp / "report.html"
    argv = ["diagnose", "--curvature", str(script), "--quiet", "--html", str(html), *args]
    result = run_cli(argv, tmp)
    assert html.is_file(), result.stderr
    return result, html.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def lr_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[CliResult, str, Path]:
    tmp = tmp_path_factory.mktemp("lr")
    result, page = diagnose(tmp, SAMPLES / "transformer_lr_fault.py", "--max-steps", "40")
    return result, page, tmp


@pytest.fixture
def lr_report(lr_run: tuple[CliResult, str, Path]) -> dict[str, Any]:
    assert lr_run[0].report is not None
    return copy.deepcopy(lr_run[0].report)


# ---------------------------------------------------------------- real runs


def test_lr_fault_report_is_self_contained_with_findings_and_charts(lr_run):
    result, page, _ = lr_run
    assert result.returncode == ExitCode.FINDINGS  # --html leaves the exit code alone
    assert_self_contained(page)
    report = result.report
    assert report is not None
    for f in report["findings"]:
        assert f'id="finding-{f["rank"]}"' in page and f["rule"] in page
    assert 'class="badge v-faulty"' in page
    assert "blocks.0.attn.q_proj" in page
    for section in ("findings", "coupling", "timelines", "spectrum"):
        assert f'<section id="{section}">' in page
    assert 'id="verify-fix"' not in page  # only with --verify-fix data
    parsed = svgs(page)
    classes = [svg.get("class") for svg in parsed]
    assert "chart heat" in classes and "chart graph" in classes and "chart spec" in classes
    # Heatmap: the 8 attention projections, every off-diagonal pair a coloured cell.
    graph = report["snapshots"][-1]["graph"]
    assert page.count('class="cell"') == 2 * len(graph["edges"]) == 8 * 7
    # Node-link: the propagation path drawn as arrows, the flagged node highlighted.
    assert page.count('class="pathedge"') == sum(
        len(p["path"]) - 1 for p in report["propagation"]["paths"])
    assert '<text class="hl"' in page
    # One timeline row per component; the flagged one first, with its findings marked.
    assert page.count('<div class="tl-row') == len(report["components"])
    assert page.index('data-name="blocks.0.attn.q_proj"') < page.index('data-name="embed"')
    marks = re.search(r"((?:HF\d+, )*HF\d+) at step 40", row(page, "blocks.0.attn.q_proj"))
    assert marks is not None and set(marks.group(1).split(", ")) == {"HF204", "HF205", "HF023"}
    assert "r = 1" in page and "HF204 limit 0.2" in page


def test_nan_run_marks_the_non_finite_steps(tmp_path: Path):
    result, page = diagnose(tmp_path, SCRIPTS / "nan_train.py", "--", "--steps", "8",
                            "--bad-step", "5")
    assert result.returncode == ExitCode.FINDINGS
    assert_self_contained(page)
    svgs(page)
    assert "First non-finite values" in page
    assert "non-finite at step 5–8" in page  # the loss chart's red band
    assert "HF001 at step 5" in page  # on the loss chart: `temp` has no parameters of its own


def test_crash_of_a_hostile_script_name_still_writes_an_escaped_report(tmp_path: Path):
    script = tmp_path / "a<b>&'c\".py"
    shutil.copy(SCRIPTS / "crash_train.py", script)
    result, page = diagnose(tmp_path, script)
    assert result.returncode == ExitCode.SCRIPT_CRASHED
    assert result.report is not None and result.report["run"]["status"] == "crashed"
    assert_self_contained(page)
    svgs(page)
    assert "a<b>" not in page and "a&lt;b&gt;&amp;&#x27;c&quot;.py" in page
    assert 'class="badge v-crashed"' in page
    assert "corrupt shard 7" in page and "traceback" in page


def test_report_command_renders_a_saved_report_identically(lr_run):
    _, page, tmp = lr_run
    out = tmp / "again.html"
    proc = run_cli(["report", str(tmp / "report.json"), "--quiet", "--html", str(out)], tmp,
                   json_report=False)
    assert proc.returncode == ExitCode.FINDINGS, proc.stderr
    assert out.read_text(encoding="utf-8") == page


# ---------------------------------------------------------------- unit: rendering a dict


def test_every_report_string_is_escaped(lr_report):
    r = lr_report
    r["run"]["script"] = HOSTILE
    r["run"]["argv"] = [HOSTILE]
    r["notes"] = [HOSTILE]
    r["summary"]["headline"] = HOSTILE
    f = r["findings"][0]
    f["message"] = f["name"] = f["fix"]["summary"] = f["fix"]["snippet"] = HOSTILE
    f["evidence"][HOSTILE] = HOSTILE
    f["location"] = {"path": HOSTILE, "line": 1}
    for snap in r["snapshots"]:
        first = next(iter(snap["attention"].values()))
        snap["attention"] = {HOSTILE: first}
    page = to_html(r)
    assert "<script>alert" not in page and "<img" not in page
    assert page.count("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;") >= 8
    assert_self_contained(page)
    svgs(page)


def test_partial_reports_render(lr_report):
    assert "No findings." in to_html({"run": {"script": "x.py"}, "findings": []})
    first_order = lr_report
    first_order["propagation"] = None
    for snap in first_order["snapshots"]:
        snap.pop("graph")
        snap.pop("curvature")
        for m in snap["metrics"].values():
            for key in ("trace", "trace_se", "lambda_max", "lambda_min", "stability_ratio"):
                m.pop(key, None)
    page = to_html(first_order)
    assert "No coupling graph" in page and "no curvature was measured" in page
    assert "‖Δθ‖/‖θ‖" in page  # first-order columns instead of curvature ones
    svgs(page)
    empty = copy.deepcopy(first_order)
    empty["snapshots"], empty["timeline"] = [], {"loss": []}
    assert "No snapshot was taken" in to_html(empty)


def test_a_timeline_finding_is_marked_at_its_step(lr_report):
    # A change-point rule (scope "timeline") reports the step where a regime change began.
    lr_report["findings"].append({
        "rule": "HF030", "name": "regime-change", "severity": "info", "rank": 4, "score": 1.0,
        "component": "blocks.1.attn.v_proj", "step": 25, "message": "λmax changed regime",
        "evidence": {"metric": "lambda_max", "value": 0.6, "threshold": 0.4,
                     "series": [[1, 0.1], [10, 0.1], [20, 0.2], [30, 0.6]]},
        "fix": None, "location": None, "fingerprint": "0" * 32, "related": []})
    page = to_html(lr_report)
    chart_row = row(page, "blocks.1.attn.v_proj")
    assert chart_row.count("HF030 at step 25") == 4  # on each of its four charts
    assert "HF030 limit 0.4" in chart_row  # the threshold on its λmax chart
    assert 'aria-label="series"' in page  # evidence series drawn as a small chart
    svgs(page)


def verify_fix_block(report: dict[str, Any]) -> dict[str, Any]:
    """A --verify-fix result in the agreed shape: q_proj's LR lowered, loss and λmax re-measured."""
    before = [[p["step"], p["loss"]] for p in report["timeline"]["loss"]]
    after = [[s, loss * 0.7 if isinstance(loss, float) else loss] for s, loss in before]
    after[3][1] = "nan"
    steps = [s["step"] for s in report["snapshots"]]
    lmax = [s["metrics"]["blocks.0.attn.q_proj"]["lambda_max"] for s in report["snapshots"]]
    rerun = copy.deepcopy(report)
    rerun["findings"] = rerun["findings"][2:]
    rerun["summary"] = {**rerun["summary"], "verdict": "suspicious", "headline": "better"}
    return {
        "fixes": [{"rule": "HF006", "component": "blocks.0.attn.q_proj", "kind": "lower_lr",
                   "lr_before": 0.3, "lr_after": 0.003, "max_norm": None,
                   "note": "param group 0 scaled x0.01",
                   "in_effect": {"held": False, "first_step_off": 7, "steps_checked": 20,
                                 "assigned_at": {"file": "train.py", "line": 41}}},
                  {"rule": "HF205", "component": "blocks.0.attn.q_proj", "kind": "clip_grad",
                   "lr_before": None, "lr_after": None, "max_norm": 1.0}],
        "verdict": "fixed",
        "summary": "HF204 and HF205 are gone <after> the fix & the loss is lower",
        "loss": {"before": before, "after": after},
        "final_loss": {"before": before[-1][1], "after": "nan", "tolerance": 0.05},
        "horizon": {"baseline": "rerun", "steps": 40},
        "validation": {"step": 40, "before": 1.5, "after": 1.25, "change": "better"},
        "notes": ["the rerun used --verify-steps 40"],
        "metrics": [
            {"component": "blocks.0.attn.q_proj", "metric": "lambda_max", "steps": steps,
             "before": lmax, "after": [v / 2 for v in lmax[:-1]] + [None]},
            {"component": "blocks.0.attn.k_proj", "metric": "weight_growth", "steps": steps,
             "before": [1.0] * len(steps), "after": [1.1] * len(steps)},
        ],
        "findings": [
            {"rule": "HF006", "name": "runaway-weight-growth", "component": "blocks.0.attn.q_proj",
             "status": "gone", "motivating": True, "severity_before": "error",
             "severity_after": None, "score_before": 3.2, "score_after": None},
            {"rule": "HF205", "name": "attention-logit-growth", "component": "blocks.0.attn.q_proj",
             "status": "weaker", "motivating": True, "severity_before": "warning",
             "severity_after": "warning", "score_before": 2.0, "score_after": 1.1},
            {"rule": "HF012", "name": "loss-oscillation", "component": None, "status": "new",
             "motivating": False, "severity_before": None, "severity_after": "warning",
             "score_before": None, "score_after": 0.3},
        ],
        "edges": [{"source": "blocks.0.attn.q_proj", "target": "blocks.0.attn.k_proj",
                   "steps": steps,
                   "kappa": {"before": [0.1] * (len(steps) - 1) + [0.81],
                             "after": [0.05] * (len(steps) - 1) + [0.12]},
                   "rho": {"before": [None] * len(steps), "after": [0.3] * len(steps)}}],
        "skipped": [{"rule": "HF201", "component": "blocks.0.attn.k_proj", "kind": "lower_lr",
                     "reason": "shares a tensor with <a fixed> component"}],
        "after": rerun,
    }


def test_verify_fix_renders_before_and_after(lr_report):
    lr_report["verify_fix"] = verify_fix_block(lr_report)
    page = to_html(lr_report)
    start = page.index('<section id="verify-fix">')
    section = page[start : page.index("</section>", start) + len("</section>")]
    assert 'class="badge f-fixed"' in section
    assert "&lt;after&gt; the fix &amp; the loss" in section
    # two fixes, three findings compared, one finding left in the rerun
    assert section.count("<tr><td><code>HF") == 2 + 3 + 1
    assert 'class="change c-gone">gone</span> · fixed here' in section
    assert 'class="change c-new">new</span></td>' in section
    assert "warning → warning" in section and "2 → 1.1" in section
    assert "0.81 → 0.12" in section  # κ at the last matched step
    assert "– → 0.3" in section  # ρ unmeasured before
    assert "shares a tensor with &lt;a fixed&gt; component" in section
    assert "lower_lr" in section and "clip_grad" in section and "0.003" in section
    # whether the lowered LR held, the horizon and the tolerance of the comparison
    assert "param group 0 scaled x0.01; <strong" in section
    assert "not in effect</strong> from step 7" in section and "train.py:41" in section
    assert "compared over 40 steps (--verify-steps)" in section
    assert "validation loss the script printed, at step 40: 1.5 → 1.25 (better)" in section
    assert "(±0.05 counts as unchanged)" in section
    assert "note: the rerun used --verify-steps 40" in section
    charts = [s for s in svgs(section) if s.get("class") == "chart"]
    assert len(charts) == 1 + 2  # loss overlay + one per metrics entry
    assert "loss, before vs after" in section and "after (fixed)" in section
    assert "non-finite at step 4" in section  # the NaN of the rerun's loss
    assert "lambda_max · blocks.0.attn.q_proj" in section
    assert 'class="badge v-suspicious"' in section  # the rerun's own verdict
    assert page.index('id="findings"') < start < page.index('id="coupling"')
    odd = copy.deepcopy(lr_report)
    odd["verify_fix"] = {"verdict": "not_applicable", "summary": "no fix to apply"}
    assert 'class="badge f-not_applicable"' in to_html(odd)


def test_write_html_creates_the_folder(tmp_path: Path, lr_report):
    path = tmp_path / "deep" / "er" / "r.html"
    write_html(lr_report, path)
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


# ---------------------------------------------------------------- a real browser


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser; requested before the runs so that a skip costs nothing."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    if os.environ.get("HFAULT_REQUIRE_BROWSER"):
        pytest.fail("HFAULT_REQUIRE_BROWSER is set but no chromium is installed")
    pytest.skip("chromium not installed (apt-get install chromium); set HFAULT_REQUIRE_BROWSER=1 "
                "to make this a failure")


def _page_requests(netlog: Path) -> list[str]:
    """http(s) URLs the page itself requested (chromium's own background traffic has no file://
    network isolation key)."""
    text = netlog.read_text(encoding="utf-8")
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # an unclosed log when the browser exits early
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    return [e["params"]["url"] for e in log["events"]
            if "file://" in str(e.get("params", {}).get("network_isolation_key", ""))
            and str(e["params"].get("url", "")).startswith(("http:", "https:"))]


def _browse(chromium: str, page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
         f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
         f"--log-net-log={tmp / 'net.json'}", *extra, page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )


def test_headless_chromium_renders_it_without_errors_or_network(chromium, lr_run, tmp_path):
    _, _, run_dir = lr_run
    page = run_dir / "report.html"
    dom = _browse(chromium, page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console and "Uncaught" not in dom.stderr, console
    assert 'data-rendered="ok"' in dom.stdout  # the inline script ran to its end
    for section in ("findings", "coupling", "timelines", "spectrum"):
        assert f'<section id="{section}">' in dom.stdout
    assert dom.stdout.count("<svg") == page.read_text(encoding="utf-8").count("<svg")
    assert _page_requests(tmp_path / "net.json") == []
    shot = tmp_path / "report.png"
    _browse(chromium, page, tmp_path, f"--screenshot={shot}", "--window-size=1400,3000")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 100_000  # not a blank page
    # The network check can see a request: the same page with a remote image is caught.
    leaky = tmp_path / "leaky.html"
    leaky.write_text(page.read_text(encoding="utf-8").replace(
        "</main>", '<img src="https://example.invalid/x.png"></main>'), encoding="utf-8")
    _browse(chromium, leaky, tmp_path, "--dump-dom")
    assert _page_requests(tmp_path / "net.json") == ["https://example.invalid/x.png"]


def test_an_indefinite_rho_is_flagged_not_shown_as_a_correlation(lr_report):
    """metrics.md: |ρ| > 1 means the 2×2 Hessian along the gradients is indefinite; both reports
    say so instead of printing it like a correlation."""
    from rich.console import Console

    from hfault.report.terminal import render

    graph = next(s["graph"] for s in reversed(lr_report["snapshots"])
                 if (s.get("graph") or {}).get("edges"))
    edges = sorted(graph["edges"], key=lambda e: -(e.get("kappa") or 0))
    edges[0]["rho"], edges[1]["rho"] = -4.8, 0.5
    console = Console(record=True, width=220)
    render(lr_report, console)
    text = console.export_text()
    assert "-4.8*" in text and "0.5*" not in text
    assert "indefinite" in text
    page = to_html(lr_report)
    assert page.count("(|ρ| &gt; 1: indefinite, not a correlation)") >= 1


def test_html_plots_the_same_effective_ratio_the_rules_read() -> None:
    """Clipped Adam: the rules' r ignores grad_scale (m̂/√v̂ divides it out); the HTML chart
    once multiplied it in and drew r = 0.62 under HF201's line while the finding said 3.1. Now
    both read the one value :func:`derive` stores."""
    from hfault.report.build import derive
    from hfault.report.html import _Context
    from hfault.rules.features import Features

    metrics = {"stability_ratio": 3.1, "grad_scale": 0.2, "preconditioned": True}
    sgd = {"stability_ratio": 3.1, "grad_scale": 0.2, "preconditioned": False}
    nan = {"stability_ratio": "nan", "grad_scale": 0.2, "preconditioned": False}
    report = {
        "components": [{"name": "adam_q", "role": "query", "numel": 100},
                       {"name": "sgd_q", "role": "query", "numel": 100},
                       {"name": "nan_q", "role": "query", "numel": 100}],
        "snapshots": [{"step": 5, "metrics": {"adam_q": metrics, "sgd_q": sgd, "nan_q": nan}}],
        "findings": [],
    }
    derive(report)
    stored = copy.deepcopy(report)
    assert derive(report) == stored  # idempotent
    assert metrics["effective_ratio"] == 3.1 and sgd["effective_ratio"] == pytest.approx(0.62)
    assert nan["effective_ratio"] == "nan"  # a NaN r stays NaN, JSON-encoded like the rest
    ctx = _Context.of(report)
    features = Features(report)
    for name in ("adam_q", "sgd_q"):
        rules_r = features.component_features(name)["effective_ratio"].values
        assert [v for _, v in ctx.series(name, "stability_ratio")] == list(rules_r)
    assert ctx.series("adam_q", "stability_ratio") == [(5, 3.1)]
    assert ctx.series("sgd_q", "stability_ratio")[0][1] == pytest.approx(0.62)
    assert math.isnan(ctx.series("nan_q", "stability_ratio")[0][1])
    assert math.isnan(features.component_features("nan_q")["effective_ratio"].values[0])


@pytest.fixture(scope="module")
def clipped_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[CliResult, str, Path]:
    """Momentum SGD at lr 100 with clip_grad_norm_(0.1): the nominal r reaches ~1800, the r of the
    clipped steps taken ~49, and HF201 fires on the first layer on the latter."""
    tmp = tmp_path_factory.mktemp("clip")
    result, page = diagnose(tmp, SCRIPTS / "clip_train.py", "--", "--lr", "100", "--clip", "0.1",
                            "--steps", "30")
    return result, page, tmp


def test_html_chart_plots_the_ratio_hf201_reports_on_a_clipped_run(clipped_run) -> None:
    result, page, _ = clipped_run
    report = result.report
    assert report is not None
    finding = next(f for f in result.findings("HF201"))
    name, step, value = finding["component"], finding["step"], finding["evidence"]["value"]
    metrics = next(s for s in report["snapshots"] if s["step"] == step)["metrics"][name]
    assert metrics["grad_scale"] < 0.5  # clipped: the nominal r is not the r of the step taken
    assert metrics["effective_ratio"] == value
    assert metrics["stability_ratio"] > 10 * value
    label = "r = lr·λ̃/τ of the step taken"
    chart = row(page, name)
    assert f"{label} · step {step}: {fmt(value, 4)}" in chart  # the plotted point's tooltip
    assert f"{label} · step {step}: {fmt(metrics['stability_ratio'], 4)}" not in chart
    assert f"HF201 limit {fmt(finding['evidence']['threshold'])}" in chart


def test_a_report_saved_without_derived_metrics_judges_and_renders_the_same(clipped_run):
    """``effective_ratio`` is stored by this version; a report written before it existed gets it
    from ``derive`` when re-judged (the rule features) or re-rendered (``hfault report``)."""
    from hfault.rules import evaluate, load_rules

    result, page, tmp = clipped_run
    assert result.report is not None
    old = copy.deepcopy(result.report)
    for snapshot in old["snapshots"]:
        for m in snapshot["metrics"].values():
            m.pop("effective_ratio", None)
    assert old != result.report
    saved = tmp / "old.json"
    saved.write_text(json.dumps(old))
    rules = load_rules()
    judged = [f.to_dict() for f in evaluate(old, rules).findings]  # (stores the field in old)
    assert judged == [f.to_dict() for f in evaluate(copy.deepcopy(result.report), rules).findings]
    assert any(f["rule"] == "HF201" for f in judged)
    out = tmp / "old.html"
    proc = run_cli(["report", str(saved), "--quiet", "--html", str(out)], tmp, json_report=False)
    assert proc.returncode == ExitCode.FINDINGS, proc.stderr
    assert out.read_text(encoding="utf-8") == page
