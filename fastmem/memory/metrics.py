"""Population metrics of a memory on a task.

All take ``(memory, task)`` and an optional ``backend``; the loss is
L(W) = sum_x p(x) (logsumexp z(x) - z_{y(x)}(x)).
"""

import warnings

import numpy as np

from .. import _validate as v
from ..backends import get
from ._problem import chunk_arg, problem_args


def population_metrics(memory, task, gradient=False, backend=None, chunk=None):
    """One pass over all N tokens.

    Returns a dict: ``loss`` (float), ``accuracy`` (float, p-weighted fraction of
    tokens with a positive margin), ``margins`` (N,) in the memory's dtype, and
    ``gradient`` (d, d) when asked.
    """
    E, oc, os_, U, p, y = problem_args(memory, task)
    margins = np.empty(memory.N, dtype=memory.dtype)
    grad = np.empty((memory.d, memory.d), dtype=memory.dtype) if gradient else None
    loss, acc = get(backend).population_metrics(E, oc, os_, U, memory.W, p, y, memory.layernorm,
                                                chunk_arg(chunk), margins, grad)
    out = {"loss": float(loss), "accuracy": float(acc), "margins": margins}
    if gradient:
        out["gradient"] = grad
    return out


def loss(memory, task, backend=None):
    """Population cross-entropy loss (float)."""
    return population_metrics(memory, task, backend=backend)["loss"]


def accuracy(memory, task, backend=None):
    """sum_x p(x) [m(x) > 0] (float)."""
    return population_metrics(memory, task, backend=backend)["accuracy"]


def margins(memory, task, backend=None):
    """m(x) = z_y(x) - max_{k != y} z_k(x) for every token, shape (N,), the memory's dtype."""
    return population_metrics(memory, task, backend=backend)["margins"]


def gradient(memory, task, backend=None):
    """grad_W L = E^T G U, shape (d, d), the memory's dtype."""
    return population_metrics(memory, task, gradient=True, backend=backend)["gradient"]


def sharpness(memory, task, iters=100, tol=1e-6, seed=0, backend=None, chunk=None):
    """Top eigenvalue of the Hessian of L at W (float), by power iteration on Hessian-vector
    products. lr * sharpness / 2 > 1 is the edge-of-stability signal."""
    if memory.layernorm:
        raise NotImplementedError("sharpness: the Hessian-vector product is implemented without LayerNorm")
    E, oc, os_, U, p, y = problem_args(memory, task)
    iters = v.positive_int("iters", iters)
    tol = v.positive_float("tol", tol)
    return float(get(backend).sharpness(E, oc, os_, U, memory.W, p, y, chunk_arg(chunk), iters, tol, seed))


def evaluate(*args, **kwargs):
    """Deprecated: the former name of :func:`population_metrics` (the compiled core's name); it will
    be removed."""
    warnings.warn("fm.evaluate is now fm.population_metrics (the name the compiled core uses); fm.evaluate "
                  "will be removed", DeprecationWarning, stacklevel=2)
    return population_metrics(*args, **kwargs)
