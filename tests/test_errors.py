"""Bad input raises a ValueError that names the argument, on every backend alike."""

import re

import numpy as np
import pytest

import fastmem as fm


def _setup(dtype=np.float64):
    E, U = fm.embeddings.gaussian(6, 3, 4, seed=0, dtype=dtype)
    return E, U, fm.Task.zipf(6, 3, 1.0)


def _nan(a):
    a = a.copy()
    a[0, 0] = np.nan
    return a


@pytest.mark.parametrize("make, name", [
    (lambda E, U: fm.AssociativeMemory(E, U[:, :3]), "U"),
    (lambda E, U: fm.AssociativeMemory(E, U, W=np.zeros((4, 5))), "W"),
    (lambda E, U: fm.AssociativeMemory(E[0], U), "E"),
    (lambda E, U: fm.AssociativeMemory(E.astype(np.float16), U), "E"),
    (lambda E, U: fm.AssociativeMemory(E, U.astype(np.float32)), "U"),
    (lambda E, U: fm.AssociativeMemory(E.astype(object), U), "E"),
    (lambda E, U: fm.AssociativeMemory(_nan(E), U), "E"),
    (lambda E, U: fm.AssociativeMemory(E, U * np.inf), "U"),
    (lambda E, U: fm.AssociativeMemory(E, U, W=_nan(np.zeros((4, 4)))), "W"),
    (lambda E, U: fm.AssociativeMemory(E, U[:1]), "U"),
    (lambda E, U: fm.Task(np.array([0.5, 0.6, -0.1]), [0, 1, 0]), "p"),
    (lambda E, U: fm.Task(np.array([0.5, 0.6]), [0, 1]), "p"),
    (lambda E, U: fm.Task(np.array([0.5, np.nan]), [0, 1]), "p"),
    (lambda E, U: fm.Task(np.array([0.5, 0.5]), [0, 2], M=2), "y"),
    (lambda E, U: fm.Task(np.array([0.5, 0.5]), [0, -1]), "y"),
    (lambda E, U: fm.Task(np.array([0.5, 0.5]), [0.0, 1.0]), "y"),
    (lambda E, U: fm.Task(np.array([0.5, 0.5]), [0, 1, 1]), "y"),
    (lambda E, U: fm.Task(np.array([0.5, 0.5]), [0, 0]), "M"),
    (lambda E, U: fm.SGD(lr=0.0), "lr"),
    (lambda E, U: fm.SGD(lr=-1.0), "lr"),
    (lambda E, U: fm.SGD(lr=float("nan")), "lr"),
    (lambda E, U: fm.SGD(lr=1.0, momentum=1.0), "momentum"),
    (lambda E, U: fm.Adam(lr=1.0, betas=(0.9, 1.5)), "betas[1]"),
    (lambda E, U: fm.Adam(lr=1.0, eps=0.0), "eps"),
    (lambda E, U: fm.SignGD(lr=1.0, weight_decay=-1.0), "weight_decay"),
    (lambda E, U: fm.Cosine(steps=0), "Cosine.steps"),
    (lambda E, U: fm.Record(metrics=("loss", "bogus")), "metrics"),
    (lambda E, U: fm.embeddings.orthogonal(5, 2, d=3), "d"),
])
def test_constructor_errors_name_the_argument(make, name):
    E, U, _ = _setup()
    with pytest.raises(ValueError, match=rf"^{re.escape(name)}: expected"):
        make(E, U)


@pytest.mark.parametrize("kwargs, name", [
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=-3), "batch_size"),
    (dict(batch_size=2.5), "batch_size"),
    (dict(steps=-1), "steps"),
    (dict(steps=2**63), "steps"),  # beyond an int64 step count: named as steps, not start_step
    (dict(seed=-1), "seed"),
    (dict(tokens=np.full((5, 2), 6)), "tokens"),
    (dict(tokens=np.zeros((4, 2), dtype=int)), "tokens"),
    (dict(tokens=np.zeros((5, 2), dtype=int), batch_size=3), "batch_size"),
    (dict(record=fm.Record(steps=[0, 9])), "Record.steps"),
    (dict(record="all"), "record"),
    (dict(chunk=0), "chunk"),
])
def test_train_errors_name_the_argument(backend, kwargs, name):
    E, U, task = _setup()
    mem = fm.AssociativeMemory(E, U)
    args = dict(steps=5, backend=backend)
    args.update(kwargs)
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        fm.train(mem, task, fm.SGD(lr=1.0), **args)


def test_memory_and_task_must_agree(backend):
    E, U, _ = _setup()
    mem = fm.AssociativeMemory(E, U)
    with pytest.raises(ValueError, match="^task: expected N = 6"):
        fm.train(mem, fm.Task.zipf(7, 3), fm.SGD(lr=1.0), 5, backend=backend)
    with pytest.raises(ValueError, match="^task: expected M = 3"):
        fm.loss(mem, fm.Task.zipf(6, 4), backend=backend)


def test_kernel_errors_name_the_argument(backend):
    Q = np.zeros((3, 4))
    U = np.zeros((5, 4))
    with pytest.raises(ValueError, match="^y: expected values in"):
        fm.kernels.softmax_xent_grad(Q, U, [0, 5, 1], backend=backend)
    with pytest.raises(ValueError, match="^U: expected shape"):
        fm.kernels.softmax_xent_grad(Q, U[:, :3], [0, 1, 1], backend=backend)
    with pytest.raises(ValueError, match="^w: expected shape"):
        fm.kernels.softmax_xent_grad(Q, U, [0, 1, 1], w=np.ones(2), backend=backend)
    with pytest.raises(ValueError, match="^U: expected dtype float64"):
        fm.kernels.softmax_xent_grad(Q, U.astype(np.float32), [0, 1, 1], backend=backend)


def test_unknown_and_unavailable_backends():
    with pytest.raises(ValueError, match="^backend: expected one of"):
        fm.loss(fm.AssociativeMemory(*_setup()[:2]), _setup()[2], backend="tpu")
    with fm.use_backend("numpy"):
        E, U, task = _setup()
        assert fm.train(fm.AssociativeMemory(E, U), task, fm.SGD(lr=1.0), 2).backend == "numpy"


def test_compiled_core_rejects_out_of_contract_calls():
    # C++ embedders get the cheap checks too: a mismatched U is refused, not read out of bounds,
    # and the core's argument errors are fm.InvalidArgumentError
    core = pytest.importorskip("fastmem._core")
    Q, U = np.zeros((2, 4)), np.zeros((3, 5))
    out = [np.zeros((2, 4)), np.zeros(2), np.zeros(2), np.zeros(2)]
    with pytest.raises(fm.InvalidArgumentError, match="U must have d columns"):
        core.softmax_xent_grad(Q, U, np.zeros(2, dtype=np.int64), np.ones(2), out[0], *out[1:], 0)


@pytest.mark.parametrize("x, y", [([0, 6], [0, 1]), ([-1, 0], [0, 1]), ([0, 1], [0, 3])])
def test_compiled_core_range_checks_tokens_itself(x, y):
    core = pytest.importorskip("fastmem._core")
    E, U, _ = _setup()
    W = np.zeros((4, 4))
    with pytest.raises(fm.InvalidArgumentError, match="out of"):
        core.sgd_step(W, E, None, None, U, np.array(x, dtype=np.int64), np.array(y, dtype=np.int64), 0.1, False, W)
    assert not W.any()


@pytest.mark.parametrize("opt, match", [
    (fm.SGD(lr=1.0, momentum=0.9), "plain SGD"),
    (fm.Adam(lr=0.1), "betas=\\(0, 0\\)"),
    (fm.SignGD(lr=0.1), "fm.SGD or fm.Adam"),
    (fm.SGD(lr=1.0, schedule=fm.Cosine(10)), "a constant learning rate"),  # not run silently at lr
])
def test_the_models_name_an_optimizer_they_do_not_run(opt, match):
    from fastmem.memory.models import train_model

    E, U = fm.embeddings.gaussian(6, 3, 4, seed=0)
    with pytest.raises(fm.InvalidArgumentError, match=f"optimizer: expected .*{match}"):
        train_model("learnable", E, U, fm.Task.zipf(6, 3), opt, 2, backend="numpy")
