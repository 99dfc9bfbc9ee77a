"""Per-backend tolerances of the weighting solvers, in one table.

Each backend has three numbers:

- ``certificate``: the largest relative KKT residual (see :mod:`idopt.certificate`) for
  which a result is reported as OPTIMAL. Anything above it is INACCURATE.
- ``support``: iterative backends return tiny positive or negative weights where the
  exact solution has zeros. Entries with w_i <= support * max_j w_j are set to 0 before
  the certificate is computed, and the mass removed is recorded in the solution.
- ``solver``: the stopping tolerance handed to the backend itself (OSQP eps_abs and
  eps_rel, Clarabel tol_gap_abs, tol_gap_rel and tol_feas), None for direct methods.

Why these values:

- closed_form and active_set compute the weights from a linear system on the support,
  so their residuals are rounding errors (about 1e-15 relative); 1e-9 leaves a margin.
- OSQP stops when its residuals are below eps_abs + eps_rel * (size of A x), and the sum
  row 1^T w has size b. In measurements with osqp 1.1.3, eps = 1e-3 (the default) left
  constraint violations up to 1.8e-4, and eps = 1e-8 still left 4e-5 at n = 10^6. With
  eps = 1e-8 and polishing on, the polished point solves the KKT system on the support
  directly and residuals reached 1e-13.
- Clarabel (interior point, clarabel 0.11.1 through cvxpy 1.9.3) left inactive weights
  between 1e-13 and 1e-6 times max w on random instances with n <= 60. Weights at or
  below 1e-8 max w are set to zero, and the backend then solves the KKT system on the
  remaining support exactly (:func:`idopt.backends.base.refine_on_support`).
- The certificate threshold 1e-8 of both QP backends applies to a point that is not
  refined or polished. Refined points reach about 1e-13.
"""

from __future__ import annotations

from dataclasses import dataclass

from idopt.errors import InvalidInputError


@dataclass(frozen=True)
class BackendTolerance:
    """Tolerances of one backend; all are relative and dimensionless.

    Attributes
    ----------
    certificate : float
        Largest relative KKT residual of an OPTIMAL result.
    support : float
        Weights w_i <= support * max(w) are treated as zero (0 for exact backends).
    solver : float or None
        Stopping tolerance passed to the backend, None when it has none.
    """

    certificate: float
    support: float
    solver: float | None


TOLERANCES: dict[str, BackendTolerance] = {
    "closed_form": BackendTolerance(certificate=1e-9, support=0.0, solver=None),
    "active_set": BackendTolerance(certificate=1e-9, support=0.0, solver=None),
    "osqp": BackendTolerance(certificate=1e-8, support=1e-10, solver=1e-9),
    "cvxpy": BackendTolerance(certificate=1e-8, support=1e-8, solver=1e-10),
}


def tolerance_for(method: str) -> BackendTolerance:
    """Return the tolerances of ``method`` (a key of :data:`TOLERANCES`).

    Raises
    ------
    InvalidInputError
        If ``method`` has no entry.
    """
    try:
        return TOLERANCES[method]
    except KeyError:
        raise InvalidInputError(
            f"no tolerances are defined for method {method!r}; known methods: {', '.join(TOLERANCES)}"
        ) from None
