"""The registry: every backend implements the signature table; required backends are present."""

import importlib
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

import fastmem as fm
from fastmem.backends import HOST, SIGNATURES, get


def test_a_backend_runs_each_kernel_itself_or_says_it_lacks_it(backend):
    # nothing delegates: a system's module for one backend never calls into another backend's
    from fastmem.backends import _MODULES, _SYSTEMS, SYSTEM_MODULES

    b = get(backend)
    assert set(b.kernels) | set(b.lacks) == set(SIGNATURES) and not set(b.kernels) & set(b.lacks)
    assert fm.backends()[backend]["lacks"] == b.lacks
    others = [m for n, m in _MODULES.items() if n != backend] + [m for n, m in SYSTEM_MODULES.items() if n != backend]
    for system in _SYSTEMS:
        try:
            source = inspect.getsource(importlib.import_module(f"{system}.{SYSTEM_MODULES[backend]}"))
        except ModuleNotFoundError:
            assert all(k in b.lacks for k in _SYSTEMS[system])
            continue
        assert not [m for m in others if f".{m} import" in source or f"import {m}" in source
                    or f"backends.{m}" in source], system
    for kernel, why in b.lacks.items():
        assert why
        with pytest.raises(fm.BackendUnavailableError, match=f"{backend!r} does not run {kernel}: "):
            get(backend, kernel=kernel)
        with pytest.raises(fm.BackendUnavailableError, match=f"does not run {kernel}"):
            getattr(b, kernel)


def test_auto_takes_the_first_backend_that_runs_the_kernel(monkeypatch):
    reg = importlib.import_module("fastmem.backends")
    monkeypatch.setitem(reg._registry, "cpp", reg.Backend("cpp", False, reason="not built here"))
    monkeypatch.setattr(reg, "_fallback_logged", {"cpp"})  # the warning: tested above
    assert get("auto").name == "numba"
    assert get("auto", kernel="train_model").name == "numpy"  # numba lacks it: said, not delegated
    E, U = fm.embeddings.gaussian(6, 3, 4, seed=0)
    with pytest.raises(fm.BackendUnavailableError, match="'numba' does not run train_model"):
        fm.models.train_model("learnable", E, U, fm.Task.zipf(6, 3), fm.SGD(lr=1.0), 2, backend="numba")


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
    monkeypatch.setattr(reg, "_fallback_logged", set())
    with pytest.raises(fm.BackendUnavailableError, match="not built here"):
        get("cpp")
    fallback = next(n for n in reg.HOST if n != "cpp" and fm.backends()[n]["available"])
    with pytest.warns(fm.PerformanceWarning, match=f"not built here.*running on {fallback}"):
        assert get("auto").name == fallback
    assert get("auto").name == fallback  # said once


def test_a_source_tree_without_the_compiled_module_says_so():
    # `python` in a checkout imports ./fastmem, which holds no compiled module
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import fastmem as fm; E, U = fm.embeddings.gaussian(6, 3, 4, seed=0); "
            "r = fm.train(fm.AssociativeMemory(E, U), fm.Task.zipf(6, 3), fm.SGD(lr=1.0), 3); print(r.backend)")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "FASTMEM_BACKEND"})
    if out.stdout.strip() == "cpp":
        pytest.skip("this checkout's fastmem finds a built core (an editable install)")
    assert out.returncode == 0 and out.stdout.strip() == "numba", out.stderr
    assert out.stderr.count("PerformanceWarning: fastmem._core is not built") == 1


def test_the_compiled_core_and_the_python_backends_share_their_constants():
    if not fm.backends()["cpp"]["available"]:
        pytest.skip("the compiled backend is not built")
    from fastmem import _core, specs

    assert _core.constants() == {"layernorm_eps": specs.LAYERNORM_EPS, "sharpness_tol": specs.SHARPNESS_TOL}


def test_a_compiled_argument_error_names_its_source_location():
    # FASTMEM_CHECK_ARG everywhere in the bindings and the core: the message ends in [file:line]
    if not fm.backends()["cpp"]["available"]:
        pytest.skip("the compiled core is not built")
    from fastmem import _core

    with pytest.raises(fm.InvalidArgumentError, match=r"n must be >= 1 \[.*module\.cpp:\d+\]"):
        _core.set_num_threads(0)
    with pytest.raises(fm.InvalidArgumentError, match=r"W must be 2-D \[.*arrays\.hpp:\d+\]"):
        _core.sgd_rank_update(np.zeros(3), np.zeros((1, 3)), np.zeros((1, 3)), 1.0)
