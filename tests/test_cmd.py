"""Correlation Mode Decomposition: the checks of docs/cmd.md, on every backend."""

import numpy as np
import pytest
from conftest import random_problem

import fastmem as fm
from fastmem.backends import get


def adjusted_rand_index(a, b):
    """ARI of two labelings (Hubert and Arabie), from their contingency table."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)

    def pairs(n):
        return (n * (n - 1) / 2).sum()
    index, rows, cols, total = pairs(table), pairs(table.sum(1)), pairs(table.sum(0)), pairs(np.array([len(a)]))
    expected = rows * cols / total
    return (index - expected) / ((rows + cols) / 2 - expected)


def synthetic(rng, K=4, P=3000, T=60, noise=0.01):
    """K random-walk mode profiles; theta_i = a_i r_k(i) + b_i + noise (a_i of both signs)."""
    r = np.cumsum(rng.standard_normal((T, K)), axis=0)
    r /= r.std(axis=0)
    k = rng.integers(0, K, P)
    a = rng.uniform(0.5, 2.0, P) * rng.choice([-1.0, 1.0], P)
    b = rng.standard_normal(P)
    return np.ascontiguousarray(a * r[:, k] + b + noise * rng.standard_normal((T, P))), k


@pytest.mark.parametrize("noise, min_ari", [(0.01, 1.0), (0.05, 0.95)])
def test_recovers_known_modes(backend, rng, noise, min_ari):
    X, k = synthetic(rng, noise=noise)
    res = fm.cmd.fit(X, n_modes=4, n_samples=500, seed=1, backend=backend)
    assert res.n_modes == 4
    assert adjusted_rand_index(res.assignment, k) >= min_ari
    # the error is the noise over the spread of the signal, not more
    noise_level = noise * np.sqrt(X.size) / np.linalg.norm(X - X.mean(axis=0))
    assert res.relative_error(X) < 2.0 * noise_level


def test_exact_affine_data_to_machine_precision(backend, rng):
    T, P = 40, 500
    r = np.cumsum(rng.standard_normal((T, 3)), axis=0)
    k = rng.integers(0, 3, P)
    a = rng.uniform(-3, 3, P)  # negative a_i included
    X = a * r[:, k] + rng.standard_normal(P)
    res = fm.cmd.fit(X, n_modes=3, n_samples=200, backend=backend)
    assert res.relative_error(X) < 1e-12
    assert (res.a < 0).any()


def test_compiled_pass_matches_reference(compiled, rng):
    X, _ = synthetic(rng, P=2500, noise=0.2)
    X[:, 7] = 3.0  # a constant parameter
    refs = np.ascontiguousarray(X[:, [0, 1, 2]])
    out = {}
    for be in (compiled, "numpy"):
        mode, a, b, c = np.empty(X.shape[1], dtype=np.int64), *(np.empty(X.shape[1]) for _ in range(3))
        get(be).cmd_assign_fit(X, refs, mode, a, b, c)
        out[be] = (mode, a, b, c)
    np.testing.assert_array_equal(out[compiled][0], out["numpy"][0])
    for got, want in zip(out[compiled][1:], out["numpy"][1:]):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert out[compiled][1][7] == 0.0 and out[compiled][2][7] == 3.0


def test_online_equals_batch_least_squares(backend, rng):
    X, _ = synthetic(rng, P=1500, T=120, noise=0.1)
    online = fm.cmd.OnlineCMD(n_modes=4, warmup=30, n_samples=300, backend=backend)
    for theta in X:
        online.update(theta)
    res = online.result
    a, b = online.ab
    batch_a, batch_b = _batch_ls(X, res)
    np.testing.assert_allclose(a, batch_a, rtol=0, atol=1e-10 * np.abs(batch_a).max())
    np.testing.assert_allclose(b, batch_b, rtol=0, atol=1e-10 * np.abs(batch_b).max())


def _batch_ls(X, res):
    """Least squares of every parameter against its (fixed) reference over all T steps."""
    r = X[:, res.references][:, res.assignment]
    rc = r - r.mean(axis=0)
    a = ((X - X.mean(axis=0)) * rc).sum(axis=0) / (rc * rc).sum(axis=0)
    return a, X.mean(axis=0) - a * r.mean(axis=0)


def test_embedding_invariants(rng):
    X, _ = synthetic(rng, P=1000, T=200, noise=0.05)
    cmd = fm.cmd.EmbeddedCMD(n_modes=4, warmup=20, every=10, fraction=0.1, n_samples=200)
    history = []
    for t, theta in enumerate(X):
        theta = theta.copy()
        cmd.update(theta)
        cmd.embed(theta)
        if cmd.embedded is not None:
            history.append((t, cmd.embedded.copy(), cmd._frozen_a.copy(), cmd._frozen_b.copy()))
            assert not cmd.embedded[cmd.result.references].any()  # references are never embedded
            e = cmd.embedded
            r = theta[cmd.result.references][cmd.result.assignment[e]]
            np.testing.assert_allclose(theta[e], cmd._frozen_a[e] * r + cmd._frozen_b[e])
    for (_, e0, a0, b0), (_, e1, a1, b1) in zip(history, history[1:]):
        assert (e1 >= e0).all()  # once embedded, always embedded
        np.testing.assert_array_equal(a1[e0], a0[e0])  # frozen (a, b) never change
        np.testing.assert_array_equal(b1[e0], b0[e0])
    counts = [int(e.sum()) for _, e, _, _ in history]
    step, cap = round(0.1 * X.shape[1]), X.shape[1] - cmd.result.n_modes  # all but the references
    # the embedded set grows by `step` every 10 steps, until only references are left
    assert counts == [min(step * (i // 10), cap) for i in range(len(counts))]


def test_embedded_cmd_as_a_train_callback(rng):
    mem, task = random_problem(rng, 20, 4, 6, np.float64)
    cmd = fm.cmd.EmbeddedCMD(n_modes=3, warmup=10, every=20, fraction=0.2, n_samples=36)
    run = fm.train(mem, task, fm.SGD(lr=0.5), 100, batch_size=4, seed=1, callback=cmd,
                   record=fm.Record(steps=10, metrics=("loss",)))
    assert run.steps_done == 100 and run.status == "ok" and run.representation == "primal"
    assert cmd.embedded.sum() > 0 and cmd.n == 99
    assert np.isfinite(run.W).all() and len(run.loss) == 11 and run.loss[-1] < run.loss[0]


def test_callback_chunks_equal_one_run(rng):
    mem, task = random_problem(rng, 15, 3, 5, np.float64)
    seen = []
    rec = fm.Record(steps=7, metrics=("loss",))
    chunked = fm.train(mem, task, fm.SGD(lr=0.5, momentum=0.5), 50, batch_size=4, seed=2, record=rec,
                       callback=lambda step, state: seen.append(step), callback_every=20)
    whole = fm.train(mem, task, fm.SGD(lr=0.5, momentum=0.5), 50, batch_size=4, seed=2, record=rec,
                     representation="primal")
    assert seen == [20, 40]
    np.testing.assert_array_equal(chunked.W, whole.W)
    np.testing.assert_array_equal(chunked.steps, whole.steps)
    np.testing.assert_array_equal(chunked.loss, whole.loss)


@pytest.mark.parametrize("modes", [[1, 2, 5, 10]])
def test_error_does_not_grow_with_modes_on_a_fastmem_run(rng, modes):
    E, U = fm.embeddings.gaussian(60, 5, 12, seed=0, dtype=np.float64)
    mem, task = fm.AssociativeMemory(E, U, W=rng.standard_normal((12, 12)) / 12), fm.Task.zipf(60, 5, 1.0)
    run = fm.train(mem, task, fm.Adam(lr=0.01, betas=(0, 0)), 300, batch_size=16, seed=0,
                   record=fm.Record(steps="all", metrics=("W",)))
    X = run.W_history.reshape(len(run.steps), -1)
    errors = [fm.cmd.fit(X, n_modes=m, n_samples=144, seed=0).relative_error(X) for m in modes]
    assert all(e1 <= e0 + 1e-9 for e0, e1 in zip(errors, errors[1:])), errors


def test_bad_input():
    with pytest.raises(ValueError, match="^trajectory: expected a \\(T, P\\) array"):
        fm.cmd.fit(np.zeros(5), 2)
    with pytest.raises(ValueError, match="^trajectory: expected finite"):
        fm.cmd.fit(np.full((3, 4), np.nan), 2)
    with pytest.raises(ValueError, match="^groups: expected positive tensor sizes"):
        fm.cmd.fit(np.random.default_rng(0).standard_normal((5, 10)), 2, groups=[3, 3])
