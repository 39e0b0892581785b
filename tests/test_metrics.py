"""Population metrics: the reference against finite differences, every backend against the reference."""

import numpy as np
import pytest
from cases import DTYPES, PROBLEMS, assert_close
from conftest import random_problem

import fastmem as fm
from fastmem.memory import _reference as ref


@pytest.mark.parametrize("layernorm", [False, True])
def test_reference_gradient_matches_finite_differences(rng, layernorm):
    mem, task = random_problem(rng, 6, 4, 3, np.float64, layernorm=layernorm)
    g = fm.gradient(mem, task, backend="numpy")
    eps = 1e-6
    fd = np.zeros_like(g)
    for i in range(3):
        for j in range(3):
            Wp, Wm = mem.W.copy(), mem.W.copy()
            Wp[i, j] += eps
            Wm[i, j] -= eps
            fd[i, j] = (fm.loss(mem.with_W(Wp), task, backend="numpy") -
                        fm.loss(mem.with_W(Wm), task, backend="numpy")) / (2 * eps)
    np.testing.assert_allclose(g, fd, atol=1e-8)


def test_reference_hessian_matches_finite_differences(rng):
    mem, task = random_problem(rng, 5, 3, 2, np.float64)
    Hs = ref._hessian(mem.E, mem.U, mem.W, task.p, task.y)
    eps = 1e-5
    for k in range(4):
        V = np.zeros(4)
        V[k] = eps
        gp = fm.gradient(mem.with_W(mem.W + V.reshape(2, 2)), task, backend="numpy").ravel()
        gm = fm.gradient(mem.with_W(mem.W - V.reshape(2, 2)), task, backend="numpy").ravel()
        np.testing.assert_allclose(Hs[:, k], (gp - gm) / (2 * eps), atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layernorm", [False, True])
@pytest.mark.parametrize("N, M, d", PROBLEMS)
def test_population_metrics_match_reference(compiled, rng, N, M, d, layernorm, dtype):
    mem, task = random_problem(rng, N, M, d, dtype, W_scale=2.0, layernorm=layernorm)
    got = fm.population_metrics(mem, task, gradient=True, backend=compiled)
    want = fm.population_metrics(mem, task, gradient=True, backend="numpy")
    assert got["margins"].dtype == got["gradient"].dtype == dtype
    # lse - z_y cancels: its rounding is relative to the scores, not to the loss
    score_scale = np.abs(want["margins"]).max()
    assert_close(got["loss"], want["loss"], dtype, scale=score_scale, factor=10)
    assert_close(got["margins"], want["margins"], dtype, factor=10)
    # |grad| <= max|e_x| * 2 max|u_k|: the natural scale when the gradient nearly vanishes
    scale = 2 * np.abs(mem.E).max() * np.abs(mem.U).max()
    assert_close(got["gradient"], want["gradient"], dtype, scale=scale, factor=10)
    # accuracy may differ only on margins within rounding of zero
    close = np.abs(want["margins"]) < 1e-4 * max(1.0, np.abs(want["margins"]).max())
    assert abs(got["accuracy"] - want["accuracy"]) <= task.p[close].sum() + 1e-9


@pytest.mark.parametrize("dtype", DTYPES)
def test_onehot_embeddings_take_the_row_path_with_the_same_result(compiled, rng, dtype):
    N, M, d = 9, 3, 12
    cols = rng.permutation(d)[:N]
    E = np.zeros((N, d), dtype=dtype)
    E[np.arange(N), cols] = rng.uniform(0.5, 2.0, N)
    U = rng.standard_normal((M, d)).astype(dtype)
    mem = fm.AssociativeMemory(E, U, W=rng.standard_normal((d, d)).astype(dtype))
    assert mem.onehot is not None
    task = fm.Task.zipf(N, M, 1.0)
    got = fm.population_metrics(mem, task, gradient=True, backend=compiled)
    want = fm.population_metrics(mem, task, gradient=True, backend="numpy")
    assert_close(got["gradient"], want["gradient"], dtype, factor=10)
    assert_close(got["margins"], want["margins"], dtype, factor=10)


@pytest.mark.parametrize("N, M, d", [(1, 2, 2), (5, 3, 3), (8, 6, 5), (30, 2, 2)])
def test_sharpness_power_iteration_matches_exact_eigenvalue(compiled, rng, N, M, d):
    mem, task = random_problem(rng, N, M, d, np.float64, W_scale=1.5)
    got = fm.sharpness(mem, task, iters=2000, tol=1e-12, backend=compiled)
    want = fm.sharpness(mem, task, backend="numpy")
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_sharpness_float32(compiled, rng):
    mem, task = random_problem(rng, 10, 4, 6, np.float32)
    want = fm.sharpness(mem, task, backend="numpy")
    np.testing.assert_allclose(fm.sharpness(mem, task, iters=500, tol=1e-7, backend=compiled), want, rtol=1e-3)


def test_sharpness_with_layernorm_is_refused(rng):
    mem, task = random_problem(rng, 4, 3, 3, np.float64, layernorm=True)
    with pytest.raises(NotImplementedError, match="LayerNorm"):
        fm.sharpness(mem, task)


def test_accuracy_and_loss_of_a_known_memory(backend):
    # Orthogonal embeddings, W = c * (the identity map x -> y(x)): margins are exactly c.
    E, U = fm.embeddings.orthogonal(4, 2, dtype=np.float64)
    W = np.zeros((4, 4))
    y = np.array([0, 1, 1, 0])
    W[np.arange(4), y] = 3.0
    W[[0, 3], 1] = 1.0  # tokens 0 and 3 keep margin 2
    task = fm.Task(np.array([0.1, 0.2, 0.3, 0.4]), y)
    out = fm.population_metrics(fm.AssociativeMemory(E, U, W=W), task, backend=backend)
    np.testing.assert_allclose(out["margins"], [2.0, 3.0, 3.0, 2.0])
    assert out["accuracy"] == pytest.approx(1.0)
    want = 0.5 * np.log1p(np.exp(-2.0)) + 0.5 * np.log1p(np.exp(-3.0))
    assert out["loss"] == pytest.approx(want, rel=1e-12)


def test_the_former_names_warn_and_give_the_same_results(rng):
    # fm.evaluate and fm.step took the compiled core's names (population_metrics, sgd_step)
    mem, task = random_problem(rng, 6, 3, 4, np.float64)
    with pytest.warns(DeprecationWarning, match="fm.population_metrics"):
        old = fm.evaluate(mem, task, backend="numpy")
    new = fm.population_metrics(mem, task, backend="numpy")
    assert old["loss"] == new["loss"] and np.array_equal(old["margins"], new["margins"])
    W_old, W_new = mem.W.copy(), mem.W.copy()
    with pytest.warns(DeprecationWarning, match="fm.sgd_step"):
        loss_old = fm.step(W_old, mem.E, mem.U, [1, 4], [0, 2], lr=0.5, backend="numpy")
    loss_new = fm.sgd_step(W_new, mem.E, mem.U, [1, 4], [0, 2], lr=0.5, backend="numpy")
    assert loss_old == loss_new and np.array_equal(W_old, W_new) and not np.array_equal(W_new, mem.W)
