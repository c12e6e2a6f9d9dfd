"""The rule engine: rules as data (``rules/*.toml``), a safe condition language, features per
scope, and evaluation into ranked findings."""

from hfault.rules.catalog import Config, builtin_rules_dir, find_pyproject, load_config, load_rules
from hfault.rules.engine import EngineResult, evaluate
from hfault.rules.rule import Rule, RuleError

__all__ = [
    "Config",
    "EngineResult",
    "Rule",
    "RuleError",
    "builtin_rules_dir",
    "evaluate",
    "find_pyproject",
    "load_config",
    "load_rules",
]
