"""Each kernel against the float64 numpy reference, over the shape table, on every backend."""

import numpy as np
import pytest
from cases import DTYPES, FUSED_SHAPES, RTOL, assert_close

import fastmem as fm
from fastmem.backends import numpy_ref


def _fused_inputs(rng, b, d, M, dtype, scale=1.0):
    Q = (scale * rng.standard_normal((b, d))).astype(dtype)
    U = rng.standard_normal((M, d)).astype(dtype)
    y = rng.integers(0, M, b)
    w = rng.random(b).astype(dtype)
    return Q, U, y, w


def _naive_same_precision(Q, U, y, w):
    """A plain implementation in the inputs' precision: the error budget of float32."""
    z = Q @ U.T
    s = np.exp(z - z.max(axis=1, keepdims=True))
    s /= s.sum(axis=1, keepdims=True)
    return w[:, None] * (s @ U - U[y])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, d, M, chunk", FUSED_SHAPES)
def test_softmax_xent_grad_matches_reference(placed, rng, b, d, M, chunk, dtype):
    Q, U, y, w = _fused_inputs(rng, b, d, M, dtype)
    out = fm.kernels.softmax_xent_grad(*placed.put(Q, U, y, w), chunk=chunk, backend=placed.backend)
    H, lse, zy, zother = map(placed.get, out)
    lse_r, zy_r, zo_r, H_r = numpy_ref._fused(Q.astype(float), U.astype(float), y, w.astype(float))
    assert H.dtype == lse.dtype == dtype
    # float32: at most twice the error of a naive same-precision implementation
    # (flash-attention's criterion), plus rounding of the output itself.
    naive_err = np.abs(_naive_same_precision(Q, U, y, w) - H_r).max()
    assert np.abs(H - H_r).max() <= 2 * naive_err + RTOL[dtype] * np.abs(H_r).max()
    scale = np.abs(Q).max() * np.abs(U).max() * d
    assert_close(lse, lse_r, dtype, scale=scale)
    assert_close(zy, zy_r, dtype, scale=scale)
    assert_close(zother, zo_r, dtype, scale=scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_grad_is_stable_for_large_scores(placed, rng, dtype):
    Q, U, y, w = _fused_inputs(rng, 6, 5, 40, dtype, scale=300.0)
    out = fm.kernels.softmax_xent_grad(*placed.put(Q, U, y, w), chunk=7, backend=placed.backend)
    H, lse, zy, zother = map(placed.get, out)
    assert np.isfinite(H).all() and np.isfinite(lse).all()
    lse_r, _, _, H_r = numpy_ref._fused(Q.astype(float), U.astype(float), y, w.astype(float))
    assert_close(lse, lse_r, dtype, factor=10)
    assert_close(H, H_r, dtype, scale=np.abs(U).max(), factor=10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_grad_chunking_does_not_change_the_result(backend, rng, dtype):
    Q, U, y, w = _fused_inputs(rng, 10, 12, 1000, dtype)
    full = fm.kernels.softmax_xent_grad(Q, U, y, w, chunk=1000, backend=backend)
    for chunk in (1, 999, 128):
        got = fm.kernels.softmax_xent_grad(Q, U, y, w, chunk=chunk, backend=backend)
        for a, b_ in zip(got, full):
            assert_close(a, b_, dtype, scale=1.0, factor=5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, d", [(1, 1), (1, 9), (16, 100), (70, 33)])
def test_sgd_rank_update_matches_reference(placed, rng, b, d, dtype):
    W = rng.standard_normal((d, d)).astype(dtype)
    Eb = rng.standard_normal((b, d)).astype(dtype)
    H = rng.standard_normal((b, d)).astype(dtype)
    want = W.astype(float) - 0.3 * Eb.astype(float).T @ H.astype(float)
    Wp = placed.put(W)
    out = fm.kernels.sgd_rank_update(Wp, *placed.put(Eb, H), -0.3, backend=placed.backend)
    assert out is Wp  # updated where it lives
    assert_close(placed.get(Wp), want, dtype, factor=b + 1)


def test_sample_tokens_identical_across_backends(placed):
    task = fm.Task.zipf(N=57, M=3, alpha=1.3)
    want = fm.kernels.sample_tokens(task, 40, 33, seed=11, start_step=5, backend="numpy")
    got = placed.get(fm.kernels.sample_tokens(task, 40, 33, seed=11, start_step=5, backend=placed.backend))
    np.testing.assert_array_equal(got, want)
    # resuming: steps 5..44 are rows 5..44 of a stream started at 0
    full = placed.get(fm.kernels.sample_tokens(task, 45, 33, seed=11, backend=placed.backend))
    np.testing.assert_array_equal(full[5:], got)


def test_sample_tokens_follow_p(backend):
    p = np.array([0.5, 0.0, 0.25, 0.125, 0.125])
    task = fm.Task(p, np.arange(5) % 2)
    draws = fm.kernels.sample_tokens(task, 2000, 100, seed=3, backend=backend)
    freq = np.bincount(draws.ravel(), minlength=5) / draws.size
    assert freq[1] == 0.0  # a zero-probability token is never drawn
    # 200,000 draws: the standard error of each frequency is below 0.0012
    np.testing.assert_allclose(freq, p, atol=0.006)
    other = fm.kernels.sample_tokens(task, 2000, 100, seed=4, backend=backend)
    assert (other != draws).mean() > 0.3  # seeds give different streams
