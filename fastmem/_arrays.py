"""Where an input lives: numpy on the host, CuPy on a CUDA device.

Any array exporting ``__cuda_array_interface__`` or a CUDA DLPack device (CuPy, PyTorch and
JAX GPU tensors, numba device arrays) is viewed as a CuPy array without a copy; host
arrays stay numpy. Mixing the two in one call is an error naming the argument.
"""

import numpy as np

from .errors import InvalidArgumentError

_DLPACK_CUDA = (2, 13)  # kDLCUDA, kDLCUDAManaged


def is_device(a):
    """True for an array on a CUDA device."""
    if hasattr(a, "__cuda_array_interface__"):
        return True
    dev = getattr(a, "__dlpack_device__", None)
    if dev is None or isinstance(a, np.ndarray):
        return False
    try:
        return int(dev()[0]) in _DLPACK_CUDA
    except (TypeError, ValueError, RuntimeError):
        return False


def on_device(**arrays):
    """True when every given array (None ignored) is on a CUDA device, False when all are
    on the host; a mix raises naming the first argument on the other side."""
    where = {name: is_device(a) for name, a in arrays.items() if a is not None}
    if not where:
        return False
    first = next(iter(where.values()))
    for name, dev in where.items():
        if dev != first:
            side = "a CUDA device" if first else "the host"
            # the message of _validate.fail, which imports this module (so not the other way)
            raise InvalidArgumentError(f"{name}: expected an array on {side}, like {next(iter(where))}, "
                                       "got an array on the other side")
    return first


def cupy():
    try:
        import cupy as cp
    except ImportError as exc:
        raise InvalidArgumentError(
            f"device arrays need CuPy (pip install 'fastmem[cuda]'): {exc}") from None
    return cp


def as_cupy(a):
    """A CuPy view of a device array (no copy)."""
    cp = cupy()
    if isinstance(a, cp.ndarray):
        return a
    if hasattr(a, "__cuda_array_interface__"):
        return cp.asarray(a)
    return cp.from_dlpack(a)


def xp_for(device):
    """The array module of the inputs: numpy, or CuPy for device arrays."""
    return cupy() if device else np
