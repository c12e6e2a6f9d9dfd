"""Finding the rules: the built-in ``rules/`` folder, user folders, ``--select``/``--ignore``,
and threshold overrides from ``[tool.hfault]`` in pyproject.toml or ``--config FILE``.

The built-in rules live in the top-level ``rules/`` folder of the source tree and are shipped in
the wheel as the data package ``hfault.builtin_rules``, so an installed hfault finds them without
the source tree.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hfault.rules.rule import Rule, RuleError, line_of, load_rule, toml_error

_CONFIG_KEYS = {"select", "ignore", "rules", "params"}


def builtin_rules_dir() -> Path:
    source_tree = Path(__file__).resolve().parents[2] / "rules"
    if source_tree.is_dir() and any(source_tree.glob("HF*.toml")):
        return source_tree
    return Path(str(importlib.resources.files("hfault.builtin_rules")))


def load_dir(directory: Path) -> list[Rule]:
    if not directory.is_dir():
        raise RuleError(directory, None, "rule folder not found")
    return [load_rule(p) for p in sorted(directory.glob("*.toml"))]


@dataclass(frozen=True)
class Config:
    """User settings for the rule engine (all optional)."""

    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    rule_dirs: tuple[Path, ...] = ()
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: Path | None = None
    text: str = ""


def find_pyproject(start: Path) -> Path | None:
    """The nearest pyproject.toml at or above ``start`` that has a ``[tool.hfault]`` table."""
    for directory in [start, *start.parents]:
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            try:
                text = candidate.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError:
                # A broken pyproject is not ours to report, unless it holds our settings: then
                # dropping them silently would run with thresholds the user did not choose.
                if "[tool.hfault" in text:
                    return candidate  # load_config reports the error (exit 2)
                continue
            if "hfault" in data.get("tool", {}):
                return candidate
    return None


def load_config(path: Path) -> Config:
    """Read ``[tool.hfault]`` of a pyproject.toml, or a standalone TOML with the same keys."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RuleError(path, None, f"cannot read config: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise toml_error(path, exc) from None
    table = data.get("tool", {}).get("hfault", data if path.name != "pyproject.toml" else {})
    unknown = sorted(set(table) - _CONFIG_KEYS)
    if unknown:
        raise RuleError(path, line_of(text, unknown[0]), f"unknown setting {unknown[0]!r}; "
                        f"known: {', '.join(sorted(_CONFIG_KEYS))}")

    def strings(key: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise RuleError(path, line_of(text, key), f"{key!r} must be a list of strings")
        return tuple(value)

    params = table.get("params", {})
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise RuleError(path, line_of(text, "params"),
                        "'params' must hold one table per rule, e.g. [tool.hfault.params.HF201]")
    return Config(
        select=strings("select"),
        ignore=strings("ignore"),
        rule_dirs=tuple((path.parent / d).resolve() for d in strings("rules")),
        params=params,
        source=path,
        text=text,
    )


def split_codes(values: Iterable[str]) -> tuple[str, ...]:
    """``--select HF2,HF001 --select HF3`` → ("HF2", "HF001", "HF3")."""
    return tuple(c.strip() for v in values for c in v.split(",") if c.strip())


def _matches(rule: Rule, code: str) -> bool:
    return code == "ALL" or rule.id.startswith(code.upper()) or rule.name == code


def load_rules(
    config: Config | None = None,
    extra_dirs: Sequence[Path] = (),
    select: Sequence[str] = (),
    ignore: Sequence[str] = (),
) -> list[Rule]:
    """Built-in plus user rules, filtered like ruff (command line over config), thresholds set."""
    config = config or Config()
    rules: dict[str, Rule] = {}
    for directory in [builtin_rules_dir(), *config.rule_dirs, *extra_dirs]:
        for rule in load_dir(directory):
            if rule.id in rules:
                raise RuleError(rule.path, line_of(rule.path.read_text(), "id"),
                                f"rule id {rule.id} is already defined in {rules[rule.id].path}")
            rules[rule.id] = rule
    chosen_select = tuple(select) or config.select
    chosen_ignore = tuple(ignore) + config.ignore
    for code in (*chosen_select, *chosen_ignore):
        if not any(_matches(r, code) for r in rules.values()):
            raise RuleError(config.source or Path("--select/--ignore"), None,
                            f"{code!r} matches no rule")
    selected = [
        r for r in rules.values()
        if (not chosen_select or any(_matches(r, c) for c in chosen_select))
        and not any(_matches(r, c) for c in chosen_ignore)
    ]
    return sorted(_apply_params(selected, list(rules.values()), config), key=lambda r: r.id)


def _apply_params(selected: list[Rule], every: list[Rule], config: Config) -> list[Rule]:
    by_key = {r.id: r for r in every} | {r.name: r for r in every}
    overrides: dict[str, dict[str, Any]] = {}
    for key, values in config.params.items():
        where = config.source or Path("config")
        rule = by_key.get(key)
        if rule is None:
            raise RuleError(where, line_of(config.text, key) or _header_line(config.text, key),
                            f"params for unknown rule {key!r}")
        for name, value in values.items():
            line = (line_of(config.text, name, f"tool.hfault.params.{key}")
                    or line_of(config.text, name, f"params.{key}")
                    or line_of(config.text, name))
            if name not in rule.params:
                raise RuleError(where, line, f"rule {rule.id} has no parameter {name!r}; it has "
                                f"{', '.join(rule.params) or 'none'}")
            default = rule.params[name].default
            if not _same_type(default, value):
                raise RuleError(where, line, f"{rule.id}.{name} must be a "
                                f"{type(default).__name__}, not {value!r}")
            overrides.setdefault(rule.id, {})[name] = value
    return [dataclasses.replace(r, overrides=overrides.get(r.id, {})) for r in selected]


def _same_type(default: Any, value: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def _header_line(text: str, key: str) -> int | None:
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith("[") and line.strip().rstrip("]").endswith(f".{key}"):
            return i
    return None
