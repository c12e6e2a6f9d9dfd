"""One run of ``hfault perturb``: a listener of a plain capture session (one without probes and
without a snapshot schedule) that injects, records and measures.

- injection right after the optimizer step that owns a component, at the planned steps:
  ``θ_b ← θ_b + α·RMS(θ_b)·δ_b`` (``perturb.injection``: δ from hfault's own generator);
- per step after the first injection: the loss (every backward, unscaled), the gradient norm of
  the watched components as the optimizer sees it, and the argmax predictions of the root
  module's output, stored (baseline) or compared with the baseline's (flip counts);
- at the first backward after the first injection: Tr(H_bb), λmax, λmin of each watched block on
  that batch's own graph, and an optional callback on the open Hessian operator (the baseline
  uses it for the per-draw quadratic forms ``g·u`` and ``uᵀHu``). That step's forward runs on the
  math SDPA kernel in every run (fused kernels have no double backward), so all runs match.

The losses are read before the session acts on a backward (``EARLY``): the measured step is the
one after the last injection's step, and a ``--max-steps`` equal to that step stops the run at
that backward, after the loss and curvature were read.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hfault.capture.hooks import EARLY, BackwardEvent, Listener
from hfault.capture.math_attention import MathAttention
from hfault.capture.session import CaptureSession, StopTraining
from hfault.components import Component, find_roots
from hfault.curvature import (
    CurvatureSettings,
    HessianOperator,
    measure,
    probe_diagonal,
    trace_estimate,
)
from hfault.perturb.injection import Injection, draw_deltas, unit_generator
from hfault.probes.curvature_probe import to_blocks
from hfault.probes.gradients import grad_norm
from hfault.probes.many_norms import sum_of_squares

__all__ = [
    "MeasureSpec",
    "PerturbListener",
    "RunPlan",
    "RunRecord",
    "predictions",
    "select_components",
]


def select_components(
    components: Sequence[Component], patterns: Sequence[str]
) -> tuple[list[Component], str | None]:
    """Components whose name matches any pattern (exact name or fnmatch glob), in the session's
    order; or an error line naming the first pattern that matches nothing and close names."""
    names = [c.name for c in components]
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            close = difflib.get_close_matches(pattern, names, n=4, cutoff=0.5)
            if close:
                hint = "close names: " + ", ".join(close)
            else:
                hint = "components: " + ", ".join(names[:6]) + (
                    f", ... ({len(names)} in all)" if len(names) > 6 else ""
                )
            return [], f"--component {pattern!r} matches no component; {hint}"
        chosen.update(hits)
    return [c for c in components if c.name in chosen], None


def logits_of(output: Any) -> Tensor | None:
    """The logits in a module output: a tensor, ``.logits`` (transformers' ModelOutput), a
    mapping's ``logits``, or the first floating tensor of a tuple/list/mapping."""
    if isinstance(output, Tensor):
        return output if output.is_floating_point() else None
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, Mapping):
        if isinstance(output.get("logits"), Tensor):
            return output["logits"]
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, Tensor) and item.is_floating_point():
                return item
    return None


def predictions(output: Any) -> Tensor | None:
    """Flat predictions of a module output: argmax over the last dim of its logits; for a single
    output unit, its sign (the binary-logit convention). int64 on the CPU."""
    logits = logits_of(output)
    if logits is None:
        return None
    x = logits.detach()
    if x.dim() == 0 or x.shape[-1] == 1:
        return (x > 0).reshape(-1).to("cpu", torch.int64)
    return x.argmax(-1).reshape(-1).to("cpu", torch.int64)


@dataclass
class MeasureSpec:
    """Curvature of the watched blocks at the first backward after the first injection."""

    settings: CurvatureSettings | None
    """None: no measurement, only the same math SDPA kernel on that step as the measured runs."""
    callback: Callable[[HessianOperator, RunRecord], None] | None = None
    """Runs on the open operator after the standard measurement (baseline's per-draw probes)."""


@dataclass
class RunPlan:
    """What one run does. ``alpha=None``: an unperturbed run (baseline)."""

    injection: Injection
    watch: tuple[str, ...]
    """Component name patterns whose RMS, gradient norm and curvature are recorded."""
    inject: tuple[str, ...] = ()
    """Exact names of the components to perturb (a subset of the watched ones)."""
    alpha: float | None = None
    seed: int = 0
    sign: float = 1.0
    measure: MeasureSpec | None = None
    reference: dict[tuple[int, str], list[Tensor]] | None = None
    """Baseline predictions to compare with; None: store this run's predictions."""


@dataclass
class RunRecord:
    """What one run measured (steps are the session's optimizer steps, from 1)."""

    losses: dict[int, float] = field(default_factory=dict)
    """Per step after the first injection: the sum of the losses backpropagated for it."""
    first_loss: float | None = None
    """The loss of the first backward after the first injection (the measured graph)."""
    loss_eps: float | None = None
    """Machine epsilon of the loss dtype: ΔL below ~eps·|L| is rounding."""
    grad_norms: dict[int, float] = field(default_factory=dict)
    """Per step after the first injection: ‖g‖ of the watched components together."""
    component_grad_norms: dict[int, dict[str, float]] = field(default_factory=dict)
    rms: dict[str, float] = field(default_factory=dict)
    """RMS(θ_b) of the watched components at the first injection (before it)."""
    injected: list[int] = field(default_factory=list)
    predictions: dict[tuple[int, str], list[Tensor]] = field(default_factory=dict)
    flips: dict[tuple[int, str], list[int]] = field(default_factory=dict)
    """(step, mode) -> [flipped, compared]; mode is 'train' or 'eval'."""
    unmatched_outputs: int = 0
    curvature: dict[str, dict[str, float | None]] = field(default_factory=dict)
    curvature_error: str | None = None
    probes: dict[str, Any] = field(default_factory=dict)
    selected: list[str] = field(default_factory=list)
    selection_error: str | None = None


class PerturbListener(Listener):
    """Injection, records and measurement of one perturbation (or baseline) run; results in
    ``.record``."""

    def __init__(self, session: CaptureSession, plan: RunPlan) -> None:
        self.session = session
        self.plan = plan
        self.record = RunRecord()
        self._generator = unit_generator(plan.seed)
        self._math = MathAttention()
        self._selected: list[Component] = []
        self._selected_from: list[Component] | None = None
        self._roots: set[int] = set()
        self._roots_from: list[Component] | None = None
        self._deltas: tuple[int, dict[str, Tensor]] | None = None
        self._calls: dict[tuple[int, str], int] = {}
        self._measured = False

    def order(self, event: str) -> int:
        return EARLY if event == "before_backward" else self.priority

    # ----------------------------------------------------------------- selection
    def selection(self) -> list[Component]:
        """The watched components, resolved again whenever the components are rebuilt."""
        comps = self.session.state.components
        if comps is not self._selected_from:
            self._selected_from = comps
            self._selected, error = select_components(comps, self.plan.watch)
            self.record.selection_error = error
            self.record.selected = [c.name for c in self._selected]
        return self._selected

    # ----------------------------------------------------------------- step hooks
    def before_step(self, opt: torch.optim.Optimizer) -> None:
        selected = self.selection()
        if self.record.selection_error is not None:
            raise StopTraining
        step = self.session.step_of(opt)
        if step <= self.plan.injection.first:
            return
        index = self.session.optimizer_index(opt)
        norms = self.record.component_grad_norms.setdefault(step, {})
        for comp in selected:
            if comp.optimizer == index:
                norms[comp.name] = float(grad_norm(comp))
        if norms and len(norms) == len(selected):
            self.record.grad_norms[step] = math.sqrt(sum(v * v for v in norms.values()))

    def after_step(self, opt: torch.optim.Optimizer) -> None:
        count = self.session.optimizer_steps(opt)
        if not self.plan.injection.at(count):
            return
        index = self.session.optimizer_index(opt)
        mine = [c for c in self.selection() if c.optimizer == index]
        if count == self.plan.injection.first:
            for comp in mine:
                self.record.rms[comp.name] = _rms(comp)
            if self.plan.measure is not None:
                self._math.enter()  # the next forward is the measured one
        if self.plan.alpha is None:
            return
        targets = [c for c in mine if c.name in self.plan.inject]
        if not targets:
            return
        deltas = self._deltas_at(count)
        with torch.no_grad():
            for comp in targets:
                scale = self.plan.alpha * self.plan.sign * _rms(comp)
                _add(comp, deltas[comp.name], scale)
        if count not in self.record.injected:
            self.record.injected.append(count)

    def _deltas_at(self, step: int) -> dict[str, Tensor]:
        """δ of every injected component for this injection, drawn once in the plan's order
        (components of several optimizers step at different times but share one draw)."""
        if self._deltas is None or self._deltas[0] != step:
            by_name = {c.name: c for c in self.selection()}
            names = [n for n in self.plan.inject if n in by_name]
            drawn = draw_deltas([by_name[n].numel for n in names], self._generator)
            self._deltas = (step, dict(zip(names, drawn, strict=True)))
        return self._deltas[1]

    # ----------------------------------------------------------------- backward hook
    def before_backward(self, event: BackwardEvent) -> None:
        upcoming = self.session.state.step + 1
        loss = event.loss
        if loss is None or upcoming <= self.plan.injection.first:
            return
        value = float(loss.detach()) / event.scale  # in the loss dtype (float64 stays exact)
        if loss.is_floating_point():
            self.record.loss_eps = torch.finfo(loss.dtype).eps
        if self.record.first_loss is None:
            self.record.first_loss = value
        self.record.losses[upcoming] = self.record.losses.get(upcoming, 0.0) + value
        if self.plan.measure is not None and not self._measured:
            self._measured = True
            try:
                if loss.requires_grad and self.plan.measure.settings is not None:
                    self._measure(loss, event.scale, self.plan.measure)
            finally:
                self._math.exit()

    def close(self) -> None:
        self._math.exit()

    def _measure(self, loss: Tensor, scale: float, spec: MeasureSpec) -> None:
        """Each block on its own operator with generators seeded alike in every run, so a block
        gets the same Lanczos start and probes whatever else is watched.

        ``trace`` is the deflated estimate (exact on the Lanczos basis: accurate for near
        low-rank blocks); ``trace_crn`` is plain Hutchinson with the same K Rademacher probes in
        every run, so a perturbed run's ``trace_crn`` minus the baseline's estimates ΔTr with
        variance 2‖ΔH_bb‖²_F/K (common random numbers; the deflated estimates would differ by
        their own noise, as the basis moves). Δλmax: Lanczos from the same start."""
        comps = self.selection()
        assert spec.settings is not None
        try:
            for comp in comps:
                params, blocks = to_blocks([comp])
                with HessianOperator(loss, params, blocks, loss_scale=scale) as op:
                    b = measure(op, spec.settings).blocks[0]
                    gen = torch.Generator(device=op.device(0))
                    gen.manual_seed(spec.settings.seed + 1)
                    crn = trace_estimate(probe_diagonal(op, 0, spec.settings.k, gen))
                self.record.curvature[comp.name] = {
                    "trace": b.trace,
                    "trace_crn": crn.value,
                    "trace_se": b.trace_se,
                    "lambda_max": b.lambda_max,
                    "lambda_min": b.lambda_min,
                    "eig_residual": b.eig_residual,
                    "grad_norm": b.grad_norm,
                    "hvps": b.hvps,
                }
            if spec.callback is not None and comps:
                params, blocks = to_blocks(comps)
                with HessianOperator(loss, params, blocks, loss_scale=scale) as op:
                    spec.callback(op, self.record)
        except RuntimeError as exc:  # an op without double backward
            self.record.curvature_error = str(exc).splitlines()[0]

    # ----------------------------------------------------------------- predictions
    def forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        state = self.session.state
        if state.step < self.plan.injection.first or id(module) not in self._root_ids():
            return
        pred = predictions(output)
        if pred is None:
            return
        mode = "train" if module.training and torch.is_grad_enabled() else "eval"
        key = (state.step + 1, mode)
        index = self._calls.get(key, 0)
        self._calls[key] = index + 1
        reference = self.plan.reference
        if reference is None:
            self.record.predictions.setdefault(key, []).append(pred)
            return
        ref = reference.get(key)
        if ref is None or index >= len(ref) or ref[index].shape != pred.shape:
            self.record.unmatched_outputs += 1
            return
        counts = self.record.flips.setdefault(key, [0, 0])
        counts[0] += int((pred != ref[index]).sum())
        counts[1] += pred.numel()

    def _root_ids(self) -> set[int]:
        """The trained models: seen modules that are no other's descendant and hold parameters
        of the optimizers (a loss module is not a root)."""
        state = self.session.state
        comps = state.components
        if comps is not self._roots_from:
            self._roots_from = comps
            params = [part.param for c in comps for part in c.parts]
            self._roots = {id(m) for m in find_roots(list(state.modules.values()), params)}
        return self._roots


def _rms(comp: Component) -> float:
    """RMS(θ_b) over the component's scalars (float64)."""
    sq = sum_of_squares([part.view(part.param) for part in comp.parts])
    return math.sqrt(sq / max(comp.numel, 1))


def _add(comp: Component, delta: Tensor, scale: float) -> None:
    """``θ_b += scale·δ`` in place, part by part (δ is the flat block vector)."""
    offset = 0
    for part in comp.parts:
        view = part.view(part.param)
        n = view.numel()
        piece = delta[offset : offset + n].reshape(view.shape)
        view.add_(piece.to(device=view.device, dtype=view.dtype), alpha=scale)
        offset += n
