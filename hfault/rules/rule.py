"""A rule file: one TOML document per rule, parsed and validated when it is loaded.

Validation happens at load time so that a typo in a rule or in a threshold override is a one-line
error naming the file and line before the user's script runs, not a traceback after an hour of
training. Every expression is parsed into the whitelist of :mod:`hfault.rules.expr` and every name
it reads must be a parameter, an evidence entry or a feature of the rule's scope.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hfault.findings import SEVERITIES
from hfault.fixes.registry import ALIASES, KINDS
from hfault.rules.expr import Expr, ExprError, parse
from hfault.rules.features import SCOPES, VOCABULARY

ID_PATTERN = re.compile(r"^HF\d{3}$")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([^{}]*))?\}")
OPTIONAL = re.compile(r"\{\?(.*?)\?\}", re.DOTALL)
"""A message segment shown only when one of its placeholders has a value (:func:`render`)."""
TEMPLATE_EXTRAS = tuple(dict.fromkeys(
    ("component", "step", *(key for kind in KINDS.values() for key in kind.produces))))
"""Names every message and fix template may use besides evidence, parameters and features: the
subject and the values the fix kinds write."""
FIX_KEYS = ("kind", "summary", "snippet", "when", "values", "shared")
"""Keys of every ``[[fix]]`` table; a kind adds its own ``fields``."""

_KEYS = {
    "id", "name", "scope", "severity", "category", "summary", "rationale", "references",
    "condition", "message", "metric", "evidence", "score", "confidence", "step", "component",
    "related", "escalate", "suppressed_by", "fix", "params", "example",
}


class RuleError(ValueError):
    """A malformed rule or configuration file: ``path:line: problem``."""

    def __init__(self, path: Path | str, line: int | None, problem: str):
        self.path, self.line, self.problem = Path(path), line, problem
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Param:
    name: str
    default: float | int | str | bool
    doc: str


@dataclass(frozen=True)
class FixTemplate:
    """One way to fix the problem; the first whose ``when`` holds is used."""

    kind: str
    """A name in :data:`hfault.fixes.registry.KINDS`."""
    summary: str
    snippet: str | None = None
    when: Expr | None = None
    fields: Mapping[str, Expr] = field(default_factory=dict)
    """The kind's own fields (``factor`` of ``lower_lr``, ``max_norm`` of ``clip_grad``)."""
    values: Mapping[str, Expr] = field(default_factory=dict)
    shared: bool = False
    """One change fixes every subject this fix is chosen for (their common input, not each
    module): the rule's findings that take it are reported as one
    (:func:`hfault.rules.engine.merge_shared`)."""


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    scope: str
    severity: str
    category: str
    summary: str
    rationale: str
    condition: Expr
    message: str
    params: Mapping[str, Param]
    path: Path
    metric: str | None = None
    evidence: Mapping[str, Expr] = field(default_factory=dict)
    score: Expr | None = None
    confidence: Expr | None = None
    step: Expr | None = None
    component: Expr | None = None
    related: Expr | None = None
    escalate: Mapping[str, Expr] = field(default_factory=dict)
    suppressed_by: tuple[str, ...] = ()
    fixes: tuple[FixTemplate, ...] = ()
    references: tuple[str, ...] = ()
    example: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    """Parameter values set by the user's configuration (``[tool.hfault.params]``)."""

    def param_values(self) -> dict[str, Any]:
        return {name: self.overrides.get(name, p.default) for name, p in self.params.items()}

    def reads(self) -> frozenset[str]:
        """Every name the rule's expressions read (features, parameters, evidence)."""
        exprs: list[Expr | None] = [self.condition, *self.evidence.values(), self.score,
                                    self.confidence, self.step, self.component, self.related,
                                    *self.escalate.values()]
        for fix in self.fixes:
            exprs += [fix.when, *fix.fields.values(), *fix.values.values()]
        return frozenset(n for e in exprs if e is not None for n in e.names)

    def to_catalog(self) -> dict[str, Any]:
        """What SARIF's rule descriptors and ``hfault rules`` show."""
        return {
            "id": self.id,
            "name": self.name,
            "severity": self.severity,
            "scope": self.scope,
            "category": self.category,
            "summary": self.summary,
            "rationale": self.rationale,
            "params": self.param_values(),
        }


def line_of(text: str, key: str | None, section: str | None = None, nth: int = 0) -> int | None:
    """The 1-based line where ``key = ...`` is written, inside the ``nth`` ``[section]`` (or
    ``[[section]]``) when given; with ``key`` None, the section header's own line."""
    lines = text.splitlines()
    start = 0
    if section is not None:
        header = re.compile(rf"^\s*\[+\s*{re.escape(section)}\s*\]+\s*(#.*)?$")
        found = [i for i, ln in enumerate(lines) if header.match(ln)]
        if len(found) <= nth:
            return None
        if key is None:
            return found[nth] + 1
        start = found[nth] + 1
    if key is None:
        return None
    pattern = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
    for i in range(start, len(lines)):
        if section is not None and i > start and re.match(r"^\s*\[", lines[i]):
            break  # the next table: the key is not in this section
        if pattern.match(lines[i]):
            return i + 1
    return None


def toml_error(path: Path, exc: tomllib.TOMLDecodeError) -> RuleError:
    """tomllib puts the position in its message ("... (at line 3, column 7)") before 3.14."""
    text = str(exc)
    match = re.search(r"\(at line (\d+), column \d+\)", text)
    line = getattr(exc, "lineno", None) or (int(match.group(1)) if match else None)
    return RuleError(path, line, f"invalid TOML: {text.split(' (at line')[0]}")


def load_rule(path: Path) -> Rule:
    """Parse and validate one rule file; raises :class:`RuleError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RuleError(path, None, f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise toml_error(path, exc) from None
    return _RuleParser(path, text, data).rule()


class _RuleParser:
    def __init__(self, path: Path, text: str, data: dict[str, Any]):
        self.path, self.text, self.data = path, text, data

    fix_index: int | None = None
    """While parsing the n-th [[fix]] table: keys are looked up in that table first."""

    def fail(self, key: str | None, problem: str, section: str | None = None) -> RuleError:
        line = None
        if key and section is None and self.fix_index is not None:
            line = line_of(self.text, key, "fix", self.fix_index)
        if key and line is None:
            line = line_of(self.text, key, section)
        return RuleError(self.path, line, problem)

    def string(self, key: str, required: bool = True, choices: Iterable[str] = ()) -> Any:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.fail(None, f"missing required key {key!r}")
            return None
        if not isinstance(value, str):
            raise self.fail(key, f"{key!r} must be a string")
        choices = tuple(choices)
        if choices and value not in choices:
            raise self.fail(key, f"{key!r} must be one of {', '.join(choices)}, not {value!r}")
        return value

    def rule(self) -> Rule:
        unknown = sorted(set(self.data) - _KEYS)
        if unknown:
            raise self.fail(unknown[0], f"unknown key {unknown[0]!r}")
        rid = self.string("id")
        if not ID_PATTERN.match(rid):
            raise self.fail("id", f"id {rid!r} must look like HF123")
        name = self.string("name")
        if not NAME_PATTERN.match(name):
            raise self.fail("name", f"name {name!r} must be lower-case words joined by '-'")
        scope = self.string("scope", choices=SCOPES)
        params = self.params()
        evidence_names = list(self.table("evidence"))
        known = set(VOCABULARY[scope]) | set(params) | set(evidence_names)
        features = set(VOCABULARY[scope]) | set(params)
        evidence: dict[str, Expr] = {}  # entries may read the ones above them
        for k, v in self.table("evidence").items():
            if k in features or k in TEMPLATE_EXTRAS:
                raise self.fail(k, f"evidence {k!r} would hide the feature or parameter of that "
                                "name; choose another name", "evidence")
            evidence[k] = self.expr(v, k, features | set(evidence), section="evidence")
        fixes = self.fixes(known)
        escalate = {
            sev: self.expr(v, sev, known, section="escalate")
            for sev, v in self.table("escalate").items()
        }
        for sev in escalate:
            if sev not in SEVERITIES:
                raise self.fail(sev, f"escalate key {sev!r} is not a severity", "escalate")
        message = self.string("message")
        self.check_template(message, "message", known)
        refs = self.data.get("references", [])
        suppressed = self.data.get("suppressed_by", [])
        for key, value in (("references", refs), ("suppressed_by", suppressed)):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise self.fail(key, f"{key!r} must be a list of strings")
        return Rule(
            id=rid,
            name=name,
            scope=scope,
            severity=self.string("severity", choices=SEVERITIES),
            category=self.string("category"),
            summary=self.string("summary"),
            rationale=self.string("rationale"),
            condition=self.expr(self.data.get("condition"), "condition", known),
            message=message,
            params=params,
            path=self.path,
            metric=self.string("metric", required=False),
            evidence=evidence,
            score=self.optional_expr("score", known),
            confidence=self.optional_expr("confidence", known),
            step=self.optional_expr("step", known),
            component=self.optional_expr("component", known),
            related=self.optional_expr("related", known),
            escalate=escalate,
            suppressed_by=tuple(suppressed),
            fixes=fixes,
            references=tuple(refs),
            example=self.string("example", required=False),
        )

    def table(self, key: str) -> dict[str, Any]:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, f"{key!r} must be a table")
        return value

    def expr(self, source: Any, key: str, known: Iterable[str],
             section: str | None = None) -> Expr:
        if not isinstance(source, str):
            raise self.fail(key, f"{key!r} must be an expression string", section)
        try:
            return parse(source, known)
        except ExprError as exc:
            raise self.fail(key, f"{key}: {exc}", section) from None

    def optional_expr(self, key: str, known: Iterable[str]) -> Expr | None:
        return None if key not in self.data else self.expr(self.data[key], key, known)

    def params(self) -> dict[str, Param]:
        out = {}
        for name, spec in self.table("params").items():
            line = line_of(self.text, None, f"params.{name}") or line_of(
                self.text, name, "params")
            if not isinstance(spec, dict) or "default" not in spec or "doc" not in spec:
                raise RuleError(self.path, line, f"parameter {name!r} needs 'default' and 'doc'")
            if not isinstance(spec["default"], (int, float, str, bool)):
                raise RuleError(self.path, line, f"parameter {name!r}: default must be a "
                                "number, string or boolean")
            out[name] = Param(name, spec["default"], str(spec["doc"]))
        return out

    def fixes(self, known: set[str]) -> tuple[FixTemplate, ...]:
        raw = self.data.get("fix", [])
        items = [raw] if isinstance(raw, dict) else raw
        if not isinstance(items, list):
            raise self.fail("fix", "'fix' must be a table or an array of tables")
        out = []
        for index, spec in enumerate(items):
            if not isinstance(spec, dict):
                raise self.fail("fix", "each fix must be a table")
            self.fix_index = index
            kind = self.fix_kind(spec)
            summary = spec.get("summary")
            if not isinstance(summary, str):
                raise self.fail("fix", "a fix needs a 'summary' string")
            self.check_template(summary, "summary", known)
            snippet = spec.get("snippet")
            if snippet is not None:
                self.check_template(snippet, "snippet", known)
            fields = {}
            for name, what in KINDS[kind].fields.items():
                source = spec.get(name)
                if source is None:
                    raise self.fail("kind", f"a {kind} fix needs {what}")
                if isinstance(source, (int, float)) and not isinstance(source, bool):
                    source = repr(float(source))  # a number is an expression too
                fields[name] = self.expr(source, name, known)
            values = spec.get("values", {})
            if not isinstance(values, dict):
                raise self.fail("values", "fix 'values' must be a table")
            taken = next((k for k in values if k == "kind" or k in KINDS[kind].produces), None)
            if taken is not None:
                raise self.fail("values", f"fix value {taken!r} is written by the {kind} kind; "
                                "choose another name")
            out.append(
                FixTemplate(
                    kind=kind,
                    summary=summary,
                    snippet=snippet,
                    when=self.expr(spec["when"], "when", known) if "when" in spec else None,
                    fields=fields,
                    values={k: self.expr(v, k, known) for k, v in values.items()},
                    shared=self.shared(spec),
                )
            )
        self.fix_index = None
        return tuple(out)

    def shared(self, spec: Mapping[str, Any]) -> bool:
        value = spec.get("shared", False)
        if not isinstance(value, bool):
            raise self.fail("shared", "fix 'shared' must be true or false")
        return value

    def fix_kind(self, spec: Mapping[str, Any]) -> str:
        """The registered kind a ``[[fix]]`` names (``manual`` when it names none), after
        checking that it sets no key that kind does not read."""
        kind = spec.get("kind", "manual")
        kind = ALIASES.get(kind, kind) if isinstance(kind, str) else kind
        if not isinstance(kind, str) or kind not in KINDS:
            raise self.fail("kind", f"fix kind {kind!r} must be one of {', '.join(KINDS)}")
        allowed = (*FIX_KEYS, *KINDS[kind].fields)
        unknown = next((k for k in spec if k not in allowed), None)
        if unknown is not None:
            raise self.fail(unknown, f"unknown key {unknown!r} in a {kind} fix (it takes "
                            f"{', '.join(allowed)})")
        return kind

    def check_template(self, template: str, key: str, known: set[str]) -> None:
        for match in PLACEHOLDER.finditer(template):
            name = match.group(1)
            if name not in known and name not in TEMPLATE_EXTRAS:
                raise self.fail(key, f"{key}: unknown placeholder {{{name}}}")


def render(template: str, values: Mapping[str, Any]) -> str:
    """Fill ``{name}`` / ``{name:.3g}`` placeholders; no attribute access, no indexing. A segment
    ``{? ... ?}`` is kept (without its markers) when any placeholder in it has a value, and
    dropped when none has: a clause of numbers a mode did not measure (curvature in a
    first-order run) leaves the message instead of reading "n/a, n/a"."""

    def optional(match: re.Match[str]) -> str:
        inner = match.group(1)
        names = [m.group(1) for m in PLACEHOLDER.finditer(inner)]
        return inner if any(values.get(n) is not None for n in names) else ""

    template = OPTIONAL.sub(optional, template)

    def one(match: re.Match[str]) -> str:
        value = values.get(match.group(1))
        spec = match.group(2)
        if value is None:
            return "n/a"
        if spec and isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return format(value, spec)
            except ValueError:
                return str(value)
        return str(value)

    return PLACEHOLDER.sub(one, template)
