"""``HfaultTrainerCallback``: hfault around a ``transformers.Trainer`` run.

    trainer = Trainer(model, args, train_dataset=data, callbacks=[HfaultTrainerCallback(
        json="report.json")])
    trainer.train()
    callback.report                      # the JSON report, as a dict

The Trainer builds its optimizer before ``on_train_begin``, which hands it over (accelerate's
wrapper is unwrapped); ``on_train_end`` builds and writes the report.
"""

from __future__ import annotations

from typing import Any

from hfault.integrations.watched_fit import WatchedCallback, missing

try:
    from transformers import TrainerCallback
except ImportError as exc:
    raise missing("transformers", "HfaultTrainerCallback", exc) from None


class HfaultTrainerCallback(WatchedCallback, TrainerCallback):
    """Watch options as :func:`hfault.watch`'s (``json``, ``html``, ``sarif``, ``at``,
    ``curvature``, ``nan_watch``, ``nan_ops``, ``select``, ``ignore``, ``show``, ``name``), except
    ``max_steps`` (use ``TrainingArguments(max_steps=...)``) and ``optimizers``. If
    ``trainer.train()`` raises, call :meth:`finish` with the error to get the partial report
    (the Trainer has no end hook for a failed run)."""

    def finish(self, error: BaseException | None = None) -> dict[str, Any] | None:
        """Close the watch now (after a failed ``train()``); the report."""
        return self.fit.end(error)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.fit.begin([kwargs.get("optimizer")], kwargs.get("model"))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.fit.end(None)
