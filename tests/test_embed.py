"""Embedding fastmem: the C++ core from CMake, the in-place step API, and bit-exact saved state."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cases import DTYPES, STATE_CASES, assert_close
from conftest import random_problem

import fastmem as fm

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cpp_simulator"


def _cmake(*args, cwd):
    r = subprocess.run(["cmake", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def _check_simulator(exe):
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    curve = np.array([line.split() for line in r.stdout.splitlines()], dtype=float)
    assert curve[0, 0] == 0 and curve[-1, 0] == 2000
    assert curve[-1, 1] < 0.2 * curve[0, 1]  # the loss curve falls


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
@pytest.mark.parametrize("route", ["add_subdirectory", "find_package"])
def test_cpp_simulator_builds_against_the_core(tmp_path, route):
    if route == "add_subdirectory":
        _cmake("-S", EXAMPLE, "-B", "build", f"-DFASTMEM_SOURCE_DIR={ROOT}", cwd=tmp_path)
    else:
        _cmake("-S", ROOT, "-B", "core", f"-DCMAKE_INSTALL_PREFIX={tmp_path / 'prefix'}", cwd=tmp_path)
        _cmake("--install", "core", cwd=tmp_path)
        assert (tmp_path / "prefix" / "include" / "fastmem" / "fastmem.hpp").exists()
        _cmake("-S", EXAMPLE, "-B", "build", f"-DCMAKE_PREFIX_PATH={tmp_path / 'prefix'}", cwd=tmp_path)
    _cmake("--build", "build", cwd=tmp_path)
    _check_simulator(tmp_path / "build" / "cpp_simulator")


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("nvcc") is None, reason="cmake or nvcc not installed")
def test_a_cuda_program_links_fastmem_cuda_outside_pip(tmp_path):
    _cmake("-S", ROOT / "examples" / "cuda_devices", "-B", "build", f"-DFASTMEM_SOURCE_DIR={ROOT}", cwd=tmp_path)
    _cmake("--build", "build", cwd=tmp_path)
    r = subprocess.run([str(tmp_path / "build" / "cuda_devices")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    count, why = (r.stdout.splitlines() + [""])[:2]
    assert int(count) > 0 or why  # a device, or CUDA's reason there is none


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layernorm", [False, True])
@pytest.mark.parametrize("b", [1, 7])
def test_step_updates_the_callers_buffer(placed, rng, dtype, layernorm, b):
    mem, _ = random_problem(rng, 9, 4, 5, dtype)
    W, E, U = placed.put(mem.W.copy(), mem.E, mem.U)
    x, y = rng.integers(0, 9, b), rng.integers(0, 4, b)
    x[-1] = x[0]  # a duplicate draw
    before = W.data.ptr if placed.device else W.ctypes.data
    loss = fm.sgd_step(W, E, U, *placed.put(x, y), lr=0.5, layernorm=layernorm, backend=placed.backend)
    assert (W.data.ptr if placed.device else W.ctypes.data) == before
    want = mem.W.astype(float).copy()
    want_loss = fm.sgd_step(want, mem.E.astype(float), mem.U.astype(float), x, y, lr=0.5, layernorm=layernorm,
                        backend="numpy")
    assert_close(placed.get(W), want, dtype, scale=1.0, factor=10)
    assert loss == pytest.approx(want_loss, rel=1e-5 if dtype == np.float32 else 1e-12)
    # out= leaves W alone
    W2 = placed.put(mem.W.copy())
    out = placed.xp.zeros_like(W2)
    fm.sgd_step(W2, E, U, *placed.put(x, y), lr=0.5, out=out, layernorm=layernorm, backend=placed.backend)
    np.testing.assert_array_equal(placed.get(W2), mem.W)
    assert_close(placed.get(out), want, dtype, scale=1.0, factor=10)


@pytest.mark.parametrize("layernorm", [False, True])
def test_the_device_step_logic_matches_the_reference_on_numpy(compiled, rng, layernorm):
    # the cuda adapter's sgd_step (duplicate merging, LayerNorm, loss, in-place update) run on
    # numpy with a compiled backend's kernels
    from fastmem.backends import get
    from fastmem.memory import _arraycode as arraycode

    be = get(compiled)
    mem, _ = random_problem(rng, 9, 4, 5, np.float64)
    x, y = np.array([3, 1, 3, 3, 0]), np.array([2, 0, 2, 1, 2])
    W = mem.W.copy()
    loss = arraycode.sgd_step(np, be.softmax_xent_grad, be.sgd_rank_update, W, mem.E, mem.U, x, y, 0.5,
                              layernorm, W)
    want = mem.W.copy()
    want_loss = fm.sgd_step(want, mem.E, mem.U, x, y, lr=0.5, layernorm=layernorm, backend="numpy")
    np.testing.assert_allclose(W, want, rtol=1e-12, atol=1e-12)
    assert loss == pytest.approx(want_loss, rel=1e-12)


class DLPackOnly:
    """An array that only speaks DLPack, as a foreign library's tensor would."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kw):
        return self._a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_step_writes_through_dlpack_without_a_copy(rng):
    mem, _ = random_problem(rng, 6, 3, 4, np.float32)
    W = mem.W.copy()
    fm.sgd_step(DLPackOnly(W), DLPackOnly(mem.E), DLPackOnly(mem.U), [1, 2], [0, 2], lr=1.0)
    assert not np.array_equal(W, mem.W)  # the buffer behind the DLPack object changed


def test_step_on_torch_tensors_in_place(rng):
    torch = pytest.importorskip("torch")
    mem, _ = random_problem(rng, 6, 3, 4, np.float32)
    W, E, U = (torch.from_numpy(a.copy()) for a in (mem.W, mem.E, mem.U))
    ptr = W.data_ptr()
    fm.sgd_step(W, E, U, torch.tensor([0, 5]), torch.tensor([1, 2]), lr=1.0)
    want = mem.W.copy()
    fm.sgd_step(want, mem.E, mem.U, [0, 5], [1, 2], lr=1.0)
    assert W.data_ptr() == ptr
    np.testing.assert_array_equal(W.numpy(), want)


def test_step_on_jax_arrays_needs_a_writeable_out(rng):
    jnp = pytest.importorskip("jax.numpy")
    mem, _ = random_problem(rng, 6, 3, 4, np.float32)
    W = jnp.asarray(mem.W)
    with pytest.raises(ValueError, match="^out: expected a writeable array"):
        fm.sgd_step(W, jnp.asarray(mem.E), jnp.asarray(mem.U), [0], [1], lr=1.0)
    out = np.empty_like(mem.W)
    fm.sgd_step(W, jnp.asarray(mem.E), jnp.asarray(mem.U), [0], [1], lr=1.0, out=out)
    want = mem.W.copy()
    fm.sgd_step(want, mem.E, mem.U, [0], [1], lr=1.0)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("name, kwargs, msg", [
    ("W", dict(W=np.zeros((4, 5), np.float32)), "^W: expected shape"),
    ("x", dict(x=[7]), "^x: expected values in"),
    ("y", dict(y=[3]), "^y: expected values in"),
    ("lr", dict(lr=0.0), "^lr: expected a number > 0"),
    ("W", dict(W=np.zeros((4, 4), np.float64)), "^W: expected a 2-D float32/float64 array"),
])
def test_step_errors(name, kwargs, msg):
    E, U = fm.embeddings.gaussian(6, 3, 4)
    args = dict(W=np.zeros((4, 4), np.float32), E=E, U=U, x=[0], y=[1], lr=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=msg):
        fm.sgd_step(**args)




@pytest.mark.parametrize("opt, batch_size, rep", STATE_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_1000_steps_equal_500_save_load_500(backend, rng, tmp_path, opt, batch_size, rep, dtype):
    mem, task = random_problem(rng, 30, 4, 6, dtype)
    kw = dict(batch_size=batch_size, seed=7, representation=rep, backend=backend,
              record=fm.Record(steps=100, metrics=("loss",)))
    full = fm.train(mem, task, opt, 1000, **kw)
    half = fm.train(mem, task, opt, 500, **kw)
    half.state.save(tmp_path / "state.npz")
    state = fm.TrainState.load(tmp_path / "state.npz")
    assert state.step == 500 and state.representation == rep
    kw.pop("seed")
    rest = fm.train(mem, task, opt, 500, resume=state, **kw)
    np.testing.assert_array_equal(rest.W, full.W)
    np.testing.assert_array_equal(rest.steps, full.steps[5:])
    np.testing.assert_array_equal(rest.loss, full.loss[5:])
    assert rest.state.step == 1000


def test_resume_refuses_a_conflicting_seed(rng):
    mem, task = random_problem(rng, 5, 3, 4, np.float64)
    run = fm.train(mem, task, fm.SGD(lr=1.0), 5, batch_size=2, seed=3)
    with pytest.raises(ValueError, match="^seed: expected 3"):
        fm.train(mem, task, fm.SGD(lr=1.0), 5, batch_size=2, seed=4, resume=run.state)


def test_state_files_are_plain_npz(rng, tmp_path):
    mem, task = random_problem(rng, 5, 3, 4, np.float64)
    fm.train(mem, task, fm.SGD(lr=1.0), 5, representation="primal").state.save(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:  # readable without fastmem, no pickle
        assert set(f.files) == {"__meta__", "W"}
