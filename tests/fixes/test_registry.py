"""The fix-kind registry: every rule file's fixes name a registered kind, the report schema lists
the same kinds, the rule loader validates a fix against its kind, and a new kind is one class and
one line in ``KINDS``."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from hfault.fixes.kind import FixKind, FixTarget
from hfault.fixes.manual import MANUAL
from hfault.fixes.registry import ALIASES, KINDS, kind_of
from hfault.rules import evaluate
from hfault.rules.rule import TEMPLATE_EXTRAS, RuleError, load_rule

ROOT = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((ROOT / "rules").glob("HF*.toml"))
SCHEMA = json.loads((ROOT / "docs" / "report.schema.json").read_text())


def _raw_fixes(path: Path) -> list[dict[str, Any]]:
    raw = tomllib.loads(path.read_text()).get("fix", [])
    return [raw] if isinstance(raw, dict) else raw


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.stem)
def test_every_fix_of_a_rule_file_names_a_registered_kind(path: Path) -> None:
    for index, fix in enumerate(_raw_fixes(path)):
        assert "kind" in fix, f"{path.name}: [[fix]] #{index + 1} has no kind"
        assert fix["kind"] in KINDS, f"{path.name}: unregistered fix kind {fix['kind']!r}"


def test_registry_names_and_aliases() -> None:
    assert all(name == kind.name for name, kind in KINDS.items())
    assert set(ALIASES.values()) <= set(KINDS) and not set(ALIASES) & set(KINDS)
    assert set(TEMPLATE_EXTRAS) >= {key for kind in KINDS.values() for key in kind.produces}


def test_report_schema_lists_the_registered_kinds() -> None:
    fix_values = SCHEMA["$defs"]["fix"]["properties"]["values"]
    assert fix_values["properties"]["kind"]["enum"] == list(KINDS)
    assert "kind" in fix_values["required"]
    verify = SCHEMA["$defs"]["verifyFix"]["properties"]
    mechanical = [name for name, kind in KINDS.items() if kind.mechanical]
    assert verify["fixes"]["items"]["properties"]["kind"]["enum"] == mechanical
    assert verify["skipped"]["items"]["properties"]["kind"]["enum"] == mechanical


def test_kind_of_reads_the_kind_and_infers_it_for_old_reports_only() -> None:
    assert kind_of({"kind": "clip_grad", "max_norm": 1.0}) is KINDS["clip_grad"]
    assert kind_of({"kind": "manual", "new_lr": 0.1}) is MANUAL
    assert kind_of({"kind": "from_a_newer_hfault"}) is None
    # written before fix.values named the kind
    assert kind_of({"component": "q", "lr": 0.1, "new_lr": 0.01, "factor": 0.1}) is KINDS[
        "lower_lr"]
    assert kind_of({}) is MANUAL


def test_manual_is_applied_by_hand() -> None:
    assert MANUAL.fill({}, FixTarget()) == ({"kind": "manual"}, None)
    assert not MANUAL.mechanical and MANUAL.fields == {} and MANUAL.produces == ()


def test_loading_the_rule_engine_does_not_import_torch() -> None:
    """``hfault rules`` and re-judging a saved report load every kind, not torch."""
    code = ("import sys, hfault.rules.engine, hfault.rules.docs, hfault.fixes; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- the loader validates fixes
RULE = """\
id = "HF901"
name = "always"
scope = "run"
severity = "warning"
category = "test"
summary = "Always fires."
rationale = "A test rule."
condition = "True"
message = "it fires"

[[fix]]
"""


def _load(tmp_path: Path, fix: str) -> Any:
    path = tmp_path / "HF901-always.toml"
    path.write_text(RULE + fix)
    return load_rule(path)


@pytest.mark.parametrize(("fix", "kind"), [
    ('summary = "Do it."', "manual"),
    ('kind = "text"\nsummary = "Do it."', "manual"),
    ('kind = "clip_grad"\nmax_norm = 2\nsummary = "Clip at {max_norm}."', "clip_grad"),
])
def test_a_fix_without_kind_or_with_its_old_name_is_manual(tmp_path: Path, fix: str,
                                                           kind: str) -> None:
    (template,) = _load(tmp_path, fix).fixes
    assert template.kind == kind


@pytest.mark.parametrize(("fix", "key", "problem"), [
    ('kind = "clip_grad"\nsummary = "Clip."', "kind",
     "a clip_grad fix needs 'max_norm' (a number or expression)"),
    ('kind = "lower_lr"\nfactor = "0.5 *"\nsummary = "Lower."', "factor", "factor: "),
    ('kind = "manual"\nfactor = "0.5"\nsummary = "Do it."', "factor",
     "unknown key 'factor' in a manual fix (it takes kind, summary, snippet, when, values, "
     "shared)"),
    ('shared = "yes"\nsummary = "Do it."', "shared", "fix 'shared' must be true or false"),
    ('kind = "clip_grad"\nmax_norm = 1\nsummary = "Clip."\nvalues = {max_norm = "2"}', "values",
     "fix value 'max_norm' is written by the clip_grad kind; choose another name"),
    ('summary = "Do it."\nvalues = {kind = "\'lower_lr\'"}', "values",
     "fix value 'kind' is written by the manual kind"),
    ('kind = ["manual"]\nsummary = "Do it."', "kind", "fix kind ['manual'] must be one of"),
])
def test_a_malformed_fix_names_the_rule_file_line_and_field(tmp_path: Path, fix: str, key: str,
                                                            problem: str) -> None:
    with pytest.raises(RuleError) as info:
        _load(tmp_path, fix)
    text = RULE + fix
    line = next(i for i, ln in enumerate(text.splitlines(), start=1) if ln.startswith(key))
    assert info.value.path.name == "HF901-always.toml"
    assert info.value.line == line, str(info.value)
    assert problem in info.value.problem


# ---------------------------------------------------------------- a new kind
class _ScaleLogits(FixKind):
    name = "scale_logits"
    doc = "scale the attention logits"
    fields: ClassVar[Mapping[str, str]] = {"scale": "a 'scale' expression"}
    produces = ("scale",)

    def fill(self, fields: Mapping[str, Any], target: FixTarget
             ) -> tuple[dict[str, Any], str | None] | None:
        scale = fields.get("scale")
        if not isinstance(scale, (int, float)):
            return None
        return {"kind": self.name, "scale": float(scale)}, f"scores = scores * {scale:g}"


def test_a_new_kind_is_one_class_and_one_registry_entry(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(KINDS, _ScaleLogits.name, _ScaleLogits())
    rule = _load(tmp_path, 'kind = "scale_logits"\nscale = "1 / 8"\nsummary = "Scale by 1/8."\n'
                           'values = {heads = "4"}\n\n[[fix]]\nkind = "manual"\n'
                           'summary = "By hand."')
    report = {"run": {"status": "completed"}, "components": [], "snapshots": [],
              "timeline": {"loss": []}}
    (finding,) = evaluate(report, [rule]).findings
    assert finding.fix is not None
    assert finding.fix.values == {"kind": "scale_logits", "scale": 0.125, "heads": 4}
    assert finding.fix.snippet == "scores = scores * 0.125"
