"""``HfaultLightningCallback``: hfault around a Lightning ``Trainer.fit``.

    callback = HfaultLightningCallback(json="report.json")
    L.Trainer(max_steps=200, callbacks=[callback]).fit(model, loader)
    callback.report                      # the JSON report, as a dict

The optimizers ``configure_optimizers`` returned are handed over at ``on_train_start``; the
report is built at ``on_train_end``, or at ``on_exception`` with the error when fit raised.
"""

from __future__ import annotations

from typing import Any

from hfault.integrations.watched_fit import WatchedCallback, missing

try:
    from lightning.pytorch import Callback
except ImportError as exc:
    raise missing("lightning", "HfaultLightningCallback", exc) from None


class HfaultLightningCallback(WatchedCallback, Callback):
    """Watch options as :func:`hfault.watch`'s (``json``, ``html``, ``sarif``, ``at``,
    ``curvature``, ``nan_watch``, ``nan_ops``, ``select``, ``ignore``, ``show``, ``name``), except
    ``max_steps`` (use ``Trainer(max_steps=...)``) and ``optimizers``."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.fit.begin(list(trainer.optimizers), pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.fit.end(None)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.fit.end(exception)
