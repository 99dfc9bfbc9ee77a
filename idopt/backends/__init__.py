"""Solver backends of the weighting problem: a common interface, OSQP and CVXPY.

The backend modules import osqp and cvxpy only inside the functions that need them, so
this package imports with numpy and scipy alone. Use :func:`idopt.solve.solve` to pick a
method and apply the failure policy; the classes here return raw results.
"""

from idopt.backends.base import Backend
from idopt.backends.cvxpy_backend import CVXPYBackend
from idopt.backends.osqp_backend import OSQPBackend

__all__ = ["Backend", "CVXPYBackend", "OSQPBackend"]
