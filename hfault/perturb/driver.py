"""``hfault perturb``: inject Gaussian noise into components during training and measure the effect.

For each component b (or the group, with ``together``), each α and each draw r, the script runs
again from the start with ``θ_b ← θ_b + α·RMS(θ_b)·δ_r`` right after the optimizer step at the
injection steps, and is compared with one unperturbed baseline run on the same batches: the loss
change, the flip share of the root module's argmax predictions, the gradient-norm change, and
Tr(H_bb)/λmax at the first step after the injection. The first loss change is checked against the
second-order model ``E[ΔL] ≈ ½α²·RMS(θ_b)²·Tr(H_bb)``.

Why the runs are in-process (``hfault.capture.rerun``, like ``--verify-fix``): no per-run
interpreter and torch import, and the script's own modules, RNG states (torch, CUDA, ``random``,
NumPy), default dtype and grad mode are restored before every run, so an unperturbed rerun is
bit-identical (the ``noise_floor`` run checks it). δ comes from a private generator seeded by
``seed + unit``; with antithetic sampling (default) draws come in pairs ``δ_k, −δ_k``, which
cancels every odd-order term of ΔL in the pair's mean (the first-order ``g·δ``, whose spread
would otherwise drown the curvature term at small α).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hfault import __version__
from hfault.capture.process_state import ProcessState
from hfault.capture.rerun import rerun
from hfault.capture.runner import RunOutcome
from hfault.capture.schedule import Schedule
from hfault.capture.session import CaptureSession
from hfault.curvature import CurvatureSettings, HessianOperator
from hfault.curvature.hvp import dot64
from hfault.exitcodes import ExitCode
from hfault.numbers import finite
from hfault.perturb.injection import Injection, draw_deltas, unit_generator
from hfault.perturb.listener import MeasureSpec, PerturbListener, RunPlan, RunRecord
from hfault.perturb.stats import Stat, mean_ci, t_quantile

__all__ = ["PerturbOptions", "PerturbResult", "PerturbUsageError", "perturb"]



class PerturbUsageError(Exception):
    """Bad input found while running (no such component, nothing to perturb): exit 2."""


@dataclass
class PerturbOptions:
    script: Path
    components: list[str]
    """Component names or fnmatch globs."""
    alphas: list[float]
    injection: Injection
    argv: list[str] = field(default_factory=list)
    draws: int = 10
    max_steps: int | None = None
    seed: int = 0
    together: bool = False
    """Perturb all matched components at once (one experiment) instead of one at a time."""
    antithetic: bool = True
    curvature: bool = True
    probes: int = 16
    lanczos_steps: int = 20
    noise_floor: bool = True
    """Run the unperturbed script twice and report how far the two runs differ."""
    show_output: bool = False
    """Let the baseline run's stdout/stderr through (every other run is silenced)."""
    progress: Callable[[str], None] | None = None


@dataclass
class PerturbResult:
    data: dict[str, Any]
    exit_code: ExitCode
    error: str | None = None
    """One line for stderr when the script crashed."""


@dataclass
class _Run:
    record: RunRecord
    outcome: RunOutcome
    steps: int
    optimizers: int
    backward_calls: int
    seconds: float
    device: str | None


def _experiments(selected: Sequence[str], together: bool) -> list[tuple[str, ...]]:
    return [tuple(selected)] if together else [(name,) for name in selected]


def _label(names: Sequence[str]) -> str:
    return " + ".join(names)


class _Driver:
    def __init__(self, options: PerturbOptions) -> None:
        self.o = options
        self.process = ProcessState()
        self.units = options.draws // 2 if options.antithetic else options.draws
        self.settings = (
            CurvatureSettings(
                budget="standard",
                probes=options.probes,
                lanczos_steps=options.lanczos_steps,
                coupling_blocks=(),
                # Deflated Hutchinson (the Lanczos basis' exact part; near-low-rank blocks need
                # it) with the same start vector and probes in every run (seed), so ΔTr and
                # Δλmax against the baseline use common random numbers.
                deflate=True,
                rho=False,
                seed=options.seed,
            )
            if options.curvature
            else None
        )
        self.runs = 0
        self.seconds = 0.0

    def progress(self, text: str) -> None:
        if self.o.progress is not None:
            self.o.progress(text)

    def run(self, plan: RunPlan, show: bool = False) -> _Run:
        session = CaptureSession(Schedule(auto=False), self.o.max_steps)  # no snapshots
        listener = session.add(PerturbListener(session, plan))
        start = time.perf_counter()
        outcome = rerun(self.o.script, self.o.argv, session, self.process, show_output=show)
        seconds = time.perf_counter() - start
        self.runs += 1
        self.seconds += seconds
        state = session.state
        return _Run(listener.record, outcome, state.step, len(state.optimizers),
                    state.backward_calls, seconds, state.device)

    # ----------------------------------------------------------------- baseline probes
    def probe(self, op: HessianOperator, record: RunRecord) -> None:
        """Per draw unit k and experiment: ``g·u_k`` and ``u_kᵀHu_k`` with ``u_k = (RMS_b·δ_k,b)``
        on the measured graph, so each draw's second-order prediction
        ``α·sign·g·u + ½α²·uᵀHu`` is known for every α (one HVP per unit)."""
        for names in _experiments(record.selected, self.o.together):
            idx = [op.index(n) for n in names]
            grads = [op.gradient(b) for b in idx]
            linear, quadratic = [], []
            for k in range(self.units):
                deltas = draw_deltas([op.numel(b) for b in idx], unit_generator(self.o.seed + k))
                u = [
                    (record.rms.get(n, 0.0) * d).to(device=op.device(b), dtype=op.dtype(b))
                    for n, b, d in zip(names, idx, deltas, strict=True)
                ]
                if len(idx) == 1:
                    hu = [op.hvp_bb(idx[0], u[0])]
                else:
                    full = [
                        torch.zeros(op.numel(a), dtype=op.dtype(a), device=op.device(a))
                        for a in range(len(op.blocks))
                    ]
                    for b, ub in zip(idx, u, strict=True):
                        full[b] = ub
                    every = op.hvp_blocks(full)
                    hu = [every[b] for b in idx]
                linear.append(sum(float(dot64(g, ub)) for g, ub in zip(grads, u, strict=True)))
                quadratic.append(sum(float(dot64(ub, h)) for ub, h in zip(u, hu, strict=True)))
            record.probes[_label(names)] = {"linear": linear, "quadratic": quadratic}

    # ----------------------------------------------------------------- the experiment
    def execute(self) -> PerturbResult:
        o = self.o
        first = o.injection.first
        self.progress("baseline run")
        measure = (
            MeasureSpec(self.settings, self.probe) if self.settings is not None else None
        )
        base = self.run(
            RunPlan(o.injection, tuple(o.components), measure=measure), show=o.show_output
        )
        data = self._skeleton(base)
        data["runs"] = {"count": self.runs, "seconds": self.seconds, "crashed": 0}
        if base.outcome.interrupted:
            data["status"] = "interrupted"
            return PerturbResult(data, ExitCode.INTERRUPTED)
        if base.record.selection_error is not None:
            raise PerturbUsageError(base.record.selection_error)
        if base.outcome.status != "crashed":
            if base.optimizers == 0:
                raise PerturbUsageError(
                    f"nothing to perturb: {o.script} created no torch.optim optimizer"
                )
            if base.backward_calls == 0:
                raise PerturbUsageError(f"nothing to perturb: {o.script} never called backward()")
            if base.steps < first:
                raise PerturbUsageError(
                    f"the script ended at step {base.steps}, before the injection at step "
                    f"{first} (--at / --max-steps)"
                )
        if base.record.first_loss is None:
            if base.outcome.status == "crashed":  # before anything could be compared
                data["status"], data["error"] = "crashed", base.outcome.error
                data["notes"].append(f"the baseline run raised before step {first + 1}: "
                                     "nothing to compare")
                return PerturbResult(data, ExitCode.SCRIPT_CRASHED, _crash_line(base.outcome))
            raise PerturbUsageError(
                f"no backward pass after the injection at step {first}: inject earlier or "
                "raise --max-steps"
            )
        if o.noise_floor:
            self.progress("baseline rerun (noise floor)")
            spec = MeasureSpec(None) if self.settings is not None else None
            again = self.run(RunPlan(o.injection, tuple(o.components), measure=spec,
                                     reference=base.record.predictions))
            data["noise_floor"] = _noise_floor(base, again)
            if again.outcome.interrupted:
                return self._finish(data, base, interrupted=True)
        resolution = data["baseline"]["loss_resolution"]
        for names in _experiments(base.record.selected, o.together):
            experiment = self._experiment_header(base, names)
            data["experiments"].append(experiment)
            for alpha in o.alphas:
                entry: dict[str, Any] = {"alpha": alpha, "draws": []}
                experiment["alphas"].append(entry)
                for r in range(o.draws):
                    self.progress(f"{_label(names)}  α={alpha:g}  draw {r + 1}/{o.draws}")
                    unit = r // 2 if o.antithetic else r
                    sign = -1.0 if o.antithetic and r % 2 else 1.0
                    run = self.run(RunPlan(
                        o.injection,
                        names,
                        names,
                        alpha,
                        o.seed + unit,
                        sign,
                        MeasureSpec(self.settings) if self.settings is not None else None,
                        base.record.predictions,
                    ))
                    draw = _compare(base, run, names, first)
                    draw.update(draw=r, unit=unit, sign=int(sign))
                    probes = base.record.probes.get(_label(names))
                    if probes is not None:
                        lin, quad = probes["linear"][unit], probes["quadratic"][unit]
                        draw["predicted"] = sign * alpha * lin + 0.5 * alpha**2 * quad
                    entry["draws"].append(draw)
                    if run.outcome.interrupted:
                        entry["summary"] = _summary(entry["draws"], experiment, alpha, o,
                                                    resolution)
                        return self._finish(data, base, interrupted=True)
                entry["summary"] = _summary(entry["draws"], experiment, alpha, o, resolution)
        return self._finish(data, base)

    # ----------------------------------------------------------------- result data
    def _skeleton(self, base: _Run) -> dict[str, Any]:
        o = self.o
        rec = base.record
        first = o.injection.first
        components = {}
        for name in rec.selected:
            curv = rec.curvature.get(name, {})
            components[name] = {
                "rms": rec.rms.get(name),
                "grad_norm": rec.component_grad_norms.get(first + 1, {}).get(name),
                "measured_grad_norm": curv.get("grad_norm"),
                **{k: curv.get(k) for k in ("trace", "trace_se", "lambda_max", "lambda_min",
                                            "eig_residual")},
            }
        return {
            "schema_version": 1,
            "tool": {"name": "hfault", "version": __version__, "command": "perturb"},
            "script": str(o.script),
            "argv": list(o.argv),
            "status": "completed",
            "error": None,
            "device": base.device,
            "torch": torch.__version__,
            "settings": {
                "components": list(o.components),
                "alphas": list(o.alphas),
                "draws": o.draws,
                "antithetic": o.antithetic,
                "seed": o.seed,
                "together": o.together,
                "injection": {
                    "steps": sorted(o.injection.steps),
                    "every": o.injection.every,
                    "first": first,
                },
                "max_steps": o.max_steps,
                "curvature": None if self.settings is None else {
                    "probes": o.probes, "lanczos_steps": o.lanczos_steps,
                },
            },
            "measured_step": first + 1,
            "baseline": {
                "status": base.outcome.status,
                "error": base.outcome.error,
                "steps": base.steps,
                "seconds": base.seconds,
                "first_loss": rec.first_loss,
                "loss_resolution": None if rec.first_loss is None or rec.loss_eps is None
                else rec.loss_eps * abs(rec.first_loss),
                "curvature_error": rec.curvature_error,
                "components": components,
            },
            "noise_floor": None,
            "experiments": [],
            "runs": {},
            "notes": [],
        }

    def _experiment_header(self, base: _Run, names: tuple[str, ...]) -> dict[str, Any]:
        comps = [base.record.curvature.get(n, {}) for n in names]
        rms = [base.record.rms.get(n, 0.0) for n in names]
        traces = [t for c in comps if (t := c.get("trace")) is not None and math.isfinite(t)]
        curvature = None
        if comps and len(traces) == len(comps):
            ses = [c.get("trace_se") or 0.0 for c in comps]
            curvature = {
                "value": sum(r * r * t for r, t in zip(rms, traces, strict=True)),
                "se": math.sqrt(sum((r * r * s) ** 2 for r, s in zip(rms, ses, strict=True))),
            }
        gnorms = [g for c in comps if (g := c.get("grad_norm")) is not None]
        grad_term = None
        if comps and len(gnorms) == len(comps):
            grad_term = math.sqrt(sum((r * g) ** 2 for r, g in zip(rms, gnorms, strict=True)))
        return {
            "label": _label(names),
            "components": list(names),
            "rms": dict(zip(names, rms, strict=True)),
            "curvature_term": curvature,
            "gradient_term": grad_term,
            "alphas": [],
        }

    def _finish(self, data: dict[str, Any], base: _Run, interrupted: bool = False) -> PerturbResult:
        crashes = [
            d for e in data["experiments"] for a in e["alphas"] for d in a["draws"]
            if d["status"] == "crashed"
        ]
        data["runs"] = {"count": self.runs, "seconds": self.seconds, "crashed": len(crashes)}
        notes = data["notes"]
        floor = data.get("noise_floor")
        if floor and not floor["identical"]:
            notes.append(
                "two unperturbed runs differ (max |ΔL| {:.3g}, flip share {:.3g}): the script or "
                "its kernels are not bit-reproducible; effects of that size are noise".format(
                    floor["max_abs_dloss"] or 0.0, floor["flip_share"] or 0.0)
            )
        if base.record.curvature_error:
            notes.append(f"curvature not measured: {base.record.curvature_error}")
        zero = [n for n, r in base.record.rms.items() if r == 0.0]
        if zero:
            notes.append(f"RMS(θ) is 0 at the injection for {', '.join(zero)}: nothing injected")
        if interrupted:
            data["status"] = "interrupted"
            notes.append("interrupted by Ctrl-C: the results cover the runs before it")
            return PerturbResult(data, ExitCode.INTERRUPTED)
        if base.outcome.status == "crashed":
            data["status"], data["error"] = "crashed", base.outcome.error
            return PerturbResult(data, ExitCode.SCRIPT_CRASHED, _crash_line(base.outcome))
        if crashes:
            data["status"] = "crashed"
            data["error"] = crashes[0]["error"]
            notes.append(f"{len(crashes)} perturbed run(s) crashed; their draws hold the error")
            err = crashes[0]["error"] or {}
            return PerturbResult(data, ExitCode.SCRIPT_CRASHED, _crash_line(
                RunOutcome("crashed", err)))
        return PerturbResult(data, ExitCode.OK)


def _crash_line(outcome: RunOutcome) -> str:
    err = outcome.error or {}
    where = f" ({err.get('file')}:{err.get('line')})" if err.get("file") else ""
    return f"the script raised {err.get('type')}: {err.get('message')}{where}"


def _group_norm(record: RunRecord, step: int, names: Sequence[str]) -> float | None:
    norms = record.component_grad_norms.get(step, {})
    if not all(n in norms for n in names):
        return None
    return math.sqrt(sum(norms[n] ** 2 for n in names))


def _flip_share(flips: dict[tuple[int, str], list[int]], keep: Callable[[int, str], bool]
                ) -> float | None:
    flipped = total = 0
    for (step, mode), (f, t) in flips.items():
        if keep(step, mode):
            flipped += f
            total += t
    return flipped / total if total else None


def _compare(base: _Run, run: _Run, names: Sequence[str], first: int) -> dict[str, Any]:
    """One draw against the baseline: losses, flips, gradient norms, curvature."""
    b, p = base.record, run.record
    after = first + 1
    common = sorted(set(b.losses) & set(p.losses))
    deltas = [p.losses[t] - b.losses[t] for t in common]
    window = None
    if deltas and all(math.isfinite(d) for d in deltas):
        window = math.fsum(deltas) / len(deltas)
    dfirst = None
    if p.first_loss is not None and b.first_loss is not None:
        dfirst = p.first_loss - b.first_loss
    gsteps = sorted(set(b.component_grad_norms) & set(p.component_grad_norms))
    gdeltas = []
    for t in gsteps:
        gb, gp = _group_norm(b, t, names), _group_norm(p, t, names)
        if gb is not None and gp is not None:
            gdeltas.append((t, gp - gb))
    dgrad_first = next((d for t, d in gdeltas if t == after), None)
    dgrad_window = None
    if gdeltas and all(math.isfinite(d) for _, d in gdeltas):
        dgrad_window = math.fsum(d for _, d in gdeltas) / len(gdeltas)
    curvature = {}
    for name in names:
        pc, bc = p.curvature.get(name), b.curvature.get(name)
        if not pc or not bc:
            continue
        curvature[name] = {
            "trace": pc["trace"],
            "lambda_max": pc["lambda_max"],
            "dtrace": _sub(pc["trace_crn"], bc["trace_crn"]),
            "dlambda_max": _sub(pc["lambda_max"], bc["lambda_max"]),
        }
    err = run.outcome.error
    return {
        "status": run.outcome.status,
        "error": None if err is None else {k: err.get(k) for k in ("type", "message", "file",
                                                                  "line")},
        "steps": run.steps,
        "injected": list(p.injected),
        "dloss_first": finite(dfirst),
        "dloss_window": window,
        "dloss_last": finite(deltas[-1]) if deltas else None,
        "window_steps": [common[0], common[-1]] if common else None,
        "nonfinite_loss": any(not math.isfinite(v) for v in p.losses.values()),
        "flip_first": _flip_share(p.flips, lambda s, m: s == after and m == "train"),
        "flip_window": _flip_share(p.flips, lambda s, m: m == "train"),
        "flip_eval": _flip_share(p.flips, lambda s, m: m == "eval"),
        "unmatched_outputs": p.unmatched_outputs,
        "dgrad_first": finite(dgrad_first),
        "dgrad_window": dgrad_window,
        "curvature": curvature,
        "curvature_error": p.curvature_error,
        "predicted": None,
    }


def _sub(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return finite(a - b)


def _noise_floor(base: _Run, again: _Run) -> dict[str, Any]:
    """How far two unperturbed runs differ (zero on a bit-reproducible script)."""
    b, p = base.record, again.record
    common = sorted(set(b.losses) & set(p.losses))
    diffs = [abs(p.losses[t] - b.losses[t]) for t in common]
    finite = [d for d in diffs if math.isfinite(d)]
    flips = _flip_share(p.flips, lambda s, m: True)
    identical = (
        len(finite) == len(diffs)
        and all(p.losses[t] == b.losses[t] for t in common)
        and not any(f for f, _ in p.flips.values())
        and p.unmatched_outputs == 0
        and again.outcome.status == base.outcome.status
    )
    return {
        "identical": identical,
        "max_abs_dloss": max(finite) if finite else None,
        "flip_share": flips,
        "steps_compared": len(common),
        "status": again.outcome.status,
    }


def _summary(draws: list[dict[str, Any]], experiment: dict[str, Any], alpha: float,
             o: PerturbOptions, resolution: float | None) -> dict[str, Any]:
    """Means with 95% t-intervals over the draws (over antithetic pairs), and the comparison
    of the first loss change with the second-order model. ``resolution`` = eps·|L| of the
    loss dtype: a predicted ΔL below 10× that is lost in rounding (float32: ~1e-7·|L|)."""
    anti = o.antithetic

    def stat(key: str) -> dict[str, object]:
        return mean_ci([d[key] for d in draws], anti).to_dict()

    out: dict[str, Any] = {
        key: stat(key)
        for key in ("dloss_first", "dloss_window", "dloss_last", "flip_first", "flip_window",
                    "dgrad_first", "dgrad_window")
    }
    out["flip_eval"] = (
        stat("flip_eval") if any(d["flip_eval"] is not None for d in draws) else None
    )
    for key in ("dtrace", "dlambda_max"):
        out[key] = {
            name: mean_ci([d["curvature"].get(name, {}).get(key) for d in draws], anti).to_dict()
            for name in experiment["components"]
        } if any(d["curvature"] for d in draws) else None
    curv = experiment["curvature_term"]
    predicted_trace = None if curv is None else 0.5 * alpha**2 * curv["value"]
    predicted_se = None if curv is None else 0.5 * alpha**2 * curv["se"]
    predicted_ci = None
    if predicted_trace is not None and predicted_se is not None and o.probes > 1:
        half = t_quantile(o.probes - 1) * predicted_se
        predicted_ci = [predicted_trace - half, predicted_trace + half]
    measured: Stat = mean_ci([d["dloss_first"] for d in draws], anti)
    same_draws = mean_ci([d["predicted"] for d in draws], anti)
    pairs = [(d["dloss_first"], d["predicted"]) for d in draws
             if d["dloss_first"] is not None and d["predicted"] is not None]
    model_error = None
    den = math.fsum(abs(q) for _, q in pairs)
    if pairs and den > 0:
        model_error = math.fsum(abs(m - q) for m, q in pairs) / den
    ratio = None
    if measured.mean is not None and predicted_trace:
        ratio = measured.mean / predicted_trace
    grad = experiment["gradient_term"]
    scale = same_draws.mean if same_draws.mean is not None else predicted_trace
    resolved = None
    if scale is not None and resolution is not None:
        resolved = abs(scale) >= 10 * resolution
    out["prediction"] = {
        "trace": predicted_trace,
        "trace_se": predicted_se,
        "trace_ci95": predicted_ci,
        "same_draws": same_draws.mean,
        "ratio": ratio,
        "model_error": model_error,
        "first_order_sd": None if grad is None else alpha * grad,
        "resolved": resolved,
    }
    out["diverged"] = sum(1 for d in draws if d["nonfinite_loss"])
    out["crashed"] = sum(1 for d in draws if d["status"] == "crashed")
    return out


def perturb(options: PerturbOptions) -> PerturbResult:
    """Run the whole experiment; raises :class:`PerturbUsageError` for bad input."""
    if options.draws < 1:
        raise PerturbUsageError("--draws must be ≥ 1")
    if options.antithetic and options.draws % 2:
        raise PerturbUsageError(
            f"--draws {options.draws}: antithetic draws come in pairs (δ, −δ); use an even "
            "number or --no-antithetic"
        )
    if any(not math.isfinite(a) or a < 0 for a in options.alphas):
        raise PerturbUsageError("--alpha values must be finite and ≥ 0")
    return _Driver(options).execute()
