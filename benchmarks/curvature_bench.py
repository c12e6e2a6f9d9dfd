"""Curvature engine benchmark: accuracy of trace estimators and cost ratios.

    python benchmarks/curvature_bench.py --mode accuracy [--seeds 5]
    python benchmarks/curvature_bench.py --mode speed [--reps 5]
    python benchmarks/curvature_bench.py --mode memory
    python benchmarks/curvature_bench.py --mode snapshot [--reps 5] [--baseline REV]

accuracy: per-block relative trace error vs HVPs spent (shared probes, block-restricted probes,
          block-restricted + Lanczos deflation, PyHessian per-block loop) on the tiny float64
          DistilBERT and HAN of the tests, against the dense double-backward Hessian.
speed:    ratios to one plain forward+backward on the bench DistilBERT (dim 64, 4 heads, FFN 256,
          vocab 1000, seq 32, batch 16, eager, fp32) and a bench HAN; min over interleaved reps.
memory:   peak RSS (VmHWM from /proc/self/status) growth over the idle model, one subprocess
          per configuration (tracemalloc does not see torch's allocations).
snapshot: what ``hfault diagnose`` does by default on a measured step (``measure_step`` with
          ``CurvatureConfig()``: economy budget, components from ``build_components``, coupling set
          = attention components, AdamW setups) vs one AdamW training step, on the bench models;
          with ``--baseline REV`` the same snapshot with ``hfault/curvature`` as of git ``REV``
          (extracted read-only with ``git show``), interleaved with the current code.
Prints plain text; it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hfault.curvature import (  # noqa: E402
    CurvatureSettings,
    HessianOperator,
    block_stability_setup,
    measure,
    probe_columns,
    probe_diagonal,
    rademacher,
    shared_traces,
    trace_estimate,
)
from hfault.curvature.measure import _lanczos_block, _precond_lanczos  # noqa: E402
from hfault.curvature.pyhessian_ref import pyhessian_block  # noqa: E402
from tests.curvature.curv_models import Case, make_distilbert, make_han, reference  # noqa: E402


def bench_distilbert(seed: int = 0) -> Case:
    return make_distilbert(seed, dim=64, heads=4, layers=2, hidden=256, vocab=1000, seq=32,
                           batch=16, dtype=torch.float32)


def bench_han(seed: int = 0) -> Case:
    return make_han(seed, docs=16, sents=6, words=10, dtype=torch.float32, vocab=1000, emb=32,
                    hid=32, att=32)


BENCH = {"distilbert": bench_distilbert, "han": bench_han}
TINY = {"distilbert": lambda s: make_distilbert(s), "han": lambda s: make_han(s)}


# ----------------------------------------------------------------------------- accuracy
def _errors(est: list[float], exact: list[float], fro: list[float]) -> tuple[float, float]:
    rel = [abs(e - t) / abs(t) for e, t in zip(est, exact, strict=True) if abs(t) > 0]
    frel = [abs(e - t) / f for e, t, f in zip(est, exact, fro, strict=True) if f > 0]
    return float(np.median(rel)), float(np.median(frel))


def accuracy(seeds: int) -> None:
    ks = [1, 4, 16, 64]
    print(f"# accuracy: median over blocks of |est-tr|/|tr| (and /||H_bb||_F), mean over "
          f"{seeds} seeds; HVPs = total products for all blocks (mean)")
    for model, make in TINY.items():
        rows: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for seed in range(seeds):
            case = make(seed)
            d = reference(case)
            exact = [d.trace(b) for b in case.blocks]
            fro = [float(torch.linalg.matrix_norm(d.sub(b, b))) for b in case.blocks]
            nb = len(case.blocks)
            for k in ks:
                op = HessianOperator(case.loss_fn(), case.params, case.blocks)
                gen = torch.Generator().manual_seed(100 + seed)
                sh = [e.value for e in shared_traces(op, k, gen)]
                rows.setdefault(("shared", k), []).append((*_errors(sh, exact, fro), k))
                blk = [trace_estimate(probe_diagonal(op, b, k, gen)).value for b in range(nb)]
                rows.setdefault(("block", k), []).append((*_errors(blk, exact, fro), k * nb))
                c0 = op.hvp_count
                s = CurvatureSettings(lanczos_steps=10, tol=1e-3)
                dfl = []
                for b in range(nb):
                    _, defl = _lanczos_block(op, b, s, gen, columns=False)
                    dfl.append(trace_estimate(probe_diagonal(op, b, k, gen,
                                                             deflation=defl)).value)
                rows.setdefault(("block+lanczos10", k), []).append(
                    (*_errors(dfl, exact, fro), op.hvp_count - c0))
                op.close()
                if k >= 4:
                    py = [
                        pyhessian_block(case.model, case.criterion, case.inputs, case.targets,
                                        [case.params[p.index] for p in b.parts],
                                        trace_probes=k, seed=seed, eigenvalue=False).trace
                        for b in case.blocks
                    ]
                    rows.setdefault(("pyhessian-loop", k), []).append(
                        (*_errors(py, exact, fro), k * nb))
        print(f"\n## {model} (tiny, float64, {nb} blocks, "
              f"{sum(p.numel() for p in case.params)} params)")
        print("| estimator | K per block | HVPs | median rel. error | median err/‖H_bb‖_F |")
        print("|---|---|---|---|---|")
        for (name, k), vals in rows.items():
            a = np.mean([v[0] for v in vals])
            b_ = np.mean([v[1] for v in vals])
            h = np.mean([v[2] for v in vals])
            kk = f"{k} (shared)" if name == "shared" else str(k)
            print(f"| {name} | {kk} | {h:.0f} | {a:.3g} | {b_:.3g} |")


# ----------------------------------------------------------------------------- speed
def _min_time(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    out = {k: float("inf") for k in fns}
    for f in fns.values():
        f()  # warm-up
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            out[k] = min(out[k], time.perf_counter() - t)
    return out


def speed(reps: int) -> None:
    torch.set_num_threads(1)
    print("# speed (1 intra-op thread; min over interleaved reps; ratios to plain fwd+bwd)")
    for model, make in BENCH.items():
        _speed_one(model, make(0), reps)


def _speed_one(model: str, case: Case, reps: int) -> None:
    params, blocks = case.params, case.blocks
    nb = len(blocks)
    n = sum(p.numel() for p in params)
    gen = torch.Generator().manual_seed(0)
    op = HessianOperator(case.loss_fn(), params, blocks)
    zs = [rademacher(op.numel(b), generator=gen, dtype=torch.float32, device="cpu")
          for b in range(nb)]
    big = max(range(nb), key=op.numel)
    mid = sorted(range(nb), key=op.numel)[nb // 2]
    z8 = torch.stack([rademacher(op.numel(mid), generator=gen, dtype=torch.float32,
                                 device="cpu") for _ in range(8)])

    def plain() -> None:
        torch.autograd.grad(case.loss_fn(), params)

    def graph() -> None:
        HessianOperator(case.loss_fn(), params, blocks).close()

    t = _min_time({
        "plain": plain,
        "graph": graph,
        "hvp_full": lambda: op.hvp_blocks(zs),
        "columns_all": lambda: [op.column(b, zs[b]) for b in range(nb)],
        "bb_all": lambda: [op.hvp_bb(b, zs[b]) for b in range(nb)],
        "col_mid_x8": lambda: [op.column(mid, z) for z in z8],
        "col_mid_batched8": lambda: op.columns(mid, z8),
        "col_big": lambda: op.column(big, zs[big]),
    }, reps)
    p = t["plain"]
    print(f"\n## {model}: {n} params, {nb} blocks; plain fwd+bwd {1e3 * p:.1f} ms")
    print("| measurement | time / plain fwd+bwd |")
    print("|---|---|")
    print(f"| fwd + create_graph grad (operator build) | {t['graph'] / p:.2f} |")
    print(f"| full HVP H v (all blocks) | {t['hvp_full'] / p:.2f} |")
    print(f"| column HVP H[:, b] v_b, mean over blocks | {t['columns_all'] / nb / p:.2f} |")
    print(f"| column HVP, largest block ({blocks[big].name}) | {t['col_big'] / p:.2f} |")
    print(f"| H_bb v_b, mean over blocks | {t['bb_all'] / nb / p:.2f} |")
    print(f"| column HVP, 8 probes looped, per probe ({blocks[mid].name}) | "
          f"{t['col_mid_x8'] / 8 / p:.2f} |")
    print(f"| column HVP, 8 probes is_grads_batched, per probe | "
          f"{t['col_mid_batched8'] / 8 / p:.2f} |")
    op.close()

    # per-block traces for all blocks, K=16: our engine vs the PyHessian per-block loop
    k = 16
    block_params = [[params[q.index] for q in b.parts] for b in blocks]

    def ours_bb() -> None:
        o = HessianOperator(case.loss_fn(), params, blocks)
        g = torch.Generator().manual_seed(1)
        for b in range(nb):
            probe_diagonal(o, b, k, g)
        o.close()

    def ours_cols() -> None:
        o = HessianOperator(case.loss_fn(), params, blocks)
        g = torch.Generator().manual_seed(1)
        for b in range(nb):
            probe_columns(o, b, k, g)
        o.close()

    def ours_defl() -> None:
        o = HessianOperator(case.loss_fn(), params, blocks)
        g = torch.Generator().manual_seed(1)
        s = CurvatureSettings(lanczos_steps=10, tol=1e-3)
        for b in range(nb):
            _, defl = _lanczos_block(o, b, s, g, columns=False)
            probe_diagonal(o, b, 4, g, deflation=defl)
        o.close()

    def pyh(kk: int = k) -> None:
        for bp in block_params:
            pyhessian_block(case.model, case.criterion, case.inputs, case.targets, bp,
                            trace_probes=kk, eigenvalue=False)

    tt = _min_time({"ours_bb": ours_bb, "ours_cols": ours_cols, "ours_defl": ours_defl,
                    "pyhessian": pyh, "pyhessian64": lambda: pyh(64)}, max(2, reps // 2))
    print(f"\nper-block traces of all {nb} blocks, K={k} probes per block:")
    print("| method | seconds | plain steps | PyHessian loop / this |")
    print("|---|---|---|---|")
    for name, label in [
        ("pyhessian", "PyHessian per-block loop (freeze others; trace only)"),
        ("pyhessian64", "PyHessian per-block loop, K=64 (accuracy of the deflated row)"),
        ("ours_bb", "engine, H_bb probes, one graph"),
        ("ours_cols", "engine, column probes (+ all couplings, row norms)"),
        ("ours_defl", "engine, Lanczos m<=10 + 4 deflated probes (+ lambda_min/max)"),
    ]:
        print(f"| {label} | {tt[name]:.3f} | {tt[name] / p:.0f} | "
              f"{tt['pyhessian'] / tt[name]:.2f}x |")

    # full measure() vs one plain training step (AdamW), budgets
    opt = torch.optim.AdamW(params, lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        case.loss_fn().backward()
        opt.step()
    opt.zero_grad(set_to_none=True)

    def train_step() -> None:
        opt.zero_grad()
        case.loss_fn().backward()
        opt.step()

    setups = {b.name: block_stability_setup(opt, b, params) for b in blocks}
    # couplings among the attention / context blocks ("the components under study")
    cset = [b.name for b in blocks if any(s in b.name for s in
                                          ("attention", "context", "q_lin", "k_lin"))]
    res = {}
    configs = [
        ("economy", "set; Lanczos on the set only", {"coupling_blocks": cset,
                                                      "eig_blocks": cset}),
        ("economy", "coupling set", {"coupling_blocks": cset}),
        ("economy", "all pairs", {}),
        ("standard", "coupling set", {"coupling_blocks": cset}),
        ("standard", "all pairs", {}),
    ]
    for budget, scope, kw in configs:
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            o = HessianOperator(case.loss_fn(), params, blocks)
            snap = measure(o, CurvatureSettings(budget=budget, **kw), stability_setups=setups)
            o.close()
            best = min(best, time.perf_counter() - t0)
        steps = [b.lanczos_steps for b in snap.blocks if b.lanczos_steps]
        res[(budget, scope)] = (best, snap.hvp_count, float(np.mean(steps)) if steps else 0.0)
    ts = _min_time({"step": train_step}, reps)["step"]
    print(f"\nfull measure() (traces, lambda_min/max, preconditioned lambda, couplings, rho) "
          f"vs one AdamW training step ({1e3 * ts:.1f} ms); coupling set = "
          f"{len(cset)} blocks")
    print("| budget | couplings | HVPs | mean Lanczos steps | seconds | training steps |")
    print("|---|---|---|---|---|---|")
    for (budget, scope), (sec, h, ls) in res.items():
        print(f"| {budget} | {scope} | {h} | {ls:.1f} | {sec:.2f} | {sec / ts:.0f} |")


# ----------------------------------------------------------------------------- memory
def _vmhwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def memory_child(model: str, config: str) -> None:
    torch.set_num_threads(1)
    case = BENCH[model](0)
    base = _vmhwm_kib()
    if config == "plain":
        case.loss_fn().backward()
    elif config == "graph":
        HessianOperator(case.loss_fn(), case.params, case.blocks)
    elif config in ("measure", "measure_batched8"):
        op = HessianOperator(case.loss_fn(), case.params, case.blocks)
        batch = 8 if config == "measure_batched8" else 1
        measure(op, CurvatureSettings(budget="economy", probe_batch=batch))
    print(_vmhwm_kib() - base)


def memory() -> None:
    print("# peak RSS growth over the idle model (VmHWM, MiB; one subprocess each, 1 thread)")
    print("| model | plain fwd+bwd | fwd + create_graph grad | measure() economy | "
          "measure() economy, 8 batched probes |")
    print("|---|---|---|---|---|")
    for model in BENCH:
        vals = []
        for config in ("plain", "graph", "measure", "measure_batched8"):
            outs = []
            for _ in range(2):
                r = subprocess.run([sys.executable, __file__, "--mode", "memory-child",
                                    "--model", model, "--config", config],
                                   capture_output=True, text=True, check=True)
                outs.append(int(r.stdout.strip().splitlines()[-1]) / 1024)
            vals.append(statistics.mean(outs))
        print(f"| {model} | " + " | ".join(
            f"{v:.0f} ({v / vals[0]:.1f}x)" for v in vals) + " |")


# ----------------------------------------------------------------------------- snapshot
def _baseline_package(rev: str) -> object:
    """``hfault/curvature`` as of git ``rev``, importable as ``hfault_baseline.curvature``."""
    import importlib
    import tempfile

    files = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", rev,
                            "hfault/curvature/"], capture_output=True, text=True,
                           check=True).stdout.split()
    root = Path(tempfile.mkdtemp(prefix="hfault_baseline_"))
    pkg = root / "hfault_baseline" / "curvature"
    pkg.mkdir(parents=True)
    (root / "hfault_baseline" / "__init__.py").write_text("")
    for f in files:
        if f.endswith(".py"):
            src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{f}"],
                                 capture_output=True, text=True, check=True).stdout
            (pkg / Path(f).name).write_text(
                src.replace("hfault.curvature", "hfault_baseline.curvature"))
    sys.path.insert(0, str(root))
    return importlib.import_module("hfault_baseline.curvature")


def _hvp_split(snap: object, blocks: list, coupled: set[str], k: int) -> dict[str, int]:
    """HVPs by purpose: Lanczos, probes, rho columns, preconditioned lambda (the rest)."""
    lz = sum(b.lanczos_steps for b in snap.blocks)
    pr = k * len(snap.blocks)
    rho = len(coupled) if len(coupled) > 1 else 0
    return {"lanczos": lz, "probes": pr, "rho": rho,
            "precond": snap.hvp_count - lz - pr - rho}


def snapshot_bench(reps: int, baseline: str | None) -> None:
    torch.set_num_threads(1)
    old = _baseline_package(baseline) if baseline else None
    print(f"# snapshot: measure_step with CurvatureConfig() (economy: K=4, m=10, tol 1e-2, "
          f"precond_tol 1e-2) vs one AdamW step; 1 thread; min over {reps} interleaved reps"
          + (f"; baseline = hfault/curvature at {baseline}" if baseline else ""))
    for model, make in BENCH.items():
        _snapshot_one(model, make, reps, old, baseline)


def _snapshot_one(model: str, make: Callable[[int], Case], reps: int, old: object,
                  baseline: str | None) -> None:
    from hfault.components import build_components
    from hfault.probes.curvature_probe import (
        CurvatureConfig,
        coupling_set,
        measure_step,
        to_blocks,
    )

    case = make(0)
    opt = torch.optim.AdamW(case.params, lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        case.loss_fn().backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    mods = list(case.model.modules())
    order = {id(m): i for i, m in enumerate(mods)}
    comps = sorted(build_components([opt], mods),
                   key=lambda c: order.get(id(c.module), len(order)))
    params, blocks = to_blocks(comps)
    coupled = coupling_set(comps, ())
    config = CurvatureConfig()
    twin = make(0)  # training steps on a twin, so the measured state stays fixed
    topt = torch.optim.AdamW(twin.params, lr=1e-3)

    def train_step() -> None:
        topt.zero_grad()
        twin.loss_fn().backward()
        topt.step()

    def plain() -> None:
        torch.autograd.grad(case.loss_fn(), case.params, allow_unused=True)

    snaps: dict[str, object] = {}

    def after() -> None:
        rec = measure_step(1, case.loss_fn(), 1.0, comps, [opt], config)
        assert rec.snapshot is not None, rec.error
        snaps["after"] = rec.snapshot

    def no_precond() -> None:
        o = HessianOperator(case.loss_fn(), params, blocks)
        snaps["no_precond"] = measure(o, CurvatureSettings(coupling_blocks=coupled))
        o.close()

    fns: dict[str, Callable[[], object]] = {"step": train_step, "plain": plain,
                                            "after": after, "no_precond": no_precond}
    if old is not None:
        osetups = {b.name: old.block_stability_setup(opt, b, params) for b in blocks}

        def before() -> None:
            o = old.HessianOperator(case.loss_fn(), params, blocks)
            snaps["before"] = old.measure(
                o, old.CurvatureSettings(coupling_blocks=coupled), stability_setups=osetups)
            o.close()

        fns = {"before": before, **fns}
    step_fns = {"step": lambda: [train_step() for _ in range(5)], "plain": plain}
    t = {k: float("inf") for k in fns}
    for f in fns.values():
        f()
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            if k in step_fns:
                step_fns[k]()
            else:
                f()
            dt = time.perf_counter() - t0
            t[k] = min(t[k], dt / 5 if k == "step" else dt)
    ts = t["step"]
    print(f"\n## {model}: {sum(p.numel() for p in params)} params, {len(blocks)} components, "
          f"coupling set {len(coupled)}; AdamW step {1e3 * ts:.2f} ms, plain fwd+bwd "
          f"{1e3 * t['plain']:.2f} ms")
    print("| snapshot | HVPs | Lanczos / probes / rho / precond HVPs | seconds | "
          "training steps |")
    print("|---|---|---|---|---|")
    labels = {"before": f"before ({baseline})", "after": "after (measure_step default)",
              "no_precond": "after, without the preconditioned lambda (floor of the rest)"}
    for k, label in labels.items():
        if k not in snaps:
            continue
        s = snaps[k]
        sp = _hvp_split(s, blocks, set(coupled), 4)
        print(f"| {label} | {s.hvp_count} | {sp['lanczos']} / {sp['probes']} / {sp['rho']} "
              f"/ {sp['precond']} | {t[k]:.3f} | {t[k] / ts:.0f} |")
    # accuracy of the preconditioned lambda against a converged Lanczos (m <= 80, tol 1e-6)
    setups = {b.name: block_stability_setup(opt, b, params) for b in blocks}
    o = HessianOperator(case.loss_fn(), params, blocks)
    ref = {}
    for i, b in enumerate(blocks):
        if setups[b.name].inv_sqrt_p is not None:
            ref[b.name] = _precond_lanczos(
                o, i, setups[b.name], CurvatureSettings(lanczos_steps=80, precond_tol=1e-6),
                torch.Generator().manual_seed(7)).lambda_max
    o.close()
    for k in ("before", "after"):
        if k in snaps:
            err = [abs(x.lambda_precond - ref[x.name]) / abs(ref[x.name])
                   for x in snaps[k].blocks if x.name in ref and x.lambda_precond is not None]
            within = sum(abs(x.lambda_precond - ref[x.name]) <= x.precond_residual
                         for x in snaps[k].blocks if x.name in ref)
            print(f"preconditioned lambda, {k}: |err|/ref median {np.median(err):.1e}, "
                  f"max {max(err):.1e}; reference within the reported residual for "
                  f"{within}/{len(ref)} blocks")
    if "before" in snaps:
        print(f"before/after: {t['before'] / t['after']:.2f}x faster")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["accuracy", "speed", "memory", "memory-child",
                                       "snapshot"],
                    default="speed")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--model", default="distilbert")
    ap.add_argument("--config", default="plain")
    ap.add_argument("--baseline", default=None, help="git rev of hfault/curvature to compare")
    a = ap.parse_args()
    if a.mode == "accuracy":
        torch.set_num_threads(1)
        accuracy(a.seeds)
    elif a.mode == "speed":
        speed(a.reps)
    elif a.mode == "memory":
        memory()
    elif a.mode == "snapshot":
        snapshot_bench(a.reps, a.baseline)
    else:
        memory_child(a.model, a.config)


if __name__ == "__main__":
    main()
