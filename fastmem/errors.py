"""Exceptions raised by fastmem.

User errors are ``ValueError`` subclasses that name the argument and what was expected.
"""


class InvalidArgumentError(ValueError):
    """An argument has the wrong shape, dtype or value."""


class PerformanceWarning(UserWarning):
    """fastmem runs, but far slower than it could (its compiled core is not built here)."""


class BackendUnavailableError(RuntimeError):
    """A backend that was asked for by name cannot run here; the message says why."""


class InvalidStateError(InvalidArgumentError):
    """A TrainState (or a file of one) is damaged or does not fit the run it is asked to resume."""


class CudaError(RuntimeError):
    """A CUDA call of fastmem's kernels failed; ``status`` is its cudaError_t (the message names
    the call, CUDA's words for the status and the source file:line)."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status
