"""The compiled core, loaded for this CPU.

The build makes one module per x86-64 level (CMakeLists.txt): ``_core_avx512``
(x86-64-v4), ``_core_avx2`` (x86-64-v3) and ``_core_baseline`` (x86-64-v2; the platform's
default elsewhere), or ``_core_native`` alone with ``FASTMEM_NATIVE=ON``. This module loads
the best one the CPU runs, as numpy reports its features, so that a wheel built on an
AVX-512 machine runs on an AVX2 node of the same cluster instead of dying with SIGILL.
``FASTMEM_CPU_LEVEL=baseline|avx2|avx512|native`` asks for one (an error where it is not
built or the CPU lacks it). ``LEVEL`` says which was loaded.
"""

import ctypes
import importlib
import importlib.util
import os

LEVELS = ("native", "avx512", "avx2", "baseline")  # best first
_NEEDS = {"avx512": "X86_V4", "avx2": "X86_V3"}  # numpy's names of the x86-64 levels


def _load_openblas():
    # the modules link libscipy_openblas from the scipy-openblas32 wheel; loading it first
    # makes the import work wherever that wheel is installed (editable installs, other
    # site-packages), not only where the RPATH points
    try:
        import scipy_openblas32
    except ImportError:
        return
    ctypes.CDLL(os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(fullname=True)),
                mode=ctypes.RTLD_GLOBAL)


def cpu_runs(level):
    """Whether this CPU (and OS) runs code of ``level``: from numpy's run-time CPU features."""
    need = _NEEDS.get(level)
    if need is None:
        return True
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # a numpy without the table: only the baseline is safe
        return False
    return bool(__cpu_features__.get(need, False))


def _built(level):
    return importlib.util.find_spec(f"{__package__}._core_{level}") is not None


def _choose():
    asked = os.environ.get("FASTMEM_CPU_LEVEL", "").strip()
    if asked:
        if asked not in LEVELS:
            raise ImportError(f"FASTMEM_CPU_LEVEL={asked!r}: expected one of {LEVELS}")
        if not _built(asked):
            raise ImportError(f"FASTMEM_CPU_LEVEL={asked!r}: fastmem._core_{asked} is not built here")
        if not cpu_runs(asked):
            raise ImportError(f"FASTMEM_CPU_LEVEL={asked!r}: this CPU lacks {_NEEDS[asked]}")
        return asked
    for level in LEVELS:
        if _built(level) and cpu_runs(level):
            return level
    raise ImportError("no fastmem._core_<level> module here")


LEVEL = _choose()
_load_openblas()
_module = importlib.import_module(f"{__package__}._core_{LEVEL}")
globals().update({k: getattr(_module, k) for k in dir(_module) if not k.startswith("__")})
