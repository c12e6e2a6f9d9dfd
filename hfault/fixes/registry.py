"""The fix kinds by name. A new kind is a module with a :class:`~hfault.fixes.kind.FixKind`
subclass and its instance, and one line in ``KINDS`` (see docs/fixes.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hfault.fixes.clip_grad import CLIP_GRAD
from hfault.fixes.kind import FixKind
from hfault.fixes.lower_lr import LOWER_LR
from hfault.fixes.manual import MANUAL

KINDS: dict[str, FixKind] = {kind.name: kind for kind in (
    MANUAL,
    LOWER_LR,
    CLIP_GRAD,
)}

ALIASES = {"text": MANUAL.name}
"""Older names of kinds that rule files may still use."""


def kind_of(values: Mapping[str, Any]) -> FixKind | None:
    """The kind of a finding's ``fix.values``: its ``kind`` (None when no kind of this version
    has that name). Reports written before every fix named its kind left it out of
    learning-rate fixes (they have ``new_lr``) and of fixes made by hand."""
    if "kind" in values:
        return KINDS.get(values["kind"])
    return LOWER_LR if "new_lr" in values else MANUAL
