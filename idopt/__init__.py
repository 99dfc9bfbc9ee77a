"""idopt: the weighting problems of Influence Distillation and their solvers.

This package depends on numpy and scipy only (plus osqp/cvxpy for the QP backends)
and imports without torch. The torch side lives in the ``gradients`` package.
"""

import logging

from idopt.errors import (
    AssetError,
    IdoptError,
    InaccurateSolutionWarning,
    InvalidInputError,
    SolverError,
    TieWarning,
)
from idopt.certificate import KKTCertificate, kkt_certificate
from idopt.first_order import (
    first_order_objective,
    lam_interval_for_support,
    solve_exact_k,
    solve_first_order,
)
from idopt.selection import Selection, select, top_k_indices
from idopt.simplex import project_simplex
from idopt.solution import Solution
from idopt.status import Status

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "AssetError",
    "IdoptError",
    "InaccurateSolutionWarning",
    "InvalidInputError",
    "KKTCertificate",
    "Selection",
    "Solution",
    "SolverError",
    "Status",
    "TieWarning",
    "__version__",
    "first_order_objective",
    "kkt_certificate",
    "lam_interval_for_support",
    "project_simplex",
    "select",
    "solve_exact_k",
    "solve_first_order",
    "top_k_indices",
]
