"""PyHessian 0.1 as an independent per-block reference (optional dependency, imported lazily).

PyHessian differentiates all params with ``requires_grad``; to get ``H_bb`` the other params are
frozen. Its quirks, handled here: ``cuda=True`` by default (we pass the params' device); ``trace()``
stops after two samples when the trace is negative unless ``tol=-inf``; the constructor calls
``model.eval()`` and ``loss.backward(create_graph=True)``, leaving graph-carrying ``.grad`` (and a
second construction without clearing them doubles the Hessian); it draws probes from the *global*
RNG; ``eigenvalues()`` is power iteration and returns the largest-``|λ|`` eigenvalue, not λmax.
This wrapper clears ``.grad`` before, runs under a forked global RNG, and restores every module's
training flag, every ``requires_grad`` and every ``.grad`` afterwards. Whole parameters only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["PyHessianBlockResult", "pyhessian_block"]


@dataclass(frozen=True)
class PyHessianBlockResult:
    """PyHessian's numbers for one block."""

    trace: float
    trace_se: float
    probes: int
    top_abs_eigenvalue: float
    """Power-iteration eigenvalue: the one of largest magnitude (signed)."""


def pyhessian_block(
    model: nn.Module,
    criterion: Callable[[Any, Any], Tensor],
    inputs: Any,
    targets: Any,
    block_params: Sequence[Tensor],
    *,
    trace_probes: int = 16,
    eig_iters: int = 100,
    eig_tol: float = 1e-3,
    seed: int = 0,
    eigenvalue: bool = True,
) -> PyHessianBlockResult:
    """Hutchinson trace and top-``|λ|`` eigenvalue of ``H_bb`` by PyHessian, side effects undone.

    ``model(inputs)`` must return what ``criterion(·, targets)`` takes (wrap HF models).
    """
    from pyhessian import hessian  # lazy: an optional reference, never needed by the core

    params = list(model.parameters())
    block_ids = {id(p) for p in block_params}
    modes = [(m, m.training) for m in model.modules()]
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    cuda = any(p.is_cuda for p in block_params)
    devices = [p.device for p in block_params if p.is_cuda][:1]
    try:
        for p in params:
            p.requires_grad_(id(p) in block_ids)
            p.grad = None
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")
            torch.manual_seed(seed)
            h = hessian(model, criterion, data=(inputs, targets), cuda=cuda)
            samples = np.asarray(h.trace(maxIter=trace_probes, tol=-float("inf")), dtype=float)
            top = float("nan")
            if eigenvalue:
                eigs, _ = h.eigenvalues(maxIter=eig_iters, tol=eig_tol, top_n=1)
                top = float(eigs[0])
            del h
    finally:
        for p, flag, g in zip(params, flags, grads, strict=True):
            p.grad = g
            p.requires_grad_(flag)
        for m, mode in modes:
            m.train(mode)
    k = samples.shape[0]
    se = float(samples.std(ddof=1) / np.sqrt(k)) if k > 1 else float("nan")
    return PyHessianBlockResult(float(samples.mean()), se, k, top)
