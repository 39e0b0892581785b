"""The CUDA backend (fastmem._cuda) on CuPy arrays: available where CuPy imports and a device is
usable. Its kernels are the systems' (fastmem/<system>/_cuda.py: today the memory's).

Inputs and outputs are CuPy arrays on the current device; work is queued on CuPy's current
stream, so it orders with the caller's own CuPy work and nothing is copied to the host.
"""

import cupy as cp

from .. import _cuda

_count, _why = _cuda.device_count()
if _count == 0:
    raise ImportError(f"no usable CUDA device: {_why}")

INFO = {"devices": _count, "device 0": cp.cuda.runtime.getDeviceProperties(0)["name"].decode()}


def stream():
    """CuPy's current stream, where the kernels queue their work."""
    return cp.cuda.get_current_stream().ptr


def ptr(a):
    """The device address of a CuPy array."""
    return a.data.ptr
