"""Built-in first-order checks: numerical errors, exploding/vanishing/dead components, loss trends.

Each check reads the captured data and returns findings with evidence and a fix. Thresholds are
module constants documented here; the declarative rule engine (rules/ as data) replaces this module.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hfault.components import Component
from hfault.fixes import ANOMALY_SNIPPET, CLIP_SNIPPET, lower_lr_fix
from hfault.probes.curvature_probe import CurvatureRecord
from hfault.probes.numerics import NonFiniteEvent
from hfault.report.model import Finding, Fix, Snapshot

# Update ratio ‖Δθ‖/‖θ‖ per step: ~1e-3 is healthy (Karpathy's rule of thumb); one step that moves
# a component by a large share of its own norm is rewriting it rather than training it.
UPDATE_RATIO_WARN = 0.1
UPDATE_RATIO_ERROR = 1.0
PEER_FACTOR = 10.0  # how many times the peers' median update ratio makes a component stand out
VANISH_FACTOR = 1e-4  # RMS gradient below this share of the peers' median at every snapshot
GROWTH_WARN = 1e3  # RMS gradient growth first -> last snapshot
WEIGHT_GROWTH_WARN = 10.0  # weight norm growth first -> last snapshot (error at 10x this)
WEIGHT_GROWTH_PEERS = 5.0  # ... and this many times the peers' median growth
MIN_INIT_RMS = 1e-3  # weight RMS below this at the first snapshot: zero/near-zero init, no growth
FIRST_RATIO_STEP = 3  # zero-initialised params have update ratios ~1/t early on: skip steps 1-2
PARTIAL_DEAD = 0.5  # share of exactly-zero gradient entries that makes a component partly dead
# Loss trend checks need enough steps to separate a trend from mini-batch noise.
MIN_STEPS_TREND = 20
DIVERGE_FACTOR = 1.5  # mean loss of the last tenth vs the first tenth
FLAT_FACTOR = 0.98
SPIKE_FACTOR = 1.5  # a step whose loss exceeds the median of the 5 before it by this factor


@dataclass
class CheckInput:
    components: Sequence[Component]
    snapshots: Sequence[Snapshot]
    losses: Sequence[tuple[int, float]]
    events: Sequence[NonFiniteEvent]
    optimizers: Sequence[torch.optim.Optimizer]
    curvature: Sequence[CurvatureRecord] = ()


def run_checks(data: CheckInput) -> list[Finding]:
    findings: list[Finding] = []
    findings += check_nonfinite(data)
    findings += check_components(data)
    findings += check_loss(data)
    findings += check_curvature_available(data)
    return findings


def check_curvature_available(data: CheckInput) -> list[Finding]:
    """A warning per distinct reason a snapshot's curvature could not be (fully) measured."""
    findings: list[Finding] = []
    seen: set[str] = set()
    for record in data.curvature:
        if not record.error or record.error in seen:
            continue
        seen.add(record.error)
        blocked = list(record.blocked)
        measured = [] if record.snapshot is None else [b.name for b in record.snapshot.blocks]
        if blocked:
            what = f"the curvature of {len(blocked)} component(s) ({', '.join(blocked[:4])}"
            what += " ...)" if len(blocked) > 4 else ")"
        else:
            what = "the couplings between components"
        findings.append(
            Finding(
                rule="HF020",
                name="curvature-unavailable",
                severity="warning",
                component=blocked[0] if blocked else None,
                step=record.step,
                message=f"{what} could not be measured at step {record.step}: {record.error}",
                evidence={"error": record.error, "blocked": blocked, "measured": measured,
                          "step": record.step},
                fix=Fix(
                    "Make the forward twice differentiable on measured steps: eager attention, "
                    "no aot_autograd torch.compile, non-reentrant checkpointing, custom "
                    "autograd Functions without @once_differentiable.",
                    {"blocked": blocked},
                ),
                score=float(len(blocked)),
            )
        )
    return findings


# ------------------------------------------------------------------ numerical errors
_KIND_TEXT = {
    "activation": "output of module {where}",
    "loss": "loss (all module outputs were finite)",
    "gradient": "gradient of {where}",
    "weight": "weights of {where}",
}


def check_nonfinite(data: CheckInput) -> list[Finding]:
    """One error for the earliest non-finite value; the others are its evidence."""
    if not data.events:
        return []
    kinds = ("activation", "loss", "gradient", "weight")
    events = sorted(data.events, key=lambda e: (e.step, kinds.index(e.kind)))
    first = events[0]
    where = _KIND_TEXT[first.kind].format(where=first.where)
    if first.kind in ("activation", "loss"):
        fix = Fix(
            "Find the op that overflows in that forward: replace log(softmax(x)) with "
            "log_softmax(x), clamp before log/div/sqrt, mask with a large negative finite value "
            "instead of -inf, and check the learning rate of the components feeding it.",
            {"step": first.step, "module": first.where},
            ANOMALY_SNIPPET,
        )
    else:
        fix = Fix(
            "Clip the gradient norm and lower the learning rate; the op whose backward first "
            "produced the non-finite gradient is in the named component's forward.",
            {"step": first.step, "max_norm": 1.0},
            CLIP_SNIPPET,
        )
    component = first.where if first.kind in ("gradient", "weight") else _component_of_module(
        first.where, data.components
    )
    return [
        Finding(
            rule="HF001",
            name="non-finite-value",
            severity="error",
            component=component,
            step=first.step,
            message=f"{first.value} first appeared at step {first.step} in the {where}",
            evidence={
                "kind": first.kind,
                "where": first.where,
                "value": first.value,
                "detail": first.detail,
                "events": [e.to_dict() for e in events],
            },
            fix=fix,
            score=1e6 - first.step,
        )
    ]


def _component_of_module(module: str | None, components: Sequence[Component]) -> str | None:
    """The component that is, or is nearest inside, the named module (for an activation event)."""
    if module is None:
        return None
    names = [c.name for c in components]
    if module in names:
        return module
    inside = [n for n in names if n.startswith(module + ".")]
    if inside:
        return inside[0]
    return module


# ------------------------------------------------------------------ components
def _series(data: CheckInput, name: str, key: str) -> list[tuple[int, float]]:
    out = []
    for snap in data.snapshots:
        value = snap.metrics.get(name, {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((snap.step, float(value)))
    return out


def _peer_median(snap: Snapshot, key: str, exclude: str) -> float | None:
    values = [
        float(m[key])
        for n, m in snap.metrics.items()
        if n != exclude and isinstance(m.get(key), (int, float)) and math.isfinite(m[key])
        and m[key] > 0
    ]
    return statistics.median(values) if values else None


def check_components(data: CheckInput) -> list[Finding]:
    findings = []
    for comp in data.components:
        findings += _check_dead(data, comp)
        findings += _check_exploding(data, comp)
        findings += _check_vanishing(data, comp)
    return findings


def _check_dead(data: CheckInput, comp: Component) -> list[Finding]:
    zeros = _series(data, comp.name, "zero_grad_fraction")
    if not zeros:
        return []
    missing = all(
        snap.metrics.get(comp.name, {}).get("grad_missing") for snap in data.snapshots
        if comp.name in snap.metrics
    )
    if all(z >= 1.0 for _, z in zeros):
        how = "received no gradient at all (.grad stayed None)" if missing else (
            "had an exactly-zero gradient"
        )
        return [
            Finding(
                rule="HF003",
                name="dead-component",
                severity="error",
                component=comp.name,
                step=zeros[0][0],
                message=f"{comp.name} ({comp.role}) {how} at every measured step: it never trains",
                evidence={
                    "metric": "zero_grad_fraction",
                    "value": 1.0,
                    "threshold": 1.0,
                    "grad_missing": missing,
                    "steps": [s for s, _ in zeros],
                },
                fix=Fix(
                    f"Reconnect {comp.name} to the loss: look for .detach(), .data, "
                    "torch.no_grad() or an output that is computed but not used in the forward "
                    f"of {comp.module_type}" + _where(comp) + ".",
                    {"component": comp.name},
                ),
                score=10.0,
            )
        ]
    mean_zero = statistics.fmean(z for _, z in zeros)
    if mean_zero >= PARTIAL_DEAD:
        return [
            Finding(
                rule="HF004",
                name="partly-dead-component",
                severity="info",
                component=comp.name,
                step=zeros[-1][0],
                message=(
                    f"{mean_zero:.0%} of {comp.name}'s gradient entries are exactly zero "
                    "(dead units or unused rows)"
                ),
                evidence={
                    "metric": "zero_grad_fraction",
                    "value": mean_zero,
                    "threshold": PARTIAL_DEAD,
                },
                fix=Fix(
                    "Check for dead ReLUs (lower LR, LeakyReLU/GELU, better init) or rows that "
                    "never receive input (unused vocabulary)."
                ),
                score=mean_zero,
            )
        ]
    return []


def _where(comp: Component) -> str:
    if comp.source:
        return f" ({comp.source['file']}:{comp.source['line']})"
    return ""


def _optimizer_class(data: CheckInput, comp: Component) -> tuple[str, float | None]:
    """The component's optimizer class name and its default learning rate."""
    if comp.optimizer < len(data.optimizers):
        opt = data.optimizers[comp.optimizer]
        lr = opt.defaults.get("lr")
        return type(opt).__name__, float(lr) if isinstance(lr, (int, float)) else None
    return "SGD", None


def _check_exploding(data: CheckInput, comp: Component) -> list[Finding]:
    ratios = [
        (s, r) for s, r in _series(data, comp.name, "update_ratio") if s >= FIRST_RATIO_STEP
    ]
    worst = None  # (severity, score, step, evidence, factor)
    for step, r in ratios:
        if not math.isfinite(r):
            continue
        snap = next(s for s in data.snapshots if s.step == step)
        peer = _peer_median(snap, "update_ratio", comp.name)
        standout = peer is None or r >= PEER_FACTOR * peer
        if r >= UPDATE_RATIO_ERROR and standout:
            severity = "error"
        elif r >= UPDATE_RATIO_WARN and standout:
            severity = "warning"
        else:
            continue
        score = math.log10(r / UPDATE_RATIO_WARN) + 1.0
        if worst is None or score > worst[1]:
            evidence = {
                "metric": "update_ratio",
                "value": r,
                "threshold": UPDATE_RATIO_WARN,
                "peer_median": peer,
                "step": step,
            }
            target = max(peer or 0.0, 1e-3) * 3.0
            worst = (severity, score, step, evidence, min(0.5, target / r))
    if worst is None:
        worst = _weight_growth(data, comp)
    growth = _growth(data, comp)
    if worst is None and growth is not None and growth[0] >= GROWTH_WARN:
        worst = (
            "warning",
            math.log10(growth[0] / GROWTH_WARN) + 1.0,
            growth[1],
            {"metric": "grad_rms_growth", "value": growth[0], "threshold": GROWTH_WARN},
            0.1,
        )
    if worst is None:
        return []
    severity, score, step, evidence, factor = worst
    lr = _series(data, comp.name, "lr")
    fix = None
    if lr and lr[-1][1] > 0:
        reason = "and clip the gradient norm if the loss also spikes."
        peer_lr = _peer_median(data.snapshots[-1], "lr", comp.name)
        if peer_lr and lr[-1][1] >= PEER_FACTOR * peer_lr:
            factor = peer_lr / lr[-1][1]
            evidence["lr"], evidence["peer_lr"] = lr[-1][1], peer_lr
            reason = f"its learning rate is {lr[-1][1] / peer_lr:.3g}× the other components'."
        opt_class, base_lr = _optimizer_class(data, comp)
        fix = lower_lr_fix(
            comp, opt_class, lr[-1][1], float(f"{max(factor, 1e-3):.3g}"), reason, base_lr
        )
    return [
        Finding(
            rule="HF002",
            name="exploding-component",
            severity=severity,
            component=comp.name,
            step=step,
            message=_explode_message(comp, evidence),
            evidence=evidence,
            fix=fix,
            score=score,
        )
    ]


def _explode_message(comp: Component, ev: dict[str, object]) -> str:
    metric, value = ev["metric"], ev["value"]
    if metric == "update_ratio":
        peer = ev.get("peer_median")
        peer_txt = f" (peers' median {peer:.2g})" if isinstance(peer, float) else ""
        return (
            f"{comp.name} ({comp.role}) moves by {value:.2g}× its own norm in one step"
            f"{peer_txt}: its updates are exploding"
        )
    if metric == "weight_growth":
        return (
            f"{comp.name} ({comp.role}) weights grew {value:.3g}× in norm "
            f"(peers' median {ev['peer_median']:.3g}×): its updates are exploding"
        )
    if metric == "grad_rms_growth":
        return f"{comp.name}'s gradient grew {value:.3g}× over the run"
    raise ValueError(metric)


def _weight_growth(data: CheckInput, comp: Component):  # type: ignore[no-untyped-def]
    """Weight-norm growth first -> last snapshot, against the other components' growth."""
    if len(data.snapshots) < 2:
        return None
    first, last = data.snapshots[0], data.snapshots[-1]

    def growth(name: str) -> float | None:
        a = first.metrics.get(name, {}).get("weight_norm")
        b = last.metrics.get(name, {}).get("weight_norm")
        numel = next((c.numel for c in data.components if c.name == name), 1)
        if not isinstance(a, float) or not isinstance(b, float) or not math.isfinite(b):
            return None
        if a / math.sqrt(numel) < MIN_INIT_RMS:
            return None
        return b / a

    mine = growth(comp.name)
    if mine is None or mine < WEIGHT_GROWTH_WARN:
        return None
    peers = [g for c in data.components if c.name != comp.name and (g := growth(c.name))]
    peer = statistics.median(peers) if peers else 1.0
    if mine < WEIGHT_GROWTH_PEERS * peer:
        return None
    severity = "error" if mine >= 10 * WEIGHT_GROWTH_WARN else "warning"
    evidence = {
        "metric": "weight_growth",
        "value": mine,
        "threshold": WEIGHT_GROWTH_WARN,
        "peer_median": peer,
        "steps": [first.step, last.step],
    }
    return (severity, math.log10(mine / WEIGHT_GROWTH_WARN) + 1.0, last.step, evidence, 1 / mine)


def _growth(data: CheckInput, comp: Component) -> tuple[float, int] | None:
    rms = [(s, v) for s, v in _series(data, comp.name, "grad_rms") if math.isfinite(v)]
    if len(rms) < 3 or rms[0][1] <= 0:
        return None
    return rms[-1][1] / rms[0][1], rms[-1][0]


def _check_vanishing(data: CheckInput, comp: Component) -> list[Finding]:
    ratios = []
    for snap in data.snapshots:
        value = snap.metrics.get(comp.name, {}).get("grad_rms")
        peer = _peer_median(snap, "grad_rms", comp.name)
        if not isinstance(value, float) or not math.isfinite(value) or not peer or value == 0:
            return []  # dead (value 0) is its own finding; unknown peers: no judgement
        ratios.append(value / peer)
    if len(ratios) < 2 or max(ratios) >= VANISH_FACTOR:
        return []
    worst = max(ratios)
    return [
        Finding(
            rule="HF005",
            name="vanishing-component",
            severity="warning",
            component=comp.name,
            step=data.snapshots[-1].step,
            message=(
                f"{comp.name}'s RMS gradient stays below {VANISH_FACTOR:g}× its peers' median "
                f"(at most {worst:.2g}×): it barely trains"
            ),
            evidence={"metric": "grad_rms_vs_peers", "value": worst, "threshold": VANISH_FACTOR},
            fix=Fix(
                "Check the init scale and any saturating nonlinearity (sigmoid/tanh, a softmax "
                "with huge logits) in front of it; a residual path or LayerNorm restores signal."
            ),
            score=math.log10(VANISH_FACTOR / max(worst, 1e-30)) + 1.0,
        )
    ]


# ------------------------------------------------------------------ loss trends
def check_loss(data: CheckInput) -> list[Finding]:
    values = [(s, v) for s, v in data.losses if math.isfinite(v)]
    if len(values) < MIN_STEPS_TREND or len(values) < len(data.losses):
        return []  # too short for a trend, or non-finite (reported as a numerical error)
    losses = [v for _, v in values]
    tenth = max(1, len(losses) // 10)
    first, last = statistics.fmean(losses[:tenth]), statistics.fmean(losses[-tenth:])
    evidence = {"first": first, "last": last, "window": tenth, "steps": len(losses)}
    if last > first * DIVERGE_FACTOR and last - first > 1e-8:
        return [
            Finding(
                rule="HF010",
                name="loss-divergence",
                severity="error",
                step=values[-1][0],
                message=f"the loss rose from {first:.4g} to {last:.4g}: training diverges",
                evidence={**evidence, "metric": "last/first", "value": last / first,
                          "threshold": DIVERGE_FACTOR},
                fix=Fix("Lower the learning rate (×0.1), add warm-up and gradient clipping.",
                        {"lr_factor": 0.1}, CLIP_SNIPPET),
                score=last / first,
            )
        ]
    findings = []
    if last >= first * FLAT_FACTOR:
        findings.append(
            Finding(
                rule="HF011",
                name="loss-not-decreasing",
                severity="warning",
                step=values[-1][0],
                message=f"the loss did not decrease over {len(losses)} steps "
                f"({first:.4g} → {last:.4g})",
                evidence={**evidence, "metric": "last/first", "value": last / first,
                          "threshold": FLAT_FACTOR},
                fix=Fix("Check that gradients reach the model (dead components), that labels "
                        "match inputs, and that the learning rate is not far too small or large."),
                score=last / first,
            )
        )
    half = losses[len(losses) // 2 :]
    spikes = sum(
        1
        for i in range(5, len(half))
        if half[i] > SPIKE_FACTOR * statistics.median(half[i - 5 : i])
    )
    if spikes >= max(3, len(half) // 10):
        findings.append(
            Finding(
                rule="HF012",
                name="loss-oscillation",
                severity="warning",
                step=values[-1][0],
                message=f"the loss spiked {spikes} times in the second half of the run",
                evidence={**evidence, "metric": "spikes", "value": spikes,
                          "threshold": max(3, len(half) // 10)},
                fix=Fix("Lower the learning rate or raise the batch size; clip gradients.",
                        {"lr_factor": 0.5}, CLIP_SNIPPET),
                score=spikes / max(1, len(half)),
            )
        )
    return findings
