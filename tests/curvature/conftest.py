"""Every curvature test module runs with one intra-op thread (``one_math_thread``)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_math_thread: None) -> None:
    """Tiny float64 models gain nothing from a second thread (see ``one_math_thread``)."""
