"""The Python API, for notebooks and custom launchers: the ``diagnose`` pipeline around a block.

    import hfault

    with hfault.watch(json="report.json", max_steps=200) as run:
        train(model, optimizer, loader)      # any training code: nothing to change in it
    run.findings                              # ranked findings, as in the JSON report

The block is captured exactly as ``hfault diagnose`` captures a script: optimizers built inside
it are seen when built; pass the ones built before it with ``optimizers=`` (one not passed
is found at the first backward, among the live optimizers that hold its parameters) (and, with
``models=``, models whose root is never called itself, so components are still named from it:
a LightningModule whose ``training_step`` calls its submodules). ``max_steps`` ends
training from inside the block, and the ``with`` statement swallows that stop only. An exception
raised by the training code is re-raised after the report is built and written, so nothing
measured is lost and the caller still sees its error. Under torchrun every rank hands its facts
to rank 0 when the block ends, and only rank 0 writes files and shows the report.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from hfault.capture.distributed import World
from hfault.capture.frames import user_caller
from hfault.capture.runner import RunOutcome, outcome_of
from hfault.capture.schedule import parse_schedule
from hfault.capture.session import CaptureSession, StopTraining
from hfault.findings import any_at_or_above
from hfault.report.outputs import Outputs, check_outputs, write_outputs

__all__ = ["Watch", "watch"]


class Watch:
    """One watched block; use through :func:`watch`. After the block: :attr:`report` (the JSON
    report as a dict), :attr:`findings`, :attr:`outcome` and :meth:`failed`."""

    def __init__(
        self,
        *,
        json: str | Path | None = None,
        html: str | Path | None = None,
        sarif: str | Path | None = None,
        max_steps: int | None = None,
        at: str | None = None,
        curvature: bool = False,
        nan_watch: bool = True,
        nan_ops: bool = False,
        lr: float | None = None,
        select: Sequence[str] = (),
        ignore: Sequence[str] = (),
        optimizers: Iterable[torch.optim.Optimizer] = (),
        models: Iterable[torch.nn.Module] = (),
        show: bool = False,
        name: str | None = None,
    ) -> None:
        from hfault.probes.curvature_probe import CurvatureConfig
        from hfault.rules import load_rules

        self.outputs = Outputs(json=_path(json), sarif=_path(sarif), html=_path(html))
        check_outputs(self.outputs)  # before training, not after it
        self.schedule = parse_schedule(at, max_steps)
        self.max_steps = max_steps
        self.curvature = CurvatureConfig() if curvature else None
        self.nan_watch = nan_watch
        self.nan_ops = nan_ops
        self.lr = lr
        self.rules = load_rules(None, (), tuple(select), tuple(ignore))
        self.optimizers = [_unwrap(o) for o in optimizers]
        self.models = list(models)
        self.show = show
        caller = user_caller() or {}
        self.name = name or str(caller.get("file") or "<python>")
        self.world = World.from_env()
        self.report: dict[str, Any] | None = None
        self.outcome: RunOutcome | None = None
        self.written: list[str] = []
        self._session: CaptureSession | None = None

    def __enter__(self) -> Watch:
        from hfault.diagnose import capture_session

        self._session = capture_session(self._options())
        self._session.__enter__()
        for opt in self.optimizers:
            self._session.hooks.adopt(opt)
        for model in self.models:  # seen before it runs: components are named from it even
            self._session.state.modules.setdefault(id(model), model)  # if only parts are called
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        from hfault.diagnose import build_report

        session = self._session
        assert session is not None, "Watch.__exit__ without __enter__"
        session.__exit__(exc_type, exc, tb)
        options = self._options()
        self.outcome = outcome_of(exc, options.script)
        self.report = build_report(options, session, self.outcome).to_dict()
        lead = self.world is None or self.world.lead
        if lead:
            self.written = write_outputs(self.report, [r.to_catalog() for r in self.rules],
                                         self.outputs)
        if self.world is not None:
            self.world.cleanup()
        if self.show and lead:
            from hfault.report.terminal import render, report_console

            render(self.report, report_console())
            for line in self.written:
                print(line, file=sys.stderr)
        return isinstance(exc, StopTraining)  # our own --max-steps stop ends the block quietly

    @property
    def findings(self) -> list[dict[str, Any]]:
        return list((self.report or {}).get("findings", []))

    def failed(self, severity: str = "error") -> bool:
        """Whether a finding is at or above ``severity`` (the CLI's ``--fail-on``)."""
        return any_at_or_above(self.findings, severity)

    def _options(self) -> Any:
        from hfault.diagnose import DiagnoseOptions

        return DiagnoseOptions(Path(self.name), [], self.schedule, self.max_steps,
                               self.nan_watch, self.curvature, self.rules, self.world,
                               lr=self.lr, op_watch=self.nan_ops)


watch = Watch
"""``hfault.watch(...)``: the public name of :class:`Watch`."""


def _unwrap(opt: Any) -> torch.optim.Optimizer:
    """A wrapper that holds the real optimizer (accelerate's AcceleratedOptimizer) gives it."""
    inner = getattr(opt, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else opt


def _path(value: str | Path | None) -> Path | None:
    return Path(value) if value is not None else None

