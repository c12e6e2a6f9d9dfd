"""``hfault diagnose --verify-fix``: rerun the script with the mechanical fixes applied.

After the diagnosis, the fixes that can be applied without touching the script are:

- ``lower_lr`` (a finding whose ``fix.values`` has ``component``, ``new_lr`` and ``factor``): the
  component's parameters leave their param group at the optimizer's construction, for a new
  group that copies every hyperparameter of the old one with ``lr × factor`` (and
  ``initial_lr × factor`` where the script set one). Where the component is its group's only
  content, that group's ``lr`` is scaled instead (no empty group). Multiplying the construction
  ``lr`` by the factor, rather than writing ``new_lr``, keeps an LR scheduler's shape: a scheduler
  built after the optimizer sets ``initial_lr`` from the new group and scales it like the others.
  A slice of a fused tensor (``c_attn.query``) cannot be split off: the whole tensor moves.
- ``clip_grad`` (``fix.values.kind == "clip_grad"``, with ``max_norm``): a global optimizer
  step pre-hook, registered before hfault's own, calls ``clip_grad_norm_(params, max_norm)`` on
  each optimizer's parameters right before ``step()``: after whatever the script did to the
  gradients (its own clipping, which makes ours a no-op where it is tighter; GradScaler's unscale).

At most one fix per component, from its highest-ranked finding, and one clipping fix. The rerun
matches the first run: same script arguments, ``--max-steps``, snapshot schedule (so the same
steps are measured), curvature settings and rules; the process state a script can change (RNG
states, default dtype, grad mode, the modules it imported from its folder) is restored first, so
an unseeded script replays the same random stream too. Parameters are matched by name: the first
run records each fixed component's parameter names from ``named_parameters()`` of its root
module; the rerun finds the module of that class holding the new optimizer's parameters.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.optim.optimizer as optim_mod
from torch import nn

from hfault.capture.process_state import ProcessState
from hfault.capture.runner import RunOutcome, run_script
from hfault.capture.session import CaptureSession, CaptureState
from hfault.components import find_roots
from hfault.diagnose import DiagnoseOptions, Diagnosis, build_report, diagnose
from hfault.verify_compare import ALL_PARAMETERS, compare, not_applicable

__all__ = [
    "FixApplier",
    "PlannedFix",
    "Verification",
    "diagnose_and_verify",
    "plan_fixes",
    "split_param_groups",
]


@dataclass
class PlannedFix:
    """A fix to apply in the rerun, with what the rerun needs to find its parameters again."""

    rule: str
    component: str
    kind: str
    """``lower_lr`` or ``clip_grad``."""
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


# ---------------------------------------------------------------- planning (first run)
def plan_fixes(
    report: Mapping[str, Any], state: CaptureState
) -> tuple[list[PlannedFix], list[dict[str, Any]]]:
    """The mechanical fixes of a report's findings, in rank order, and the ones left out (with
    the reason)."""
    fixes: list[PlannedFix] = []
    skipped: list[dict[str, Any]] = []
    comps = {c.name: c for c in state.components}
    params = [part.param for c in state.components for part in c.parts]
    roots = find_roots(list(state.modules.values()), params)
    owner: dict[int, tuple[nn.Module, str]] = {}
    for root in roots:
        for name, p in root.named_parameters():
            owner.setdefault(id(p), (root, name))
    fixed_params: dict[int, str] = {}
    clip: PlannedFix | None = None

    def skip(f: Mapping[str, Any], component: str | None, kind: str, reason: str) -> None:
        skipped.append({"rule": f["rule"], "component": component or ALL_PARAMETERS,
                        "kind": kind, "reason": reason})

    for f in report.get("findings", []):
        values = (f.get("fix") or {}).get("values") or {}
        brief = {k: f.get(k) for k in ("rule", "component", "severity", "score", "rank")}
        if values.get("kind") == "clip_grad":
            max_norm = values.get("max_norm")
            if not _positive(max_norm):
                continue
            if clip is not None:
                skip(f, f.get("component"), "clip_grad",
                     f"gradient clipping is applied once, for {clip.rule}")
                continue
            clip = PlannedFix(f["rule"], f.get("component") or ALL_PARAMETERS, "clip_grad",
                              brief, max_norm=float(max_norm))
            fixes.append(clip)
            continue
        name = values.get("component")
        if not (isinstance(name, str) and _positive(values.get("factor"))
                and "new_lr" in values):
            continue
        planned = next((x for x in fixes if x.kind == "lower_lr" and x.component == name), None)
        if planned is not None:
            skip(f, name, "lower_lr", f"{name} already gets the fix of {planned.rule}")
            continue
        comp = comps.get(name)
        if comp is None:
            skip(f, name, "lower_lr", f"{name} is not a component of this run")
            continue
        tensors = list({id(part.param): part.param for part in comp.parts}.values())
        clash = [fixed_params[id(p)] for p in tensors if id(p) in fixed_params]
        if clash:
            skip(f, name, "lower_lr", f"{name} shares a fused tensor with {clash[0]}, which "
                 "already gets a learning-rate fix")
            continue
        owned = [owner.get(id(p)) for p in tensors]
        if any(o is None for o in owned) or len({id(o[0]) for o in owned if o}) != 1:
            skip(f, name, "lower_lr", f"the parameters of {name} are not owned by one module of "
                 "the model: they cannot be found again by name in the rerun")
            continue
        root = owned[0][0]  # type: ignore[index]
        names = tuple(o[1] for o in owned if o)
        by_id = dict(zip((id(p) for p in tensors), names, strict=True))
        fused = tuple(dict.fromkeys(by_id[id(part.param)] for part in comp.parts
                                    if part.start is not None))
        factor = float(values["factor"])
        fixes.append(PlannedFix(
            f["rule"], name, "lower_lr", brief, factor=factor,
            lr=_float(values.get("lr")), new_lr=_float(values.get("new_lr")),
            optimizer=comp.optimizer, root=type(root).__name__,
            root_ordinal=_root_ordinal(root, roots, state.optimizers[comp.optimizer]),
            names=names, fused=fused,
        ))
        for p in tensors:
            fixed_params[id(p)] = name
    return fixes, skipped


def _root_ordinal(root: nn.Module, roots: Sequence[nn.Module], opt: torch.optim.Optimizer) -> int:
    pos = {id(p): i for i, p in enumerate(_flat(opt.param_groups))}
    same = _ordered([r for r in roots if type(r).__name__ == type(root).__name__], pos)
    return next((i for i, r in enumerate(same) if r is root), 0)


def _ordered(modules: Sequence[nn.Module], pos: Mapping[int, int]) -> list[nn.Module]:
    """The modules holding a parameter of the optimizer, by their first one in its order."""

    def first(m: nn.Module) -> int | None:
        return min((pos[id(p)] for p in m.parameters() if id(p) in pos), default=None)

    held = [(first(m), i, m) for i, m in enumerate(modules)]
    return [m for f, _, m in sorted((h for h in held if h[0] is not None),
                                    key=lambda h: (h[0], h[1]))]


def _flat(groups: Sequence[Mapping[str, Any]]) -> list[torch.Tensor]:
    return [_tensor(e) for g in groups for e in g["params"]]


def _tensor(entry: Any) -> Any:
    """A param-group entry: a tensor, or a (name, tensor) pair (named parameters)."""
    return entry[1] if isinstance(entry, tuple) and len(entry) == 2 else entry


def _positive(x: Any) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            and x > 0)


def _float(x: Any) -> float | None:
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        x = x.item()
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


# ---------------------------------------------------------------- the param-group split
def split_param_groups(
    groups: list[dict[str, Any]],
    moves: Sequence[tuple[Sequence[torch.Tensor], float]],
    defaults: Mapping[str, Any],
) -> list[dict[str, Any] | str]:
    """Move each ``moves`` entry's tensors out of their param groups, in place.

    ``groups`` is an optimizer's ``params`` argument as a list of group dicts (entries may be
    tensors or ``(name, tensor)`` pairs). For each source group a new group is appended that
    copies its hyperparameters with ``lr × factor`` (``initial_lr × factor`` where present); a
    group whose every parameter moves keeps its place and gets the scaled ``lr``. Returns, per
    move, ``{"lr_before", "lr_after", "groups": [{"group", "new_group", "whole_group"}]}`` or
    a string saying why nothing moved.
    """
    results: list[dict[str, Any] | str] = []
    taken: set[int] = set()
    for tensors, factor in moves:
        ids = {id(t) for t in tensors} - taken
        sources = [(gi, [e for e in g["params"] if id(_tensor(e)) in ids])
                   for gi, g in enumerate(groups)]
        sources = [(gi, entries) for gi, entries in sources if entries]
        if not sources:
            results.append("none of its parameters is in this optimizer")
            continue
        bad = next((gi for gi, _ in sources
                    if not _is_lr(groups[gi].get("lr", defaults.get("lr")))), None)
        if bad is not None:
            results.append(f"param group {bad} has no numeric learning rate")
            continue
        changes = []
        lr_before = lr_after = None
        for gi, entries in sources:
            group = groups[gi]
            lr = group.get("lr", defaults.get("lr"))
            if lr_before is None:
                lr_before, lr_after = _float(lr), _float(lr * factor)
            if len(entries) == len(group["params"]):
                target, new_index = group, None
            else:
                group["params"] = [e for e in group["params"] if id(_tensor(e)) not in ids]
                target = {k: v for k, v in group.items() if k != "params"}
                target["params"] = entries
                groups.append(target)
                new_index = len(groups) - 1
            target["lr"] = lr * factor
            if "initial_lr" in target and _is_lr(target["initial_lr"]):
                target["initial_lr"] = target["initial_lr"] * factor
            changes.append({"group": gi, "new_group": new_index, "whole_group": new_index is None})
        taken |= ids
        results.append({"lr_before": lr_before, "lr_after": lr_after, "groups": changes})
    return results


def _is_lr(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return x.numel() == 1
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _as_groups(params: Sequence[Any]) -> list[dict[str, Any]] | None:
    """An optimizer's ``params`` argument (as a list) as a list of group dicts with list
    ``params`` (what ``Optimizer.__init__`` itself does), or None where torch will reject it."""
    groups = list(params)
    if not groups:
        return None
    if not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    for g in groups:
        if not isinstance(g, dict) or isinstance(g.get("params"), set):
            return None
        entries = g["params"]
        g["params"] = [entries] if isinstance(entries, torch.Tensor) else list(entries)
    return groups


# ---------------------------------------------------------------- applying (rerun)
class FixApplier:
    """Installs the fixes for the rerun: a patched ``Optimizer.__init__`` (param-group split) and
    a global step pre-hook (clipping). Enter it *before* the capture session so that the session
    sees the split groups and the clipped gradients."""

    def __init__(self, fixes: Sequence[PlannedFix]):
        self.lr_fixes = [f for f in fixes if f.kind == "lower_lr"]
        self.clip = next((f for f in fixes if f.kind == "clip_grad"), None)
        self.applied: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.clip_steps = 0
        self.clipped_steps = 0
        self.largest_norm: float | None = None
        self._optimizers: dict[int, int] = {}
        self._restore: list[Callable[[], None]] = []
        self._done: set[int] = set()

    def __enter__(self) -> FixApplier:
        original = torch.optim.Optimizer.__init__
        applier = self

        def init(opt: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
            if id(opt) not in applier._optimizers:
                index = applier._optimizers[id(opt)] = len(applier._optimizers)
                args, kwargs = applier._split(opt, index, args, kwargs)
            original(opt, *args, **kwargs)

        torch.optim.Optimizer.__init__ = init  # type: ignore[method-assign]
        self._restore.append(lambda: setattr(torch.optim.Optimizer, "__init__", original))
        if self.clip is not None:
            handle = optim_mod.register_optimizer_step_pre_hook(self._clip_hook)
            self._restore.append(handle.remove)
        return self

    def __exit__(self, *exc: object) -> None:
        for restore in reversed(self._restore):
            restore()
        self._restore.clear()
        for fix in self.lr_fixes:
            if id(fix) not in self._done and not any(x["fix"] is fix for x in self.failed):
                self._fail(fix, f"the rerun created no optimizer #{fix.optimizer}")
        self.failed = [{k: v for k, v in x.items() if k != "fix"} for x in self.failed]

    # ------------------------------------------------------------ param groups
    def _split(self, opt: torch.optim.Optimizer, index: int, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        fixes = [f for f in self.lr_fixes if f.optimizer == index]
        if not fixes:
            return args, kwargs
        in_kwargs = not args
        params = kwargs.get("params") if in_kwargs else args[0]
        defaults = (args[1] if len(args) > 1 else kwargs.get("defaults")) or {}
        if type(opt).__name__ == "LBFGS":
            for fix in fixes:
                self._fail(fix, "LBFGS supports a single param group only")
            return args, kwargs
        if params is None or isinstance(params, torch.Tensor):  # torch rejects these
            return args, kwargs
        params = list(params)  # a one-shot iterable is consumed here: pass the list on

        def passing(value: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if in_kwargs:
                return args, {**kwargs, "params": value}
            return (value, *args[1:]), kwargs

        groups = _as_groups(params)
        if groups is None:  # torch rejects it: leave that to torch
            return passing(params)
        args, kwargs = passing(groups)
        try:
            self._move(opt, groups, defaults, fixes)
        except Exception as exc:  # a bug here must not look like the script's crash
            for fix in fixes:
                if id(fix) not in self._done:
                    self._fail(fix, f"internal error: {type(exc).__name__}: {exc}")
        return args, kwargs

    def _move(self, opt: torch.optim.Optimizer, groups: list[dict[str, Any]],
              defaults: Mapping[str, Any], fixes: Sequence[PlannedFix]) -> None:
        flat = _flat(groups)
        moves: list[tuple[PlannedFix, list[torch.Tensor]]] = []
        for fix in fixes:
            found = self._resolve(fix, flat)
            if isinstance(found, str):
                self._fail(fix, found)
            else:
                moves.append((fix, found))
        results = split_param_groups(groups, [(t, f.factor or 1.0) for f, t in moves], defaults)
        for (fix, _), result in zip(moves, results, strict=True):
            if isinstance(result, str):
                self._fail(fix, result)
                continue
            self._done.add(id(fix))
            self.applied.append(self._record(fix, type(opt).__name__, result))

    def _resolve(self, fix: PlannedFix, flat: Sequence[torch.Tensor]) -> list[torch.Tensor] | str:
        """The rerun's tensors of ``fix``'s component: by parameter name on the root module of
        the recorded class that holds this optimizer's parameters."""
        pos = {id(t): i for i, t in enumerate(flat)}
        candidates = [o for o in gc.get_objects()
                      if issubclass(type(o), nn.Module) and type(o).__name__ == fix.root]
        inner = {id(sub) for m in candidates for sub in m.modules() if sub is not m}
        roots = _ordered([m for m in candidates if id(m) not in inner], pos)
        if fix.root_ordinal >= len(roots):
            return (f"no {fix.root} module holds the parameters of the rerun's optimizer "
                    f"#{fix.optimizer}")
        named = dict(roots[fix.root_ordinal].named_parameters())
        tensors = []
        for name in fix.names:
            t = named.get(name)
            if t is None or id(t) not in pos:
                return f"{fix.root}.{name} is not a parameter of optimizer #{fix.optimizer}"
            tensors.append(t)
        return tensors

    def _record(self, fix: PlannedFix, opt_class: str, result: Mapping[str, Any]
                ) -> dict[str, Any]:
        groups = result["groups"]
        where = "; ".join(
            f"param group {g['group']} scaled as a whole" if g["whole_group"]
            else f"moved from param group {g['group']} to new group {g['new_group']}"
            for g in groups)
        note = f"{opt_class} #{fix.optimizer}: {where}"
        if fix.fused:
            note += (f"; {fix.component} is a slice of {', '.join(fix.fused)}, which param "
                     "groups cannot split: the whole tensor gets the new learning rate")
        lr_before, lr_after = result["lr_before"], result["lr_after"]
        if fix.lr is not None and lr_before is not None and not math.isclose(
                lr_before, fix.lr, rel_tol=1e-6):
            note += (f"; the finding saw lr {fix.lr:.3g} ({fix.rule}), the optimizer was built "
                     f"with {lr_before:.3g} (a scheduler): ×{fix.factor:.3g} scales the whole "
                     "schedule")
        return {
            "rule": fix.rule,
            "component": fix.component,
            "kind": "lower_lr",
            "lr_before": lr_before,
            "lr_after": lr_after,
            "max_norm": None,
            "factor": fix.factor,
            "optimizer": fix.optimizer,
            "parameters": list(fix.names),
            "groups": groups,
            "note": note,
        }

    def _fail(self, fix: PlannedFix, reason: str) -> None:
        self.failed.append({"rule": fix.rule, "component": fix.component, "kind": fix.kind,
                            "reason": reason, "fix": fix})

    # ------------------------------------------------------------ clipping
    def _clip_hook(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.clip is None or self.clip.max_norm is None:
            return
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        try:
            total = float(torch.nn.utils.clip_grad_norm_(params, self.clip.max_norm))
        except Exception as exc:  # e.g. sparse gradients: stop clipping, say so
            self.notes.append(f"gradient clipping failed and was stopped: {exc}")
            self.clip = None
            return
        self.clip_steps += 1
        if not math.isfinite(total) or total > self.clip.max_norm:
            self.clipped_steps += 1
        if self.largest_norm is None or not total <= self.largest_norm:
            self.largest_norm = total

    def clip_record(self) -> dict[str, Any] | None:
        fix = self.clip
        if fix is None:
            return None
        note = ("clip_grad_norm_ on every optimizer's parameters right before step(), after the "
                "script's own gradient processing")
        if self.clip_steps:
            note += (f"; the total gradient norm exceeded max_norm at {self.clipped_steps} of "
                     f"{self.clip_steps} optimizer step(s) (largest {_g(self.largest_norm)})")
        return {
            "rule": fix.rule,
            "component": fix.component,
            "kind": "clip_grad",
            "lr_before": None,
            "lr_after": None,
            "max_norm": fix.max_norm,
            "steps": self.clip_steps,
            "clipped_steps": self.clipped_steps,
            "largest_norm": _json_number(self.largest_norm),
            "note": note,
        }


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _json_number(x: float | None) -> float | str | None:
    if x is None or math.isfinite(x):
        return x
    return "nan" if x != x else ("inf" if x > 0 else "-inf")


# ---------------------------------------------------------------- the whole flow
@dataclass
class Verification:
    first: Diagnosis
    data: dict[str, Any]
    """The first run's report dict, with ``verify_fix``."""
    after: Diagnosis | None = None

    @property
    def interrupted(self) -> bool:
        return self.first.outcome.interrupted or bool(
            self.after is not None and self.after.outcome.interrupted)


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), \
            contextlib.redirect_stderr(sink):
        yield


def _why_not(first: Diagnosis) -> str | None:
    if first.outcome.interrupted:
        return "interrupted: no rerun"
    if not first.trained:
        return "nothing to diagnose, nothing to verify"
    return None


def diagnose_and_verify(
    options: DiagnoseOptions, progress: Callable[[str], None] | None = None
) -> Verification:
    """Diagnose, then rerun with the mechanical fixes and compare (``verify_fix``)."""
    process = ProcessState()
    first = diagnose(options)
    data = first.report.to_dict()
    reason = _why_not(first)
    plan, skipped = ([], []) if reason else plan_fixes(data, first.state)
    if reason or not plan:
        data["verify_fix"] = not_applicable(
            data, reason or "no finding has a fix that can be applied mechanically (a "
            "per-component learning rate or gradient clipping)", skipped)
        return Verification(first, data)
    _release(first.state)
    if progress is not None:
        progress(f"verifying {len(plan)} fix(es) by rerunning {options.script}: "
                 + "; ".join(_plan_text(f) for f in plan))
    applier = FixApplier(plan)
    session = CaptureSession(options.schedule, options.max_steps, nan_watch=options.nan_watch,
                             curvature=options.curvature)
    process.forget_user_modules(options.script.parent)
    process.restore()
    try:
        with applier, _silenced():
            outcome: RunOutcome = run_script(options.script, list(options.argv), session)
    finally:
        process.forget_user_modules(options.script.parent)
        process.restore()
    clip = applier.clip_record()
    applied = [*applier.applied, *([clip] if clip else [])]
    report = build_report(options, session, outcome)
    report.notes[:0] = [f"--verify-fix rerun: {_applied_text(f)}" for f in applied] + [
        f"--verify-fix rerun: {n}" for n in applier.notes] or [
        "--verify-fix rerun: no fix could be applied"]
    after = Diagnosis(report, outcome, session.state)
    motivating = {(f["rule"], None if f["component"] == ALL_PARAMETERS else f["component"])
                  for f in applied}
    data["verify_fix"] = compare(data, report.to_dict(), applied, motivating,
                                 skipped=[*applier.failed, *skipped], notes=applier.notes)
    error = outcome.error or {}
    split = any(g["new_group"] is not None for f in applier.applied for g in f["groups"])
    if (outcome.status == "crashed" and first.outcome.status != "crashed" and split
            and "lr_scheduler" in str(error.get("traceback", ""))):
        # Not the fix's fault: a scheduler given one value per original param group (a list of
        # lr_lambdas, OneCycleLR's max_lr list) cannot take the extra group.
        data["verify_fix"].update(
            verdict="not_applicable",
            summary="the param-group split cannot be applied to this script: its LR scheduler "
            f"raised {error.get('type')}: {error.get('message')} (per-group settings for the "
            "original groups only); apply the fix by hand")
    if outcome.interrupted:
        data["verify_fix"].update(
            verdict="not_applicable",
            summary=f"the rerun was interrupted (Ctrl-C) after {session.state.step} step(s): "
            "no verdict")
    return Verification(first, data, after)


def _release(state: CaptureState) -> None:
    """Drop hfault's references to the first run's model and optimizer state before the rerun
    builds its own, so that the rerun does not need twice the (GPU) memory. The report is
    already built; the script's objects are dead, only hfault still held them."""
    for opt in state.optimizers:
        opt.state.clear()
        opt.param_groups.clear()
    state.modules.clear()
    state.cross_modules.clear()
    state.components.clear()
    state.curvature.clear()
    gc.collect()


def _applied_text(fix: Mapping[str, Any]) -> str:
    if fix["kind"] == "clip_grad":
        head = f"gradient clipping at max_norm {fix['max_norm']:g} ({fix['rule']})"
    else:
        head = (f"{fix['component']}: lr {_g(fix['lr_before'])} → {_g(fix['lr_after'])} "
                f"(×{fix['factor']:.3g}, {fix['rule']})")
    return f"{head}; {fix['note']}"


def _plan_text(fix: PlannedFix) -> str:
    if fix.kind == "clip_grad":
        return f"clip gradients at {fix.max_norm:g} ({fix.rule})"
    return f"{fix.component} lr ×{fix.factor:.3g} ({fix.rule})"
