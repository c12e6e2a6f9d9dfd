"""One intra-op thread for the tiny curvature models.

The machine's 2 cores are shared; with 2 OpenMP threads per process, busy-waiting under
contention made the suite ~20x slower. Tiny float64 models gain nothing from a second thread.
The previous setting is restored after each test module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
