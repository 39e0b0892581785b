"""Ctrl-C stops a compiled run, and fastmem's thread count is its own (issue 18, items 13-14)."""

import ctypes
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import fastmem as fm

SCRIPT = textwrap.dedent("""
    import json, sys, numpy as np, fastmem as fm
    kind, backend = sys.argv[1], sys.argv[2]
    E, U = fm.embeddings.gaussian(50, 5, 40, seed=0)
    mem, task = fm.AssociativeMemory(E, U), fm.Task.zipf(50, 5, 1.0)
    opt = {"primal": fm.Adam(lr=1e-3), "dual": fm.SGD(lr=0.1), "projected": fm.SignGD(lr=1e-3)}.get(kind)

    def go(n):
        if kind == "many":
            fm.train_many(E, U, np.zeros((3, 40, 40), np.float32), task.p, task.y, 0.1, n, backend=backend)
        elif kind == "model":
            fm.models.train_model("learnable", E, U, task, fm.SGD(lr=0.1), n, batch_size=8, backend=backend,
                                  record=fm.Record(steps=[0, 1, 2, n]))
        elif kind == "scansnap":
            fm.scansnap.train(fm.scansnap.syn_small(), n, batch=8, L=16, backend=backend, record_steps=[0, 1, 2, n])
        elif kind == "transformer":
            tr = fm.transformer
            tr.train(tr.TwoLayer(d=8, seq_len=16), tr.InductionHeads(seq_len=16), 1.0, n, batch_size=8,
                     train="all", record=tr.Record(steps=[0, 1, 2]), backend=backend)
        else:
            fm.train(mem, task, opt, n, batch_size=8, backend=backend, representation=kind,
                     record=fm.Record(steps=[0, 1, 2, n]))

    if backend == "numba":
        go(3)  # compiled (or loaded from numba's cache) before the run that is interrupted
    print("started", flush=True)
    try:
        go(10**12 if kind not in ("scansnap", "transformer") else 10**7)
    except KeyboardInterrupt as exc:
        print("stopped", flush=True)
        run = getattr(exc, "run", None)
        if kind == "many":
            print(json.dumps(None if run is None else {"status": run.status.tolist(),
                                                       "finite": bool(np.isfinite(run.W).all())}))
            sys.exit(130)
        steps = None if run is None else run.records.steps if kind == "scansnap" else run.steps
        resumes = None
        if kind in ("primal", "dual") and run is not None:  # from exc.run.state, exactly as one longer run
            more = fm.train(mem, task, opt, 5, batch_size=8, backend=backend, resume=run.state)
            whole = fm.train(mem, task, opt, run.steps_done + 5, batch_size=8, backend=backend, representation=kind)
            resumes = bool(np.array_equal(more.W, whole.W))
        print(json.dumps(None if run is None else {"status": run.status, "steps": np.asarray(steps).tolist(),
                                                   "done": run.steps_done, "loss": np.asarray(run.loss).tolist(),
                                                   "resumes_exactly": resumes}))
        sys.exit(130)
""")


@pytest.mark.parametrize("backend", ["cpp", "numba", "numpy"])
@pytest.mark.parametrize("kind", ["primal", "dual", "projected", "many", "model", "scansnap", "transformer"])
def test_ctrl_c_stops_a_run_keeping_its_records(kind, backend):
    if not fm.backends()[backend]["available"]:
        pytest.skip(f"the {backend} backend is not available")
    p = subprocess.Popen([sys.executable, "-c", SCRIPT, kind, backend], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd="/")  # the installed fastmem, not a checkout's tree
    assert p.stdout.readline().strip() == "started"
    time.sleep(1.0)  # well into the 10**12 steps
    t0 = time.perf_counter()
    p.send_signal(signal.SIGINT)
    assert p.stdout.readline().strip() == "stopped"
    assert time.perf_counter() - t0 < 5  # the resume check below takes what the run took
    with p.stdout, p.stderr:  # not communicate(): readline() may hold what follows in its buffer
        out, err = p.stdout.read(), p.stderr.read()
    assert p.wait(120) == 130, err
    run = json.loads(out)
    if kind == "many":  # every run ended between two steps, the first one within its steps
        assert run["status"] == [2, 2, 2] and run["finite"]
        return
    assert run["status"] == "interrupted" and run["done"] > 2 and run["steps"] == [0, 1, 2]
    assert np.isfinite(run["loss"]).all()
    if kind in ("primal", "dual"):
        assert run["resumes_exactly"] is True


def _openmp_runtimes():
    with open("/proc/self/maps") as f:
        return sorted({line.split()[-1] for line in f if "libgomp" in line or "libomp" in line or "libiomp" in line})


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="finds the OpenMP runtime in /proc/self/maps")
def test_another_librarys_openmp_setting_leaves_fastmem_threads_alone():
    core = pytest.importorskip("fastmem._core")
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one processor: every setting gives one thread")
    fm.set_num_threads(2)
    try:
        assert core.parallel_team_size() == 2
        runtimes = _openmp_runtimes()
        assert runtimes, "the compiled core links an OpenMP runtime"
        for lib in runtimes:  # what torch.set_num_threads(1) does to the runtime it shares
            ctypes.CDLL(lib).omp_set_num_threads(1)
        assert fm.get_num_threads() == 2 and core.parallel_team_size() == 2
        fm.set_num_threads(1)
        assert core.parallel_team_size() == 1
    finally:
        fm.set_num_threads(os.cpu_count())
        for lib in _openmp_runtimes():
            ctypes.CDLL(lib).omp_set_num_threads(os.cpu_count())


def test_fastmem_num_threads_is_read_at_start_and_reported():
    code = "import fastmem as fm; print(fm.get_num_threads())"
    env = {**os.environ, "FASTMEM_NUM_THREADS": "3", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd="/")
    if not fm.backends()["cpp"]["available"]:
        pytest.skip("the compiled backend is not built")
    assert out.stdout.strip() == "3", out.stderr
    info = subprocess.run([sys.executable, "-m", "fastmem", "info"], env=env, capture_output=True, text=True, cwd="/")
    assert "threads: 3" in info.stdout


def test_set_num_threads_refuses_nonsense():
    with pytest.raises(fm.InvalidArgumentError, match="^n: expected an integer > 0"):
        fm.set_num_threads(0)


def test_ctrl_c_stops_fastmem_run():
    if not fm.backends()["cpp"]["available"]:
        pytest.skip("the compiled backend is not built")
    p = subprocess.Popen([sys.executable, "-m", "fastmem", "run", "--steps", str(10**12), "--batch-size", "8",
                          "--optimizer", "adam"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    assert p.stdout.readline().startswith("fastmem run: ")  # said before the run (the backend still to load)
    time.sleep(2.0)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 130 and "fastmem run: interrupted after" in err, err


def test_an_interrupted_fastmem_run_keeps_what_it_recorded(tmp_path):
    if not fm.backends()["cpp"]["available"]:
        pytest.skip("the compiled backend is not built")
    out = tmp_path / "m.json"
    p = subprocess.Popen([sys.executable, "-m", "fastmem", "run", "--steps", str(10**12), "--batch-size", "8",
                          "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd="/")
    assert p.stdout.readline().startswith("fastmem run: ")
    time.sleep(2.0)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 130 and "metrics so far written" in err, err
    got = json.loads(out.read_text())
    assert got["status"] == "interrupted" and len(got["records"]) >= 1 and got["records"][0]["step"] == 0


RESCALE_SCRIPT = textwrap.dedent("""
    import json, sys, torch, fastmem as fm
    torch.manual_seed(0)
    model = fm.pathcond.experiments.mlp([64] + [1000] * 8 + [10], 0)
    before = [p.detach().clone() for p in model.parameters()]
    fm.pathcond.rescale(model, sweeps=2, backend=sys.argv[1], inplace=False)  # compiled before the long one
    print("started", flush=True)
    try:
        fm.pathcond.rescale(model, sweeps=10**5, tol=0.0, backend=sys.argv[1])
    except KeyboardInterrupt:
        print("stopped", flush=True)
        print(json.dumps(all(torch.equal(a, b) for a, b in zip(before, model.parameters()))))
        sys.exit(130)
""")


@pytest.mark.parametrize("backend", ["cpp", "numba", "numpy"])
def test_ctrl_c_stops_a_rescaling_leaving_the_model_as_it_was(backend):
    pytest.importorskip("torch")
    if not fm.backends()[backend]["available"]:
        pytest.skip(f"the {backend} backend is not available")
    p = subprocess.Popen([sys.executable, "-c", RESCALE_SCRIPT, backend], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd="/")
    assert p.stdout.readline().strip() == "started"
    time.sleep(1.0)  # in the solver's 10**5 sweeps
    t0 = time.perf_counter()
    p.send_signal(signal.SIGINT)
    assert p.stdout.readline().strip() == "stopped"
    assert time.perf_counter() - t0 < 2
    with p.stdout, p.stderr:
        out, err = p.stdout.read(), p.stderr.read()
    assert p.wait(60) == 130, err
    assert json.loads(out) is True  # untouched: a rescaling is applied whole or not at all
