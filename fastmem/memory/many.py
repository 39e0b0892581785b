"""Many independent memories trained by full-batch GD in one call (one run per thread on
the CPU, one thread block per run on a GPU): the workload of a sweep over seeds and
learning rates."""

from dataclasses import dataclass

import numpy as np

from .. import _arrays
from .. import _validate as v
from ..backends import get


@dataclass
class ManyRuns:
    """Results of ``train_many``, in the inputs' array library (numpy or CuPy).

    W : (R, d, d) trained memories; loss, accuracy : (R,) population metrics at the last W;
    status : (R,) int8, 0 finished, 1 diverged (a non-finite loss ended the run; its W is the
    one that produced it), 2 interrupted (Ctrl-C: the runs not finished hold the W they reached,
    on the ``run`` attribute of the KeyboardInterrupt)."""

    W: object
    loss: object
    accuracy: object
    status: object
    backend: str

    @property
    def diverged(self):
        return self.status == 1

    @property
    def interrupted(self):
        return self.status == 2


def _array(name, a, xp, dtype=None):
    """``a`` in the library of the run (small host parameters such as p, y, lr may go to the
    device; a device array never comes to the host)."""
    if _arrays.is_device(a):
        if xp is np:
            v.fail(name, "a host array, like E", "an array on a CUDA device")
        a = _arrays.as_cupy(a)
    a = xp.asarray(a)
    if dtype == "float" and a.dtype not in v.FLOAT_DTYPES:
        v.fail(name, "dtype float32 or float64", f"dtype {a.dtype}")
    if dtype == "real" and a.dtype.kind not in "iuf":
        v.fail(name, "real numbers", f"dtype {a.dtype}")
    if dtype == "int" and a.dtype.kind not in "iu":
        v.fail(name, "an integer array", f"dtype {a.dtype}")
    if a.dtype.kind == "f" and not bool(xp.isfinite(a).all()):
        v.fail(name, "finite values", "NaN or Inf")
    return a


def _per_run(name, a, R, shape, xp, dtype):
    """(R,) + shape from a per-run array or one shared by every run, C-contiguous."""
    if a.shape == shape:
        a = xp.broadcast_to(a, (R,) + shape)
    if a.shape != (R,) + shape:
        v.fail(name, f"shape {shape} or {(R,) + shape}", f"shape {a.shape}")
    return xp.ascontiguousarray(a, dtype=dtype)


def train_many(E, U, W, p, y, lr, steps, backend=None):
    """Full-batch GD on R independent memories: run r minimises
    sum_x p[r, x] * cross_entropy(E[r, x] W[r] U[r]^T, y[r, x]) from W[r] with step lr[r],
    as ``fm.train(..., batch_size=None)`` does, for every run at once.

    Parameters
    ----------
    E : (R, N, d) float32/float64, or (N, d) shared by every run
    U : (R, M, d) or (M, d), same dtype
    W : (R, d, d) initial memories (not modified)
    p : (R, N) or (N,) token probabilities (each row a distribution)
    y : (R, N) or (N,) int targets in [0, M)
    lr : (R,) or a float, > 0
    steps : int >= 0
    backend : None/"auto" (cuda for device arrays, else cpp, numba, numpy) or a name

    Host (numpy) inputs run on the CPU backends, device inputs (CuPy, PyTorch or JAX GPU
    tensors) on "cuda"; the results come back in the same library.

    Returns
    -------
    ManyRuns
    """
    device = _arrays.on_device(E=E, U=U, W=W)
    xp = _arrays.xp_for(device)
    W = _array("W", W, xp, "float")
    if W.ndim != 3 or W.shape[1] != W.shape[2]:
        v.fail("W", "an (R, d, d) array", f"shape {W.shape}")
    R, d = W.shape[0], W.shape[1]
    E, U = _array("E", E, xp, "float"), _array("U", U, xp, "float")
    for name, a in (("E", E), ("U", U)):
        if a.dtype != W.dtype:
            v.fail(name, f"dtype {W.dtype} (the dtype of W)", f"dtype {a.dtype}")
        if a.ndim not in (2, 3) or a.shape[-1] != d:
            v.fail(name, f"an (R, n, {d}) or (n, {d}) array", f"shape {a.shape}")
    N, M = E.shape[-2], U.shape[-2]
    E = _per_run("E", E, R, (N, d), xp, W.dtype)
    U = _per_run("U", U, R, (M, d), xp, W.dtype)
    p = _per_run("p", _array("p", p, xp, "float"), R, (N,), xp, np.float64)
    if bool((p < 0).any()) or bool((xp.abs(p.sum(axis=1) - 1) > 1e-6).any()):
        v.fail("p", "rows that are distributions (>= 0, summing to 1)", "a row that is not")
    y = _per_run("y", _array("y", y, xp, "int"), R, (N,), xp, np.int64)
    if y.size and (int(y.min()) < 0 or int(y.max()) >= M):
        v.fail("y", f"values in [0, {M})", f"values in [{int(y.min())}, {int(y.max())}]")
    lr = _per_run("lr", _array("lr", lr, xp, "real"), R, (), xp, np.float64)
    if bool((lr <= 0).any()):
        v.fail("lr", "values > 0", f"min {float(lr.min())}")
    steps = v.positive_int("steps", steps, allow_zero=True)
    be = get(backend, device=device)
    W = xp.array(W, dtype=W.dtype, order="C", copy=True)
    loss, accuracy = xp.empty(R, dtype=W.dtype), xp.empty(R, dtype=W.dtype)
    status = xp.zeros(R, dtype=np.int8)
    try:
        be.train_many(E, U, W, p, y, lr, steps, loss, accuracy, status)
    except KeyboardInterrupt as exc:  # every run ended between two steps: what they reached stays reachable
        exc.run = ManyRuns(W, loss, accuracy, status, be.name)
        raise
    return ManyRuns(W, loss, accuracy, status, be.name)
