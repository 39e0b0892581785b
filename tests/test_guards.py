"""Nothing silently wrong (issue 18, items 9-12): non-finite input, stale facts about inputs,
tampered state files, out-of-range integers and odd dtypes are refused by name."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

import fastmem as fm


def _problem(dtype=np.float64, N=6, M=3, d=4):
    E, U = fm.embeddings.gaussian(N, M, d, seed=0, dtype=dtype)
    return E, U, fm.Task.zipf(N, M, 1.0)


def _poison(a, value):
    a = a.copy()
    a.flat[a.size // 2] = value
    return a


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("bad", ["W", "E", "U"])
def test_step_refuses_non_finite_input_and_leaves_W_alone(backend, bad, value):
    E, U, _ = _problem()
    arrays = {"W": np.zeros((4, 4)), "E": E, "U": U}
    arrays[bad] = _poison(arrays[bad], value)
    before = arrays["W"].copy()
    with pytest.raises(fm.InvalidArgumentError, match=f"^{bad}: expected finite values"):
        fm.sgd_step(arrays["W"], arrays["E"], arrays["U"], [0, 1], [0, 1], 0.5, backend=backend)
    np.testing.assert_array_equal(arrays["W"], before)


def test_finite_check_is_exact_where_the_sum_overflows():
    big = np.full((4, 4), 3e38, dtype=np.float32)  # finite entries whose float32 sum is inf
    assert fm._validate.all_finite(big) and not fm._validate.all_finite(_poison(big, np.nan))


@pytest.mark.parametrize("alpha", [np.nan, np.inf, "1.0", 1j])
def test_sgd_rank_update_refuses_a_bad_alpha(backend, alpha):
    W = np.zeros((3, 3))
    with pytest.raises(fm.InvalidArgumentError, match="^alpha: expected a finite real number"):
        fm.kernels.sgd_rank_update(W, np.ones((2, 3)), np.ones((2, 3)), alpha, backend=backend)
    assert not W.any()


@pytest.mark.parametrize("w", [[1.0, np.nan, 1.0], [1.0, np.inf, 1.0], ["1", "1", "1"]])
def test_softmax_xent_grad_refuses_bad_weights(backend, w):
    with pytest.raises(fm.InvalidArgumentError, match="^w: expected"):
        fm.kernels.softmax_xent_grad(np.zeros((3, 4)), np.zeros((5, 4)), [0, 1, 1], w=np.array(w), backend=backend)


def test_memory_owns_its_embeddings_so_no_fact_about_them_goes_stale(backend):
    # one-hot E: the memory decides so at construction; the caller then changes its array
    N, M, d = 5, 3, 5
    E = np.eye(N, d)
    U = np.random.default_rng(1).standard_normal((M, d))
    task = fm.Task.zipf(N, M, 1.0)
    mem = fm.AssociativeMemory(E, U)
    fresh = fm.AssociativeMemory(E.copy(), U)
    E[0, :] = 0.3
    U[0, 0] = np.nan
    assert not mem.E.flags.writeable and not mem.U.flags.writeable
    assert fm.loss(mem, task, backend=backend) == fm.loss(fresh, task, backend=backend)
    a = fm.train(mem, task, fm.SGD(lr=1.0), 20, batch_size=4, backend=backend)
    b = fm.train(fresh, task, fm.SGD(lr=1.0), 20, batch_size=4, backend=backend)
    np.testing.assert_array_equal(a.W, b.W)
    mem.W[0, 0] = np.inf  # W is the caller's to change: checked at each call
    with pytest.raises(fm.InvalidArgumentError, match="^memory.W: expected finite"):
        fm.train(mem, task, fm.SGD(lr=1.0), 2, backend=backend)



def test_a_new_E_or_U_brings_its_own_facts(backend):
    """Assigning mem.E (one-hot -> dense, dense -> one-hot) or mem.U: every backend computes with
    the new arrays, exactly as a memory built on them."""
    N, M, d = 5, 3, 5
    rng = np.random.default_rng(2)
    onehot, dense, U2 = np.eye(N, d), rng.standard_normal((N, d)), rng.standard_normal((M, d))
    task = fm.Task.zipf(N, M, 1.0)
    W = rng.standard_normal((d, d))
    for first, then in ((onehot, dense), (dense, onehot)):
        mem = fm.AssociativeMemory(first, rng.standard_normal((M, d)), W=W)
        mem.E, mem.U = then, U2
        built = fm.AssociativeMemory(then, U2, W=W)
        assert (mem.onehot is None) == (built.onehot is None)
        assert fm.loss(mem, task, backend=backend) == fm.loss(built, task, backend=backend)
        a = fm.train(mem, task, fm.SGD(lr=1.0), 10, batch_size=4, backend=backend)
        b = fm.train(built, task, fm.SGD(lr=1.0), 10, batch_size=4, backend=backend)
        np.testing.assert_array_equal(a.W, b.W)
    with pytest.raises(fm.InvalidArgumentError, match="^E: expected"):
        mem.E = np.zeros((N, d + 1))
    with pytest.raises(ValueError):  # the memory's copy stays read-only
        mem.E.flags.writeable = True


@pytest.mark.parametrize("call, name", [
    (lambda W, E, U, t: fm.sgd_step(W, E, U, [0, 1], [0, 1], lr=1e39), "lr"),  # inf in float32
    (lambda W, E, U, t: fm.kernels.sgd_rank_update(W, E[:2], np.ones((2, 4), np.float32), -1e39), "alpha"),
    (lambda W, E, U, t: fm.train(fm.AssociativeMemory(E, U, W=W), t, fm.SGD(lr=1e39), 3), "optimizer.lr"),
    (lambda W, E, U, t: fm.train(fm.AssociativeMemory(E, U, W=W), t, fm.Adam(lr=0.1, eps=1e-50), 3),
     "optimizer.eps"),  # 0 in float32
    (lambda W, E, U, t: fm.train(fm.AssociativeMemory(E, U, W=W), t, fm.SGD(lr=1.0, weight_decay=1e39), 3),
     "optimizer.weight_decay"),
])
def test_parameters_are_checked_in_the_kernels_precision(backend, call, name):
    E, U, task = _problem(np.float32)
    W = np.zeros((4, 4), np.float32)
    with fm.use_backend(backend), pytest.raises(fm.InvalidArgumentError, match=rf"^{re.escape(name)}: expected a "
                                                                                 "magnitude that float32 holds"):
        call(W, E, U, task)
    assert (W == 0).all()
    fm.sgd_step(W.astype(np.float64), E.astype(np.float64), U.astype(np.float64), [0], [0], lr=1e39)  # float64 holds it


@pytest.mark.parametrize("N, d", [(0, 3), (3, 0)])
def test_empty_memories_are_refused(N, d):
    with pytest.raises(fm.InvalidArgumentError, match="^E: expected a non-empty array"):
        fm.AssociativeMemory(np.zeros((N, d)), np.ones((2, d)))


# ---- state files -----------------------------------------------------------------------------

def _saved_state(tmp_path, optimizer=None, representation="primal"):
    E, U, task = _problem()
    optimizer = optimizer or fm.SGD(lr=0.5, momentum=0.9)
    run = fm.train(fm.AssociativeMemory(E, U), task, optimizer, 5, batch_size=2, representation=representation)
    path = tmp_path / "state.npz"
    run.state.save(path)
    return path, run


def _rewrite(path, meta=None, drop=(), arrays=None):
    with np.load(path, allow_pickle=False) as f:
        old_meta = json.loads(str(f["__meta__"]))
        data = {k: f[k] for k in f.files if k != "__meta__" and k not in drop}
    data.update(arrays or {})
    np.savez(path, __meta__=np.array(json.dumps({**old_meta, **(meta or {})})), **data)


TAMPER = {
    "c NaN": dict(meta={"c": float("nan").hex()}),
    "c not hex": dict(meta={"c": "one"}),
    "negative step": dict(meta={"step": -5}),
    "step 2**63": dict(meta={"step": 2**63}),
    "seed 2**64": dict(meta={"seed": 2**64}),
    "step a string": dict(meta={"step": "5"}),
    "unknown representation": dict(meta={"representation": "quantum"}),
    "unknown optimizer": dict(meta={"optimizer": "lbfgs"}),
    "optimizer that disagrees with the arrays": dict(meta={"optimizer": "adam"}),
    "format 99": dict(meta={"format": 99}),
    "missing key": dict(meta={"opt_t": None}),
    "W missing": dict(drop=("W",)),
    "foreign array": dict(arrays={"Z": np.zeros((4, 3))}),
    "NaN moment": dict(arrays={"m": np.full((4, 4), np.nan)}),
    "moment of another shape": dict(arrays={"m": np.zeros((4, 5))}),
    "integer W": dict(arrays={"W": np.zeros((4, 4), dtype=np.int64)}),
}


def test_a_state_that_could_unpack_to_any_size_is_refused_unread(tmp_path):
    path, run = _saved_state(tmp_path)
    with np.load(path, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    data["W"] = np.zeros((3000, 3000))  # 72 MB of zeros in a file of ~100 KB
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, **data)
    assert bomb.stat().st_size < 1e6
    with pytest.raises(fm.InvalidStateError, match="compressed members"):
        fm.TrainState.load(bomb)


def test_an_adam_state_is_checked_for_its_invariants(tmp_path):
    """Adam's v is a running mean of squares: a negative entry is refused, not resumed into divergence."""
    path, run = _saved_state(tmp_path, optimizer=fm.Adam(lr=0.1))
    v = run.state.arrays["v"].copy()
    v.flat[3] = -1e-3
    _rewrite(path, arrays={"v": v})
    with pytest.raises(fm.InvalidStateError, match="v >= 0"):
        fm.TrainState.load(path)


@pytest.mark.parametrize("how", TAMPER)
def test_tampered_state_files_are_refused_by_one_error(tmp_path, how):
    path, _ = _saved_state(tmp_path)
    spec = dict(TAMPER[how])
    if how == "missing key":
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["__meta__"]))
        del meta["opt_t"]
        _rewrite(path, meta={})
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files if k != "__meta__"}
        np.savez(path, __meta__=np.array(json.dumps(meta)), **data)
    else:
        _rewrite(path, **spec)
    with pytest.raises(fm.InvalidStateError, match=re.escape(str(path))):
        fm.TrainState.load(path)


@pytest.mark.parametrize("how", ["not a zip", "truncated", "empty", "bad JSON header", "no header", "pickled header"])
def test_unreadable_state_files_are_refused_by_one_error(tmp_path, how):
    path, _ = _saved_state(tmp_path)
    raw = path.read_bytes()
    if how == "not a zip":
        path.write_bytes(b"\x93NUMPY" + raw[:200])
    elif how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "bad JSON header":
        _rewrite(path)
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files if k != "__meta__"}
        np.savez(path, __meta__=np.array("{not json"), **data)
    elif how == "no header":
        np.savez(path, W=np.zeros((4, 4)))
    else:
        np.savez(path, __meta__=np.array([{"step": 1}], dtype=object), W=np.zeros((4, 4)))
    with pytest.raises(fm.InvalidStateError) as info:
        fm.TrainState.load(path)
    assert "allow_pickle" not in str(info.value)
    assert isinstance(info.value, fm.InvalidArgumentError)


def test_a_state_resumes_only_under_its_own_optimizer(tmp_path):
    path, run = _saved_state(tmp_path, fm.SGD(lr=0.5, momentum=0.9))
    E, U, task = _problem()
    state = fm.TrainState.load(path)
    mem = fm.AssociativeMemory(E, U)
    with pytest.raises(fm.InvalidArgumentError, match="^resume: expected a state of adam .*got a state of sgd-momentum"):
        fm.train(mem, task, fm.Adam(lr=0.1), 3, batch_size=2, resume=state)
    with pytest.raises(fm.InvalidArgumentError, match="^resume: expected a state of sgd .*sgd-momentum"):
        fm.train(mem, task, fm.SGD(lr=0.5), 3, batch_size=2, resume=state)
    again = fm.train(mem, task, fm.SGD(lr=0.5, momentum=0.9), 3, batch_size=2, resume=state)
    assert again.status == "ok" and again.steps[-1] == 8


def test_format_1_states_still_load(tmp_path):
    path, run = _saved_state(tmp_path, fm.Adam(lr=0.1))
    _rewrite(path, meta={"format": 1})
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["__meta__"]))
        data = {k: f[k] for k in f.files if k != "__meta__"}
    del meta["optimizer"]
    np.savez(path, __meta__=np.array(json.dumps(meta)), **data)
    assert fm.TrainState.load(path).optimizer == "adam"


def test_format_2_dual_states_load_their_momentum_under_its_new_names(tmp_path):
    # formats 1 and 2 called the dual momentum buffers B and V (now mA and mZ)
    opt = fm.SGD(lr=0.5, momentum=0.9)
    path, run = _saved_state(tmp_path, opt, representation="dual")
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["__meta__"]))
        data = {{"mA": "B", "mZ": "V"}.get(k, k): f[k] for k in f.files if k != "__meta__"}
    np.savez(path, __meta__=np.array(json.dumps({**meta, "format": 2})), **data)
    state = fm.TrainState.load(path)
    assert np.array_equal(state.mA, run.state.mA) and np.array_equal(state.mZ, run.state.mZ)
    E, U, task = _problem()
    again = fm.train(fm.AssociativeMemory(E, U), task, opt, 3, batch_size=2, resume=state)
    want = fm.train(fm.AssociativeMemory(E, U), task, opt, 3, batch_size=2, resume=run.state)
    assert np.array_equal(again.loss, want.loss) and np.array_equal(again.state.Z, want.state.Z)


# ---- integers, dtypes, CMD, the command line -------------------------------------------------

@pytest.mark.parametrize("kwargs, name", [
    (dict(seed=2**64), "seed"),
    (dict(start_step=2**63), "start_step"),
    (dict(start_step=2**63 - 5), "start_step"),
])
def test_train_refuses_integers_the_core_cannot_hold(backend, kwargs, name):
    E, U, task = _problem()
    with pytest.raises(fm.InvalidArgumentError, match=f"^{name}: expected an integer below"):
        fm.train(fm.AssociativeMemory(E, U), task, fm.SGD(lr=1.0), 10, batch_size=2, backend=backend, **kwargs)


def test_sample_tokens_refuses_out_of_range_counters():
    task = fm.Task.zipf(6, 3)
    with pytest.raises(fm.InvalidArgumentError, match="^seed: "):
        fm.kernels.sample_tokens(task, 2, 2, seed=2**64)
    with pytest.raises(fm.InvalidArgumentError, match="^start_step: "):
        fm.kernels.sample_tokens(task, 10, 2, start_step=2**63 - 5)


@pytest.mark.parametrize("make, name", [
    (lambda: fm.Task(np.array([0.5, 0.5]) + 0j, [0, 1]), "p"),
    (lambda: fm.Task(["0.5", "0.5"], [0, 1]), "p"),
    (lambda: fm.train_many(np.ones((2, 3)), np.ones((2, 3)), np.zeros((1, 3, 3)), [0.5, 0.5], [0, 1], "1.0", 2),
     "lr"),
    (lambda: fm.train_many(np.ones((2, 3)), np.ones((2, 3)), np.zeros((1, 3, 3)), [0.5, 0.5], [0, 1], 1 + 0j, 2),
     "lr"),
    (lambda: fm.sgd_step(np.zeros((3, 3), np.float16), np.ones((2, 3), np.float16), np.ones((2, 3), np.float16),
                     [0], [0], 1.0), "E"),
])
def test_complex_string_and_half_inputs_are_refused_by_name(make, name):
    # a ComplexWarning on the way would be an error too (filterwarnings = error)
    with pytest.raises(fm.InvalidArgumentError, match=f"^{name}: expected (real numbers|dtype float32 or float64)"):
        make()


@pytest.mark.parametrize("scale", [1.0, 1e80, 1e160, 1e300, 1e-80, 1e-160])
def test_cmd_fit_is_scale_free(scale):
    rng = np.random.default_rng(0)
    r = np.cumsum(rng.standard_normal((50, 2)), axis=0)
    X = np.concatenate([r[:, [0]] * np.arange(1, 4) + 1, r[:, [1]] * np.arange(1, 3) - 2], axis=1)
    base, got = fm.cmd.fit(X, 2), fm.cmd.fit(X * scale, 2)
    np.testing.assert_array_equal(got.assignment, base.assignment)
    np.testing.assert_allclose(got.a, base.a, rtol=1e-12)
    np.testing.assert_allclose(got.b / scale, base.b, rtol=1e-12, atol=1e-12)
    assert np.isfinite(got.a).all()


def test_cmd_fit_one_and_zero_parameters():
    X = np.cumsum(np.random.default_rng(0).standard_normal((20, 1)), axis=0)
    res = fm.cmd.fit(X, 1)
    np.testing.assert_allclose(res.a, [1.0])
    np.testing.assert_allclose(res.b, [0.0], atol=1e-12)
    with pytest.raises(fm.InvalidArgumentError, match="^trajectory: expected .*P >= 1"):
        fm.cmd.fit(X[:, :0], 1)


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fastmem", "run", "--steps", "3", *map(str, args)],
                          capture_output=True, text=True, cwd="/")


@pytest.mark.parametrize("args, name", [
    (("--seed", "-1"), "--seed"),
    (("--optimizer", "sign", "--momentum", "0.9"), "--momentum"),
    (("--optimizer", "sgd", "--betas", "0.9", "0.99"), "--betas"),
    (("--optimizer", "adam", "--momentum", "0.5"), "--momentum"),
])
def test_cli_run_refuses_options_it_would_ignore(args, name):
    r = _run_cli(*args)
    assert r.returncode == 2 and r.stderr.startswith(f"fastmem run: error: {name}: expected"), r.stderr


def test_cli_run_checks_out_before_the_run(tmp_path):
    (tmp_path / "f").write_text("x")
    r = _run_cli("--steps", "10000000", "--out", tmp_path / "f" / "m.csv")  # would take minutes
    assert r.returncode == 2 and "--out: expected a file that can be written" in r.stderr
    assert "status" not in r.stdout
