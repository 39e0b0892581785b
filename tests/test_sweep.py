"""Sweeps: equal to separate runs, resumable after SIGKILL, the same through a Dask cluster."""

import concurrent.futures as cf
import dataclasses
import importlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastmem as fm
from fastmem import sweeps as sw
from fastmem.sweeps import runner
from fastmem.memory import experiments as scaling_law
from fastmem.memory.experiments import SCALING_LAW as SL
from fastmem.memory.models import train_model

SMALL = {"d": [4, 8], "seed": [1, 2], "lr": [1.0], "batch_size": [4, 16], "ntrain": [64],
         "layernorm": [False, True], "optimizer": ["sgd", "adam"], "model": ["matrix", "learnable"], "N": 12,
         "M": 3}


def _direct(c):
    """One run written out with the public API, as a user would without fm.sweep."""
    task = fm.Task.zipf(c["N"], c["M"], c["alpha"])
    E, U = fm.embeddings.gaussian(c["N"], c["M"], c["d"], seed=c["seed"])
    W = fm.kernels.normal((c["d"], c["d"]), seed=c["seed"], scale=c["d"] ** -0.5, dtype=E.dtype)
    steps, adam = c["ntrain"] // c["batch_size"], c["optimizer"] == "adam"
    if c["model"] == "matrix":
        opt = fm.Adam(lr=c["lr"] / c["d"], betas=(0, 0)) if adam else fm.SGD(lr=c["lr"])
        run = fm.train(fm.AssociativeMemory(E, U, W=W, layernorm=c["layernorm"]), task, opt, steps,
                       batch_size=c["batch_size"], seed=c["seed"], record=fm.Record("last"))
    else:
        opt = fm.Adam(lr=c["lr"], betas=(0, 0)) if adam else fm.SGD(lr=c["lr"])
        scale = {"W": 1 / c["d"], "E": c["d"] ** -0.5, "U": c["d"] ** -0.5} if adam else None
        run = train_model(c["model"], E, U, task, opt, steps, batch_size=c["batch_size"], seed=c["seed"], W=W,
                          layernorm=c["layernorm"], lr_scale=scale)
    return 1 - float(run.accuracy[-1]), float(run.loss[-1])


def test_sweep_equals_separate_runs(tmp_path):
    configs = sw.expand(SMALL)
    assert len(configs) == 64
    df = fm.sweep(SMALL, tmp_path, workers=2, chunk_size=5, quiet=True).set_index("run_id")
    assert len(df) == 64 and (df["status"] == "ok").all()
    for c in configs[::4] + configs[1::13]:  # a sample of 16 + 5
        error, loss = _direct(c)
        row = df.loc[scaling_law.run_id(c)]
        assert row["error"] == pytest.approx(error, abs=1e-7) and row["loss"] == pytest.approx(loss, rel=1e-6)
    # pandas reads the files without fastmem
    import pandas as pd

    files = list((tmp_path / "runs").glob("*.parquet"))
    assert sum(len(pd.read_parquet(f)) for f in files) == 64


PREFIXES = {"d": [8, 40], "seed": 3, "lr": [1.0, 30.0, 1e4, 3e38], "batch_size": [1, 4], "ntrain": [16, 64, 256],
            "layernorm": [False, True], "optimizer": ["sgd", "adam"], "model": ["matrix", "learnable", "exponential"],
            "N": 30, "M": 3}


@pytest.mark.parametrize("model", ["matrix", "learnable", "exponential"])
def test_runs_differing_in_ntrain_share_one_trajectory_exactly(model):
    # every representation (primal, dual, projected); short runs ok where the longest diverged
    seen, mixed = set(), 0
    for group in runner.groups(SL, sw.expand({**PREFIXES, "model": model})):
        assert [c["ntrain"] for c in group] == [16, 64, 256]
        results = scaling_law.run_group(group, trajectory=5)
        mixed += len({row["status"] for row, _ in results}) == 2
        for c, (row, traj) in zip(group, results):
            want, want_traj = scaling_law.run_group([c], trajectory=5)[0]  # alone, as run_one
            for k in ("status", "steps", "representation", "error", "loss"):
                assert row[k] == want[k] or (np.isnan(row[k]) and np.isnan(want[k])), (k, c)
            for k in ("step", "loss", "error"):
                np.testing.assert_array_equal(traj[k], want_traj[k])
            seen.add((row["status"], row["representation"]))
    assert mixed > 0
    assert {rep for _, rep in seen} == ({"primal", "dual", "projected"} if model == "matrix" else {"primal"}), seen


@pytest.mark.parametrize("n, s, at_record, pts, want", [
    (10, 40, False, [10], ("ok", 10)),         # finished before the group's run diverged
    (40, 40, False, [40], ("ok", 40)),         # a batch loss after its last record: its run ends first
    (40, 40, True, [40], ("diverged", 40)),    # its own last record is non-finite
    (90, 40, False, [90], ("diverged", 40)),   # a batch loss: the same step stops it
    (90, 40, True, [40, 90], ("diverged", 40)),
    (90, 40, True, [90], None),                # stopped at another member's record: run it alone
])
def test_member_status_from_the_group_run(n, s, at_record, pts, want):
    from types import SimpleNamespace

    # records at 0, 10 and 40, then the run stopped at 40: at its record there, or at the batch of step 40
    steps, loss = np.array([0, 10, 40]), np.array([1.0, 0.5, np.inf if at_record else 0.4])
    run = SimpleNamespace(steps=steps, steps_done=s, status="diverged", loss=loss, accuracy=np.ones(3))
    c = {**dict.fromkeys(SL.keys, 0), "ntrain": n}
    got = scaling_law._member(c, n, np.array(pts), run, "primal", 0)
    assert (got if got is None else (got[0]["status"], got[0]["steps"])) == want


def test_trajectories_are_written_and_read_as_xarray(tmp_path):
    grid = {**SMALL, "model": ["matrix", "learnable"], "d": 4, "seed": [1, 2], "layernorm": False,
            "batch_size": [4, 16], "optimizer": ["sgd", "adam"]}
    fm.sweep(grid, tmp_path, workers=1, chunk_size=3, quiet=True, trajectory=6)
    runs, ds = fm.load_sweep(tmp_path, trajectories=True)
    assert set(ds.dims) == {"run_id", "point"} and ds.sizes["run_id"] == len(runs) == 16
    assert {"d", "lr", "model", "seed"} <= set(ds.coords)
    for rid in runs["run_id"][::5]:
        row = runs.set_index("run_id").loc[rid]
        c = {k: row[k] for k in SL.keys}
        c = {k: (val.item() if hasattr(val, "item") else val) for k, val in c.items()}
        _, traj = scaling_law.run_one(c, trajectory=6)  # the same run, recorded again
        got = ds.sel(run_id=rid)
        n = len(traj["step"])
        np.testing.assert_array_equal(got["step"].values[:n], traj["step"])
        np.testing.assert_allclose(got["loss"].values[:n], traj["loss"], rtol=1e-6)
        np.testing.assert_allclose(got["error"].values[:n], traj["error"], atol=1e-7)
        assert np.isnan(got["loss"].values[n:]).all()  # padding past the run's last point
        # the last point is the run's result
        assert got["error"].values[n - 1] == pytest.approx(row["error"], abs=1e-7)
    # pandas reads the trajectory files without fastmem
    import pandas as pd

    long = pd.concat([pd.read_parquet(f) for f in (tmp_path / "trajectories").glob("*.parquet")])
    assert list(long.columns) == ["run_id", "point", "step", "loss", "error"] and long["run_id"].nunique() == 16


def test_kill_and_resume(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('[grid]\nN = 50\nd = [16, 32, 64]\nseed = [1, 2, 3]\nlr = [1.0, 10.0]\n'
                    'batch_size = [4]\nntrain = [1024, 4096]\noptimizer = ["adam"]\nlayernorm = [false, true]\n')
    cmd = [sys.executable, "-m", "fastmem", "sweep", str(grid), "--out", str(tmp_path / "out"), "--workers", "1",
           "--chunk-size", "3", "--quiet", "--trajectory", "4"]
    proc = subprocess.Popen(cmd, start_new_session=True)
    runs = tmp_path / "out" / "runs"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(runs.glob("chunk-*.parquet"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker, mid-way
    proc.wait()
    before = fm.load_sweep(tmp_path / "out").set_index("run_id")
    assert 0 < len(before) < 72, "the sweep should have been killed mid-way"
    subprocess.run(cmd, check=True, timeout=300)
    after = fm.load_sweep(tmp_path / "out")
    assert len(after) == 72 and after["run_id"].is_unique
    after = after.set_index("run_id")
    for col in ("error", "loss", "status"):
        assert (after.loc[before.index, col] == before[col]).all()  # finished results unchanged
    _, ds = fm.load_sweep(tmp_path / "out", trajectories=True)  # one trajectory per finished run
    assert sorted(ds["run_id"].values) == sorted(after.index)


def test_dask_cluster_equals_local(tmp_path):
    distributed = pytest.importorskip("distributed")
    grid = {**SMALL, "model": ["matrix", "exponential"], "d": [4]}
    local = fm.sweep(grid, tmp_path / "local", workers=1, quiet=True)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None,
                                  processes=True) as cluster, distributed.Client(cluster) as client:
        remote = fm.sweep(grid, tmp_path / "dask", executor=client.get_executor(), quiet=True)
    cols = ["run_id", "status", "error", "loss", "steps"]
    a = local[cols].sort_values("run_id").reset_index(drop=True)
    b = remote[cols].sort_values("run_id").reset_index(drop=True)
    assert len(a) == 32
    assert a.equals(b)


@pytest.mark.parametrize("grid, message", [
    ({**SMALL, "d": [4, -5]}, r"^grid\['d'\]: expected an integer >= 1, got -5"),
    ({**SMALL, "optimizer": ["sgd", "rmsprop"]}, r"^grid\['optimizer'\]: expected 'sgd' or 'adam'"),
    ({**SMALL, "lr": [0.0]}, r"^grid\['lr'\]: expected a number > 0, got 0.0"),
    ({**SMALL, "widht": 3}, r"^grid\['widht'\]: expected one of the keys"),
    ({**SMALL, "ntrain": [30]}, r"^grid\['ntrain'\]: expected a multiple of batch_size"),
])
def test_invalid_grid_is_refused_before_any_run(tmp_path, grid, message):
    with pytest.raises(ValueError, match=message):
        fm.sweep(grid, tmp_path, workers=1, quiet=True)
    assert not (tmp_path / "runs").exists()


def test_a_backend_lacking_a_kernel_of_the_grid_is_refused_before_any_run(tmp_path, monkeypatch):
    reg = importlib.import_module("fastmem.backends")
    numba = reg._get("numba")
    lacking = reg.Backend("numba", True, kernels={k: f for k, f in numba.kernels.items() if k != "train_model"},
                          lacks={"train_model": "not jitted in this test"})
    monkeypatch.setitem(reg._registry, "numba", lacking)
    with pytest.raises(fm.BackendUnavailableError, match=r"'scaling-law' grid call train_model.*not jitted in this"):
        fm.sweep(SMALL, tmp_path / "a", workers=1, quiet=True, backend="numba")
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match=r"call normal_fill, which backend 'cuda' cannot run.*host arrays"):
        fm.sweep({**SMALL, "model": "matrix"}, tmp_path / "b", workers=1, quiet=True, backend="cuda")
    ax = {k: (x if isinstance(x, list) else [x]) for k, x in {**SL.defaults, **SMALL, "model": "matrix"}.items()}
    assert "train_model" not in SL.kernels(ax)  # a matrix-only grid does not need it: it would run


def test_diverged_and_failed_runs_are_recorded(tmp_path, monkeypatch):
    grid = {**SMALL, "model": "matrix", "optimizer": "sgd", "layernorm": False, "lr": [1.0, 3e38], "d": 4,
            "seed": 1, "batch_size": 4}
    calls = []
    real = scaling_law.run_group

    def flaky(group, backend=None, trajectory=0):
        calls.append(group[0]["lr"])
        if group[0]["lr"] == 1.0:
            raise RuntimeError("worker crashed")
        return real(group, backend, trajectory)
    monkeypatch.setitem(sw.experiment._REGISTRY, SL.name, dataclasses.replace(SL, run_group=flaky))
    with cf.ThreadPoolExecutor(1) as ex:  # in-process, so that the patch applies
        df = fm.sweep(grid, tmp_path, executor=ex, quiet=True).set_index("lr")
    assert calls.count(1.0) == 2  # retried once
    assert df.loc[1.0, "status"] == "failed" and "worker crashed" in df.loc[1.0, "message"]
    assert df.loc[3e38, "status"] == "diverged"  # float32 overflow: inf scores


@pytest.mark.parametrize("seeds, reverse, failed_seeds, message, calls", [
    # seed 7's chunk raises: run again alone, then failed with the error
    ([1, 2, 3, 7], False, [(3, 7)], "ValueError: seed 7 is refused", {"3 7": 2}),
    # seed 13's chunk kills its worker: the pool is replaced, the chunk split, 5 run alone, 13 failed
    ([1, 2, 5, 13], False, [(13,)], "the worker process died running it (BrokenProcessPool: ", {"13": 1, "5": 1}),
    # two groups that kill their workers, then one that works: both failed, the sweep goes on
    ([1, 2, 13, 14], True, [(13,), (14,)], "the worker process died running it (", {"13": 1, "14": 1}),
    # every chunk kills its worker: after two failures the cheapest chunk left fails too, the sweep stops
    ([13, 14, 15, 16, 17, 18], False, [], "the sweep stops: 3 chunks in a row failed", {"17 18": 1}),
], ids=["raises", "dies", "two-die", "all-die"])
def test_a_failing_chunk_is_retried_alone_and_a_dead_worker_replaced(tmp_path, seeds, reverse, failed_seeds, message,
                                                                     calls):
    import functools
    import multiprocessing

    import sweep_tasks

    configs = sw.expand({**SMALL, "d": 4, "model": "matrix", "optimizer": "sgd", "layernorm": False, "batch_size": 4,
                         "seed": seeds, "ntrain": [4, 8]})
    chunks = list(runner._chunks(SL, configs, 4))[::-1 if reverse else 1]  # two groups (ntrain 4 and 8) a chunk
    log, done, failed = tmp_path / "log", [], {}
    schedule = functools.partial(
        runner._schedule, chunks, functools.partial(sweep_tasks.die_on_large_seeds, log=str(log)), None, 2,
        done=done.extend, failed=lambda chunk, text: failed.setdefault(tuple(sorted({c["seed"] for c in chunk})), text),
        new_pool=lambda n: cf.ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")),
        split=functools.partial(runner.groups, SL))
    if not failed_seeds:
        with pytest.raises(RuntimeError, match=message):
            schedule()
    else:
        schedule()
        assert all(text.startswith(message) for text in failed.values())
    ok = [c for c in configs if not any(c["seed"] in f for f in failed_seeds) and c["seed"] < 13]
    assert sorted(done) == sorted((c["seed"], c["ntrain"]) for c in ok)  # each once
    assert sorted(failed) == sorted(failed_seeds)  # nothing recorded when the sweep stops
    runs = log.read_text().splitlines()  # the seeds of each chunk run
    assert {k: runs.count(k) for k in calls} == calls


def test_published_grid_file_expands_to_the_authors_grid():
    import tomllib
    from pathlib import Path

    spec = tomllib.loads((Path(__file__).resolve().parents[1] / "examples" / "scaling_law_grid.toml").read_text())
    assert spec["grid"] == scaling_law.PUBLISHED_GRID  # what fastmem reproduce scaling-law runs
    configs = sw.expand(spec["grid"])
    assert len(configs) == 40_320 and len({scaling_law.run_id(c) for c in configs}) == 40_320
    assert {c["model"] for c in configs} == {"matrix", "learnable", "exponential"}


def test_cli_sweep(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text('[grid]\nN = 10\nM = 2\nd = [4]\nseed = [1, 2]\nlr = [1.0]\nbatch_size = [4]\nntrain = [16]\n')
    r = subprocess.run([sys.executable, "-m", "fastmem", "sweep", str(grid), "--out", str(tmp_path / "o"),
                        "--workers", "1", "--quiet", "--trajectory", "3"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "2 of 2 runs on disk" in r.stdout
    assert fm.load_sweep(tmp_path / "o", trajectories=True)[1].sizes["run_id"] == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('[grid]\nd = [0]\nseed = 1\nlr = 1.0\nbatch_size = 4\nntrain = 16\n')
    r = subprocess.run([sys.executable, "-m", "fastmem", "sweep", str(bad), "--out", str(tmp_path / "o2")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "grid['d']: expected an integer >= 1, got 0" in r.stderr


MODEL_CASES = [(m, o, ln) for m in ("matrix", "learnable", "exponential") for o in ("sgd", "adam") for ln in (False, True)]


@pytest.mark.parametrize("model, optimizer, layernorm", MODEL_CASES)
def test_models_equal_a_pytorch_autograd_run(model, optimizer, layernorm):
    """The hand-derived gradients of the three models against PyTorch autograd, float64, same tokens."""
    pytest.importorskip("torch")
    import torch_models

    c = {"model": model, "optimizer": optimizer, "layernorm": layernorm, "N": 20, "M": 4, "alpha": 1.0, "d": 6,
         "seed": 3, "lr": 0.5, "batch_size": 8, "ntrain": 400}
    task = fm.Task.zipf(c["N"], c["M"], c["alpha"])
    E, U = fm.embeddings.gaussian(c["N"], c["M"], c["d"], seed=3, dtype=np.float64)
    W = np.random.default_rng(0).standard_normal((6, 6)) / np.sqrt(6)
    tokens = fm.kernels.sample_tokens(task, 50, 8, seed=3)
    E_t, U_t, W_t = torch_models.train(model, E, U, W, task.p, task.y, tokens, optimizer, c["lr"], 6, layernorm)
    adam = optimizer == "adam"
    # g / (|g| + eps) turns rounding of a near-zero gradient entry into visible steps
    tol = dict(rtol=1e-4, atol=1e-6) if adam else dict(rtol=1e-7, atol=1e-9)
    if model == "matrix":
        opt = fm.Adam(lr=c["lr"] / 6, betas=(0, 0)) if adam else fm.SGD(lr=c["lr"])
        run = fm.train(fm.AssociativeMemory(E, U, W=W, layernorm=layernorm), task, opt, 50, tokens=tokens,
                       representation="primal")
        np.testing.assert_allclose(run.W, W_t, **tol)
    else:
        opt = fm.Adam(lr=c["lr"], betas=(0, 0)) if adam else fm.SGD(lr=c["lr"])
        scale = {"W": 1 / 6, "E": 6 ** -0.5, "U": 6 ** -0.5} if adam else None
        run = train_model(model, E, U, task, opt, 50, tokens=tokens, W=W, layernorm=layernorm, lr_scale=scale)
        np.testing.assert_allclose(run.E, E_t, **tol)
        np.testing.assert_allclose(run.U, U_t, **tol)
        if model == "learnable":
            np.testing.assert_allclose(run.W, W_t, **tol)


@pytest.mark.parametrize("model, optimizer", [("matrix", "sgd"), ("learnable", "adam"), ("exponential", "sgd")])
def test_grid_cells_agree_with_pytorch_over_10_seeds(model, optimizer):
    """Per-cell mean error over the 10 seeds of the grid within 3 standard errors + 0.01 of PyTorch's."""
    pytest.importorskip("torch")
    import torch_models

    cell = {"model": model, "optimizer": optimizer, "layernorm": False, "N": 100, "M": 5, "alpha": 2.0, "d": 20,
            "lr": 1.0, "batch_size": 16, "ntrain": 1024}
    ours, theirs = [], []
    for seed in range(42, 52):
        c = {**cell, "seed": seed}
        ours.append(scaling_law.run_one(c)[0]["error"])
        task = fm.Task.zipf(100, 5, 2.0)
        E, U = fm.embeddings.gaussian(100, 5, 20, seed=seed, dtype=np.float64)
        W = np.random.default_rng([seed, 1]).standard_normal((20, 20)) / np.sqrt(20)
        tokens = fm.kernels.sample_tokens(task, 64, 16, seed=seed)
        Et, Ut, Wt = torch_models.train(model, E, U, W, task.p, task.y, tokens, optimizer, 1.0, 20, False)
        theirs.append(torch_models.error(model, Et, Ut, Wt, task.p, task.y, False))
    se = np.sqrt(np.var(ours, ddof=1) / 10 + np.var(theirs, ddof=1) / 10)
    assert abs(np.mean(ours) - np.mean(theirs)) <= 3 * se + 0.01


def test_sweep_runs_hold_one_thread_in_blas_and_the_core():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [p["num_threads"] for p in threadpoolctl.threadpool_info()]
    with runner._single_threaded():
        assert all(p["num_threads"] == 1 for p in threadpoolctl.threadpool_info())
        if fm.backends()["cpp"]["available"]:
            from fastmem import _core

            assert _core.get_num_threads() == 1
    assert [p["num_threads"] for p in threadpoolctl.threadpool_info()] == before


def test_the_runner_runs_any_registered_experiment(tmp_path):
    # an experiment of the tests' own (tests/sweep_tasks.py), run by worker processes that import
    # its module to find it; the store, resume and failure handling are the runner's
    import sweep_tasks

    grid = {"a": [1, 2, 13], "b": [3, 5]}
    df = fm.sweep(grid, tmp_path, workers=2, quiet=True, experiment="toy", trajectory=3).set_index(["a", "b"])
    assert len(df) == 6 and df.loc[(2, 5), "value"] == 10.0 and df.loc[(1, 3), "status"] == "ok"
    assert df.loc[(13, 3), "status"] == "failed" and "13 is refused" in df.loc[(13, 3), "message"]
    runs, ds = fm.load_sweep(tmp_path, trajectories=True)
    assert set(ds.data_vars) == {"step", "power"} and ds.sizes["point"] == 3
    np.testing.assert_array_equal(ds["power"].sel(run_id=sweep_tasks.TOY and
                                                  runs.set_index(["a", "b"]).loc[(2, 5), "run_id"]), [1, 10, 100])
    with pytest.raises(fm.InvalidArgumentError, match="out: expected a folder of 'scaling-law' sweeps"):
        fm.sweep(SMALL, tmp_path, workers=1, quiet=True, extend=True)
    with pytest.raises(fm.InvalidArgumentError, match=r"^experiment: expected one of the registered"):
        fm.sweep(grid, tmp_path / "other", experiment="nope")


def test_load_sweep_reads_a_folder_of_an_experiment_not_registered_here(tmp_path):
    import sweep_tasks  # noqa: F401 - registers "toy" here; the reader below runs without it

    fm.sweep({"a": [1, 2], "b": 3}, tmp_path, workers=1, quiet=True, experiment="toy", trajectory=2)
    code = ("import fastmem as fm; runs, ds = fm.load_sweep(%r, trajectories=True); "
            "print(sorted(runs['a']), sorted(ds.coords))" % str(tmp_path))
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0 and out.stdout.strip() == "[1, 2] ['a', 'b', 'point', 'run_id']", out.stderr
