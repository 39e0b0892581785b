"""fm.train_many: R independent memories in one call equal R separate fm.train runs, on every
backend (cuda on device copies of the inputs)."""

import types

import numpy as np
import pytest
from cases import DTYPES, MANY_SHAPES as SHAPES, assert_close, assert_trajectory

import fastmem as fm
from fastmem.backends import get
from fastmem.memory import _arraycode as arraycode
from fastmem.memory._arraycode import train_many_batched



def _inputs(rng, R, N, M, d, dtype):
    E = rng.standard_normal((R, N, d)).astype(dtype)
    U = rng.standard_normal((R, M, d)).astype(dtype)
    W = (rng.standard_normal((R, d, d)) / np.sqrt(d)).astype(dtype)
    p = rng.random((R, N)) + 0.05
    p /= p.sum(axis=1, keepdims=True)
    y = rng.integers(0, M, (R, N))
    lr = rng.uniform(0.1, 2.0, R)
    return E, U, W, p, y, lr


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("R, N, M, d", SHAPES)
def test_train_many_equals_separate_runs(placed, rng, R, N, M, d, dtype):
    E, U, W, p, y, lr = _inputs(rng, R, N, M, d, dtype)
    res = fm.train_many(*placed.put(E, U, W, p, y, lr), steps=25, backend=placed.backend)
    assert res.backend == placed.backend
    got_W = placed.get(res.W)
    assert got_W.dtype == dtype and placed.get(res.status).tolist() == [0] * R
    for r in range(R):
        mem = fm.AssociativeMemory(E[r], U[r], W=W[r])
        run = assert_trajectory(
            types.SimpleNamespace(W=got_W[r]),
            lambda be: fm.train(mem, fm.Task(p[r], y[r], M=M), fm.SGD(lr=lr[r]), 25, backend=be,
                                record=fm.Record(steps="last", metrics=("loss", "accuracy"))),
            dtype, ["W"], factor64=50)
        tol = dict(rel=1e-4, abs=1e-5) if dtype == np.float32 else dict(rel=1e-9)
        assert placed.get(res.loss)[r] == pytest.approx(run.loss[-1], **tol)
        assert placed.get(res.accuracy)[r] == pytest.approx(run.accuracy[-1], abs=1e-6)
    np.testing.assert_array_equal(placed.get(fm.train_many(*placed.put(E, U, W, p, y, lr), steps=0,
                                                           backend=placed.backend).W), W)


def test_train_many_records_a_diverged_run_and_finishes_the_others(placed, rng):
    E, U, W, p, y, lr = _inputs(rng, 3, 5, 3, 4, np.float32)
    lr[1] = 1e308  # W overflows after one step: the loss becomes non-finite
    res = fm.train_many(*placed.put(E, U, W, p, y, lr), steps=30, backend=placed.backend)
    assert placed.get(res.status).tolist() == [0, 1, 0]
    assert placed.get(res.diverged).tolist() == [False, True, False]
    assert not np.isfinite(placed.get(res.loss)[1])
    alone = fm.train_many(*placed.put(E[[0, 2]], U[[0, 2]], W[[0, 2]], p[[0, 2]], y[[0, 2]], lr[[0, 2]]), steps=30,
                          backend=placed.backend)
    np.testing.assert_array_equal(placed.get(res.W)[[0, 2]], placed.get(alone.W))  # runs do not interact


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_products_match_the_reference(rng, dtype):
    # the device path for runs too large for a thread block, run here on numpy
    E, U, W, p, y, lr = _inputs(rng, 4, 9, 4, 6, dtype)
    lr[2] = 1e308
    outs = {}
    for name in ("batched", "numpy"):
        Wk, loss, acc, status = W.copy(), np.empty(4, dtype), np.empty(4, dtype), np.empty(4, np.int8)
        with np.errstate(over="ignore", invalid="ignore"):
            if name == "batched":
                train_many_batched(np, E, U, Wk, p, y, lr, 20, loss, acc, status)
            else:
                get("numpy").train_many(E, U, Wk, p, y, lr, 20, loss, acc, status)
        outs[name] = Wk, loss, acc, status
    (Wb, lb, ab, sb), (Wr, lr_, ar, sr) = outs["batched"], outs["numpy"]
    assert sb.tolist() == sr.tolist() == [0, 0, 1, 0]
    keep = [0, 1, 3]
    assert_close(Wb[keep], Wr[keep], dtype, scale=1.0, factor=50)
    assert_close(lb[keep], lr_[keep], dtype, scale=1.0, factor=10)
    np.testing.assert_allclose(ab[keep], ar[keep], atol=1e-6)


def _dual_steps(p, y, lr, steps, loss, accuracy, status, Z, A, KE, KU):
    """What train_many.cu's dual kernel does for each run, in numpy."""
    M = Z.shape[2]
    for r in range(Z.shape[0]):
        A[r], status[r] = 0, 0
        for t in range(steps + 1):
            z = Z[r] - Z[r].max(axis=1, keepdims=True)
            s = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
            rows = np.arange(len(y[r]))
            loss[r] = -(p[r] * np.log(s[rows, y[r]])).sum()
            other = np.where(np.arange(M) == y[r][:, None], -np.inf, Z[r]).max(axis=1)
            accuracy[r] = p[r][Z[r][rows, y[r]] > other].sum()
            if t == steps:
                break
            P = p[r][:, None] * (s - (np.arange(M) == y[r][:, None]))
            Z[r] -= lr[r] * KE[r] @ P @ KU[r]
            A[r] += lr[r] * P
    return True


def test_the_dual_set_up_and_rebuild_match_the_reference(rng):
    # the cuda adapter's dual path (scores, Grams, rebuilt W) on numpy, the steps as its kernel's
    E, U, W, p, y, lr = _inputs(rng, 3, 5, 3, 8, np.float64)
    Wd, loss, acc, status = W.copy(), np.empty(3), np.empty(3), np.empty(3, np.int8)
    assert arraycode.train_many_dual(np, _dual_steps, E, U, Wd, p, y, lr, 15, loss, acc, status)
    want = fm.train_many(E, U, W, p, y, lr, 15, backend="numpy")
    np.testing.assert_allclose(Wd, want.W, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(loss, want.loss, rtol=1e-10)
    np.testing.assert_allclose(acc, want.accuracy, atol=1e-12)


def test_train_many_shares_E_U_p_y_and_lr(rng):
    E, U, W, p, y, _ = _inputs(rng, 3, 6, 3, 5, np.float64)
    shared = fm.train_many(E[0], U[0], W, p[0], y[0], 0.7, steps=10)
    stacked = fm.train_many(np.stack([E[0]] * 3), np.stack([U[0]] * 3), W, np.stack([p[0]] * 3),
                            np.stack([y[0]] * 3), np.full(3, 0.7), steps=10)
    np.testing.assert_array_equal(shared.W, stacked.W)


@pytest.mark.parametrize("change, match", [
    (dict(lr=0.0), "lr: expected values > 0"),
    (dict(p=np.full(4, 0.3)), "p: expected rows that are distributions"),
    (dict(y=np.array([0, 1, 2, 3])), r"y: expected values in \[0, 3\)"),
    (dict(y=np.zeros(4)), "y: expected an integer array"),
    (dict(steps=-1), "steps: expected an integer >= 0"),
    (dict(W=np.zeros((2, 5, 4))), r"W: expected an \(R, d, d\) array"),
    (dict(E=np.zeros((4, 5), dtype=np.float32)), "E: expected dtype float64"),
    (dict(U=np.full((3, 5), np.nan)), "U: expected finite values"),
    (dict(E=np.zeros((3, 4, 5))), r"E: expected shape \(4, 5\) or \(2, 4, 5\)"),
])
def test_train_many_rejects_bad_input_naming_it(rng, change, match):
    args = dict(E=rng.standard_normal((4, 5)), U=rng.standard_normal((3, 5)), W=np.zeros((2, 5, 5)),
                p=np.full(4, 0.25), y=np.array([0, 1, 2, 0]), lr=1.0, steps=3)
    args.update(change)
    with pytest.raises(fm.InvalidArgumentError, match=match):
        fm.train_many(**args)
