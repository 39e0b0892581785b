"""The registry: every backend implements the signature table; required backends are present."""

import importlib
import inspect
import os

import pytest

import fastmem as fm
from fastmem.backends import HOST, SIGNATURES, get


def test_every_available_backend_implements_the_table(backend):
    b = get(backend)
    for kernel, params in SIGNATURES.items():
        assert tuple(inspect.signature(b.kernels[kernel]).parameters) == params


def test_required_backends_are_available():
    # CI sets FASTMEM_REQUIRE_BACKENDS=cpp so that a broken build fails instead of skipping.
    required = [n for n in os.environ.get("FASTMEM_REQUIRE_BACKENDS", "").split(",") if n]
    if not required:
        pytest.skip("FASTMEM_REQUIRE_BACKENDS not set")
    info = fm.backends()
    for name in required:
        assert info[name]["available"], f"{name}: {info[name]['reason']}"


def test_selection_order(monkeypatch):
    monkeypatch.setenv("FASTMEM_BACKEND", "numpy")
    assert get().name == "numpy"
    with fm.use_backend("numpy"):
        assert get().name == "numpy"
    monkeypatch.delenv("FASTMEM_BACKEND")
    auto = get()  # host arrays: the first available host backend
    assert auto.name == next(n for n in HOST if fm.backends()[n]["available"])


def test_unavailable_backend_raises_with_its_reason(monkeypatch):
    # fm.backends is the listing function; the registry module is fastmem.backends
    reg = importlib.import_module("fastmem.backends")

    monkeypatch.setitem(reg._registry, "cpp", reg.Backend("cpp", False, reason="not built here"))
    with pytest.raises(fm.BackendUnavailableError, match="not built here"):
        get("cpp")
    fallback = next(n for n in reg.HOST if n != "cpp" and fm.backends()[n]["available"])
    assert get("auto").name == fallback
