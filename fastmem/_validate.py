"""Checks at the Python boundary: each raises InvalidArgumentError naming the argument."""

import numbers

import numpy as np

from . import _arrays
from .errors import InvalidArgumentError

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def fail(name, expected, got):
    raise InvalidArgumentError(f"{name}: expected {expected}, got {got}")


def all_finite(a, xp=np):
    """Whether every entry of a float array is finite: its sum first (NaN and Inf propagate
    through it; no temporary array), the entrywise test only where the sum overflowed."""
    with np.errstate(over="ignore", invalid="ignore"):
        if bool(xp.isfinite(xp.sum(a))):
            return True
    return bool(xp.isfinite(a).all())


def finite(name, a, xp=np):
    if a.dtype.kind in "fc" and not all_finite(a, xp):
        fail(name, "finite values", "NaN or Inf")
    return a


def float_matrix(name, a, shape=None, dtype=None, device=False):
    """A finite 2-D float32/float64 array, C-contiguous (copied only if it is not). With
    ``device``, arrays on a CUDA device come back as CuPy arrays on their device; otherwise
    they are refused (the computation runs on the host)."""
    xp = np
    if _arrays.is_device(a):
        if not device:
            fail(name, "a host (numpy) array: this runs on the host (on a GPU: fm.train_many, fm.sgd_step, "
                 "fm.kernels)", "an array on a CUDA device")
        a = _arrays.as_cupy(a)
        xp = _arrays.cupy()
    elif not isinstance(a, np.ndarray):
        a = np.asarray(a)
        if a.dtype.kind in "iub":
            a = a.astype(np.float64)
    if a.ndim != 2:
        fail(name, "a 2-D array", f"shape {a.shape}")
    if a.dtype not in FLOAT_DTYPES:
        fail(name, "dtype float32 or float64", f"dtype {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        fail(name, f"dtype {np.dtype(dtype)} (the dtype of E)", f"dtype {a.dtype}")
    if shape is not None:
        want = tuple(s if s is not None else a.shape[i] for i, s in enumerate(shape))
        if a.shape != want:
            fail(name, f"shape {want}", f"shape {a.shape}")
    if min(a.shape) == 0:
        fail(name, "a non-empty array", f"shape {a.shape}")
    finite(name, a, xp)
    return xp.ascontiguousarray(a)


def positive_int(name, v, allow_zero=False, below=None):
    """An int > 0 (>= 0 with ``allow_zero``), and < ``below`` where given (the C++ core's
    counters are int64, its seeds uint64)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        fail(name, "an integer", repr(v))
    if v < 0 or (v == 0 and not allow_zero):
        fail(name, "an integer >= 0" if allow_zero else "an integer > 0", repr(v))
    if below is not None and v >= below:
        fail(name, f"an integer below {below}", repr(v))
    return int(v)


def real_array(name, a):
    """A numpy array of real numbers (bool, int or float; never complex or strings) as float64."""
    a = np.asarray(a)
    if a.dtype.kind not in "iuf":
        fail(name, "real numbers", f"dtype {a.dtype}")
    return a.astype(np.float64)


def positive_float(name, v, allow_zero=False):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not np.isfinite(v):
        fail(name, "a finite real number", repr(v))
    if v < 0 or (v == 0 and not allow_zero):
        fail(name, "a number >= 0" if allow_zero else "a number > 0", repr(v))
    return float(v)


def in_precision(name, v, dtype):
    """v (a float already checked) as the kernel computing in ``dtype`` sees it: finite there,
    and not rounded to 0 when it is not 0 (lr = 1e39 is inf in float32, eps = 1e-50 is 0)."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f" or dtype == np.float64:
        return v
    with np.errstate(over="ignore", under="ignore"):
        x = dtype.type(v)
    if not np.isfinite(x) or (v != 0 and x == 0):
        info = np.finfo(dtype)
        fail(name, f"a magnitude that {dtype} holds (in [{info.smallest_subnormal:.3g}, {info.max:.3g}]), "
                   f"as the kernel computes in {dtype}", repr(v))
    return v


def available_memory():
    """Bytes the system can give without swapping (MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def fits_in_memory(name, nbytes, what, got, hint=""):
    """Refuse, before any allocation, ``what`` of ``nbytes`` that the system cannot give."""
    have = available_memory()
    if have is not None and nbytes > have:
        fail(name, f"{what} that fit in memory ({have / 2**30:.1f} GiB available){hint}",
             f"{got}, about {nbytes / 2**30:.1f} GiB")


def unit_interval(name, v, closed_right=False):
    v = positive_float(name, v, allow_zero=True)
    if v > 1 or (v == 1 and not closed_right):
        fail(name, "a number in [0, 1]" if closed_right else "a number in [0, 1)", repr(v))
    return v


def tokens(name, a, n, shape=None, device=False):
    """An integer array of token ids in [0, n) (a CuPy array when ``device``)."""
    xp = _arrays.xp_for(device)
    a = (_arrays.as_cupy(a) if _arrays.is_device(a) else xp.asarray(a)) if device else np.asarray(a)
    if a.dtype.kind not in "iu":
        fail(name, "an integer array", f"dtype {a.dtype}")
    if shape is not None and a.shape != shape:
        fail(name, f"shape {shape}", f"shape {a.shape}")
    if a.size and (int(a.min()) < 0 or int(a.max()) >= n):
        fail(name, f"values in [0, {n})", f"values in [{int(a.min())}, {int(a.max())}]")
    return xp.ascontiguousarray(a, dtype=np.int64)
