"""The backend registry: one table of kernel signatures, one module per backend.

A backend is chosen by, in order: the ``backend=`` keyword, a ``with use_backend(...)``
block, the ``FASTMEM_BACKEND`` environment variable, then "auto": cuda for arrays on a CUDA
device, else cpp, else numba, else numpy. Asking for an unavailable backend raises with its
reason; an automatic fallback from the compiled backend is a PerformanceWarning, once per
process (a source tree without the built module, a machine that could not compile it). Arrays
never move between devices silently:
device arrays with a host backend (or host arrays with cuda) are an error.
"""

import contextlib
import contextvars
import importlib
import importlib.util
import inspect
import os
import warnings
from dataclasses import dataclass, field

from ..errors import BackendUnavailableError, InvalidArgumentError, PerformanceWarning

# The kernels of every system, {kernel: its parameters}, filled by register(): every backend
# implements each kernel with exactly these parameters; outputs are arrays allocated by the
# caller, written in place.
SIGNATURES = {}
# The kernels of the table that run on device arrays (the cuda backend's): the host drivers take
# numpy arrays; the device runs many memories at once and the building blocks of a user's loop.
DEVICE_KERNELS = set()
# {system package: its kernels}, in the order the systems registered
_SYSTEMS = {}

# Preference order of "auto" for host arrays; the module of each backend under fastmem.backends
# (whether it is available, its INFO and the pieces its systems share), and the module of a
# system's package holding that backend's kernels.
HOST = ("cpp", "numba", "numpy")
ORDER = ("cuda",) + HOST
_MODULES = {"cuda": "cuda", "cpp": "cpp", "numba": "numba_cpu", "numpy": "numpy_ref"}
SYSTEM_MODULES = {"cuda": "_cuda", "cpp": "_cpp", "numba": "_numba", "numpy": "_reference"}


def register(system, signatures, device=()):
    """Declare the kernels of ``system`` (its package, ``__name__`` of its ``__init__``):
    ``signatures`` is {kernel: (parameter names)}, ``device`` the kernels of them that also run
    on device arrays. Each backend finds the system's kernels in the system's module for it
    (SYSTEM_MODULES: ``<system>._reference`` for numpy, ``._numba``, ``._cpp``, ``._cuda``),
    loaded on first use; a module that is not there means the backend lacks those kernels."""
    taken = {k: s for s, ks in _SYSTEMS.items() if s != system for k in ks if k in signatures}
    if taken:
        raise ValueError(f"register({system!r}): kernels {sorted(taken)} belong to {sorted(set(taken.values()))}")
    _SYSTEMS[system] = tuple(signatures)
    SIGNATURES.update({k: tuple(params) for k, params in signatures.items()})
    DEVICE_KERNELS.update(device)
    _registry.clear()  # backends loaded before this system see it at their next use


@dataclass
class Backend:
    name: str
    available: bool
    reason: str = ""
    kernels: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    lacks: dict = field(default_factory=dict)  # kernel -> why this backend does not run it

    def __getattr__(self, kernel):
        try:
            return self.__dict__["kernels"][kernel]
        except KeyError:
            if kernel in self.__dict__["lacks"]:
                raise BackendUnavailableError(f"backend {self.name!r} does not run {kernel}: "
                                              f"{self.__dict__['lacks'][kernel]}") from None
            if kernel in SIGNATURES:
                raise BackendUnavailableError(
                    f"backend {self.name!r} does not run {kernel} (its kernels: {sorted(self.kernels)}); "
                    f"pass host (numpy) arrays to run it on {HOST}") from None
            raise AttributeError(kernel) from None


def _system_module(name, system):
    """The module of ``system`` holding backend ``name``'s kernels, or the reason there is none."""
    modname = f"{system}.{SYSTEM_MODULES[name]}"
    if importlib.util.find_spec(modname) is None:
        return None, f"{system} has no {name} kernels ({modname} does not exist)"
    try:
        return importlib.import_module(modname), ""
    except ImportError as exc:
        return None, f"{modname} does not import: {type(exc).__name__}: {exc}"


def _load(name):
    try:
        mod = importlib.import_module(f"{__name__}.{_MODULES[name]}")
    except ImportError as exc:
        return Backend(name, False, reason=f"{type(exc).__name__}: {exc}")
    kernels, lacks = {}, {}
    for system, names in _SYSTEMS.items():
        names = [k for k in names if name != "cuda" or k in DEVICE_KERNELS]
        if not names:
            continue
        smod, why = _system_module(name, system)
        if smod is None:
            lacks.update(dict.fromkeys(names, why))
            continue
        said = getattr(smod, "LACKS", {})
        for kernel in names:
            if kernel in said:
                lacks[kernel] = said[kernel]
                continue
            fn = getattr(smod, kernel)
            got = tuple(inspect.signature(fn).parameters)
            if got != SIGNATURES[kernel]:
                raise TypeError(f"backend {name}: {smod.__name__}.{kernel}{got} does not match the signature "
                                f"table {SIGNATURES[kernel]}")
            kernels[kernel] = fn
    return Backend(name, True, kernels=kernels, info=getattr(mod, "INFO", {}), lacks=lacks)


_registry = {}
_fallback_logged = set()
_current = contextvars.ContextVar("fastmem_backend", default=None)


def _get(name):
    if name not in _registry:
        _registry[name] = _load(name)
    return _registry[name]


def backends():
    """{name: {"available": bool, "reason": str, "info": dict, "lacks": {kernel: why}}} for every
    backend ("lacks": the kernels of the signature table it does not run)."""
    return {n: {"available": b.available, "reason": b.reason, "info": b.info, "lacks": dict(b.lacks)}
            for n in ORDER for b in [_get(n)]}


def get(name=None, device=False, kernel=None):
    """The Backend to run on: ``name``, else the context's, else $FASTMEM_BACKEND, else auto.

    device : True for inputs on a CUDA device, False for host arrays, None for a kernel
        without array inputs (any backend).
    kernel : the kernel to run: "auto" then takes the first available backend that runs it; a
        backend asked for by name that lacks it raises BackendUnavailableError naming it."""
    name = name or _current.get() or os.environ.get("FASTMEM_BACKEND") or "auto"
    if device and name == "auto":
        name = "cuda"
    if device and name != "cuda":
        raise InvalidArgumentError(f"backend: {name!r} runs on host arrays, but the inputs are on a CUDA device "
                                   "(use backend='cuda' or 'auto', or copy them to the host)")
    if device is False and name == "cuda":
        raise InvalidArgumentError("backend: 'cuda' runs on CUDA device arrays (CuPy, or PyTorch/JAX GPU tensors), "
                                   "but the inputs are host arrays")
    if name == "auto":
        for n in HOST:
            b = _get(n)
            if b.available and kernel not in b.lacks:
                if n != HOST[0] and HOST[0] not in _fallback_logged and not _get(HOST[0]).available:
                    _fallback_logged.add(HOST[0])
                    warnings.warn(f"fastmem._core is not built ({_get(HOST[0]).reason}): running on {n}, "
                                  f"{'about 100x' if n == 'numba' else 'far'} slower; `pip install .` builds it "
                                  "(fastmem info says more)", PerformanceWarning, stacklevel=3)
                return b
        raise BackendUnavailableError("no backend is available")
    if name not in ORDER:
        raise InvalidArgumentError(f"backend: expected one of {('auto',) + ORDER}, got {name!r}")
    b = _get(name)
    if not b.available:
        raise BackendUnavailableError(f"backend {name!r} is unavailable: {b.reason}")
    if kernel in b.lacks:
        getattr(b, kernel)  # raises, naming the kernel and why
    return b


@contextlib.contextmanager
def use_backend(name):
    """Run the computations inside the ``with`` block on backend ``name``."""
    get(name)
    token = _current.set(name)
    try:
        yield
    finally:
        _current.reset(token)


def set_num_threads(n):
    """fastmem's own thread count, used by every parallel region of the compiled core (and
    numba's kernels): unaffected by what another library in the process does to OpenMP's
    process-wide setting (``torch.set_num_threads``, say). The default is $FASTMEM_NUM_THREADS,
    else $OMP_NUM_THREADS, else the processors this process may use."""
    from .._validate import positive_int

    n = positive_int("n", n)
    if _get("cpp").available:
        from .. import _core

        _core.set_num_threads(n)
    if _get("numba").available:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def get_num_threads():
    """The thread count of the compiled core (see set_num_threads); 1 where it is not built."""
    if _get("cpp").available:
        from .. import _core

        return _core.get_num_threads()
    return 1
