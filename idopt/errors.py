"""Exception and warning classes of the package.

Every error raised on purpose derives from :class:`IdoptError`. Input errors also
derive from :class:`ValueError`, so handlers written for the builtin keep working.
"""


class IdoptError(Exception):
    """Root of the exceptions raised by idopt and gradients."""


class InvalidInputError(IdoptError, ValueError):
    """An argument has the wrong shape, dtype, sign or value; the message names it."""


class SolverError(IdoptError, RuntimeError):
    """A solver failed to produce usable weights."""


class AssetError(IdoptError, RuntimeError):
    """A default asset (model, data) could not be fetched or read."""


class InaccurateSolutionWarning(UserWarning):
    """A solver returned weights whose certificate misses the requested tolerance."""


class TieWarning(UserWarning):
    """Equal scores at the selection boundary made the exact-k rule fall back to index order."""
