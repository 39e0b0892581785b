"""The compiled core is built for several CPU levels and loads the best this CPU runs (issue 18,
item 15): a wheel from an AVX-512 machine must not die with SIGILL on an AVX2 node."""

import importlib
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from cases import assert_close, assert_trajectory
from conftest import random_problem

import fastmem as fm

core = pytest.importorskip("fastmem._core", reason="the compiled core is not built")
RUNNABLE = [lv for lv in core.LEVELS if core._built(lv) and core.cpu_runs(lv)]


def test_the_best_level_this_cpu_runs_is_loaded():
    assert core.LEVEL == RUNNABLE[0]
    assert fm.backends()["cpp"]["info"]["cpu_level"] == core.LEVEL


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 levels")
def test_a_portable_build_carries_every_x86_64_level():
    if core._built("native"):
        pytest.skip("a FASTMEM_NATIVE=ON build (one module for its own CPU)")
    assert all(core._built(lv) for lv in ("baseline", "avx2", "avx512"))
    flags = importlib.import_module("fastmem._core_baseline").info()["cxx_flags"]
    assert "-march=x86-64-v2" in flags and "native" not in flags


@pytest.mark.parametrize("level", RUNNABLE)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_level_agrees_with_the_reference(level, dtype, monkeypatch, rng):
    from fastmem.backends import cpp

    monkeypatch.setattr(cpp, "_core", importlib.import_module(f"fastmem._core_{level}"))
    mem, task = random_problem(rng, 30, 7, 19, dtype, layernorm=False)  # 19: a vector body and a tail
    for opt, rep in ((fm.SGD(lr=0.5), "primal"), (fm.Adam(lr=0.01, betas=(0, 0)), "projected"),
                     (fm.SGD(lr=0.5, momentum=0.5), "dual")):
        kw = dict(steps=20, batch_size=4, seed=3, representation=rep, record=fm.Record("all"))
        got = fm.train(mem, task, opt, backend="cpp", **kw)
        assert_trajectory(got, lambda be: fm.train(mem, task, opt, backend=be, **kw), dtype, ["loss"], factor64=5)
    got = fm.kernels.normal(1001, seed=5, dtype=dtype, backend="cpp")
    want = fm.kernels.normal(1001, seed=5, dtype=dtype, backend="numpy")
    assert_close(got, want, dtype)


def _level_in_subprocess(env_level):
    code = "import fastmem as fm; b = fm.backends()['cpp']; print(b['info'].get('cpu_level') or b['reason'])"
    env = {**os.environ, "FASTMEM_CPU_LEVEL": env_level}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd="/").stdout.strip()


@pytest.mark.parametrize("level", RUNNABLE)
def test_fastmem_cpu_level_picks_a_level(level):
    assert _level_in_subprocess(level) == level


def test_an_unknown_or_unrunnable_level_is_refused_by_name():
    assert "FASTMEM_CPU_LEVEL='avx1024'" in _level_in_subprocess("avx1024")
    missing = [lv for lv in core.LEVELS if not core._built(lv) or not core.cpu_runs(lv)]
    if missing:
        assert f"FASTMEM_CPU_LEVEL={missing[0]!r}" in _level_in_subprocess(missing[0])
