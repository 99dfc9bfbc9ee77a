"""Termination status shared by every solver backend."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """Outcome of a solve.

    The members are strings so that they compare equal to their value and serialize
    to JSON without a custom encoder.
    """

    OPTIMAL = "optimal"
    """The solution passes the KKT certificate at the requested tolerance."""

    OPTIMAL_RESTRICTED = "optimal_restricted"
    """The solution is optimal for the problem restricted to a subset of samples, not for
    the full problem (exact-k selection with tied scores at the boundary)."""

    INACCURATE = "inaccurate"
    """The solver finished but the certificate misses the requested tolerance."""

    ITERATION_LIMIT = "iteration_limit"
    """The solver stopped at its iteration limit; the returned point is the last iterate."""

    TIME_LIMIT = "time_limit"
    """The solver stopped at its wall-time limit; the returned point is the last iterate."""

    INFEASIBLE = "infeasible"
    """The constraints cannot be satisfied, so no solution is returned."""

    SOLVER_ERROR = "solver_error"
    """The backend failed (numerical breakdown, exception); the weights are not usable."""

    @property
    def has_solution(self) -> bool:
        """Whether the weights of a result with this status can be used."""
        return self in (
            Status.OPTIMAL,
            Status.OPTIMAL_RESTRICTED,
            Status.INACCURATE,
            Status.ITERATION_LIMIT,
            Status.TIME_LIMIT,
        )
