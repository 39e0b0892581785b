"""The projected representation (V = W U^T trained instead of W) against the primal float64
reference, on every backend."""

import numpy as np
import pytest
from cases import PROBLEMS, PROJECTED_OPTIMIZERS as OPTIMIZERS, assert_close, assert_trajectory
from conftest import random_problem

import fastmem as fm

RECORD = fm.Record(steps="all", metrics=("loss", "accuracy", "margins"))


@pytest.mark.parametrize("batch_size", [None, 1, 16], ids=["gd", "b1", "b16"])
@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("N, M, d", PROBLEMS)
def test_projected_trajectory_equals_primal_float64(backend, rng, N, M, d, opt, batch_size):
    mem, task = random_problem(rng, N, M, d, np.float64)
    kw = dict(steps=30, batch_size=batch_size, seed=5, record=RECORD)
    got = fm.train(mem, task, opt, backend=backend, representation="projected", **kw)
    want = fm.train(mem, task, opt, backend="numpy", representation="primal", **kw)
    assert got.representation == "projected" and got.status == want.status == "ok"
    np.testing.assert_array_equal(got.steps, want.steps)
    for name in ("loss", "margins", "accuracy"):  # different summation orders, amplified up to 1 / eps
        assert_close(getattr(got, name), getattr(want, name), np.float64, scale=1.0, factor=30)
    assert_close(got.V, want.W @ mem.U.T, np.float64, scale=1.0, factor=30)


@pytest.mark.parametrize("batch_size", [None, 16], ids=["gd", "b16"])
def test_projected_at_vector_widths_float64(backend, batch_size):
    # d = 75: whole vectors and a zero-padded tail in the update and in the batch's dot products
    E, U = fm.embeddings.gaussian(20, 5, 75, seed=1, dtype=np.float64)
    mem = fm.AssociativeMemory(E, U, W=fm.kernels.normal((75, 75), seed=1, scale=75**-0.5, dtype=np.float64))
    task, opt = fm.Task.zipf(20, 5, 1.0), fm.Adam(lr=0.01, betas=(0.0, 0.0), eps=1e-4)
    kw = dict(steps=30, batch_size=batch_size, seed=5, record=RECORD)
    got = fm.train(mem, task, opt, backend=backend, representation="projected", **kw)
    want = fm.train(mem, task, opt, backend="numpy", representation="primal", **kw)
    assert_close(got.margins, want.margins, np.float64, scale=1.0, factor=30)
    assert_close(got.V, want.W @ mem.U.T, np.float64, scale=1.0, factor=30)


def test_projected_float32_follows_the_reference(backend, rng):
    mem, task = random_problem(rng, 30, 5, 40, np.float32)
    opt = fm.Adam(lr=0.02, betas=(0.0, 0.0))
    kw = dict(steps=20, batch_size=8, seed=2, record=RECORD)
    got = fm.train(mem, task, opt, backend=backend, representation="projected", **kw)
    # the loss, as the sign-like updates of test_train.py: the rounding of a vanishing gradient
    # entry decides g / (|g| + eps) there, and moves single margins by more than a naive run's
    assert_trajectory(got, lambda be: fm.train(mem, task, opt, backend=be, representation="primal", **kw),
                      np.float32, ["loss"])


def test_projected_records_a_divergence(backend, rng):
    mem, task = random_problem(rng, 6, 3, 4, np.float64)
    run = fm.train(mem, task, fm.SignGD(lr=1e308), 5, representation="projected", backend=backend,
                   record=fm.Record(steps="all"))
    assert run.status == "diverged" and run.steps_done < 5


@pytest.mark.parametrize("layernorm, opt, record, match", [
    (True, fm.Adam(lr=0.1, betas=(0.0, 0.0)), None, "LayerNorm needs the read-outs"),
    (False, fm.Adam(lr=0.1), None, "keeps state or is linear"),
    (False, fm.SGD(lr=0.1), None, "keeps state or is linear"),
    (False, fm.SignGD(lr=0.1), fm.Record(metrics=("loss", "W")), "record: expected no 'W' or 'sharpness'"),
])
def test_projected_is_refused_where_it_is_not_exact(rng, layernorm, opt, record, match):
    mem, task = random_problem(rng, 5, 3, 4, np.float64, layernorm=layernorm)
    with pytest.raises(fm.InvalidArgumentError, match=match):
        fm.train(mem, task, opt, 3, representation="projected", record=record)


def test_a_projected_run_has_no_W(rng):
    mem, task = random_problem(rng, 5, 3, 4, np.float64)
    run = fm.train(mem, task, fm.SignGD(lr=0.1), 3, representation="projected")
    assert run.state is None and run.V.shape == (4, 3)
    with pytest.raises(fm.InvalidArgumentError, match="run.W: a 'projected' run keeps V"):
        run.W  # noqa: B018
