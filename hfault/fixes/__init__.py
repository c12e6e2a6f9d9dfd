"""Fix kinds: what a finding's fix changes, and, for the kinds ``--verify-fix`` applies
mechanically, how it is planned and applied in the rerun. One module per kind, registered in
:mod:`.registry`; every finding's ``fix.values["kind"]`` names one (docs/fixes.md)."""

from hfault.fixes.kind import ALL_PARAMETERS, FixKind, FixTarget, PlanContext, PlannedFix, Skip
from hfault.fixes.lr_snippet import param_group_snippet
from hfault.fixes.registry import ALIASES, KINDS, kind_of

__all__ = [
    "ALIASES",
    "ALL_PARAMETERS",
    "KINDS",
    "FixKind",
    "FixTarget",
    "PlanContext",
    "PlannedFix",
    "Skip",
    "kind_of",
    "param_group_snippet",
]
