"""Each kernel against the float64 numpy reference, over the shape table, on every backend."""

import numpy as np
import pytest
from cases import DTYPES, FUSED_SHAPES, RTOL, assert_close

import fastmem as fm
from fastmem.memory import _reference as ref


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
    lse_r, zy_r, zo_r, H_r = ref._fused(Q.astype(float), U.astype(float), y, w.astype(float))
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
    lse_r, _, _, H_r = ref._fused(Q.astype(float), U.astype(float), y, w.astype(float))
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


def _normal_definition(seed, n):
    """normal.hpp's stream written out in float64 numpy, word by word."""
    from fastmem._rng import splitmix64 as _splitmix64
    from fastmem.memory._reference import _NORMAL_STREAM

    i = np.arange(n, dtype=np.uint64)
    key = _splitmix64(np.array([seed ^ _NORMAL_STREAM], dtype=np.uint64))
    w = _splitmix64(key ^ _splitmix64(8 * (i // np.uint64(16)) + i % np.uint64(8)))
    u1 = ((w >> np.uint64(32)).astype(np.float64) + 0.5) * 2.0**-32
    u2 = (w & np.uint64(0xFFFFFFFF)).astype(np.float64) * 2.0**-32
    angle = 2 * np.pi * u2
    return np.sqrt(-2 * np.log(u1)) * np.where(i % np.uint64(16) < 8, np.cos(angle), np.sin(angle))


@pytest.mark.parametrize("shape", [1, 15, 16, 17, (3, 7), (40, 75)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_normal_follows_its_definition(backend, shape, dtype):
    got = fm.kernels.normal(shape, seed=7, scale=0.5, dtype=dtype, backend=backend)
    n = int(np.prod(shape))
    assert got.shape == np.empty(shape).shape and got.dtype == dtype
    assert_close(got.ravel(), 0.5 * _normal_definition(7, n), dtype, scale=1.0, factor=2)
    # a longer array of the same seed starts with the same values; other seeds differ
    longer = fm.kernels.normal(n + 37, seed=7, scale=0.5, dtype=dtype, backend=backend)
    np.testing.assert_array_equal(longer[:n], got.ravel())
    assert (fm.kernels.normal(n, seed=8, dtype=dtype, backend=backend) != got.ravel() / 0.5).all()


def test_normal_is_standard_normal(backend):
    from scipy import stats

    x = fm.kernels.normal(200_000, seed=3, dtype=np.float64, backend=backend)
    assert abs(x.mean()) < 5 * 200_000**-0.5 and abs(x.var() - 1) < 5 * (2 / 200_000) ** 0.5
    assert stats.kstest(x, "norm").pvalue > 1e-3
    # independent of the token stream of the same seed (rng.hpp), and within its pairs
    u = fm.kernels.sample_tokens(fm.Task.uniform(1000, 2), 1, 200_000,
                                 seed=3, backend=backend)[0]
    assert abs(np.corrcoef(x, u)[0, 1]) < 0.01 and abs(np.corrcoef(x[0::16], x[8::16])[0, 1]) < 0.03


@pytest.mark.parametrize("kw, match", [
    (dict(shape=(-1, 3)), "shape"), (dict(shape=4, seed=-1), "seed"), (dict(shape=4, seed=2**64), "seed"),
    (dict(shape=4, scale=np.nan), "scale"), (dict(shape=4, dtype=np.int32), "dtype"),
])
def test_normal_refuses_bad_arguments(kw, match):
    with pytest.raises(fm.InvalidArgumentError, match=match):
        fm.kernels.normal(**kw)


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
