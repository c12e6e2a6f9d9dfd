"""Second-order snapshot on the script's own graph, at the first ``backward`` of a scheduled step.

The loss graph of that batch already exists when the script calls ``backward``: we build ``g``
with ``create_graph=True`` on it, spend the HVP budget, release our references, and only then
let the original backward run, so the script gets exactly its gradients. With gradient
accumulation the first micro-batch of the step is measured.

Fused attention kernels have no double backward, and the kernel is chosen at forward time:
:class:`CurvatureProbe` switches SDPA to the math kernel (``capture.math_attention``) when the
measured-step window opens, after the ``optimizer.step()`` before that step, until its
measurement is done. Compiled graphs (``torch.compile``) have no double backward either: for the
same span, compiled code runs eagerly on the original modules (``capture.compiled.EagerSteps``).
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from hfault.capture.compiled import EagerSteps
from hfault.capture.contribution import ReportDraft
from hfault.capture.hooks import WINDOW, BackwardEvent, Listener, delegate, patch
from hfault.capture.manual_steps import step_size_unknown
from hfault.capture.math_attention import MathAttention
from hfault.components import Component
from hfault.curvature import (
    Block,
    BlockCurvature,
    BlockPart,
    CurvatureSettings,
    CurvatureSnapshot,
    HessianOperator,
    StabilitySetup,
    block_stability_setup,
    measure,
)
from hfault.probes.curvature_skip import nonfinite_reason

if TYPE_CHECKING:
    from hfault.capture.session import CaptureSession

COUPLING_ROLES = ("query", "key", "value", "output", "attention-pooling", "cross-attention")


@dataclass
class CurvatureConfig:
    """What to measure: the engine's settings plus which components get couplings."""

    settings: CurvatureSettings = field(default_factory=CurvatureSettings)
    coupling_globs: Sequence[str] = ()
    """Extra components (fnmatch globs on names) joining the attention components' couplings."""


@dataclass
class CurvatureRecord:
    step: int
    snapshot: CurvatureSnapshot | None
    error: str | None = None
    seconds: float = 0.0
    blocked: tuple[str, ...] = ()
    """Components whose curvature an op without double backward made unmeasurable."""


def to_blocks(components: Sequence[Component]) -> tuple[list[torch.Tensor], list[Block]]:
    """Unique parameters (tied ones once) and one Block per component."""
    params: list[torch.Tensor] = []
    index: dict[int, int] = {}
    blocks = []
    for comp in components:
        parts = []
        for part in comp.parts:
            if id(part.param) not in index:
                index[id(part.param)] = len(params)
                params.append(part.param)
            parts.append(BlockPart(index[id(part.param)], part.dim, part.start, part.stop))
        blocks.append(Block(comp.name, tuple(parts)))
    return params, blocks


def coupling_set(components: Sequence[Component], globs: Sequence[str]) -> list[str]:
    """Attention components, plus those matching ``--components`` globs."""
    return [
        c.name
        for c in components
        if c.role in COUPLING_ROLES or any(fnmatch.fnmatchcase(c.name, g) for g in globs)
    ]


def measure_step(
    step: int,
    loss: torch.Tensor,
    loss_scale: float,
    components: Sequence[Component],
    optimizers: Sequence[torch.optim.Optimizer],
    config: CurvatureConfig,
) -> CurvatureRecord:
    """One snapshot; never raises for an unsupported op (the record carries the error)."""
    start = time.perf_counter()
    params, blocks = to_blocks(components)
    settings = replace(
        config.settings, coupling_blocks=coupling_set(components, config.coupling_globs)
    )
    setups: dict[str, StabilitySetup] = {}
    for comp, block in zip(components, blocks, strict=True):
        opt = optimizers[comp.optimizer] if comp.optimizer < len(optimizers) else None
        setups[block.name] = block_stability_setup(opt, block, params)
    try:
        snap = _measure(loss, params, blocks, loss_scale, settings, setups)
        return CurvatureRecord(step, snap, None, time.perf_counter() - start)
    except RuntimeError as exc:
        error = _explain(exc)
    # Some op has no double backward. Measure each component alone: those whose second
    # derivatives do not pass through that op's backward are still measured.
    measured: list[BlockCurvature] = []
    blocked: list[str] = []
    hvps = 0
    alone = replace(settings, coupling_blocks=())
    for block in blocks:
        try:
            part = _measure(loss, params, [block], loss_scale, alone, setups)
        except RuntimeError:
            blocked.append(block.name)
            continue
        measured.extend(part.blocks)
        hvps += part.hvp_count
    alone_snap: CurvatureSnapshot | None = None
    if measured:
        alone_snap = CurvatureSnapshot(
            blocks=tuple(measured),
            edges=(),
            hvp_count=hvps,
            seconds=time.perf_counter() - start,
            settings=settings,
            notes=(f"couplings not measured: {error}",),
        )
    return CurvatureRecord(step, alone_snap, error, time.perf_counter() - start, tuple(blocked))


class NoDoubleBackward(RuntimeError):
    """Some blocks' gradients pass through an op whose backward is not differentiable."""

    def __init__(self, blocked: list[str]) -> None:
        super().__init__(
            "a custom autograd.Function marked @once_differentiable (its backward is not "
            "differentiable) lies on the gradient path of " + ", ".join(blocked)
        )
        self.blocked = blocked


def _measure(
    loss: torch.Tensor,
    params: list[torch.Tensor],
    blocks: list[Block],
    loss_scale: float,
    settings: CurvatureSettings,
    setups: dict[str, StabilitySetup],
) -> CurvatureSnapshot:
    op = HessianOperator(loss, params, blocks, loss_scale=loss_scale)
    try:
        blocked = _delayed_error_blocks(op)
        if blocked:
            raise NoDoubleBackward(blocked)
        return measure(op, settings, stability_setups=setups)
    finally:
        op.close()


def _delayed_error_blocks(op: HessianOperator) -> list[str]:
    """Blocks whose gradient graph holds PyTorch's delayed-error node (``@once_differentiable``).

    Differentiating through that node does not always raise: autograd can skip it and return
    zeros, which would be a silently wrong Hessian. So look for it before measuring (one walk
    over the graph nodes, memoized).
    """
    memo: dict[torch.autograd.graph.Node, bool] = {}

    def has_error(root: torch.autograd.graph.Node | None) -> bool:
        if root is None:
            return False
        # Iterative post-order (graphs can be deeper than the recursion limit). The graph is
        # a DAG, so a node's children are final when its "done" entry is popped.
        stack: list[tuple[torch.autograd.graph.Node, bool]] = [(root, False)]
        while stack:
            node, done = stack.pop()
            children = [nxt for nxt, _ in node.next_functions if nxt is not None]
            if done:
                memo[node] = type(node).__name__ in ("Error", "DelayedError") or any(
                    memo.get(c, False) for c in children
                )
            elif node not in memo:
                memo[node] = False  # placeholder: being visited
                stack.append((node, True))
                stack.extend((c, False) for c in children if c not in memo)
        return memo[root]

    out = []
    for block in op.blocks:
        for part in block.parts:
            if has_error(op.gradient_node(part.index)):
                out.append(block.name)
                break
    return out


_NO_DOUBLE_BACKWARD = (
    "not implemented",
    "once_differentiable",
    "does not currently support double backward",
    "not used in the graph",
)


def _explain(exc: RuntimeError) -> str:
    text = str(exc).splitlines()[0]
    if any(marker in text for marker in _NO_DOUBLE_BACKWARD):
        return (
            f"an op in the forward has no double backward ({text}). Fixes: "
            "attn_implementation='eager' for transformers models, no aot_autograd "
            "torch.compile on measured steps, checkpoint(use_reentrant=False), a custom "
            "autograd.Function without @once_differentiable"
        )
    return text


def gradient_hooks(components: Sequence[Component]) -> list[str]:
    """Components with tensor hooks on their parameters: those hooks fire inside hfault's
    ``autograd.grad`` too (so they shape what is measured, and run twice on measured steps)."""
    return [
        c.name
        for c in components
        if any(getattr(part.param, "_backward_hooks", None) for part in c.parts)
    ]


def block_metrics(snapshot: CurvatureSnapshot) -> dict[str, dict[str, Any]]:
    """Per component: the curvature fields merged into the snapshot's metrics."""
    out: dict[str, dict[str, Any]] = {}
    for b in snapshot.blocks:
        m: dict[str, Any] = {
            "trace": b.trace,
            "trace_se": b.trace_se,
            "lambda_max": b.lambda_max,
            "lambda_min": b.lambda_min,
            "eig_residual": b.eig_residual,
            "lambda_precond": b.lambda_precond,
            "hvps": b.hvps,
        }
        if b.stability is not None:
            m.update(
                stability_ratio=b.stability.ratio,
                stability_tau=b.stability.tau,
                lambda_tilde=b.stability.lambda_tilde,
                suggested_lr=b.stability.suggested_lr,
                preconditioned=b.stability.preconditioned,
            )
        out[b.name] = m
    return out


def edge_dicts(snapshot: CurvatureSnapshot) -> list[dict[str, Any]]:
    return [
        {"source": e.source, "target": e.target, "kappa": e.kappa, "kappa_se": e.kappa_se,
         "hfro": e.hfro, "hfro_se": e.hfro_se, "rho": e.rho}
        for e in snapshot.edges
    ]


class CurvatureProbe(Listener):
    """A second-order snapshot at the first backward of each measured step (``records``), the
    forward before it on the math SDPA kernel."""

    priority = WINDOW + 1  # after the attention probe stopped watching: it measures nothing here

    def __init__(self, session: CaptureSession, config: CurvatureConfig) -> None:
        self.session = session
        self.config = config
        self.records: dict[int, CurvatureRecord] = {}
        self._math = MathAttention()
        self._eager = EagerSteps()
        self._unpatch: Callable[[], None] | None = None
        self.skipped: list[int] = []
        """Measured steps whose curvature was not measured: a weight or the loss non-finite."""
        self._skip_reason: str | None = None

    def window_opened(self, step: int) -> None:
        self._math.enter()
        self._eager.enter()
        if self._eager.waiting and self._unpatch is None:  # nothing compiled yet
            self._unpatch = patch(torch, "compile", self._compile_then_eager)

    def _compile_then_eager(self, original: Callable[..., Any]) -> Callable[..., Any]:
        eager = self._eager

        @delegate
        def compile_then_eager(*args: Any, **kwargs: Any) -> Any:
            compiled = original(*args, **kwargs)
            eager.compiled()
            return compiled

        return compile_then_eager

    def _end_window(self) -> None:
        self._math.exit()
        self._eager.exit()
        if self._unpatch is not None:
            self._unpatch()
            self._unpatch = None

    def before_backward(self, event: BackwardEvent) -> None:
        if not event.measured or event.loss is None:
            return
        try:
            state = self.session.state
            if step_size_unknown(state.optimizers):
                return  # a hand-written update without --lr: the note of capture.manual_steps
            if event.loss.requires_grad and state.components:
                hooked = gradient_hooks(state.components)
                if hooked and not any("gradient hooks" in n for n in state.notes):
                    state.notes.append(
                        "parameter gradient hooks on " + ", ".join(hooked[:5])
                        + (" ..." if len(hooked) > 5 else "") + " fire inside hfault's gradient "
                        "computation: the curvature measured is that of the hooked gradient, "
                        "and the hooks run twice on measured steps"
                    )
                reason = nonfinite_reason(state.components, event.loss)
                if reason is not None:
                    self.skipped.append(event.step)
                    self._skip_reason = self._skip_reason or reason
                    return
                self.records[event.step] = measure_step(
                    event.step, event.loss, event.scale, state.components, state.optimizers,
                    self.config,
                )
        finally:
            self._end_window()

    def close(self) -> None:
        self._end_window()
        state = self.session.state
        if self.skipped:
            steps = ", ".join(map(str, self.skipped[:5])) + (" ..." if len(self.skipped) > 5
                                                               else "")
            state.notes.append(
                f"curvature not measured at step(s) {steps}: {self._skip_reason} from step "
                f"{self.skipped[0]} (the Hessian of non-finite values means nothing; HF001 "
                "names where they came from)")
        if state.compiled_modules and self.records:
            state.notes.append(
                "torch.compile: the curvature's measured steps ran eagerly (a compiled graph has "
                "no double backward), so on those steps alone training may differ from the "
                "compiled run in the last bits")

    def contribute(self, draft: ReportDraft) -> None:
        from hfault.graph import coupling_graph  # networkx: only when a report is built

        draft.run["hvps"] = sum(r.snapshot.hvp_count for r in self.records.values() if r.snapshot)
        for step, snapshot in draft.snapshots.items():
            measured = self.records.get(step)
            if measured is None:
                continue
            curvature: dict[str, Any] = {
                "seconds": measured.seconds,
                "error": measured.error,
                "blocked": list(measured.blocked),
            }
            if measured.snapshot is not None:
                for name, extra in block_metrics(measured.snapshot).items():
                    snapshot.metrics.setdefault(name, {}).update(extra)
                curvature.update(
                    hvps=measured.snapshot.hvp_count,
                    probes=measured.snapshot.settings.k,
                    lanczos_steps=measured.snapshot.settings.m,
                    notes=list(measured.snapshot.notes),
                    unused=list(measured.snapshot.unused_blocks),
                )
                snapshot.graph = coupling_graph(
                    draft.components, snapshot.metrics, edge_dicts(measured.snapshot))
            snapshot.curvature = curvature
