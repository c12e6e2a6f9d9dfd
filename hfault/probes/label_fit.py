"""How the model ranks the labels it is trained on, read at each measured step's loss.

Noisy labels show where the loss meets the targets. A model that has learned the task ranks the
true class first or near it: when it misses, the target is usually a class it found plausible
(second, third). A random label is unrelated to the input, so the model ranks it anywhere: among
the missed samples the target's rank is uniform over the other classes, and a share of all
targets sits in the lower half of the model's ranking. That share stays near 0 in a fitted
healthy run and near the noise rate × ½ under label noise, whatever the architecture, the
optimizer or the loss scale (Arpit et al. 2017 show the clean part is fitted first, so the
noisy part stands out once the model ranks the clean targets first). A model that cannot fit
part of its data ranks those targets low too, but it is unsure there; a random label is
independent of the input, so the model is as confident on the noisy rows as on any: the probe
also records the model's confidence on all rows and on the lower-half ones.

The probe reads the ``cross_entropy`` and ``nll_loss`` calls made with grad enabled inside a
measured step's window (through :class:`~hfault.probes.loss_input.LossInputWatch`'s wrapper,
which is in place for the whole run), on at most ``MAX_ROWS`` rows per call; the counts stay on
the device and are read with the step's other values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from hfault.capture.contribution import ReportDraft
from hfault.capture.hooks import WINDOW, BackwardEvent, Listener
from hfault.capture.host_reads import Reading
from hfault.probes.loss_input import LOG_LOSSES

if TYPE_CHECKING:
    from hfault.capture.session import CaptureSession
    from hfault.probes.loss_input import LossInputWatch

MAX_ROWS = 4096
"""Rows (samples, or samples × positions) read per loss call: enough for shares of a few per
cent."""
MAX_ENTRIES = 1 << 24
"""Rows × classes read per call (64 MB of float32): a language model's (tokens × vocabulary)
logits are read on fewer rows (335 for GPT-2's 50,257 classes)."""
MIN_CLASSES = 2
"""With two classes every miss ranks the target last, so rank says nothing; the model's
confidence on its misses still tells random labels (as confident as anywhere) from hard rows."""


def label_rows(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100
               ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``cross_entropy``'s (N, C, ...) logits and class-index or class-probability targets as
    (rows, classes) logits and one class per row (ignored rows and rows with a NaN or no finite
    score left out, at most ``MAX_ROWS`` and ``MAX_ENTRIES``, evenly spaced); None when the call
    is not a classification over ≥ 2 classes."""
    if logits.dim() < 2 or not logits.is_floating_point():
        return None
    classes = int(logits.shape[1])
    if classes < MIN_CLASSES:
        return None
    x = logits.detach().movedim(1, -1).reshape(-1, classes)
    t = target.detach()
    if t.is_floating_point():  # class probabilities: the most likely class is the label
        if t.shape != logits.shape:
            return None
        t = t.movedim(1, -1).reshape(-1, classes).argmax(-1)
    else:
        t = t.reshape(-1)
        if t.numel() != x.shape[0]:
            return None
        keep = t != ignore_index
        x, t = x[keep], t[keep]
    usable = ~x.isnan().any(1) & (x.amax(1) > -torch.inf)  # rows with a finite first choice
    x, t = x[usable], t[usable]
    cap = max(1, min(MAX_ROWS, MAX_ENTRIES // classes))
    if x.shape[0] > cap:
        stride = -(-x.shape[0] // cap)
        x, t = x[::stride], t[::stride]
    if x.shape[0] == 0:
        return None
    return x, t.long().clamp(0, classes - 1)


def ranks_of(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per row, the target's rank among the classes normalized to [0, 1] (0: the model's first
    choice, 1: its last; ties count for the target)."""
    above = (x > x.gather(1, t.unsqueeze(1))).sum(1)
    return above.to(torch.float32) / (x.shape[1] - 1)


def confidence_of(x: torch.Tensor) -> torch.Tensor:
    """Per row, the probability of the model's first choice (its softmax maximum)."""
    x = x.float()
    return (x.max(1).values - x.logsumexp(1)).exp().nan_to_num(0.0)  # +inf scores: undefined


def label_ranks(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100
                ) -> torch.Tensor | None:
    """:func:`ranks_of` the rows :func:`label_rows` reads, or None."""
    rows = label_rows(logits, target, ignore_index)
    return ranks_of(*rows) if rows is not None else None


class LabelFitProbe(Listener):
    """Per measured step: samples read, top-1 agreement with the targets, the share of targets
    in the lower half of the model's ranking, the mean normalized rank of the missed ones, and
    the model's confidence (its first choice's probability) on all rows and on those rows."""

    priority = WINDOW

    def __init__(self, session: CaptureSession, loss_inputs: LossInputWatch) -> None:
        self.session = session
        loss_inputs.observers.append(self._observe)
        self._open = False
        self._sums: torch.Tensor | None = None
        self._classes = 0
        self._pending: list[tuple[int, int, Reading]] = []
        self.records: list[dict[str, Any]] = []

    def window_opened(self, step: int) -> None:
        self._open, self._sums, self._classes = True, None, 0

    def before_backward(self, event: BackwardEvent) -> None:
        if event.measured and self._open:
            self._open = False
            if self._sums is not None:
                self._pending.append((event.step, self._classes,
                                      self.session.reads.put(self._sums)))
            self._sums = None

    def close(self) -> None:
        self._open = False
        for step, classes, reading in self._pending:
            n, hit, low, miss_rank, confidence, confidence_low, low_rank = reading.values()
            if n <= 0:
                continue
            misses = n - hit
            self.records.append({
                "step": step,
                "samples": int(n),
                "classes": classes,
                "accuracy": hit / n,
                "lower_half": low / n,
                "miss_rank_mean": miss_rank / misses if misses > 0 else None,
                "confidence": confidence / n,
                "confidence_lower_half": confidence_low / low if low > 0 else None,
                "lower_half_rank_mean": low_rank / low if low > 0 else None,
            })
        self._pending.clear()

    def contribute(self, draft: ReportDraft) -> None:
        draft.sections["label_fit"] = list(self.records)

    def _observe(self, name: str, input: Any, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        if not self._open or name not in LOG_LOSSES or not torch.is_grad_enabled():
            return
        target = args[0] if args else kwargs.get("target")
        if not isinstance(input, torch.Tensor) or not isinstance(target, torch.Tensor):
            return
        ignore = kwargs.get("ignore_index", args[3] if len(args) > 3 else -100)
        with torch.no_grad():
            rows = label_rows(input, target, int(ignore))
            if rows is None:
                return
            ranks, confidence = ranks_of(*rows), confidence_of(rows[0])
            lower = ranks >= 0.5
            sums = torch.stack([
                torch.tensor(float(ranks.numel()), device=ranks.device),
                (ranks == 0).sum().to(torch.float32),
                lower.sum().to(torch.float32),
                ranks.sum(),
                confidence.sum(),
                (confidence * lower).sum(),
                (ranks * lower).sum(),
            ]).double()
        self._sums = sums if self._sums is None else self._sums + sums.to(self._sums.device)
        self._classes = max(self._classes, int(input.shape[1]))
