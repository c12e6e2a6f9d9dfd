"""The probes of a diagnosis, in one list: a new probe is its module plus a line here.

Each probe is a listener of the capture session (``hfault.capture.hooks``) that owns its state
and adds its own fields to the report (``contribute``); where one probe reads another's results
it is handed that probe here.
"""

from __future__ import annotations

from hfault.capture.hooks import Listener
from hfault.capture.session import CaptureSession
from hfault.probes.attention import AttentionWindow
from hfault.probes.curvature_probe import CurvatureConfig, CurvatureProbe
from hfault.probes.frozen import FrozenProbe
from hfault.probes.gradients import GradientStats
from hfault.probes.init_scale import InitScaleProbe
from hfault.probes.label_fit import LabelFitProbe
from hfault.probes.loss_input import LossInputWatch
from hfault.probes.next_token import NextTokenProbe
from hfault.probes.numerics import NumericsProbe
from hfault.probes.op_watch import OpWatch
from hfault.probes.param_reach import ParamReach
from hfault.probes.printed_validation import PrintedValidation
from hfault.probes.sample_mixing import SampleMixingProbe
from hfault.probes.zero_grad import StaleGradientWatch


def diagnosis_probes(
    session: CaptureSession, *, nan_watch: bool = True, curvature: CurvatureConfig | None = None,
    op_watch: bool = False,
) -> list[Listener]:
    """The listeners ``hfault diagnose`` adds to its session (``--no-nan-watch``: no per-output
    and per-gradient flags; ``curvature`` None: no second-order snapshots; ``op_watch``: watch
    every op for the first NaN/Inf from the first step, ``--nan-ops``)."""
    gradients = GradientStats(session)
    loss_inputs = LossInputWatch(session)
    numerics = NumericsProbe(session, gradients, watch=nan_watch)
    probes: list[Listener | None] = [
        gradients,
        numerics,
        OpWatch(session, numerics, always=op_watch),
        StaleGradientWatch(session),
        loss_inputs,
        InitScaleProbe(),
        FrozenProbe(session),
        AttentionWindow(session, loss_inputs),
        LabelFitProbe(session, loss_inputs),
        NextTokenProbe(session, loss_inputs),
        SampleMixingProbe(session, loss_inputs),
        ParamReach(session),
        PrintedValidation(session),
        CurvatureProbe(session, curvature) if curvature is not None else None,
    ]
    return [p for p in probes if p is not None]
