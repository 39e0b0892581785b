"""Direct access to the compiled kernels, for simulators that own their loop."""

import numpy as np

from . import _validate as v
from ._problem import chunk_arg
from .backends import get


def softmax_xent_grad(Q, U, y, w=None, chunk=None, backend=None):
    """Fused scores -> softmax -> cross-entropy -> gradient for a block of read-outs.

    Parameters
    ----------
    Q : (b, d) float32/float64, rows e_x^T W
    U : (M, d) same dtype
    y : (b,) int targets in [0, M)
    w : (b,) row weights (default 1)
    chunk : output tokens per streamed chunk (default: whole block when small)

    Returns
    -------
    H : (b, d), w_i (softmax(z_i) U - u_{y_i})
    lse, zy, zother : (b,), logsumexp, target score, best other score
    """
    Q = v.float_matrix("Q", Q)
    U = v.float_matrix("U", U, shape=(None, Q.shape[1]), dtype=Q.dtype)
    b = Q.shape[0]
    y = v.tokens("y", y, U.shape[0], shape=(b,))
    w = np.ones(b, dtype=Q.dtype) if w is None else np.ascontiguousarray(w, dtype=Q.dtype)
    if w.shape != (b,):
        v.fail("w", f"shape ({b},)", f"shape {w.shape}")
    H = np.empty_like(Q)
    lse, zy, zother = (np.empty(b, dtype=Q.dtype) for _ in range(3))
    get(backend).softmax_xent_grad(Q, U, y, w, H, lse, zy, zother, chunk_arg(chunk))
    return H, lse, zy, zother


def sgd_rank_update(W, Eb, H, alpha, backend=None):
    """In place: W (d, d) += alpha * Eb^T H, with Eb and H (b, d)."""
    if not (isinstance(W, np.ndarray) and W.flags.c_contiguous and W.flags.writeable):
        v.fail("W", "a writeable C-contiguous numpy array (updated in place)", type(W).__name__)
    Eb = v.float_matrix("Eb", Eb, shape=(None, W.shape[0]), dtype=W.dtype)
    H = v.float_matrix("H", H, shape=(Eb.shape[0], W.shape[1]), dtype=W.dtype)
    get(backend).sgd_rank_update(W, Eb, H, float(alpha))
    return W


def sample_tokens(task, steps, batch_size, seed=0, start_step=0, backend=None):
    """The minibatch tokens fm.train draws: (steps, batch_size) int64 for global steps
    start_step .. start_step + steps - 1 of a run seeded with ``seed``."""
    steps = v.positive_int("steps", steps, allow_zero=True)
    b = v.positive_int("batch_size", batch_size)
    out = np.empty((steps, b), dtype=np.int64)
    get(backend).sample_tokens(task.cdf, int(seed), v.positive_int("start_step", start_step, allow_zero=True), out)
    return out
