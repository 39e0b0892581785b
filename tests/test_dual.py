"""The dual (score-space) representation against the primal float64 reference."""

import numpy as np
import pytest
from cases import PROBLEMS, assert_close, assert_trajectory
from conftest import random_problem
from test_train import ALL, LINEAR

import fastmem as fm


def _compare(got, want, dtype, factor):
    assert got.representation == "dual" and want.representation == "primal"
    np.testing.assert_array_equal(got.steps, want.steps)
    for name in ("loss", "margins", "W_history"):
        assert_close(getattr(got, name), getattr(want, name), dtype, scale=1.0, factor=factor)
    assert_close(got.W, want.W, dtype, scale=1.0, factor=factor)


@pytest.mark.parametrize("layernorm", [False, True], ids=["scores", "layernorm"])
@pytest.mark.parametrize("batch_size", [None, 1, 16], ids=["gd", "b1", "b16"])
@pytest.mark.parametrize("opt", LINEAR)
@pytest.mark.parametrize("N, M, d", PROBLEMS)
def test_dual_trajectory_equals_primal_float64(backend, rng, N, M, d, opt, batch_size, layernorm):
    mem, task = random_problem(rng, N, M, d, np.float64, layernorm=layernorm)
    kw = dict(steps=40, batch_size=batch_size, seed=5, record=ALL)
    got = fm.train(mem, task, opt, backend=backend, representation="dual", **kw)
    want = fm.train(mem, task, opt, backend="numpy", representation="primal", **kw)
    _compare(got, want, np.float64, factor=10)  # 1e-9 relative
    # the dual state is the scores (or, with LayerNorm, the read-outs) of the rebuilt memory
    want_Z = mem.E @ got.W if layernorm else mem.E @ got.W @ mem.U.T
    assert_close(got.Z, want_Z, np.float64, scale=1.0, factor=10)


@pytest.mark.parametrize("opt", LINEAR[:2])
def test_dual_with_orthogonal_embeddings_takes_the_diagonal_path(backend, rng, opt):
    E, U = fm.embeddings.orthogonal(12, 4, d=16, dtype=np.float64)
    E *= rng.uniform(0.5, 2.0, (12, 1))  # scaled one-hot rows: K_E diagonal, not the identity
    mem, task = fm.AssociativeMemory(E, U), fm.Task.zipf(12, 4, 1.0)
    for b in (None, 8):
        kw = dict(steps=50, batch_size=b, seed=2, record=ALL)
        got = fm.train(mem, task, opt, backend=backend, representation="dual", **kw)
        want = fm.train(mem, task, opt, backend="numpy", representation="primal", **kw)
        _compare(got, want, np.float64, factor=10)


@pytest.mark.parametrize("layernorm", [False, True])
def test_dual_float32(compiled, rng, layernorm):
    mem, task = random_problem(rng, 30, 5, 8, np.float32, layernorm=layernorm)
    kw = dict(steps=60, batch_size=16, seed=1, record=ALL)
    got = fm.train(mem, task, fm.SGD(lr=0.5, momentum=0.5), backend=compiled, representation="dual", **kw)
    assert got.representation == "dual"
    assert_trajectory(got, lambda be: fm.train(mem, task, fm.SGD(lr=0.5, momentum=0.5), backend=be,
                                               representation="primal", **kw),
                      np.float32, ["loss", "margins", "W_history", "W"])


def test_dual_records_sharpness_of_the_rebuilt_memory(compiled, rng):
    mem, task = random_problem(rng, 6, 3, 3, np.float64)
    rec = fm.Record(steps=5, metrics=("loss", "sharpness"))
    got = fm.train(mem, task, fm.SGD(lr=1.0), 10, record=rec, backend=compiled, representation="dual",
                   power_iters=3000)
    want = fm.train(mem, task, fm.SGD(lr=1.0), 10, record=rec, backend="numpy", representation="primal")
    np.testing.assert_allclose(got.sharpness, want.sharpness, rtol=1e-6)


@pytest.mark.parametrize("opt, layernorm", [
    (fm.Adam(lr=0.1), False), (fm.Adam(lr=0.1, betas=(0, 0)), True), (fm.SignGD(lr=0.1), False),
])
def test_auto_never_picks_dual_where_it_is_not_exact(rng, opt, layernorm):
    E, U = fm.embeddings.gaussian(100, 5, 1000, seed=0)  # where the dual would be far cheaper
    mem, task = fm.AssociativeMemory(E, U, layernorm=layernorm), fm.Task.zipf(100, 5, 2.0)
    run = fm.train(mem, task, opt, 3, batch_size=16)
    assert run.representation == "primal" and run.representation_reason.startswith("dual not exact")
    with pytest.raises(ValueError, match="^representation: expected 'primal' or 'auto'"):
        fm.train(mem, task, opt, 3, batch_size=16, representation="dual")


@pytest.mark.parametrize("d, layernorm, want", [(1000, False, "dual"), (100, False, "dual"), (10, False, "primal"),
                                                 (1000, True, "dual"), (10, True, "primal")])
def test_auto_follows_the_cost_model(d, layernorm, want):
    E, U = fm.embeddings.gaussian(100, 5, d, seed=0)
    batch_size = 16
    run = fm.train(fm.AssociativeMemory(E, U, layernorm=layernorm), fm.Task.zipf(100, 5, 2.0), fm.SGD(lr=1.0), 6400,
                   batch_size=batch_size, record=fm.Record("last"))
    assert run.representation == want, run.representation_reason
    assert run.representation_reason.startswith("cost model")


def test_unknown_representation_is_refused():
    E, U = fm.embeddings.gaussian(4, 2, 3, seed=0)
    with pytest.raises(ValueError, match="^representation: expected one of"):
        fm.train(fm.AssociativeMemory(E, U), fm.Task.zipf(4, 2), fm.SGD(lr=1.0), 3, representation="particle")


def test_the_representation_choice_forms_no_gram_at_large_M():
    # M = 131,072 outputs: U U^T would be 64 GiB in float32; the choice works from shapes
    import tracemalloc

    N, M, d = 64, 131072, 8
    rng = np.random.default_rng(0)
    mem = fm.AssociativeMemory(rng.standard_normal((N, d)).astype(np.float32),
                               rng.standard_normal((M, d)).astype(np.float32))
    task = fm.Task.zipf(N, M, 1.0)
    tracemalloc.start()
    try:
        for b in (None, 16):
            rep, reason = fm.representations.choose(mem, task, fm.SGD(lr=1.0), 100, b, "auto")
            assert rep == "primal", reason
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * M * d, peak  # a few O(M d) temporaries, not M x M


@pytest.mark.parametrize("make, want", [
    (lambda rng: np.eye(5, 8), True),
    (lambda rng: np.eye(5, 8) * rng.uniform(0.5, 2, (5, 1)), True),
    (lambda rng: np.vstack([np.eye(3, 8), np.zeros((4, 8))]), True),
    (lambda rng: np.linalg.qr(rng.standard_normal((8, 8)))[0][:5], True),
    (lambda rng: rng.standard_normal((5, 8)), False),
    (lambda rng: np.vstack([np.eye(8), np.ones((1, 8))]), False),  # more non-zero rows than columns
    (lambda rng: np.eye(5, 8) + 1e-3 * np.eye(5, 8, k=1), False),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_orthogonal_agrees_with_the_gram(make, want, dtype):
    A = make(np.random.default_rng(3)).astype(dtype)
    G = A.astype(np.float64) @ A.T
    assert (np.abs(G - np.diag(np.diag(G))).max() < 1e-6) == want
    assert fm.representations.rows_orthogonal(A) == want


def test_fm_dual_is_the_representations_module_with_a_warning():
    with pytest.warns(DeprecationWarning, match="fm.representations"):
        assert fm.dual is fm.representations
