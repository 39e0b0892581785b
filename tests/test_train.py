"""Training trajectories: every backend against the float64 reference, and the model's known facts."""

import dataclasses

import numpy as np
import pytest
from cases import DTYPES, PROBLEMS, TRAIN_OPTIMIZERS as OPTIMIZERS, assert_close, assert_trajectory, naive_precision
from conftest import random_problem

import fastmem as fm

LINEAR = [p for p in OPTIMIZERS if p.values[0].linear]
ALL = fm.Record(steps="all", metrics=("loss", "accuracy", "margins", "W"))


@pytest.mark.parametrize("batch_size", [None, 1, 16], ids=["gd", "b1", "b16"])
@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("N, M, d", PROBLEMS)
def test_trajectory_matches_reference_float64(compiled, rng, N, M, d, opt, batch_size):
    mem, task = random_problem(rng, N, M, d, np.float64)
    kw = dict(steps=40, batch_size=batch_size, seed=5, record=ALL, representation="primal")
    got = fm.train(mem, task, opt, backend=compiled, **kw)
    want = fm.train(mem, task, opt, backend="numpy", **kw)
    assert got.status == want.status == "ok"
    np.testing.assert_array_equal(got.steps, np.arange(41))
    for name in ("loss", "margins", "W_history"):
        assert_close(getattr(got, name), getattr(want, name), np.float64, scale=1.0, factor=100)
    np.testing.assert_allclose(got.accuracy, want.accuracy, atol=1e-12)


@pytest.mark.parametrize("layernorm", [False, True])
@pytest.mark.parametrize("batch_size", [None, 16], ids=["gd", "b16"])
@pytest.mark.parametrize("opt", LINEAR)
def test_trajectory_matches_reference_float32(compiled, rng, opt, batch_size, layernorm):
    # A fifth of the float64 tests' step size: at lr 0.5, full-batch GD with LayerNorm can
    # spike (edge of stability), where any float32 rounding is amplified past a fixed tolerance.
    opt = dataclasses.replace(opt, lr=opt.lr / 5)
    mem, task = random_problem(rng, 30, 5, 8, np.float32, layernorm=layernorm)
    kw = dict(steps=60, batch_size=batch_size, seed=1, record=ALL, representation="primal")
    got = fm.train(mem, task, opt, backend=compiled, **kw)
    assert_trajectory(got, lambda be: fm.train(mem, task, opt, backend=be, **kw), np.float32, ["loss", "W"])


def test_the_naive_float32_run_rounds_as_float32_arithmetic_does(rng):
    # the yardstick of the float32 tests: the reference computing in float32 is off the float64
    # reference (same float32 state) by float32 rounding, not by nothing and not by more
    mem, task = random_problem(rng, 30, 5, 8, np.float32)
    kw = dict(steps=60, batch_size=16, seed=1, record=ALL, representation="primal", backend="numpy")
    want = fm.train(mem, task, fm.SGD(lr=0.1), **kw)
    with naive_precision(np.float32):
        naive = fm.train(mem, task, fm.SGD(lr=0.1), **kw)
    err = np.abs(naive.W.astype(float) - want.W).max()
    assert 0 < err < 1e3 * np.finfo(np.float32).eps * np.abs(want.W).max()


@pytest.mark.parametrize("opt", [p for p in OPTIMIZERS if not p.values[0].linear])
def test_sign_like_updates_float32_track_the_loss(compiled, rng, opt):
    # Sign-like updates amplify rounding (sign of a near-zero gradient entry),
    # so float32 is compared on the loss, which they do not destabilise.
    mem, task = random_problem(rng, 30, 5, 8, np.float32)
    kw = dict(steps=60, batch_size=16, seed=1, record=fm.Record(steps="all"))
    got = fm.train(mem, task, opt, backend=compiled, **kw)
    assert_trajectory(got, lambda be: fm.train(mem, task, opt, backend=be, **kw), np.float32, ["loss"])


# With LayerNorm the scores do not see the scale of a read-out, so nothing pulls back the rounding
# that a normalised update (g / (|g| + eps), sign) leaves along it: two float32 runs part in W,
# E and U step after step, by more than a naive float32 run does on some CPUs (seen on an Intel
# Xeon's OpenBLAS kernels, 1.3-4x), while the loss stays together. There the float32
# trajectories are compared on the loss.
LAYERNORM_INVARIANT = ["loss"]


# The stateless normalised updates (Adam(0, 0), sign descent) take one pass over W per step
# that also reads the next batch's rows, in register tiles of 6 rows (10 for GD's 20 rows) x
# 16 or 32 columns: d = 33 and 75 have whole tiles, a row tail and a column tail in either dtype.
# Normal(0, 1/d) embeddings keep the scores O(1); sign descent flips on the rounding of a
# vanishing gradient entry, so it is compared over the first steps only.
@pytest.mark.parametrize("layernorm", [False, True])
@pytest.mark.parametrize("batch_size", [None, 1, 16], ids=["gd", "b1", "b16"])
@pytest.mark.parametrize("opt, steps", [(fm.Adam(lr=0.01, betas=(0.0, 0.0), eps=1e-4, weight_decay=0.1), 25),
                                        (fm.Adam(lr=0.01, betas=(0.0, 0.0), eps=1e-4), 25),
                                        (fm.SignGD(lr=0.01), 4)], ids=["adam00-wd", "adam00", "sign"])
@pytest.mark.parametrize("d", [33, 75])
@pytest.mark.parametrize("dtype", DTYPES)
def test_normalized_updates_at_vector_widths(compiled, dtype, d, opt, steps, batch_size, layernorm):
    E, U = fm.embeddings.gaussian(20, 5, d, seed=d, dtype=dtype)
    W = (np.random.default_rng(d).standard_normal((d, d)) / np.sqrt(d)).astype(dtype)
    mem, task = fm.AssociativeMemory(E, U, W=W, layernorm=layernorm), fm.Task.zipf(20, 5, 1.0)
    kw = dict(steps=steps, batch_size=batch_size, seed=3, record=ALL, representation="primal")
    got = fm.train(mem, task, opt, backend=compiled, **kw)
    want = assert_trajectory(got, lambda be: fm.train(mem, task, opt, backend=be, **kw), dtype,
                             LAYERNORM_INVARIANT if layernorm else ["loss", "margins", "W_history"])
    assert got.status == want.status == "ok"


@pytest.mark.parametrize("dtype", DTYPES)
def test_500_sgd_steps_on_the_same_sampled_tokens(compiled, rng, dtype):
    E, U = fm.embeddings.gaussian(N=100, M=5, d=24, seed=2, dtype=dtype)
    mem, task = fm.AssociativeMemory(E, U), fm.Task.zipf(100, 5, 2.0)
    tokens = fm.kernels.sample_tokens(task, 500, 16, seed=9)
    rec = fm.Record(steps=25, metrics=("loss", "accuracy"))
    got = fm.train(mem, task, fm.SGD(lr=1.0), 500, seed=9, batch_size=16, record=rec, backend=compiled,
                   representation="primal")
    assert_trajectory(got, lambda be: fm.train(mem, task, fm.SGD(lr=1.0), 500, tokens=tokens, record=rec, backend=be),
                      dtype, ["loss", "W"], factor64=50)
    assert got.loss[-1] < 0.5 * got.loss[0]  # it learned


def test_duplicate_tokens_are_merged_exactly(backend, rng):
    # A batch with repeats equals the mean of per-draw gradients.
    mem, task = random_problem(rng, 6, 3, 4, np.float64)
    draws = np.array([[2, 5, 2, 2, 0, 5]])
    run = fm.train(mem, task, fm.SGD(lr=0.7), 1, tokens=draws, backend=backend, record=fm.Record("last"))
    g = np.zeros((4, 4))
    for x in draws[0]:
        one = fm.Task(np.eye(6)[x], task.y, M=3)
        g += fm.gradient(mem, one, backend="numpy") / draws.shape[1]
    np.testing.assert_allclose(run.W, mem.W - 0.7 * g, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_gd_step_reaches_accuracy_1_with_orthogonal_embeddings(backend, rng, dtype):
    for _ in range(5):
        N = int(rng.integers(1, 12))
        p = rng.dirichlet(np.ones(N))
        lr = float(10 ** rng.uniform(-3, 2))
        E, U = fm.embeddings.orthogonal(N, 2, dtype=dtype)
        task = fm.Task(p, rng.integers(0, 2, N), M=2)
        run = fm.train(fm.AssociativeMemory(E, U), task, fm.SGD(lr=lr), 1, backend=backend,
                       record=fm.Record(steps="all"))
        assert run.accuracy[0] == 0.0  # W = 0: every margin is 0
        assert run.accuracy[1] == pytest.approx(1.0), (N, lr)


@pytest.mark.parametrize("batch_size", [None, 4])
def test_divergence_is_a_status_not_an_exception(backend, rng, batch_size):
    mem, task = random_problem(rng, 20, 4, 6, np.float64)
    run = fm.train(mem, task, fm.SGD(lr=1e308), 50, batch_size=batch_size, record=fm.Record(steps="all"), backend=backend)
    assert run.status == "diverged"
    assert run.steps_done < 50
    assert len(run.loss) >= 1 and np.isfinite(run.loss[0])  # what was recorded before stays
    assert len(run.steps) == len(run.loss)


def test_resume_with_start_step_is_bit_exact(backend, rng):
    mem, task = random_problem(rng, 40, 5, 7, np.float64)
    opt = fm.SGD(lr=0.5, schedule=fm.Cosine(steps=100))
    full = fm.train(mem, task, opt, 100, batch_size=8, seed=4, backend=backend)
    half = fm.train(mem, task, opt, 50, batch_size=8, seed=4, backend=backend)
    rest = fm.train(half.memory, task, opt, 50, batch_size=8, seed=4, start_step=50, backend=backend)
    np.testing.assert_array_equal(rest.W, full.W)


def test_training_leaves_the_memory_untouched(backend, rng):
    mem, task = random_problem(rng, 5, 3, 4, np.float64)
    W0 = mem.W.copy()
    run = fm.train(mem, task, fm.SGD(lr=1.0), 10, backend=backend)
    np.testing.assert_array_equal(mem.W, W0)
    assert not np.array_equal(run.W, W0)


@pytest.mark.parametrize("steps, spec, want", [
    (10, "all", list(range(11))),
    (10, "last", [10]),
    (10, 4, [0, 4, 8, 10]),
    (10, [3, 1, 3], [1, 3]),
    (10, [], []),
    (0, "log", [0]),
    (1000, "log", None),
])
def test_record_steps(steps, spec, want):
    got = fm.Record(steps=spec, num=20).resolve(steps)
    if want is None:
        assert got[0] == 0 and got[-1] == steps and len(got) <= 22 and (np.diff(got) > 0).all()
    else:
        np.testing.assert_array_equal(got, want)


def test_run_to_xarray(rng):
    pytest.importorskip("xarray")
    mem, task = random_problem(rng, 6, 3, 4, np.float64)
    run = fm.train(mem, task, fm.SGD(lr=1.0), 20, record=fm.Record(steps=5, metrics=("loss", "margins", "W")))
    ds = run.to_xarray()
    assert ds["margins"].dims == ("step", "token") and ds["W"].shape == (5, 4, 4)
    np.testing.assert_array_equal(ds["step"].values, [0, 5, 10, 15, 20])
    np.testing.assert_array_equal(ds["loss"].values, run.loss)


# A batch's few read-outs E_b W of a large W stream W once: the matrix model's primal step takes
# blas::gemm_few_rows (at most 12 rows, W of 512 KB or more; numba: its plain SGD step reads the
# next batch's rows out of W in its rank pass), the learnable model reads them in its W pass (W
# of 1 MiB or more: 64-row groups, their partial sums added in order). d = 523: a column tail, a last group of 11 rows, W of 1.1 MB in float32.
@pytest.mark.parametrize("batch_size", [1, 16])
@pytest.mark.parametrize("dtype", DTYPES)
def test_reads_of_a_large_W(compiled_model, dtype, batch_size):
    compiled = compiled_model
    from fastmem.memory.models import train_model

    d = 523
    E, U = fm.embeddings.gaussian(20, 5, d, seed=1, dtype=dtype)
    W = fm.kernels.normal((d, d), seed=1, scale=d**-0.5, dtype=dtype)
    task, rec = fm.Task.zipf(20, 5, 1.0), fm.Record(steps="all")
    kw = dict(batch_size=batch_size, seed=3, W=W, record=rec)
    got = train_model("learnable", E, U, task, fm.SGD(lr=0.5), 8, backend=compiled, **kw)
    assert_trajectory(got, lambda be: train_model("learnable", E, U, task, fm.SGD(lr=0.5), 8, backend=be, **kw),
                      dtype, ["loss", "W", "E", "U"])
    mem = fm.AssociativeMemory(E, U, W=W)
    kw = dict(batch_size=batch_size, seed=3, record=rec, representation="primal")
    for opt in (fm.SGD(lr=0.5), fm.SGD(lr=0.5, momentum=0.9)):  # plain SGD: the rank pass reads ahead too
        got = fm.train(mem, task, opt, 8, backend=compiled, **kw)
        assert_trajectory(got, lambda be: fm.train(mem, task, opt, 8, backend=be, **kw), dtype, ["loss", "W"])


# The learnable model's W step is one pass over W (learnable_W_pass: dE = dH W^T and the update,
# 4-row register tiles over a padded W): d = 75 has whole tiles, a row tail and a last vector.
@pytest.mark.parametrize("layernorm", [False, True])
@pytest.mark.parametrize("batch_size", [None, 16], ids=["gd", "b16"])
@pytest.mark.parametrize("opt", [fm.SGD(lr=0.5), fm.Adam(lr=0.01, betas=(0.0, 0.0), eps=1e-4)], ids=["sgd", "adam00"])
@pytest.mark.parametrize("d", [33, 75])
@pytest.mark.parametrize("dtype", DTYPES)
def test_learnable_model_at_vector_widths(compiled_model, dtype, d, opt, batch_size, layernorm):
    compiled = compiled_model
    from fastmem.memory.models import train_model

    E, U = fm.embeddings.gaussian(20, 5, d, seed=d, dtype=dtype)
    W = fm.kernels.normal((d, d), seed=d, scale=d**-0.5, dtype=dtype)
    task = fm.Task.zipf(20, 5, 1.0)
    kw = dict(batch_size=batch_size, seed=3, W=W, layernorm=layernorm, record=fm.Record(steps="all"))
    got = train_model("learnable", E, U, task, opt, 20, backend=compiled, **kw)
    names = ["loss"] if layernorm and not opt.linear else ["loss", "W", "E", "U"]  # LAYERNORM_INVARIANT
    want = assert_trajectory(got, lambda be: train_model("learnable", E, U, task, opt, 20, backend=be, **kw), dtype,
                             names)
    assert got.status == want.status == "ok"


# Both trained-embedding models at awkward shapes (N = 1, M = 2, a batch of 1, d below a vector
# and not a multiple of 4, a batch of more rows than the W pass's 4-row blocks), every backend.
@pytest.mark.parametrize("layernorm", [False, True])
@pytest.mark.parametrize("opt", [fm.SGD(lr=0.5), fm.Adam(lr=0.01, betas=(0.0, 0.0), eps=1e-4)], ids=["sgd", "adam00"])
@pytest.mark.parametrize("N, M, d, batch_size", [(1, 2, 3, None), (7, 2, 5, 1), (30, 11, 13, 16), (40, 3, 70, None)])
@pytest.mark.parametrize("model", ["learnable", "exponential"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_models_at_awkward_shapes(compiled_model, dtype, model, N, M, d, batch_size, opt, layernorm):
    from fastmem.memory.models import train_model

    E, U = fm.embeddings.gaussian(N, M, d, seed=N + d, dtype=dtype)
    W = fm.kernels.normal((d, d), seed=d, scale=d**-0.5, dtype=dtype)
    task = fm.Task.zipf(N, M, 1.0)
    kw = dict(batch_size=batch_size, seed=5, W=W, layernorm=layernorm, record=fm.Record(steps="all"))
    got = train_model(model, E, U, task, opt, 12, backend=compiled_model, **kw)
    names = ["loss"] if layernorm and not opt.linear else ["loss", "E", "U"] + (["W"] if model == "learnable" else [])
    want = assert_trajectory(got, lambda be: train_model(model, E, U, task, opt, 12, backend=be, **kw), dtype, names)
    assert got.status == want.status == "ok" and got.steps_done == 12


@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_learnable_results_do_not_depend_on_the_thread_count(backend):
    # the fused read-out of the next batch sums 64-row groups of W in group order, whatever the threads
    if not fm.backends()[backend]["available"]:
        pytest.skip(f"{backend} is not available here")
    from fastmem.memory.models import train_model

    if backend == "cpp":
        from fastmem import _core as threads
    else:
        import numba as threads
    d = 600
    E, U = fm.embeddings.gaussian(100, 5, d, seed=0)
    W = fm.kernels.normal((d, d), seed=0, scale=d**-0.5)
    kw = dict(batch_size=16, seed=3, W=W, lr_scale={"W": 1 / d, "E": d**-0.5, "U": d**-0.5}, backend=backend,
              record=fm.Record(steps=10))
    before, runs = threads.get_num_threads(), []
    try:
        for n in (1, 2):
            threads.set_num_threads(n)
            runs.append(train_model("learnable", E, U, fm.Task.zipf(100, 5, 2.0), fm.Adam(lr=1.0, betas=(0, 0)), 40,
                                    **kw))
    finally:
        threads.set_num_threads(before)
    for name in ("W", "E", "U", "loss"):
        np.testing.assert_array_equal(getattr(runs[0], name), getattr(runs[1], name))
