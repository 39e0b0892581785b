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
    numba = reg._get("numba")  # a numba module that says it lacks a kernel (LACKS): auto skips it by name
    lacking = reg.Backend("numba", True, kernels={k: f for k, f in numba.kernels.items() if k != "train_model"},
                          lacks={"train_model": "not jitted in this test"})
    monkeypatch.setitem(reg._registry, "numba", lacking)
    assert get("auto", kernel="train_model").name == "numpy"  # said, not delegated
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


_PRANGE_MODULE = '''
from numba import njit, prange
from fastmem.backends.numba_cpu import driver, serial_and_parallel


def impl(a):
    s = 0.0
    for i in prange(a.shape[0]):
        s += a[i]
    return s


serial, parallel = serial_and_parallel(impl)


@njit(inline="always")
def record(t, r, ctx):
    return r, False


@njit(inline="always")
def step(t, ctx):
    return True
'''


def test_numbas_cache_holds_each_build_apart(tmp_path):
    # numba's cache keys a build by its function's name and line, not its options: the serial
    # build loaded the parallel one's code from the cache (and a driver's loop, keyed by
    # numba_cpu.py, loaded a stale build of a changed system module)
    (tmp_path / "prange_mod.py").write_text(_PRANGE_MODULE)
    code = ("import sys, numpy as np, prange_mod as m; f = getattr(m, sys.argv[1]); f(np.ones(10)); "
            "print(sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values()))")
    runs = [subprocess.run([sys.executable, "-c", code, which], cwd=tmp_path, capture_output=True, text=True)
            for which in ("parallel", "serial", "serial")]
    assert [r.stdout.split() for r in runs] == [["0", "1"], ["0", "1"], ["1", "0"]], [r.stderr for r in runs]

    sys.path.insert(0, str(tmp_path))
    try:
        m = importlib.import_module("prange_mod")
        from fastmem.backends.numba_cpu import driver

        before = driver("probe", m.record, m.step).py_func.__name__
        with open(tmp_path / "prange_mod.py", "a") as f:
            f.write("# a changed step\n")
        assert driver("probe", m.record, m.step).py_func.__name__ != before
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("prange_mod", None)


def test_fastmems_thread_count_reaches_numbas_worker_thread():
    # numba's thread count is per calling thread, and its loops run in a worker thread (Ctrl-C)
    import numba

    from fastmem.backends.numba_cpu import interruptible

    @numba.njit(nogil=True)
    def threads_seen(stop):
        return numba.get_num_threads()

    before = numba.get_num_threads()
    try:
        fm.set_num_threads(1)
        assert interruptible(threads_seen, progress=lambda r: (0, 0)) == 1
    finally:
        fm.set_num_threads(before)


def test_numbas_worker_is_kept_between_runs_and_ends_when_idle():
    # a kept worker keeps its OpenMP team (cheap kernel launches); an idle one ends, so that its
    # team does not slow the compiled core's parallel regions
    import threading
    import time

    from fastmem.backends.numba_cpu import _Worker

    mem, task = fm.AssociativeMemory(*fm.embeddings.gaussian(6, 3, 4, seed=0)), fm.Task.zipf(6, 3)
    workers = lambda: [t for t in threading.enumerate() if t.name == "fastmem-numba"]  # noqa: E731
    time.sleep(2 * _Worker.IDLE_SECONDS)
    before = workers()
    for _ in range(3):
        fm.train(mem, task, fm.SGD(lr=1.0), 2, backend="numba")
    during = workers()
    assert len(during) == len(before) + 1  # one worker for the three runs
    time.sleep(5 * _Worker.IDLE_SECONDS)
    assert workers() == before
