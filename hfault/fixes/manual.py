"""``manual``: a change a person makes in the script (a reset, a mask, a scale, an init): the
summary says what, the rule's snippet shows how. Nothing is applied mechanically, so
``--verify-fix`` leaves it out; every fix without another kind is this one."""

from __future__ import annotations

from hfault.fixes.kind import FixKind


class Manual(FixKind):
    name = "manual"
    doc = "a code change made by hand: the summary says what, the snippet shows how"


MANUAL = Manual()
