"""Second-order measurement core: HVPs on the user's graph and per-block estimators.

Public entry points: ``HessianOperator`` (products), ``measure`` with ``CurvatureSettings``
(a full snapshot), and the estimators it is built from. ``dense`` and ``pyhessian_ref`` are
references for tests and benchmarks (PyHessian is imported lazily).
"""

from hfault.curvature.blocks import Block, BlockPart, validate_blocks, whole
from hfault.curvature.directional import directional_matrix, rho_matrix
from hfault.curvature.hutchinson import (
    ColumnSamples,
    CouplingEstimate,
    Deflation,
    coupling,
    probe_columns,
    probe_diagonal,
    row_norm,
    shared_traces,
    trace_estimate,
)
from hfault.curvature.hvp import Column, HessianOperator
from hfault.curvature.lanczos import LanczosResult, lanczos, ritz_max
from hfault.curvature.measure import (
    BUDGETS,
    BlockCurvature,
    CurvatureSettings,
    CurvatureSnapshot,
    EdgeCurvature,
    measure,
)
from hfault.curvature.probes import Estimate, rademacher
from hfault.curvature.stability import (
    StabilityResult,
    StabilityRule,
    StabilitySetup,
    adam_preconditioner,
    block_stability_setup,
    stability,
    stability_rule,
)

__all__ = [
    "BUDGETS",
    "Block",
    "BlockCurvature",
    "BlockPart",
    "Column",
    "ColumnSamples",
    "CouplingEstimate",
    "CurvatureSettings",
    "CurvatureSnapshot",
    "Deflation",
    "EdgeCurvature",
    "Estimate",
    "HessianOperator",
    "LanczosResult",
    "StabilityResult",
    "StabilityRule",
    "StabilitySetup",
    "adam_preconditioner",
    "block_stability_setup",
    "coupling",
    "directional_matrix",
    "lanczos",
    "measure",
    "probe_columns",
    "probe_diagonal",
    "rademacher",
    "rho_matrix",
    "ritz_max",
    "row_norm",
    "shared_traces",
    "stability",
    "stability_rule",
    "trace_estimate",
    "validate_blocks",
    "whole",
]
