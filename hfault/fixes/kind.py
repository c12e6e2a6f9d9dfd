"""What every fix kind provides: its name in ``fix.values["kind"]``, the rule-file fields it needs,
the values it writes, how it is filled in from report data, and, for the kinds ``--verify-fix``
applies mechanically, how it is planned and described.

Kinds read report data only (plain dicts), so a saved report can be re-judged; they import torch
only inside the functions that touch tensors, because the rule engine (and ``hfault rules``) loads
every kind without needing torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeGuard

from hfault.numbers import as_float, finite, fmt

if TYPE_CHECKING:
    from torch import nn

    from hfault.capture.session import CaptureState
    from hfault.components import Component

ALL_PARAMETERS = "(all parameters)"
"""The component of a fix that applies to every parameter (clipping from a run-scope finding)."""


@dataclass(frozen=True)
class FixTarget:
    """The report data a kind may read when a rule's fix is filled in."""

    component: Mapping[str, Any] | None = None
    """The finding's component (``Component.to_dict()``), None for a run-scope finding."""
    lr: Any = None
    """The component's learning rate at its last measured step."""
    optimizer: Mapping[str, Any] = field(default_factory=dict)
    """The report's record (``run.optimizers[i]``) of the optimizer training the component."""
    script: str | None = None
    """The script the report ran (``run.script``): snippets read it for how it builds things."""


@dataclass
class PlannedFix:
    """A fix to apply in the rerun, with what the rerun needs to find its parameters again."""

    rule: str
    component: str
    kind: str
    """A mechanical kind's name: ``lower_lr`` or ``clip_grad``."""
    finding: dict[str, Any] = field(default_factory=dict)
    factor: float | None = None
    lr: float | None = None
    """What the finding said: the component's learning rate and the suggested one."""
    new_lr: float | None = None
    max_norm: float | None = None
    optimizer: int = 0
    root: str | None = None
    """Class name of the root module whose ``named_parameters()`` give ``names``."""
    root_ordinal: int = 0
    """Which root of that class (ordered by their first parameter in the optimizer)."""
    names: tuple[str, ...] = ()
    fused: tuple[str, ...] = ()
    """Names of fused tensors moved whole although the component is a slice of them."""


@dataclass(frozen=True)
class Skip:
    """A mechanical fix left out of the rerun, and why (``verify_fix.skipped``)."""

    component: str | None
    reason: str


@dataclass
class PlanContext:
    """What the first run offers the planners: its components and the modules owning their
    parameters, and the fixes planned so far (in rank order)."""

    state: CaptureState
    components: dict[str, Component]
    roots: list[nn.Module]
    owner: dict[int, tuple[nn.Module, str]]
    """Parameter id → (root module, its name in ``root.named_parameters()``)."""
    planned: list[PlannedFix] = field(default_factory=list)


class FixKind:
    """One kind of fix. Subclasses set the class attributes and override what they support; the
    defaults describe a fix a person applies by hand."""

    name: ClassVar[str]
    """Written into every finding's ``fix.values["kind"]`` and named by ``kind =`` in rules."""
    doc: ClassVar[str]
    """One line: what the fix changes (``docs/fixes.md``, error messages)."""
    fields: ClassVar[Mapping[str, str]] = {}
    """Keys a rule file's ``[[fix]]`` of this kind must set (a number or an expression), each
    with the phrase that names it in the load error (``a 'factor' expression``)."""
    produces: ClassVar[tuple[str, ...]] = ()
    """Keys this kind writes into ``fix.values`` besides ``kind``; summaries and snippets may
    use them as placeholders, a rule's own ``values`` may not reuse them."""
    mechanical: ClassVar[bool] = False
    """Whether ``--verify-fix`` applies it without touching the script."""
    at_optimizer: ClassVar[bool] = False
    """Whether the finding's location is the optimizer's construction (where the fix is written)
    rather than the component's module."""
    bounds_total_norm: ClassVar[bool] = False
    """Whether the comparison shows the total gradient norm over all parameters (what it bounds)."""
    catalog_note: ClassVar[str] = ""
    """Appended to the fix's line in the rules reference (``docs/rules.md``)."""

    def fill(self, fields: Mapping[str, Any], target: FixTarget
             ) -> tuple[dict[str, Any], str | None] | None:
        """The fix's values (``kind`` first) and its own snippet (None: the rule's snippet is
        used), from the rule's evaluated ``fields``; None when it cannot be filled in here (the
        rule's next ``[[fix]]`` is tried)."""
        return {"kind": self.name}, None

    def plan(self, finding: Mapping[str, Any], values: Mapping[str, Any], context: PlanContext
             ) -> PlannedFix | Skip | None:
        """The rerun's fix for ``finding`` (whose ``fix.values`` are ``values``), a Skip saying
        why it is left out, or None when its values cannot be applied."""
        return None

    def plan_text(self, fix: PlannedFix) -> str:
        """One line announcing the fix before the rerun."""
        raise NotImplementedError(f"{self.name} fixes are applied by hand")

    def applied_text(self, record: Mapping[str, Any]) -> str:
        """One line saying what the rerun applied (``record`` is a ``verify_fix.fixes`` entry)."""
        raise NotImplementedError(f"{self.name} fixes are applied by hand")

    def describe(self, record: Mapping[str, Any]) -> str:
        """The applied fix as the verdict's summary names it."""
        raise NotImplementedError(f"{self.name} fixes are applied by hand")


def finding_brief(finding: Mapping[str, Any]) -> dict[str, Any]:
    """What a planned fix keeps of its finding."""
    return {k: finding.get(k) for k in ("rule", "component", "severity", "score", "rank")}


def positive(x: Any) -> TypeGuard[float]:
    """A finite number above zero (not a bool)."""
    value = finite(x) if isinstance(x, (int, float)) else None
    return value is not None and value > 0


def number_text(x: Any) -> str:
    """A report number in three significant digits; "n/a" when missing, non-finite as the report
    writes it ("nan", "inf")."""
    return fmt(as_float(x), missing="n/a")
