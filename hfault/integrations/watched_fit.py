"""What both framework callbacks share: one watch opened at train begin and closed at train end."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from hfault.api import Watch

REFUSED = ("max_steps", "optimizers", "models")
"""Watch options a callback does not take: the trainer's own ``max_steps`` ends its loop cleanly
(a watch's stop would leave through the framework's code), and it hands over its optimizers and
model."""


def missing(package: str, callback: str, exc: ImportError) -> ImportError:
    """The one-line error for a callback whose framework is not installed."""
    return ImportError(f"hfault.integrations.{callback} needs {package}, which could not be "
                       f"imported ({exc}): pip install {package}")


class WatchedFit:
    """A :class:`~hfault.api.Watch` with the callback's options, opened and closed by hand."""

    def __init__(self, callback: str, options: dict[str, Any]) -> None:
        refused = sorted(set(options) & set(REFUSED))
        if refused:
            raise TypeError(f"{callback} does not take {', '.join(refused)}: the trainer's own "
                            "settings (max_steps) and optimizers are used")
        self.options = options
        self.watch: Watch | None = None
        self.report: dict[str, Any] | None = None

    def begin(self, optimizers: Iterable[torch.optim.Optimizer | None],
              model: torch.nn.Module | None) -> None:
        self.end(None)  # a previous fit that raised past the framework's end hook
        self.report = None
        self.watch = Watch(optimizers=[o for o in optimizers if o is not None],
                           models=[model] if isinstance(model, torch.nn.Module) else [],
                           **self.options)
        self.watch.__enter__()

    def end(self, error: BaseException | None) -> dict[str, Any] | None:
        """Close the watch (``error``: what ended training, if it raised); the report."""
        watch, self.watch = self.watch, None
        if watch is None:
            return self.report
        watch.__exit__(type(error) if error is not None else None, error,
                       error.__traceback__ if error is not None else None)
        self.report = watch.report
        return self.report

    @property
    def findings(self) -> list[dict[str, Any]]:
        return list((self.report or {}).get("findings", []))


class WatchedCallback:
    """The part of both callbacks that is not the framework's: the watch and its results."""

    def __init__(self, **options: Any) -> None:
        self.fit = WatchedFit(type(self).__name__, options)

    @property
    def report(self) -> dict[str, Any] | None:
        return self.fit.report

    @property
    def findings(self) -> list[dict[str, Any]]:
        return self.fit.findings
