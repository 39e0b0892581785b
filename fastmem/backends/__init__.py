"""The backend registry: one table of kernel signatures, one module per backend.

A backend is chosen by, in order: the ``backend=`` keyword, a ``with use_backend(...)``
block, the ``FASTMEM_BACKEND`` environment variable, then "auto" (cpp, else numba, else numpy).
Asking for an unavailable backend raises with its reason; an automatic fallback is
logged once.
"""

import contextlib
import contextvars
import importlib
import inspect
import logging
import os
from dataclasses import dataclass, field

from ..errors import BackendUnavailableError, InvalidArgumentError

log = logging.getLogger("fastmem")

# Every backend implements each kernel with exactly these parameters; outputs are
# arrays allocated by the caller, written in place.
SIGNATURES = {
    "softmax_xent_grad": ("q", "u", "y", "w", "h", "lse", "zy", "zother", "chunk"),
    "sgd_rank_update": ("W", "Eb", "H", "alpha"),
    "sample_tokens": ("cdf", "seed", "start_step", "out"),
    "population_metrics": ("E", "onehot_col", "onehot_scale", "U", "W", "p", "y", "layernorm", "chunk",
                           "margins", "grad"),
    "sharpness": ("E", "onehot_col", "onehot_scale", "U", "W", "p", "y", "chunk", "iters", "tol", "seed"),
    "train": ("E", "onehot_col", "onehot_scale", "U", "W", "p", "y", "cdf", "tokens", "opt", "tp", "rec",
              "m", "v", "t0"),
    "train_dual": ("E", "onehot_col", "onehot_scale", "U", "W0", "p", "y", "cdf", "tokens", "opt", "tp", "rec",
                   "Z", "A", "B", "V", "c", "fresh"),
    "sgd_step": ("W", "E", "onehot_col", "onehot_scale", "U", "x", "y", "lr", "layernorm", "out"),
    "train_model": ("kind", "E", "U", "W", "p", "y", "cdf", "tokens", "opt", "tp", "rec"),
    "cmd_assign_fit": ("theta", "refs", "mode", "a", "b", "corr"),
    "cmd_online_update": ("theta_t", "r_t", "mode", "n", "r_mean", "r_m2", "theta_mean", "co"),
    "rebuild_W": ("E", "onehot_col", "onehot_scale", "U", "W0", "A", "c", "W_out"),
}

# Preference order of "auto" for host arrays, and the module of each backend.
ORDER = ("cpp", "numba", "numpy")
_MODULES = {"cpp": "cpp", "numba": "numba_cpu", "numpy": "numpy_ref"}


@dataclass
class Backend:
    name: str
    available: bool
    reason: str = ""
    kernels: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def __getattr__(self, kernel):
        try:
            return self.__dict__["kernels"][kernel]
        except KeyError:
            raise AttributeError(kernel) from None


def _load(name):
    try:
        mod = importlib.import_module(f"{__name__}.{_MODULES[name]}")
    except ImportError as exc:
        return Backend(name, False, reason=f"{type(exc).__name__}: {exc}")
    kernels = {}
    for kernel, params in SIGNATURES.items():
        fn = getattr(mod, kernel)
        got = tuple(inspect.signature(fn).parameters)
        if got != params:
            raise TypeError(f"backend {name}: {kernel}{got} does not match the signature table {params}")
        kernels[kernel] = fn
    return Backend(name, True, kernels=kernels, info=getattr(mod, "INFO", {}))


_registry = {}
_fallback_logged = set()
_current = contextvars.ContextVar("fastmem_backend", default=None)


def _get(name):
    if name not in _registry:
        _registry[name] = _load(name)
    return _registry[name]


def backends():
    """{name: {"available": bool, "reason": str, "info": dict}} for every backend."""
    return {n: {"available": b.available, "reason": b.reason, "info": b.info}
            for n in ORDER for b in [_get(n)]}


def get(name=None):
    """The Backend to run on: ``name``, else the context's, else $FASTMEM_BACKEND, else auto."""
    name = name or _current.get() or os.environ.get("FASTMEM_BACKEND") or "auto"
    if name == "auto":
        for n in ORDER:
            b = _get(n)
            if b.available:
                return b
            if n not in _fallback_logged:
                _fallback_logged.add(n)
                log.info("fastmem: backend %r unavailable (%s); falling back", n, b.reason)
        raise BackendUnavailableError("no backend is available")
    if name not in ORDER:
        raise InvalidArgumentError(f"backend: expected one of {('auto',) + ORDER}, got {name!r}")
    b = _get(name)
    if not b.available:
        raise BackendUnavailableError(f"backend {name!r} is unavailable: {b.reason}")
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
