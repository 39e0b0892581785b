import zlib

import numpy as np
import pytest

import fastmem as fm
from fastmem.backends import HOST

# The host backends run every kernel of the table on numpy arrays.
BACKENDS = [pytest.param(name, id=name) for name in HOST]
# The backends compared against the numpy reference.
COMPILED = [pytest.param(name, id=name) for name in HOST if name != "numpy"]
# Every backend, cuda included (on device copies of the inputs), for the kernels it runs.
ALL = BACKENDS + [pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]


def _require(name):
    info = fm.backends()[name]
    if not info["available"]:
        pytest.skip(f"backend {name} unavailable: {info['reason']}")
    return name


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Every backend in the registry (unavailable ones are skipped with their reason)."""
    return _require(request.param)


class Placement:
    """Moves a test's numpy inputs to a backend's array library and its results back."""

    def __init__(self, backend):
        self.backend = backend
        self.device = backend == "cuda"
        if self.device:
            import cupy

            self.xp = cupy
        else:
            self.xp = np

    def put(self, *arrays):
        out = tuple(self.xp.asarray(a) for a in arrays)
        return out[0] if len(out) == 1 else out

    def get(self, a):
        return a.get() if self.device else np.asarray(a)


@pytest.fixture(params=ALL)
def placed(request):
    """Every backend, with a Placement of the inputs on its device (cuda skipped without a GPU)."""
    return Placement(_require(request.param))


@pytest.fixture(params=COMPILED)
def compiled(request):
    """Every backend but the numpy reference."""
    return _require(request.param)


def _runs(name, kernel):
    from fastmem.backends import _get

    return kernel not in _get(name).lacks


@pytest.fixture(params=[p for p in COMPILED if _runs(p.values[0], "train_model")])
def compiled_model(request):
    """The compiled backends that run the learnable and exponential models (fm.backends()'s
    "lacks" names those that do not; tests/test_backends.py checks that they refuse by name)."""
    return _require(request.param)


@pytest.fixture
def rng(request):
    """A generator seeded by the test's name and parameters, so every test draws its own fixed
    numbers, and every backend of one test case gets the same inputs."""
    callspec = getattr(request.node, "callspec", None)
    params = sorted((k, repr(v)) for k, v in (callspec.params.items() if callspec else ())
                    if k not in ("backend", "compiled", "placed"))
    return np.random.default_rng(zlib.crc32(f"{request.node.originalname}{params}".encode()))


def random_problem(rng, N, M, d, dtype, W_scale=1.0, layernorm=False):
    E = rng.standard_normal((N, d)).astype(dtype)
    U = rng.standard_normal((M, d)).astype(dtype)
    W = (W_scale * rng.standard_normal((d, d)) / np.sqrt(d)).astype(dtype)
    p = rng.random(N) + 0.05
    task = fm.Task(p / p.sum(), rng.integers(0, M, N), M=M)
    return fm.AssociativeMemory(E, U, W=W, layernorm=layernorm), task
