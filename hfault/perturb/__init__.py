"""``hfault perturb``: inject random perturbations into chosen components of a training run and
measure what they do (:mod:`.driver`), one run each (:mod:`.listener`; when and what to inject:
:mod:`.injection`), with confidence intervals (:mod:`.stats`) rendered by :mod:`.report`."""

from hfault.perturb.driver import PerturbOptions, PerturbResult, PerturbUsageError, perturb

__all__ = ["PerturbOptions", "PerturbResult", "PerturbUsageError", "perturb"]
