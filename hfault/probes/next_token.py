"""Whether the run trains next-token prediction: the loss's targets are the model's input tokens
shifted by one position.

A causal language model must not see the token it is asked to predict. When every attention of
such a model has lost its causal mask (a mask line commented out in the one attention class all
blocks share, ``is_causal`` left at False), the training loss falls far below what any causal
model reaches, because each position reads its own target, and nothing else looks wrong: no
layer differs from its peers (HF211 compares a layer with the others), gradients and curvature
are healthy. What tells it is the task: in next-token training the target at position t is the
input at t + 1, which no other task does by chance (a random match has the probability of one
token in the vocabulary).

At each measured step the probe keeps the integer inputs of the ``F.embedding`` calls made with
grad enabled in the window (``nn.Embedding`` calls it; position ids and other tables too, which
simply do not match; an evaluation under ``no_grad`` is left out)
and, for each ``cross_entropy`` or ``nll_loss`` call, the share of targets equal to the input one
position later, along either leading axis (batch-first ``(B, T)`` or sequence-first ``(T, B)``
data), for targets laid out like the inputs (``(B, T)``, flattened or not) or already shifted
(``(B, T − 1)``, as transformers models shift labels inside). The counts stay on the device and are
read with the step's other values.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from hfault.capture.contribution import ReportDraft
from hfault.capture.hooks import WINDOW, BackwardEvent, Listener, delegate, patch
from hfault.capture.host_reads import Reading
from hfault.probes.loss_input import LOG_LOSSES

if TYPE_CHECKING:
    from hfault.capture.session import CaptureSession
    from hfault.probes.loss_input import LossInputWatch

MAX_INPUTS = 4
"""Embedding inputs kept per window (the token ids come first in a forward)."""


def _layouts(tokens: torch.Tensor, target: torch.Tensor
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]:
    """Per leading axis (positions on axis 1, batch-first; on axis 0, sequence-first): the targets
    of positions 0 .. n − 2 and the tokens at those positions and one later, for targets laid out
    like the tokens (same size) or already shifted (one position fewer), and n."""
    if tokens.dim() < 2 or target.is_floating_point() or tokens.is_floating_point():
        return
    for axis in (1, 0):
        n = int(tokens.shape[axis])
        if n < 2:
            continue
        here, later = tokens.narrow(axis, 0, n - 1), tokens.narrow(axis, 1, n - 1)
        if target.numel() == tokens.numel():
            aligned = target.reshape(tokens.shape).narrow(axis, 0, n - 1)
        elif target.numel() == later.numel():
            aligned = target.reshape(later.shape)
        else:
            continue
        yield aligned, here.to(aligned.device), later.to(aligned.device), n


def _pair(matches: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    return torch.stack([matches.sum(), counted.sum()]).double()


def shifted_matches(tokens: torch.Tensor, target: torch.Tensor, ignore_index: int = -100
                    ) -> torch.Tensor | None:
    """(matches, counted) of ``target`` against ``tokens`` (≥ 2-D integer ids) one position
    later, for the leading axis that matches best: target[t] == tokens[t + 1]. None when the
    target is not laid out like the tokens (same size, or one position fewer along an axis)."""
    found = []
    for aligned, _, later, _n in _layouts(tokens, target):
        counted = aligned != ignore_index
        found.append(_pair((aligned == later) & counted, counted))
    return best_share(found)


def own_matches(tokens: torch.Tensor, target: torch.Tensor, ignore_index: int = -100
                ) -> torch.Tensor | None:
    """(matches, counted) of ``target`` against ``tokens`` at the same position: target[t] ==
    tokens[t], counted only where tokens[t] != tokens[t + 1] (a token repeated in the data
    matches either way), for the leading axis that matches best. Next-token targets match
    nowhere; targets never shifted (a causal model asked to output the token it reads) match
    everywhere. None when the target is not laid out like the tokens."""
    found = []
    for aligned, here, later, n in _layouts(tokens, target):
        counted = (aligned != ignore_index) & (here != later)
        pair = _pair((aligned == here) & counted, counted)
        # and the ids' number of positions: an attention over as many keys reads them at the
        # targets' own positions (a Decision Transformer interleaves three tokens a step, so its
        # action ids are not its attention's positions)
        found.append(torch.cat([pair, pair.new_tensor([float(n)])]))
    return best_share(found)


def best_share(found: list[torch.Tensor]) -> torch.Tensor | None:
    """Of (matches, counted) pairs, the one with the largest share, chosen on the device (no
    host read); None when there is none."""
    if not found:
        return None
    best = found[0]
    for pair in found[1:]:
        better = pair[0] / pair[1].clamp_min(1) > best[0] / best[1].clamp_min(1)
        best = torch.where(better, pair, best)
    return best


class NextTokenProbe(Listener):
    """Per measured step: of the ``cross_entropy`` targets laid out like an embedding's input,
    how many equal the input one position later, and how many equal the input at their own
    position (targets never shifted)."""

    priority = WINDOW

    def __init__(self, session: CaptureSession, loss_inputs: LossInputWatch) -> None:
        self.session = session
        loss_inputs.observers.append(self._observe)
        self._open = False
        self._tokens: list[torch.Tensor] = []
        self._sums: torch.Tensor | None = None
        self._restore: list[Any] = []
        self._pending: list[tuple[int, Reading]] = []
        self.records: list[dict[str, Any]] = []

    def window_opened(self, step: int) -> None:
        self._open, self._tokens, self._sums = True, [], None
        if not self._restore:
            self._restore.append(patch(F, "embedding", self._wrap_embedding))

    def before_backward(self, event: BackwardEvent) -> None:
        if event.measured and self._open:
            self._close_window()
            if self._sums is not None:
                self._pending.append((event.step, self.session.reads.put(self._sums)))
            self._sums = None

    def close(self) -> None:
        self._close_window()
        for step, reading in self._pending:
            matched, counted, own, own_counted, positions = reading.values()
            if counted > 0:
                self.records.append({"step": step, "targets": int(counted),
                                     "next_token_share": matched / counted,
                                     "own_token_share": (own / own_counted if own_counted > 0
                                                         else None),
                                     "own_token_positions": int(positions) if own > 0 else None})
        self._pending.clear()

    def contribute(self, draft: ReportDraft) -> None:
        draft.sections["next_token"] = list(self.records)

    def _close_window(self) -> None:
        self._open, self._tokens = False, []
        for restore in reversed(self._restore):
            restore()
        self._restore = []

    def _wrap_embedding(self, original: Any) -> Any:
        probe = self

        @delegate
        def embedding(input: Any, *args: Any, **kwargs: Any) -> Any:
            if (probe._open and torch.is_grad_enabled() and isinstance(input, torch.Tensor)
                    and input.dim() >= 2 and not input.is_floating_point()
                    and len(probe._tokens) < MAX_INPUTS):
                probe._tokens.append(input)
            return original(input, *args, **kwargs)

        return embedding

    def _observe(self, name: str, input: Any, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        if (not self._open or name not in LOG_LOSSES or not self._tokens
                or not torch.is_grad_enabled()):
            return
        target = args[0] if args else kwargs.get("target")
        if not isinstance(target, torch.Tensor):
            return
        ignore = kwargs.get("ignore_index", args[3] if len(args) > 3 else -100)
        with torch.no_grad():
            best = best_share([m for t in self._tokens if (m := shifted_matches(
                t, target.detach(), int(ignore))) is not None])
            own = best_share([m for t in self._tokens if (m := own_matches(
                t, target.detach(), int(ignore))) is not None])
        if best is None or own is None:
            return
        own = own.to(best.device)
        sums = torch.cat([best, own[:2], own[2:] * (own[0] > 0)])
        if self._sums is None:
            self._sums = sums
        else:  # matches add up; the positions are the largest seen with a match
            old = self._sums.to(sums.device)
            self._sums = torch.cat([old[:4] + sums[:4], torch.maximum(old[4:], sums[4:])])
