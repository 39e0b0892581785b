"""fm.transformer: the induction-head sampler, the two-layer transformer's loss and gradients on
every backend against the float64 numpy reference and an independent PyTorch implementation,
the W_O^2-only step as the associative memory it is, the probes, bad input."""

import numpy as np
import pytest

import fastmem as fm
from fastmem.errors import InvalidArgumentError
from fastmem.transformer import Bigrams, InductionHeads, Record, TwoLayer

from cases import DTYPES, RTOL, assert_close
from conftest import BACKENDS, COMPILED, _require

ALL_TRAINABLE = ("wE", "WK1", "WK2", "WO2", "WU")
# (B, T, d, k, triggers, outputs): B = 1, T = 1, d = 1, k = 1, T not a multiple of the causal
# block (64), a vocabulary of 2 (synthetic)
SHAPES = [
    pytest.param(1, 1, 3, 1, "fixed", "uniform", None, id="B1-T1"),
    pytest.param(3, 20, 8, 3, "random", "uniform", None, id="random"),
    pytest.param(2, 70, 5, 2, "fixed", "bigram", None, id="T70-bigram"),
    pytest.param(4, 9, 1, 1, "random", "bigram", 2, id="d1-V2"),
    pytest.param(2, 130, 16, 5, "fixed", "uniform", None, id="T130"),
]


def _runs(backend):
    """The backend, skipped with its reason where it is unavailable or lacks these kernels."""
    _require(backend)
    lacks = fm.backends()[backend].get("lacks", {})
    if any(k.startswith("ihead_") for k in lacks):
        pytest.skip(f"backend {backend} lacks fastmem.transformer's kernels")
    return backend


def _task(T, k, triggers, outputs, V=None):
    bg = Bigrams.zipf(V, seed=3) if V else None
    return InductionHeads(k=k, seq_len=T, bigrams=bg, triggers=triggers, outputs=outputs)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("B,T,d,k,triggers,outputs,V", SHAPES)
def test_sampler_matches_reference(backend, B, T, d, k, triggers, outputs, V):
    _runs(backend)
    task = _task(T, k, triggers, outputs, V)
    got = task.sample(B, seed=11, step=5, backend=backend)
    want = task.sample(B, seed=11, step=5, backend="numpy")
    assert np.array_equal(got.z, want.z) and np.array_equal(got.outs, want.outs)


def test_sampler_follows_the_task():
    task = InductionHeads(k=5, seq_len=256)
    batches = [task.sample(512, seed=0, step=s) for s in range(4)]
    z = np.concatenate([b.z for b in batches])
    outs = np.concatenate([b.outs for b in batches])
    trig = task.trigger_tokens
    assert [task.bigrams.chars[i] for i in trig] == ["a", "o", "t", "e", " "]
    is_trig = np.isin(z[:, :-1], trig)
    assert np.array_equal(outs > 0, is_trig)
    for b in range(0, len(z), 97):  # each trigger's next token is the same throughout its sequence
        for q in trig:
            nxt = z[b, 1:][z[b, :-1] == q]
            assert len(set(nxt.tolist())) <= 1
            assert np.array_equal(outs[b][z[b, :-1] == q], np.arange(1, len(nxt) + 1))
    # the authors' sampler: 0.3136 +- 0.0011 trigger positions, 0.2950 loss positions over 30,000
    # sequences (docs/transformer.md (b)); these 2,048 have a standard error of ~0.0042
    assert abs((outs >= 1).mean() - 0.3136) < 0.0126
    assert abs((outs >= 2).mean() - 0.2950) < 0.0126
    assert np.array_equal(task.sample(64, seed=0, step=2).z, batches[2].z[:64]) is False  # B enters the counter
    again = task.sample(512, seed=0, step=2)
    assert np.array_equal(again.z, batches[2].z)
    assert not np.array_equal(task.sample(512, seed=1, step=2).z, batches[2].z)


def test_random_triggers_follow_pi():
    task = InductionHeads(k=1, seq_len=1, triggers="random")
    b = task.sample(20000, seed=4)
    # with k = 1 the trigger is the first draw of pi; z_0 ~ pi too, so P(outs > 0) = sum pi^2
    pi = task.bigrams.pi
    frac = (b.outs[:, 0] > 0).mean()
    assert abs(frac - (pi ** 2).sum()) < 4 * np.sqrt(frac * (1 - frac) / 20000)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,d,k,triggers,outputs,V", SHAPES)
@pytest.mark.parametrize("loss", ["head", "all"])
def test_loss_and_grads_match_reference(backend, dtype, B, T, d, k, triggers, outputs, V, loss):
    _runs(backend)
    task = _task(T, k, triggers, outputs, V)
    model = TwoLayer(d=d, V=task.V, seq_len=T, dtype=dtype, seed=2)
    batch = task.sample(B, seed=1)
    if loss == "head" and not (batch.outs >= 2).any():
        with pytest.raises(InvalidArgumentError, match="batch"):
            model.loss_and_grads(batch, ALL_TRAINABLE, loss, backend=backend)
        return
    L, g = model.loss_and_grads(batch, ALL_TRAINABLE, loss, backend=backend)
    ref = TwoLayer(d=d, V=task.V, seq_len=T, dtype=np.float64, seed=2)
    L0, g0 = ref.loss_and_grads(batch, ALL_TRAINABLE, loss, backend="numpy")
    assert_close(L, L0, dtype)
    for name in ALL_TRAINABLE:
        assert g[name].dtype == dtype
        assert_close(g[name], g0[name], dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_forward_matches_reference(backend):
    _runs(backend)
    from fastmem.backends import get
    from fastmem.transformer.model import rows_of

    task = _task(70, 3, "fixed", "uniform")
    model = TwoLayer(d=6, seq_len=70, dtype=np.float64, seed=5)
    batch = task.sample(3, seed=2)
    rows = rows_of(batch.outs, "head")
    n = int(rows.ptr[-1])
    out = {}
    for be in (backend, "numpy"):
        Hr, A2 = np.empty((n, 6)), np.empty((n, 6))
        get(be, kernel="ihead_rows_forward").ihead_rows_forward(model.weights, batch.z, rows, Hr, A2)
        out[be] = (Hr, A2)
    for a, b in zip(out[backend], out["numpy"]):
        assert_close(a, b, np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_is_the_same_run_twice(backend):
    """float32 gradients summed over threads in a fixed order: the same call twice is bit-identical."""
    _runs(backend)
    task = InductionHeads(k=5, seq_len=64)
    model = TwoLayer(d=16, seq_len=64, seed=0)
    runs = [fm.transformer.train(model, task, 5.0, 8, batch_size=48, train="all", backend=backend,
                                 record=Record(steps=[8], probes=("wk2",))) for _ in range(3)]
    for r in runs[1:]:
        assert np.array_equal(r.loss, runs[0].loss)
        assert np.array_equal(r.model.weights.WK1, runs[0].model.weights.WK1)


# (n rows, d, V, runs): one row, V = 2, one run, n not a multiple of the 256-row tile, many runs
WO2_SHAPES = [(1, 3, 2, 1), (257, 8, 5, 3), (600, 16, 65, 2), (40, 4, 7, 9)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,V,R", WO2_SHAPES)
def test_wo2_grads_match_reference(backend, dtype, n, d, V, R):
    """The W_O^2 memory step of R runs on a shared forward against the float64 reference."""
    _runs(backend)
    from fastmem.backends import get

    rng = np.random.default_rng(n + R)
    Hr, A2 = rng.normal(size=(n, d)).astype(dtype), rng.normal(size=(n, d)).astype(dtype)
    WU, y = rng.normal(size=(V, d)).astype(dtype), rng.integers(0, V, n)
    Ws = (0.3 * rng.normal(size=(R, d, d))).astype(dtype)
    out = []
    for be, dt in ((backend, dtype), ("numpy", np.float64)):
        G, L = np.full((R, d, d), np.nan, dt), np.full(R, np.nan)
        get(be, kernel="ihead_wo2_grads").ihead_wo2_grads(*(a.astype(dt) for a in (Hr, A2, WU)), y, Ws.astype(dt),
                                                           1.0 / n, G, L)
        out.append((G, L))
    (G, L), (G0, L0) = out
    assert G.dtype == dtype
    assert_close(G, G0, dtype)
    assert_close(L, L0, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wo2_grads_are_the_memorys_gradient(backend):
    """Each run's G is the gradient of the W_O^2-only loss: the full model's dL/dW_O2, transposed."""
    _runs(backend)
    from fastmem.backends import get
    from fastmem.transformer.model import rows_of

    task = _task(40, 3, "fixed", "uniform")
    models = [TwoLayer(d=6, seq_len=40, dtype=np.float64, seed=s) for s in (5, 6)]
    batch = task.sample(4, seed=2)
    rows = rows_of(batch.outs, "head")
    n = int(rows.ptr[-1])
    Hr, A2 = np.empty((n, 6)), np.empty((n, 6))
    w0 = models[0].weights
    get("numpy", kernel="ihead_rows_forward").ihead_rows_forward(w0, batch.z, rows, Hr, A2)
    y = batch.z[:, 1:][np.repeat(np.arange(4), np.diff(rows.ptr)), rows.idx]
    # run 2: model 0 with model 1's W_O2 (everything else frozen, as in a sweep)
    Ws = np.ascontiguousarray(np.stack([w0.WO2.T, models[1].weights.WO2.T]))
    G, L = np.empty((2, 6, 6)), np.empty(2)
    get(backend, kernel="ihead_wo2_grads").ihead_wo2_grads(Hr, A2, w0.WU, y, Ws, 1.0 / n, G, L)
    for r in range(2):
        m = models[0].copy()
        m.weights = m.weights._replace(WO2=np.ascontiguousarray(Ws[r].T))
        L0, g0 = m.loss_and_grads(batch, ("WO2",), "head", backend="numpy")
        assert abs(L[r] - L0) <= 1e-12 * abs(L0)
        assert_close(G[r], g0["WO2"].T, np.float64)


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("loss", ["head", "all"])
def test_gradients_equal_pytorch(loss):
    """Every trainable gradient against autograd on an independent PyTorch model, float64."""
    import torch_transformer as tt

    task = InductionHeads(k=4, seq_len=48)
    model = TwoLayer(d=12, seq_len=48, dtype=np.float64, seed=7)
    batch = task.sample(6, seed=3)
    L, g = model.loss_and_grads(batch, ALL_TRAINABLE, loss)
    Lt, gt = tt.grads(tt.TwoLayer(model.weights), batch, ALL_TRAINABLE, head=loss == "head")
    assert abs(L - Lt) <= 1e-12 * abs(Lt)
    for name in ALL_TRAINABLE:
        err = np.abs(g[name] - gt[name]).max() / np.abs(gt[name]).max()
        assert err <= 1e-10, (name, err)


@pytest.mark.parametrize("train", ["wo2", "all"])
def test_trajectory_equals_pytorch_within_naive_float32(train):
    """20 steps on the same batches: fastmem float32 within twice a naive float32 PyTorch run's
    distance from the float64 run (and float64 to 1e-9)."""
    import torch_transformer as tt

    task = InductionHeads(k=3, seq_len=32)
    lr = 20.0 if train == "wo2" else 2.0
    names = ("WO2",) if train == "wo2" else ("WK1", "WK2", "WO2")
    m64 = TwoLayer(d=16, seq_len=32, dtype=np.float64, seed=1)
    batches = [task.sample(16, seed=9, step=t) for t in range(20)]
    want = np.array(tt.train(tt.TwoLayer(m64.weights), batches, names, lr))
    naive = np.array(tt.train(tt.TwoLayer(m64.weights, torch.float32), batches, names, lr))
    rec = Record(steps=[0])
    got64 = fm.transformer.train(m64, task, lr, 20, batch_size=16, train=train, seed=9, record=rec).loss
    m32 = TwoLayer(d=16, seq_len=32, dtype=np.float32, seed=1)
    got32 = fm.transformer.train(m32, task, lr, 20, batch_size=16, train=train, seed=9, record=rec).loss
    assert np.abs(got64 - want).max() <= 1e-9 * np.abs(want).max()
    naive_err = np.abs(naive - want).max()
    assert np.abs(got32 - want).max() <= 2 * naive_err + 1e-6


def test_wo2_step_is_the_memory_step():
    """One step of the W_O^2-only path (softmax_xent_grad + sgd_rank_update on the frozen
    forward) equals SGD with the dense gradient, and train_lrs equals one run per lr."""
    task = InductionHeads(k=5, seq_len=40)
    model = TwoLayer(d=10, seq_len=40, dtype=np.float64, seed=3)
    runs = fm.transformer.train_lrs(model, task, [1.0, 30.0], 1, batch_size=8, seed=2, record=Record(steps=[1]))
    batch = task.sample(8, seed=2, step=0)
    L, g = model.loss_and_grads(batch, "wo2")
    for run, lr in zip(runs, (1.0, 30.0)):
        W0 = model.weights.WO2
        want = W0 - lr * (g["WO2"] + 1e-4 * W0)
        assert np.abs(run.model.weights.WO2 - want).max() <= 1e-12 * np.abs(want).max()
        assert abs(run.loss[0] - L) <= 1e-12 * L
    alone = fm.transformer.train(model, task, 30.0, 1, batch_size=8, seed=2, record=Record(steps=[1]))
    assert np.array_equal(alone.model.weights.WO2, runs[1].model.weights.WO2)


def test_momentum_matches_pytorch():
    import torch_transformer as tt

    task = InductionHeads(k=3, seq_len=24)
    model = TwoLayer(d=8, seq_len=24, dtype=np.float64, seed=4)
    batches = [task.sample(8, seed=1, step=t) for t in range(5)]
    for train, names in (("wo2", ("WO2",)), ("all", ("WK1", "WK2", "WO2"))):
        want = tt.train(tt.TwoLayer(model.weights), batches, names, 3.0, momentum=0.9, weight_decay=1e-3)
        got = fm.transformer.train(model, task, 3.0, 5, batch_size=8, train=train, momentum=0.9, weight_decay=1e-3,
                                   seed=1, record=Record(steps=[0])).loss
        assert np.abs(got - want).max() <= 1e-10 * max(want)


def test_probes_are_the_memories():
    task = InductionHeads(k=5, seq_len=16)
    model = TwoLayer(d=8, seq_len=16, dtype=np.float64, seed=0)
    w = model.weights
    m = fm.transformer.probes(model, task)
    logits = (w.WU @ w.WO2 @ w.WV2 @ w.wE.T).T  # l(x) = W_U W_O2 W_V2 w_E(x)
    other = np.where(np.eye(65, dtype=bool), -np.inf, logits).max(1)
    assert np.allclose(m["wo2"], np.diag(logits) - other, rtol=1e-12, atol=1e-12)
    Q = task.trigger_tokens
    S = w.wE[Q] @ w.WK2 @ w.WO1 @ w.WV1 @ w.wE[Q].T
    assert np.allclose(m["wk2"], np.diag(S) - np.where(np.eye(5, dtype=bool), -np.inf, S).max(1), rtol=1e-12)
    Sp = w.P[1:] @ w.WK1 @ w.P[:-1].T  # position t (1..T-1) against s = 0..T-2, target t - 1
    assert np.allclose(m["wk1"], np.diag(Sp) - np.where(np.eye(15, dtype=bool), -np.inf, Sp).max(1), rtol=1e-12)


def test_run_records_and_wo2_learns():
    task = InductionHeads(k=5, seq_len=64)
    model = TwoLayer(d=32, seq_len=64, seed=0)
    run = fm.transformer.train(model, task, 10.0, 30, batch_size=64, record=Record(steps=10, other_loss=True))
    assert run.status == "ok" and run.loss.shape == (30,)
    assert list(run.steps) == [0, 10, 20, 30]
    assert run.margins["wo2"].shape == (4, 65) and run.margins["wk2"].shape == (4, 5)
    assert run.recall["wo2"][-1] > run.recall["wo2"][0] + 0.1
    assert run.loss[-5:].mean() < run.loss[0] - 0.5
    assert np.array_equal(run.margins["wk1"][0], run.margins["wk1"][-1])  # W_K frozen
    assert np.isfinite(run.other_loss).all()
    authors = fm.transformer.train(model, task, 50.0, 3, batch_size=64, record=Record(pairing="authors"))
    assert list(authors.steps) == [0, 1, 2]


def test_diverged_run_keeps_its_records():
    task = InductionHeads(k=5, seq_len=32)
    model = TwoLayer(d=8, seq_len=32, seed=0)
    run = fm.transformer.train(model, task, 1e30, 10, batch_size=8, train="all")
    assert run.status == "diverged" and run.steps_done < 10 and len(run.loss) == run.steps_done
    assert len(run.steps) >= 1


@pytest.mark.parametrize("make, arg", [
    (lambda: InductionHeads(k=66), "k"),
    (lambda: InductionHeads(k=0), "k"),
    (lambda: InductionHeads(seq_len=0), "seq_len"),
    (lambda: InductionHeads(triggers="sometimes"), "triggers"),
    (lambda: InductionHeads(k=2, triggers=[3, 3]), "triggers"),
    (lambda: InductionHeads(outputs="zipf"), "outputs"),
    (lambda: InductionHeads(bigrams="shakespeare"), "bigrams"),
    (lambda: Bigrams(np.ones(3), np.array([[1, 1, 0], [0, 0, 0], [1, 0, 1.0]])), "bigram"),
    (lambda: Bigrams(np.ones(3), np.array([[1, -1, 1], [1, 1, 1], [1, 0, 1.0]])), "bigram"),
    (lambda: Bigrams(np.ones(4), np.ones((3, 3))), "unigram"),
    (lambda: Bigrams(np.ones(3), np.ones((3, 2))), "bigram"),
    (lambda: TwoLayer(d=0), "d"),
    (lambda: TwoLayer(dtype=np.int32), "dtype"),
    (lambda: fm.transformer.train(TwoLayer(d=4, seq_len=8), InductionHeads(seq_len=8), 1.0, 1, train="W_Q"), "train"),
    (lambda: fm.transformer.train(TwoLayer(d=4, seq_len=8), InductionHeads(seq_len=8), 1.0, 1, train=()), "train"),
    (lambda: fm.transformer.train(TwoLayer(d=4, seq_len=8), InductionHeads(seq_len=8), float("nan"), 1), "lr"),
    (lambda: fm.transformer.train(TwoLayer(d=4, seq_len=8), InductionHeads(seq_len=8), 0.0, 1), "lr"),
    (lambda: fm.transformer.train(TwoLayer(d=4, seq_len=8), InductionHeads(seq_len=8), 1.0, 1, momentum=np.inf),
     "momentum"),
    (lambda: fm.transformer.train(TwoLayer(d=4, seq_len=8), InductionHeads(seq_len=9), 1.0, 1), "task"),
    (lambda: fm.transformer.train(TwoLayer(d=4, seq_len=8), InductionHeads(seq_len=8), 1.0, 1, loss="tail"), "loss"),
])
def test_bad_input_is_named(make, arg):
    with pytest.raises(InvalidArgumentError, match=arg):
        make()


def test_from_text():
    bg = Bigrams.from_text("abracadabra")
    assert bg.chars == ("a", "b", "c", "d", "r") and np.allclose(bg.C.sum(1), 1)
    assert bg.C[0, 1] == pytest.approx(2 / 4)  # "a" is followed by b, c, d, b


def test_fastmem_sweep_runs_an_ihead_grid_and_resumes(tmp_path):
    """`fastmem sweep GRID.toml` with experiment = "ihead": the W_O^2 rows of one group equal
    direct runs, the "all" rows too, and a rerun runs nothing again."""
    import subprocess
    import sys

    grid = tmp_path / "grid.toml"
    grid.write_text('experiment = "ihead"\n[grid]\nd = 8\nlr = [5, 20]\ntrain = ["wo2", "all"]\nsteps = 6\n'
                    'batch = 8\nT = 24\nk = 3\ndtype = "float64"\n')
    cmd = [sys.executable, "-m", "fastmem", "sweep", str(grid), "--out", str(tmp_path / "out"), "--workers", "2",
           "--quiet"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
    assert first.returncode == 0, first.stderr
    df = fm.load_sweep(tmp_path / "out")
    assert len(df) == 4 and (df["status"] == "ok").all()
    task = InductionHeads(k=3, seq_len=24)
    model = TwoLayer(d=8, seq_len=24, dtype=np.float64, seed=0)
    for train in ("wo2", "all"):
        run = fm.transformer.train(model, task, 20.0, 6, batch_size=8, train=train, record=Record(steps=[6]))
        row = df[(df["lr"] == 20) & (df["train"] == train)].iloc[0]
        assert row["loss"] == pytest.approx(run.loss[-1], rel=1e-12)
        assert row["recall_wo2"] == pytest.approx(run.recall["wo2"][-1])
    chunks = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "runs").iterdir()}
    again = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "runs").iterdir()} == chunks
