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
from idopt.active_set import solve_active_set
from idopt.constructors import predicted_loss_change, problem_from_gradients
from idopt.lam_search import lam_for_support
from idopt.optimizers import AdamState, SGDState, adam_step_model, sgd_step_model
from idopt.problem import WeightingProblem
from idopt.selection import Selection, select, select_quadratic, top_k_indices
from idopt.simplex import project_simplex
from idopt.solution import Solution
from idopt.solve import available_methods, solve
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
    "WeightingProblem",
    "AdamState",
    "SGDState",
    "adam_step_model",
    "available_methods",
    "lam_for_support",
    "predicted_loss_change",
    "problem_from_gradients",
    "sgd_step_model",
    "solve",
    "solve_active_set",
    "SolverError",
    "Status",
    "TieWarning",
    "__version__",
    "first_order_objective",
    "kkt_certificate",
    "lam_interval_for_support",
    "project_simplex",
    "select",
    "select_quadratic",
    "solve_exact_k",
    "solve_first_order",
    "top_k_indices",
]
