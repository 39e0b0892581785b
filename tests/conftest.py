import zlib

import numpy as np
import pytest

import fastmem as fm
from fastmem.backends import ORDER

BACKENDS = [pytest.param(name, id=name) for name in ORDER]
# The backends compared against the numpy reference.
COMPILED = [pytest.param(name, id=name) for name in ORDER if name != "numpy"]


def _require(name):
    info = fm.backends()[name]
    if not info["available"]:
        pytest.skip(f"backend {name} unavailable: {info['reason']}")
    return name


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Every backend in the registry (unavailable ones are skipped with their reason)."""
    return _require(request.param)


@pytest.fixture(params=COMPILED)
def compiled(request):
    """Every backend but the numpy reference."""
    return _require(request.param)


@pytest.fixture
def rng(request):
    """A generator seeded by the test's name and parameters, so every test draws its own fixed
    numbers, and every backend of one test case gets the same inputs."""
    callspec = getattr(request.node, "callspec", None)
    params = sorted((k, repr(v)) for k, v in (callspec.params.items() if callspec else ())
                    if k not in ("backend", "compiled"))
    return np.random.default_rng(zlib.crc32(f"{request.node.originalname}{params}".encode()))


def random_problem(rng, N, M, d, dtype, W_scale=1.0, layernorm=False):
    E = rng.standard_normal((N, d)).astype(dtype)
    U = rng.standard_normal((M, d)).astype(dtype)
    W = (W_scale * rng.standard_normal((d, d)) / np.sqrt(d)).astype(dtype)
    p = rng.random(N) + 0.05
    task = fm.Task(p / p.sum(), rng.integers(0, M, N), M=M)
    return fm.AssociativeMemory(E, U, W=W, layernorm=layernorm), task
