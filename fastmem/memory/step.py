"""One training step on arrays the caller owns, for simulators that run their own loop."""

import warnings

import numpy as np

from .. import _arrays
from .. import _validate as v
from ..backends import get
from .associative_memory import _detect_onehot


def _host_view(a, name):
    """A numpy view of ``a`` without a copy: numpy arrays as they are, anything else through DLPack
    (PyTorch CPU tensors, JAX CPU arrays, ...)."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "__dlpack__"):
        try:
            return np.from_dlpack(a)
        except (BufferError, RuntimeError, TypeError) as exc:
            v.fail(name, "a host (CPU) array exporting DLPack", f"{type(a).__name__} ({exc})")
    v.fail(name, "a numpy array or an array exporting DLPack", type(a).__name__)


def sgd_step(W, E, U, x, y, lr, out=None, layernorm=False, backend=None):
    """One SGD step on the batch (x, y): ``out = W - lr * grad`` of the mean cross-entropy
    of the b draws, where draw i is token x[i] with target y[i].

    Parameters
    ----------
    W : (d, d) float32/float64, numpy or any DLPack array (PyTorch, JAX) on the host, or
        an array on a CUDA device (CuPy, PyTorch/JAX GPU tensors: run on "cuda", in place)
    E : (N, d), U : (M, d), same dtype
    x, y : (b,) int, tokens in [0, N) and targets in [0, M)
    lr : float > 0
    out : (d, d) array updated in place (default: W itself). Its buffer is written
        directly, without a copy, whatever library owns it; immutable arrays (JAX)
        need an explicit writeable ``out``.

    Returns
    -------
    float, the batch loss before the step.
    """
    if _arrays.on_device(W=W, E=E, U=U, out=out):
        return _device_step(W, E, U, x, y, lr, out, layernorm, backend)
    Wv = _host_view(W, "W")
    Ev, Uv = _host_view(E, "E"), _host_view(U, "U")
    Ov = Wv if out is None else _host_view(out, "out")
    d = Ev.shape[1] if Ev.ndim == 2 else -1
    if Ev.dtype not in v.FLOAT_DTYPES:
        v.fail("E", "dtype float32 or float64", f"dtype {Ev.dtype}")
    for name, a, shape in (("W", Wv, (d, d)), ("E", Ev, None), ("U", Uv, (None, d)), ("out", Ov, (d, d))):
        if a.ndim != 2 or a.dtype not in v.FLOAT_DTYPES or a.dtype != Ev.dtype:
            v.fail(name, f"a 2-D float32/float64 array of E's dtype {Ev.dtype}", f"{a.dtype} {a.shape}")
        if shape is not None and a.shape != tuple(s if s is not None else a.shape[i] for i, s in enumerate(shape)):
            v.fail(name, f"shape {shape}", f"shape {a.shape}")
        if not a.flags.c_contiguous:
            v.fail(name, "a C-contiguous array", "a strided view")
    for name, a in (("W", Wv), ("E", Ev), ("U", Uv)):  # read whole by the step anyway
        v.finite(name, a)
    if not Ov.flags.writeable:
        v.fail("out", "a writeable array (W is read-only, e.g. a JAX array: pass out=)", "a read-only array")
    x = v.tokens("x", _host_view(np.asarray(x), "x"), Ev.shape[0])
    if x.ndim != 1 or x.size == 0:
        v.fail("x", "a non-empty 1-D array of tokens", f"shape {x.shape}")
    y = v.tokens("y", y, Uv.shape[0], shape=x.shape)
    lr = v.in_precision("lr", v.positive_float("lr", lr), Ev.dtype)
    oc, os_ = _detect_onehot(Ev) or (None, None)
    return float(get(backend).sgd_step(Wv, Ev, oc, os_, Uv, x, y, lr, bool(layernorm), Ov))


def _device_step(W, E, U, x, y, lr, out, layernorm, backend):
    Wd = _arrays.as_cupy(W)
    E = v.float_matrix("E", E, device=True)
    d = E.shape[1]
    U = v.float_matrix("U", U, shape=(None, d), dtype=E.dtype, device=True)
    Od = Wd if out is None else _arrays.as_cupy(out)
    for name, a in (("W", Wd), ("out", Od)):
        if a.shape != (d, d) or a.dtype != E.dtype or not a.flags.c_contiguous:
            v.fail(name, f"a C-contiguous ({d}, {d}) array of E's dtype {E.dtype}", f"{a.dtype} {a.shape}")
    if not bool(_arrays.cupy().isfinite(Wd).all()):
        v.fail("W", "finite values", "NaN or Inf")
    x = v.tokens("x", x, E.shape[0], device=True)
    if x.ndim != 1 or x.size == 0:
        v.fail("x", "a non-empty 1-D array of tokens", f"shape {x.shape}")
    y = v.tokens("y", y, U.shape[0], shape=x.shape, device=True)
    lr = v.in_precision("lr", v.positive_float("lr", lr), E.dtype)
    return float(get(backend, device=True).sgd_step(Wd, E, None, None, U, x, y, lr, bool(layernorm), Od))


def step(*args, **kwargs):
    """Deprecated: the former name of :func:`sgd_step` (the compiled core's name); it will be removed."""
    warnings.warn("fm.step is now fm.sgd_step (the name the compiled core uses); fm.step will be removed",
                  DeprecationWarning, stacklevel=2)
    return sgd_step(*args, **kwargs)
