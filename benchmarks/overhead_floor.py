"""What each per-step guarantee costs on an unmeasured step, measured in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/overhead_floor.py            # about 4 minutes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/overhead_floor.py --widths 32 --rounds 5

``benchmarks/overhead.py`` prices hfault as a whole. This prices its parts, to show what a
cheaper unmeasured step would have to give up. The pre-norm encoder of ``overhead.py`` is
trained, one thread, under ``hfault.watch(at=...)`` past its last step, with
parts of hfault switched off by replacing them for the length of one run (a measurement, never
a mode hfault offers):

- ``hfault``: as a user runs it (first-order, NaN watch on);
- ``no NaN watch``: ``nan_watch=False`` (a public option: no check of module outputs, none of
  gradients right after backward);
- ``finite check only``: every step's per-component statistics (norms of every gradient and
  weight view, zero counts, learning rates) replaced by the least a per-step NaN check of
  gradients and weights needs: one fused norm of the whole gradients and weights, read with the
  step's loss. What is lost: the last step's statistics, and the per-view numbers that localize
  a non-finite gradient;
- ``finite check, no module hooks``: the same, and no global module hooks (no NaN check of
  module outputs, no discovery of modules as they run);
- ``no statistics, no module hooks``: what the capture's remaining listeners cost.

Each run is a fresh process (one configuration, nothing left from another), its training loop
timed by CPU time from its sixth step (the first build the optimizer state and hfault's
components); the rounds alternate the configurations and the minimum per configuration is kept.
Not a test: it prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

import hfault
from hfault.probes import gradients
from hfault.probes.many_norms import fast_norms

WIDTHS = (32, 64, 128)
STEPS = {32: 300, 64: 200, 128: 100}
WARM = 5


def _encoder(width: int) -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, batch_first=True,
                                       norm_first=True)
    return nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                         nn.Linear(width, 4))


def _train(width: int, steps: int, watch: dict[str, Any] | None) -> float:
    """CPU milliseconds per step of the loop after its first ``WARM`` steps."""
    model = _encoder(width)
    x, y = torch.randn(16, 32, width), torch.randint(0, 4, (16,))

    def loop(opt: torch.optim.Optimizer) -> float:
        start = 0.0
        for step in range(steps):
            if step == WARM:
                start = time.process_time()
            loss = nn.functional.cross_entropy(model(x).mean(1), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return 1e3 * (time.process_time() - start) / (steps - WARM)

    if watch is None:
        return loop(torch.optim.AdamW(model.parameters(), lr=1e-3))
    with hfault.watch(at="100000", **watch):
        ms = loop(torch.optim.AdamW(model.parameters(), lr=1e-3))
    return ms


def _finite_check_only(self: gradients.GradientStats, opt: torch.optim.Optimizer) -> None:
    params = [p for group in opt.param_groups for p in group["params"]]
    tensors = [p.grad for p in params if p.grad is not None] + params
    with torch.no_grad():
        norms, _ = fast_norms(tensors)
        self.session.reads.put(norms.sum())


class _NoHandle:
    def remove(self) -> None:
        pass


@contextmanager
def _replaced(*changes: tuple[Any, str, Any]) -> Iterator[None]:
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in changes]
    for owner, name, value in changes:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


_MODULE = nn.modules.module
_NO_MODULE_HOOKS = (
    (_MODULE, "register_module_forward_pre_hook", lambda *a, **k: _NoHandle()),
    (_MODULE, "register_module_forward_hook", lambda *a, **k: _NoHandle()),
)
_FINITE_ONLY = ((gradients.GradientStats, "before_step", _finite_check_only),)
_NO_STATISTICS = ((gradients.GradientStats, "before_step", lambda self, opt: None),)

CONFIGS: dict[str, tuple[dict[str, Any] | None, tuple[tuple[Any, str, Any], ...]]] = {
    "plain": (None, ()),
    "hfault": ({}, ()),
    "no NaN watch": ({"nan_watch": False}, ()),
    "finite check only": ({}, _FINITE_ONLY),
    "finite check, no module hooks": ({}, _FINITE_ONLY + _NO_MODULE_HOOKS),
    "no statistics, no module hooks": ({}, _NO_STATISTICS + _NO_MODULE_HOOKS),
}


def _child(name: str, width: int) -> float:
    """One configuration's CPU ms per step, in a fresh process with one math thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, "--child", name, str(width)], env=env,
                          capture_output=True, text=True, check=True)
    return float(proc.stdout.split()[-1])


def measure(width: int, rounds: int) -> dict[str, float]:
    """Per configuration, the minimum over ``rounds`` of its CPU ms per step."""
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name in CONFIGS:
            ms = _child(name, width)
            best[name] = min(best.get(name, ms), ms)
    return best


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", default=",".join(map(str, WIDTHS)))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "WIDTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.child:
        name, width = args.child[0], int(args.child[1])
        watch, changes = CONFIGS[name]
        with _replaced(*changes):
            out(f"{_train(width, STEPS[width], watch):.6f}")
        return
    for width in (int(w) for w in args.widths.split(",")):
        best = measure(width, args.rounds)
        plain = best["plain"]
        out(f"width {width} ({STEPS[width]} steps), plain {plain:.2f} ms/step (CPU):")
        for name, ms in best.items():
            if name != "plain":
                out(f"  {name:32} {ms:6.2f} ms/step  {ms / plain:.3f}x  (+{ms - plain:.2f} ms)")


if __name__ == "__main__":
    main()
