"""Per-block stability ratio ``r = η·λ̃/τ`` and a suggested learning rate.

On a quadratic, gradient descent with step ``η`` is stable iff ``η λmax < 2``; training sits near
this edge (Cohen et al. 2021), so ``r ≈ 1`` is normal and a sustained ``r > 1.5`` is a fault.
The threshold ``τ`` depends on the optimizer's update rule on a 1-D quadratic (derivations in
``docs/curvature.md``):

* SGD: ``τ = 2``; heavy-ball momentum ``β`` with dampening ``d``: ``τ = (2 + 2β)/(1 - d)`` (the
  dampened buffer is heavy ball with step ``η(1 - d)``); Nesterov (``d = 0``):
  ``τ = (2 + 2β)/(1 + 2β)``.
* Adam / AdamW: ``τ = (2 + 2β₁)/(1 - β₁)`` (38 for β₁ = 0.9, Cohen et al. 2022), applied to the
  *preconditioned* ``λ̃ = λmax(P^{-1/2} H_bb P^{-1/2})``, ``P = diag(sqrt(v̂) + ε)``,
  ``v̂ = exp_avg_sq / (1 - β₂^t)`` (``max_exp_avg_sq`` with amsgrad). ``v̂`` is that of the
  step about to be taken: the state read before the step with this step's gradient folded in
  (``v ← β₂v + (1−β₂)g²``, ``t ← t+1``), exactly Adam's denominator. Read before the step alone,
  an embedding row that no batch had used yet has ``v̂ = 0`` and ``P^{-1/2} = ε^{-1/2}``, which
  inflated ``λ̃`` by up to 1e8 on healthy long-tailed vocabularies.

Coupled L2 weight decay (SGD's and Adam's ``weight_decay``) adds ``wd·I`` to the curvature the
update sees, so it is added (``l2``); AdamW's decoupled decay is not curvature and is ignored.
Unknown optimizers and Adam without state yet fall back to ``τ = 2`` / un-preconditioned ``λmax``
and say so in ``note``. Everything here is pure: it reads the optimizer and never changes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from hfault.curvature.blocks import Block

__all__ = [
    "AdamMoments",
    "StabilityResult",
    "StabilityRule",
    "StabilitySetup",
    "adam_preconditioner",
    "block_stability_setup",
    "stability",
    "stability_rule",
]


@dataclass(frozen=True)
class StabilityRule:
    """How an optimizer's update turns curvature into (in)stability."""

    optimizer: str
    """``sgd``, ``sgd_momentum``, ``sgd_nesterov``, ``adam``, ``adamw`` or ``unknown``."""
    lr: float
    tau: float
    preconditioned: bool
    """Whether ``λ̃`` should be the Adam-preconditioned value."""
    l2: float
    """Coupled weight decay added to the curvature (0 for AdamW)."""
    note: str = ""


@dataclass(frozen=True)
class AdamMoments:
    """A block's Adam second moment as read before the step (flat, raw: ``exp_avg_sq``, or
    ``max_exp_avg_sq`` with amsgrad) with each entry's step count."""

    v: Tensor
    steps: Tensor
    beta2: float
    eps: float
    foldable: bool
    """Whether the step's gradient can be folded in (not with amsgrad: its running maximum
    needs ``exp_avg_sq`` too)."""

    def inv_sqrt_p(self, grad: Tensor | None) -> Tensor:
        """``(sqrt(v̂) + ε)^{-1/2}`` of the step taken with ``grad`` (``None``, or amsgrad: the
        state as read)."""
        v, t = self.v, self.steps
        if grad is not None and self.foldable:
            g = grad.detach().reshape(-1).to(v)
            v = self.beta2 * v + (1 - self.beta2) * g * g
            t = t + 1
        return ((v / (1 - self.beta2**t)).sqrt() + self.eps).rsqrt()


@dataclass(frozen=True)
class StabilitySetup:
    """A block's rule plus its flat ``P^{-1/2}`` diagonal (``None``: not preconditioned).

    ``moments`` (Adam without amsgrad) lets ``for_gradient`` fold the step's own gradient into
    ``P`` once the measurement has computed it."""

    rule: StabilityRule
    inv_sqrt_p: Tensor | None = None
    moments: AdamMoments | None = None

    def for_gradient(self, grad: Tensor) -> StabilitySetup:
        """The setup of the step taken with ``grad`` (unchanged without foldable Adam moments)."""
        if self.moments is None or not self.moments.foldable:
            return self
        return replace(self, inv_sqrt_p=self.moments.inv_sqrt_p(grad))


@dataclass(frozen=True)
class StabilityResult:
    """Stability of one block."""

    lr: float
    tau: float
    lambda_tilde: float
    """``λmax(H_bb) + l2`` or the preconditioned value."""
    ratio: float
    """``r = lr · λ̃ / τ``."""
    suggested_lr: float | None
    """``min(lr, c·τ/λ̃)``; ``None`` when ``λ̃ ≤ 0``."""
    preconditioned: bool
    note: str = ""


def _f(x: Any) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)


def stability_rule(
    optimizer: torch.optim.Optimizer | None, group: Mapping[str, Any]
) -> StabilityRule:
    """The threshold ``τ`` and the kind of ``λ̃`` for one param group of ``optimizer``."""
    lr = _f(group.get("lr", float("nan")))
    wd = _f(group.get("weight_decay", 0.0))
    if isinstance(optimizer, torch.optim.SGD):
        beta = _f(group.get("momentum", 0.0))
        damp = _f(group.get("dampening", 0.0))
        if beta == 0.0:
            return StabilityRule("sgd", lr, 2.0, False, wd)
        if group.get("nesterov", False):
            return StabilityRule("sgd_nesterov", lr, (2 + 2 * beta) / (1 + 2 * beta), False, wd)
        if damp >= 1.0:
            return StabilityRule("sgd_momentum", lr, float("inf"), False, wd,
                                 "dampening 1: the gradient never enters the buffer")
        note = f"dampening {damp:g}: heavy ball with step lr*(1-d)" if damp else ""
        return StabilityRule("sgd_momentum", lr, (2 + 2 * beta) / (1 - damp), False, wd, note)
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        beta1 = _f(group["betas"][0])
        decoupled = isinstance(optimizer, torch.optim.AdamW) or bool(
            group.get("decoupled_weight_decay", False)
        )
        name = "adamw" if decoupled else "adam"
        return StabilityRule(name, lr, (2 + 2 * beta1) / (1 - beta1), True,
                             0.0 if decoupled else wd)
    kind = type(optimizer).__name__ if optimizer is not None else "none"
    return StabilityRule("unknown", lr, 2.0, False, 0.0,
                         f"optimizer {kind}: GD threshold tau=2 and plain lambda_max assumed")


def adam_preconditioner(
    block: Block,
    states: Mapping[int, Mapping[str, Any]],
    group: Mapping[str, Any],
) -> Tensor | None:
    """Flat ``P^{-1/2} = (sqrt(v̂) + ε)^{-1/2}`` over ``block`` as the state reads before the
    step, or ``None`` without Adam state.

    ``states[i]`` is ``optimizer.state[params[i]]`` for each part's param index ``i``.
    """
    moments = adam_moments(block, states, group)
    return moments.inv_sqrt_p(None) if moments is not None else None


def adam_moments(
    block: Block,
    states: Mapping[int, Mapping[str, Any]],
    group: Mapping[str, Any],
) -> AdamMoments | None:
    """The block's raw second moment and step counts before the step, or ``None`` without state."""
    amsgrad = bool(group.get("amsgrad", False))
    key = "max_exp_avg_sq" if amsgrad else "exp_avg_sq"
    vs, steps = [], []
    for part in block.parts:
        st = states.get(part.index)
        if not st or key not in st or "step" not in st:
            return None
        step = _f(st["step"])
        if step <= 0:
            return None
        v = part.view(st[key]).detach().to(torch.float64).reshape(-1)
        vs.append(v)
        steps.append(torch.full_like(v, step))
    return AdamMoments(torch.cat(vs), torch.cat(steps), _f(group["betas"][1]),
                       _f(group.get("eps", 1e-8)), foldable=not amsgrad)


def block_stability_setup(
    optimizer: torch.optim.Optimizer | None, block: Block, params: Sequence[Tensor]
) -> StabilitySetup:
    """Find ``block``'s param group and state in ``optimizer`` and build its setup.

    The group is that of the block's first part; a block spread over groups with different
    learning rates uses the first and says so.
    """
    if optimizer is None:
        return StabilitySetup(stability_rule(None, {}))
    first = params[block.parts[0].index]
    group: Mapping[str, Any] = {}
    lrs = set()
    for g in optimizer.param_groups:
        ids = {id(p) for p in g["params"]}
        if any(id(params[part.index]) in ids for part in block.parts):
            lrs.add(_f(g["lr"]))
        if id(first) in ids:
            group = g
    if not group:
        return StabilitySetup(StabilityRule("unknown", float("nan"), 2.0, False, 0.0,
                                            "block is not in this optimizer"))
    rule = stability_rule(optimizer, group)
    if len(lrs) > 1:
        rule = _with_note(rule, "block spans param groups with different lr; first used")
    if not rule.preconditioned:
        return StabilitySetup(rule)
    states = {
        part.index: optimizer.state.get(params[part.index], {}) for part in block.parts
    }
    moments = adam_moments(block, states, group)
    if moments is None:
        rule = StabilityRule(rule.optimizer, rule.lr, rule.tau, False, rule.l2,
                             _join(rule.note, "no Adam state yet: un-preconditioned lambda_max"))
        return StabilitySetup(rule)
    return StabilitySetup(rule, moments.inv_sqrt_p(None), moments)


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def _with_note(rule: StabilityRule, note: str) -> StabilityRule:
    return StabilityRule(rule.optimizer, rule.lr, rule.tau, rule.preconditioned, rule.l2,
                         _join(rule.note, note))


def stability(rule: StabilityRule, lambda_tilde: float, *, c: float = 0.8) -> StabilityResult:
    """``r = lr·λ̃/τ`` and ``suggested_lr = min(lr, c·τ/λ̃)`` (``None`` if ``λ̃ ≤ 0``).

    ``lambda_tilde`` must already include ``rule.l2`` (``measure`` does this).
    """
    ratio = rule.lr * lambda_tilde / rule.tau
    suggested = None
    if lambda_tilde > 0 and rule.tau < float("inf"):
        suggested = min(rule.lr, c * rule.tau / lambda_tilde)
    return StabilityResult(rule.lr, rule.tau, lambda_tilde, ratio, suggested,
                           rule.preconditioned, rule.note)
