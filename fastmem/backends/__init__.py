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
import inspect
import os
import warnings
from dataclasses import dataclass, field

from ..errors import BackendUnavailableError, InvalidArgumentError, PerformanceWarning

# Every backend implements each kernel with exactly these parameters; outputs are
# arrays allocated by the caller, written in place.
SIGNATURES = {
    "softmax_xent_grad": ("q", "u", "y", "w", "h", "lse", "zy", "zother", "chunk"),
    "sgd_rank_update": ("W", "Eb", "H", "alpha"),
    "sample_tokens": ("cdf", "seed", "start_step", "out"),
    "normal_fill": ("seed", "scale", "out"),
    "population_metrics": ("E", "onehot_col", "onehot_scale", "U", "W", "p", "y", "layernorm", "chunk",
                           "margins", "grad"),
    "sharpness": ("E", "onehot_col", "onehot_scale", "U", "W", "p", "y", "chunk", "iters", "tol", "seed"),
    "train": ("E", "onehot_col", "onehot_scale", "U", "W", "p", "y", "cdf", "tokens", "opt", "tp", "rec",
              "m", "v", "t0"),
    "train_dual": ("E", "onehot_col", "onehot_scale", "U", "W0", "p", "y", "cdf", "tokens", "opt", "tp", "rec",
                   "Z", "A", "mA", "mZ", "c", "fresh"),
    "sgd_step": ("W", "E", "onehot_col", "onehot_scale", "U", "x", "y", "lr", "layernorm", "out"),
    "train_model": ("kind", "E", "U", "W", "p", "y", "cdf", "tokens", "opt", "tp", "rec"),
    "cmd_assign_fit": ("theta", "refs", "mode", "a", "b", "corr"),
    "cmd_online_update": ("theta_t", "r_t", "mode", "n", "r_mean", "r_m2", "theta_mean", "co"),
    "dual_rebuild_W": ("E", "onehot_col", "onehot_scale", "U", "W0", "A", "c", "W_out"),
    "train_many": ("E", "U", "W", "p", "y", "lr", "steps", "loss", "accuracy", "status"),
    "train_projected": ("E", "U", "V", "p", "y", "cdf", "tokens", "opt", "tp", "rec"),
    "pathcond_solve": ("weights", "groups", "z", "objective", "tol", "max_sweeps", "enorm"),
    "scansnap_train": ("Yt", "Z", "mY", "vY", "mZ", "vZ", "facts", "sequences", "spec", "out"),
}

# The kernels of the table that run on device arrays: the host drivers (train, train_dual,
# train_model, metrics, CMD) take numpy arrays; the device runs many memories at once
# (train_many) and the building blocks of a user's own loop.
DEVICE_KERNELS = ("softmax_xent_grad", "sgd_rank_update", "sample_tokens", "sgd_step", "train_many")

# Preference order of "auto" for host arrays, and the module of each backend.
HOST = ("cpp", "numba", "numpy")
ORDER = ("cuda",) + HOST
_MODULES = {"cuda": "cuda", "cpp": "cpp", "numba": "numba_cpu", "numpy": "numpy_ref"}


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


def _load(name):
    try:
        mod = importlib.import_module(f"{__name__}.{_MODULES[name]}")
    except ImportError as exc:
        return Backend(name, False, reason=f"{type(exc).__name__}: {exc}")
    kernels, lacks = {}, dict(getattr(mod, "LACKS", {}))
    for kernel, params in SIGNATURES.items():
        if name == "cuda" and kernel not in DEVICE_KERNELS or kernel in lacks:
            continue
        fn = getattr(mod, kernel)
        got = tuple(inspect.signature(fn).parameters)
        if got != params:
            raise TypeError(f"backend {name}: {kernel}{got} does not match the signature table {params}")
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
