"""Direct access to the compiled kernels, for simulators that own their loop.

Each takes numpy arrays (run on the host backends) or device arrays (CuPy, PyTorch/JAX GPU
tensors: run on "cuda", results as CuPy arrays on the same device).
"""

import numbers

import numpy as np

from .. import _arrays
from .. import _validate as v
from ..backends import get
from ._problem import chunk_arg


def softmax_xent_grad(Q, U, y, w=None, chunk=None, backend=None):
    """Fused scores -> softmax -> cross-entropy -> gradient for a block of read-outs.

    Parameters
    ----------
    Q : (b, d) float32/float64, rows e_x^T W (numpy, or on a CUDA device)
    U : (M, d) same dtype
    y : (b,) int targets in [0, M)
    w : (b,) row weights (default 1)
    chunk : output tokens per streamed chunk (default: whole block when small)

    Returns
    -------
    H : (b, d), w_i (softmax(z_i) U - u_{y_i})
    lse, zy, zother : (b,), logsumexp, target score, best other score
    """
    device = _arrays.on_device(Q=Q, U=U)
    xp = _arrays.xp_for(device)
    Q = v.float_matrix("Q", Q, device=device)
    U = v.float_matrix("U", U, shape=(None, Q.shape[1]), dtype=Q.dtype, device=device)
    b = Q.shape[0]
    y = v.tokens("y", y, U.shape[0], shape=(b,), device=device)
    if w is None:
        w = xp.ones(b, dtype=Q.dtype)
    else:
        w = _arrays.as_cupy(w) if device and _arrays.is_device(w) else xp.asarray(w)
        if w.dtype.kind not in "iuf":
            v.fail("w", "real row weights", f"dtype {w.dtype}")
        w = v.finite("w", xp.ascontiguousarray(w, dtype=Q.dtype), xp)
    if w.shape != (b,):
        v.fail("w", f"shape ({b},)", f"shape {w.shape}")
    H = xp.empty_like(Q)
    lse, zy, zother = (xp.empty(b, dtype=Q.dtype) for _ in range(3))
    get(backend, device=device).softmax_xent_grad(Q, U, y, w, H, lse, zy, zother, chunk_arg(chunk))
    return H, lse, zy, zother


def sgd_rank_update(W, Eb, H, alpha, backend=None):
    """In place: W (d, d) += alpha * Eb^T H, with Eb and H (b, d); W a numpy array or a
    C-contiguous device array (updated where it lives)."""
    device = _arrays.on_device(W=W, Eb=Eb, H=H)
    Wd = _arrays.as_cupy(W) if device else W
    if not (isinstance(Wd, _arrays.xp_for(device).ndarray) and Wd.flags.c_contiguous and
            (device or Wd.flags.writeable)):
        v.fail("W", "a writeable C-contiguous array (updated in place)", type(W).__name__)
    if Wd.ndim != 2 or Wd.shape[0] != Wd.shape[1] or Wd.dtype not in v.FLOAT_DTYPES:
        v.fail("W", "a square float32/float64 matrix", f"{Wd.dtype} {Wd.shape}")
    Eb = v.float_matrix("Eb", Eb, shape=(None, Wd.shape[0]), dtype=Wd.dtype, device=device)
    H = v.float_matrix("H", H, shape=(Eb.shape[0], Wd.shape[1]), dtype=Wd.dtype, device=device)
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, numbers.Real) or not np.isfinite(alpha):
        v.fail("alpha", "a finite real number", repr(alpha))
    v.in_precision("alpha", float(alpha), Wd.dtype)
    get(backend, device=device).sgd_rank_update(Wd, Eb, H, float(alpha))
    return W


def normal(shape, seed=0, scale=1.0, dtype=np.float32, backend=None):
    """Normal(0, scale^2) deviates of fastmem's counter-based stream (csrc/include/fastmem/normal.hpp),
    the initial memories of the scaling-law sweep: e.g. ``normal((d, d), seed, d ** -0.5)``.

    shape : int or tuple of ints; the array holds deviates 0 .. prod(shape) - 1 of the seed's
        stream in C order (so a larger array of the same seed starts with the same values).
    seed : int in [0, 2**64); the stream is apart from fm.train's token stream of the same seed.
    dtype : float32 or float64; the values are computed in float64 then rounded, and agree
        across backends to within 1e-11 relative (float32: bit for bit but for rare roundings).
    On the compiled backend, 2.4 ms for 10**6 deviates on one core (numpy's generator: ~10 ms).
    """
    shape = (shape,) if np.ndim(shape) == 0 else tuple(shape)
    shape = tuple(v.positive_int("shape", n, allow_zero=True) for n in shape)
    seed = v.positive_int("seed", seed, allow_zero=True, below=2**64)
    scale = v.positive_float("scale", scale, allow_zero=True)
    if dtype not in v.FLOAT_DTYPES:
        v.fail("dtype", "float32 or float64", repr(dtype))
    dtype = np.dtype(dtype)
    out = np.empty(shape, dtype=dtype)
    get(backend, device=False).normal_fill(int(seed), scale, out)
    return out


def sample_tokens(task, steps, batch_size, seed=0, start_step=0, backend=None):
    """The minibatch tokens fm.train draws: (steps, batch_size) int64 for global steps
    start_step .. start_step + steps - 1 of a run seeded with ``seed``; with backend="cuda",
    drawn on the device (a CuPy array, the same tokens)."""
    steps = v.positive_int("steps", steps, allow_zero=True)
    b = v.positive_int("batch_size", batch_size)
    be = get(backend, device=None)
    xp = _arrays.xp_for(be.name == "cuda")
    out = xp.empty((steps, b), dtype=np.int64)
    seed = v.positive_int("seed", seed, allow_zero=True, below=2**64)
    start_step = v.positive_int("start_step", start_step, allow_zero=True, below=2**63 - steps)
    be.sample_tokens(xp.asarray(task.cdf), seed, start_step, out)
    return out
