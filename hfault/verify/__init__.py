"""``hfault diagnose --verify-fix``: plan the mechanical fixes of a diagnosis (:mod:`.plan`),
rerun the script with them applied (:mod:`.apply`, :mod:`.flow`) and compare the two reports
(:mod:`.compare`)."""

from hfault.fixes.lower_lr import split_param_groups
from hfault.verify.apply import FixApplier
from hfault.verify.flow import Verification, diagnose_and_verify
from hfault.verify.plan import PlannedFix, plan_fixes

__all__ = [
    "FixApplier",
    "PlannedFix",
    "Verification",
    "diagnose_and_verify",
    "plan_fixes",
    "split_param_groups",
]
