"""Which hfault frames only pass a call on to torch: an exception raised there is the script's.

A hook that wraps a torch function (``backward``, a patched ``F.softmax``) sits in every
traceback of an error the original raises; ``capture.runner.raised_in_hfault`` must not blame
hfault for it."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

DELEGATES: set[tuple[str, str]] = set()
"""(file name, function name) of hook functions that only pass a call on to torch: an exception
whose deepest hfault frame is one of them is the script's, not hfault's (see
``capture.runner.raised_in_hfault``)."""

F = TypeVar("F", bound=Callable[..., Any])


def delegate(function: F) -> F:
    """Declare a wrapper that does its own work before or after calling the original, so an
    exception raised in it (not deeper in hfault) comes from the original call."""
    code = function.__code__
    DELEGATES.add((os.path.basename(code.co_filename), code.co_name))
    return function
