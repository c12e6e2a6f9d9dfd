"""Modules of a training model whose weights never train, and whether they were ever trained.

A part of the model frozen by mistake (``requires_grad_(False)`` on the wrong module, a freeze
loop that matches too much) shows nothing in the gradients: it has none. What tells a mistake
from a deliberate freeze is the state of the frozen weights. Freezing is meant for weights that
were *trained*, a pretrained backbone or embedding; a module frozen at its *random
initialization* feeds fixed noise to the layers after it. Trained weights are heavy-tailed
(Martin and Mahoney's heavy-tailed self-regularization): the kurtosis of their entries is well
above the Gaussian 3. Every standard initializer draws iid entries from a uniform (kurtosis
1.8), a (truncated) normal (2.4-3) or an orthogonal matrix (about 3). A table computed by a
formula and frozen by design (Whisper's sinusoidal encoder positions: a sine's values have
kurtosis 1.5) is told apart by its neighbouring rows, nearly alike where iid draws are
uncorrelated. Read once, when the components are built, before the first update.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hfault.capture.contribution import ReportDraft
from hfault.capture.hooks import Listener
from hfault.components import Component, find_roots

if TYPE_CHECKING:
    from hfault.capture.session import CaptureSession

UNTRAINED_KURTOSIS = 3.5
"""Entries of a freshly initialized weight have kurtosis ≤ 3 (plus sampling noise); trained ones
are heavy-tailed."""
_MIN_NUMEL = 256  # fewer entries: the kurtosis is too noisy to call
_MAX_ENTRIES = 64


def kurtosis(w: torch.Tensor) -> float | None:
    """The standardized fourth moment of the entries (3 for a Gaussian), None when undefined."""
    x = w.detach().to(torch.float64).flatten()
    if x.numel() < _MIN_NUMEL or not bool(torch.isfinite(x).all()):
        return None
    x = x - x.mean()
    var = float(x.square().mean())
    if var <= 0:
        return None
    return float(x.pow(4).mean()) / (var * var)


STRUCTURED = 0.3
"""Correlation of neighbouring rows (or columns) above which a table was computed, not drawn:
an initializer draws entries independently (about ±1/√n), a sinusoidal position table's
neighbouring positions are nearly alike."""


def neighbour_correlation(w: torch.Tensor) -> float | None:
    """The larger |correlation| between neighbouring rows, and between neighbouring columns, of
    a ≥ 2-D weight (flattened to rows × the rest)."""
    x = w.detach().to(torch.float64).reshape(w.shape[0], -1)
    best = None
    for m in (x, x.t()):
        if m.shape[0] < 2 or m.numel() < _MIN_NUMEL:
            continue
        a, b = m[:-1].flatten(), m[1:].flatten()
        a, b = a - a.mean(), b - b.mean()
        den = float(a.norm() * b.norm())
        if den > 0:
            c = abs(float((a * b).sum()) / den)
            best = c if best is None else max(best, c)
    return best


def frozen_modules(roots: Sequence[nn.Module], names: Mapping[int, str], optimized: set[int],
                   position: Mapping[int, int]) -> list[dict[str, Any]]:
    """Modules whose own parameters all have ``requires_grad`` off, in models that otherwise
    train, in forward order (``position``: id(module) -> when it first ran; modules that never
    ran come last): ``module`` (its name in ``names``, id -> name), ``type``, ``numel``,
    ``in_optimizer`` (the script handed them to an optimizer, then froze them), ``kurtosis`` of
    the largest ≥2-D weight and ``untrained`` (that weight still looks freshly initialized).
    Norm gains and biases alone (no ≥2-D weight) are listed with ``untrained`` None."""
    found: list[tuple[int, dict[str, Any]]] = []
    for root in roots:
        if len(found) >= _MAX_ENTRIES:
            break
        if not any(p.requires_grad for p in root.parameters()):
            continue  # an evaluation-only model (a frozen teacher, a reference model)
        for module in root.modules():
            own = list(module.parameters(recurse=False))
            if not own or any(p.requires_grad for p in own):
                continue
            weights = [p for p in own if p.dim() >= 2]
            big = max(weights, key=lambda p: p.numel()) if weights else None
            k = kurtosis(big) if big is not None else None
            corr = neighbour_correlation(big) if big is not None else None
            found.append((position.get(id(module), len(position)), {
                "module": names.get(id(module), type(module).__name__),
                "type": type(module).__name__,
                "numel": sum(p.numel() for p in own),
                "in_optimizer": any(id(p) in optimized for p in own),
                "kurtosis": k,
                "neighbour_correlation": corr,
                # a table computed by a formula (Whisper's sinusoidal positions, frozen by
                # design) has the low kurtosis of a sine's values but is no random draw
                "untrained": None if k is None else (k <= UNTRAINED_KURTOSIS
                                                     and (corr or 0.0) < STRUCTURED),
            }))
            if len(found) >= _MAX_ENTRIES:
                break
    return [entry for _, entry in sorted(found, key=lambda item: item[0])]


class FrozenProbe(Listener):
    """The frozen modules of the trained models, read when the components are built."""

    def __init__(self, session: CaptureSession) -> None:
        self.session = session
        self.frozen: list[dict[str, Any]] = []

    def components_built(self, components: Sequence[Component]) -> None:
        state = self.session.state
        params = [part.param for c in components for part in c.parts]
        roots = find_roots(list(state.modules.values()), params)
        optimized = {id(p) for opt in state.optimizers for g in opt.param_groups
                     for p in g["params"]}
        position = {id(m): i for i, m in enumerate(state.modules.values())}
        self.frozen = frozen_modules(roots, self.session.module_names(), optimized, position)

    def contribute(self, draft: ReportDraft) -> None:
        draft.sections["frozen"] = list(self.frozen)
