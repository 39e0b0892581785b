"""The sweep runner: any registered experiment's grid, chunked, scheduled on worker processes
or any Executor (Dask's too), resumable, its results in the store (store.py)."""

import collections
import concurrent.futures as cf
import contextlib
import functools
import hashlib
import multiprocessing
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from .. import _validate as v
from . import experiment as registry
from . import grid as g
from . import store

DEFAULT_EXPERIMENT = "scaling-law"


def _experiment_of(grids, experiment):
    """The experiment the grids name (a grid's "experiment" key, or ``experiment``), and the
    grids without that key."""
    named = {gr.get("experiment") for gr in grids if isinstance(gr, dict) and "experiment" in gr}
    if experiment is not None:
        named.add(experiment)
    if len(named) > 1:
        v.fail("experiment", "one experiment for every grid of a sweep", sorted(map(str, named)))
    name = named.pop() if named else DEFAULT_EXPERIMENT
    exp = registry.get(name)
    return exp, [{k: x for k, x in gr.items() if k != "experiment"} if isinstance(gr, dict) else gr for gr in grids]


def columns(exp):
    return list(exp.keys) + ["run_id", *exp.columns]


def _failed_rows(exp, configs, message):
    return [{**c, "run_id": g.run_id(c, exp.float_keys), "status": "failed", "message": message} for c in configs]


def _frame(exp, rows):
    import pandas as pd

    return pd.DataFrame(rows, columns=columns(exp))


def _trajectory_frame(trajs):
    import pandas as pd

    return pd.concat([pd.DataFrame({"run_id": rid, "point": np.arange(len(next(iter(t.values())))), **t})
                      for rid, t in trajs], ignore_index=True)


def _write_chunk(out, exp, rows, trajs=()):
    """The chunk's files (trajectories first: a runs file marks a chunk done); its run ids."""
    name = "chunk-" + hashlib.sha1("".join(r["run_id"] for r in rows).encode()).hexdigest()[:16]
    if trajs:
        store.write_atomic(_trajectory_frame(trajs), Path(out) / "trajectories", name)
    store.write_atomic(_frame(exp, rows), Path(out) / "runs", name)
    return [r["run_id"] for r in rows]


def groups(exp, configs):
    """The configurations in the experiment's groups (group_key), in order."""
    out = {}
    for c in configs:
        out.setdefault(exp.group_key(c), []).append(c)
    return list(out.values())


@contextlib.contextmanager
def _single_threaded():
    """One thread in the compiled core and (threadpoolctl installed: the sweep extra) in the
    BLAS libraries for the block: the sweep parallelises over runs, and a BLAS pool that
    spins after each call takes a core from the other workers (matrix third: 188 -> 182 s)."""
    from ..backends import get_num_threads, set_num_threads

    with contextlib.ExitStack() as stack:
        with contextlib.suppress(ImportError):
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(1))
        before = get_num_threads()
        set_num_threads(1)
        stack.callback(set_num_threads, before)
        yield


def run_chunk(configs, out, experiment, module, backend=None, trajectory=0):
    """Run the configurations group after group (the experiment's run_group), single-threaded,
    retrying a failing group once, then write them all atomically; the run ids written."""
    exp = registry.get(experiment, module)
    rows, trajs = [], []
    with _single_threaded():
        for group in groups(exp, configs):
            for attempt in (1, 2):
                try:
                    results = exp.run_group(group, backend, trajectory)
                    break
                except Exception:  # noqa: BLE001 - a failed run is recorded, the sweep goes on
                    if attempt == 2:
                        results = [(row, None) for row in _failed_rows(exp, group, traceback.format_exc(limit=3))]
            for c, (row, traj) in zip(group, results):
                row = {**c, "run_id": g.run_id(c, exp.float_keys), **row}
                rows.append(row)
                if traj is not None:
                    trajs.append((row["run_id"], traj))
    return _write_chunk(out, exp, rows, trajs)


def _chunks(exp, configs, size):
    """Chunks of about ``size`` configurations that keep each group whole, sorted by the
    experiment's order_key, (together, order): a chunk holds one ``together`` value."""
    key = exp.order_key or (lambda c: (0, 0))
    ordered = sorted(configs, key=key)
    chunk, last = [], object()
    for group in groups(exp, ordered):
        k = key(group[0])[0]
        if chunk and (k != last or len(chunk) + len(group) > size):
            yield chunk
            chunk = []
        chunk, last = chunk + group, k
    if chunk:
        yield chunk


def load_sweep(out, trajectories=False):
    """All finished runs under ``out`` as a pandas DataFrame (one row per run); with
    ``trajectories``, also an xarray Dataset of the recorded trajectories over (run_id, point),
    NaN past a run's last point, the grid's keys as coordinates.

    A chunk that cannot be read is skipped and named in a ``SweepStoreWarning`` (running the
    sweep again moves it aside and redoes its runs); a path that is not a sweep's folder raises
    InvalidArgumentError."""
    import pandas as pd

    name = store.experiment_of(out) or DEFAULT_EXPERIMENT
    if name in registry.names():
        keys, cols = list(registry.get(name).keys), columns(registry.get(name))
    else:  # an experiment of another program's, not registered here: its files say what they hold
        keys = sorted({k for gr in store.grids_of(out) for k in gr})
        cols = keys + ["run_id", "status", "message"]
    runs, parts = store.load(out, cols, trajectories)
    if not trajectories:
        return runs
    import xarray as xr

    if not parts:
        return runs, xr.Dataset()
    ds = pd.concat(parts, ignore_index=True).set_index(["run_id", "point"]).to_xarray()
    at = runs.set_index("run_id").loc[ds["run_id"].values]
    return runs, ds.assign_coords({k: ("run_id", at[k].to_numpy()) for k in keys})


def sweep(grid_or_configs, out, executor=None, workers=None, chunk_size=16, quiet=False, backend=None, trajectory=0,
          max_runs=10**6, extend=False, experiment=None):
    """Run every configuration of a grid (dict), or of a list of grids, not already on disk
    under ``out``; return the sweep's own runs (a DataFrame, one row per run, from disk).

    experiment : the registered experiment the grids are of (fm.sweeps.experiment.names());
        a grid may name it itself (key "experiment"); default "scaling-law", the associative
        memory's (fastmem/memory/experiments.py)
    executor : any concurrent.futures.Executor (``distributed.Client(...).get_executor()``
        for a Dask cluster); default a local process pool of ``workers`` (default: CPU count),
        replaced if a worker process dies (see _schedule: what was in flight runs again alone,
        and a group of runs that kills its worker twice is recorded as "failed"; where every
        chunk fails, the cheapest included, the sweep stops with RuntimeError instead). Local
        workers exit when the sweeping process dies (kill -9 included), and start without the
        caller's main module (a script without a main guard, or code from standard input, runs).
    chunk_size : about this many runs per task and per file (what a kill can lose); the
        experiment's groups (runs that share work) stay together
    backend : the backend every run uses (default: the workers' own choice, see fm.backends)
    trajectory : K > 0 also records each run's trajectory at about K points where the
        experiment records one (``load_sweep(out, trajectories=True)``); runs already on disk
        keep what they recorded
    max_runs : refuse grids of more runs than this (counted without expanding them)
    extend : allow ``out`` to hold other grids' runs already (its sweep.json records every grid
        it holds); without it, a folder of another grid is refused

    The folder is checked and locked before any run: one sweep at a time writes to it, so each
    run is on disk once. Damaged chunks are moved to ``out/damaged/`` and redone; runs recorded
    "failed" are retried once per call ("diverged" is final). Unless ``quiet``, a line on
    standard error says how many runs start.
    """
    grids = [grid_or_configs] if isinstance(grid_or_configs, dict) else list(grid_or_configs)
    if not grids:
        v.fail("grid_or_configs", "a grid (dict) or a non-empty list of grids", "[]")
    exp, grids = _experiment_of(grids, experiment)
    grids = [g.axes(gr, exp) for gr in grids]
    _check_backend(exp, grids, backend)
    max_runs = v.positive_int("max_runs", max_runs)
    total = sum(g.count(gr) for gr in grids)
    if total > max_runs:
        v.fail("grid", f"at most max_runs = {max_runs:,} runs (raise max_runs, or --max-runs, to run more)",
               f"{total:,} runs")
    chunk_size = v.positive_int("chunk_size", chunk_size)
    trajectory = v.positive_int("trajectory", trajectory, allow_zero=True)
    if executor is None:
        workers = os.cpu_count() if workers is None else v.positive_int("workers", workers)
    with store.Store(out, exp.name, grids, extend=extend) as st:
        st.record_session(started=time.time(), finished=None, **_session_facts(backend, executor, workers))
        on_disk = st.scan(columns(exp))
        configs = list({g.run_id(c, exp.float_keys): c for gr in grids for c in g.expand(gr)}.items())
        ids = {rid for rid, _ in configs}
        failed = set(on_disk["run_id"][(on_disk["status"] == "failed") & on_disk["run_id"].isin(ids)])
        if failed:
            st.drop_runs(failed)
        done = set(on_disk["run_id"]) - failed
        todo = [c for rid, c in configs if rid not in done]
        if not quiet:
            retry = f", {len(failed)} of them recorded failed before and retried" if failed else ""
            print(f"fastmem sweep: {len(configs):,} runs, {len(configs) - len(todo):,} on disk in {out}, "
                  f"{len(todo):,} to run{retry}", file=sys.stderr)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(configs), initial=len(configs) - len(todo), unit="run", desc="sweep",
                   disable=quiet or not sys.stderr.isatty())
        cost = exp.cost or (lambda c: 1.0)
        # the costliest chunks first, so that the last ones to finish are short (no idle worker)
        chunks = sorted(_chunks(exp, todo, chunk_size),
                        key=lambda chunk: -sum(max(map(cost, gr)) for gr in groups(exp, chunk)))
        run = functools.partial(run_chunk, out=str(out), experiment=exp.name, module=exp.module, backend=backend,
                                trajectory=trajectory)
        with bar:
            _schedule(chunks, run, executor, workers, done=lambda ids: bar.update(len(ids)),
                      split=functools.partial(groups, exp),
                      failed=lambda chunk, message: bar.update(len(_write_chunk(out, exp,
                                                                                 _failed_rows(exp, chunk, message)))))
        st.record_session(finished=time.time(), runs_done=len(todo))
        runs = load_sweep(out)
    return runs[runs["run_id"].isin(ids)].reset_index(drop=True)


def _session_facts(backend, executor, workers):
    """What fastmem report says of a sweep call: the backend asked for and the one this machine
    takes for it, fastmem's version, the compiled core's CPU level, the workers."""
    from .._version import __version__
    from ..backends import backends, get

    try:
        taken = get(backend, device=False).name
    except Exception:  # noqa: BLE001 - a backend refused here is refused again, by name, below
        taken = None
    return {"backend": backend or "auto", "backend_taken": taken, "fastmem": __version__,
            "cpu_level": backends()["cpp"]["info"].get("cpu_level"),
            "workers": type(executor).__name__ if executor is not None else workers}


def _check_backend(exp, grids, backend):
    """Refuse, before any run, a backend that lacks a kernel the grids' runs call (each run
    would fail on it): named, with what the backend says."""
    from ..backends import get
    from ..errors import BackendUnavailableError, InvalidArgumentError

    for kernel in sorted({k for ax in grids for k in (exp.kernels(ax) if exp.kernels else ())}):
        try:
            get(backend, device=False, kernel=kernel)
        except (BackendUnavailableError, InvalidArgumentError) as exc:
            raise type(exc)(f"backend: the runs of this {exp.name!r} grid call {kernel}, which backend {backend!r} "
                            f"cannot run here ({exc})") from None


def _exit_with_parent(pid):
    """In a worker process: exit as soon as process ``pid`` (the sweep's) is gone, so that a
    sweep killed with SIGKILL leaves no worker behind (their parent is the forkserver, which
    outlives it while they run); the forkserver and resource tracker then exit by themselves."""
    import threading

    def gone():
        try:  # Linux: a killed process stays a zombie until its parent reaps it
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except FileNotFoundError:
            return True
        except OSError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False

    def watch():
        while not gone():
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="fastmem-parent-watch", daemon=True).start()


@contextlib.contextmanager
def _workers_without_main():
    """While processes start: they need fastmem, not the caller's main module. multiprocessing
    re-runs the parent's main script in each new process (it looks up __main__'s __spec__ and
    __file__): a script without a ``__main__`` guard would start its sweep again in every
    worker, and code read from standard input or a notebook has no file to re-run. Hidden for
    the moment a process is started, the workers begin with a main module of their own."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _local_pool(workers):
    # forkserver: forking a process that runs OpenMP / numba / XLA threads can deadlock
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"),
                                  initializer=_exit_with_parent, initargs=(os.getpid(),))


def _schedule(chunks, run, executor=None, workers=1, done=None, failed=None, new_pool=_local_pool, split=None):
    """run(chunk) for every chunk (in order of decreasing cost) on the executor (None: a pool of
    ``workers`` processes from new_pool, ``workers`` chunks in flight), then done(result).

    A chunk whose task raised, or that was in flight when a worker process died, runs again
    alone; a second failure makes it failed. A chunk of several groups (split(chunk): the
    experiment's groups) that kills its worker when alone is split into its groups, each run alone, so that only the group that kills the
    worker is failed. failed(chunk, message) is called once a later chunk has finished (or at
    the end): after two failures with no success between them, the cheapest chunk left runs
    alone first, and if it fails too, nothing works here (a worker that cannot start, a full
    disk): RuntimeError, nothing of the failures recorded. The caller's own executor broken
    cannot be replaced: its error is raised."""
    own = executor is None
    split = split or (lambda chunk: [chunk])
    pool = new_pool(workers) if own else executor
    todo = collections.deque(chunks)
    suspects = collections.deque()  # (chunk, failures so far), run alone
    running = {}  # future -> (chunk, failures so far)
    pending = []  # (chunk, message) failed since the last chunk finished
    canary = None  # the cheapest chunk left, run alone to tell failing runs from a failing machine

    def failure(chunk, failures, error, alone):
        nonlocal canary
        died = isinstance(error, cf.BrokenExecutor)
        if died and not own:
            raise error
        message = f"{type(error).__name__}: {error}"
        if died:
            message = f"the worker process died running it ({message})"
        if chunk is canary:
            raise RuntimeError(f"the sweep stops: {len(pending) + 1} chunks in a row failed, the cheapest one left "
                               f"included ({message}); the chunks finished are kept") from error
        if died and alone and len(split(chunk)) > 1:
            suspects.extend((group, 1) for group in split(chunk))
        elif failures == 0:
            suspects.append((chunk, 1))
        else:
            pending.append((chunk, message))
            if len(pending) >= 2 and canary is None and todo:
                canary = todo.pop()
                suspects.appendleft((canary, 0))

    def flush():
        for chunk, message in pending:
            if failed:
                failed(chunk, message)
        pending.clear()

    def finish(f, alone):
        nonlocal canary
        chunk, failures = running.pop(f)
        if f.exception() is not None:
            return failure(chunk, failures, f.exception(), alone)
        canary = None
        flush()
        if done:
            done(f.result())

    try:
        while todo or suspects or running:
            while suspects and not running or todo and not suspects and (not own or len(running) < workers):
                chunk, failures = suspects.popleft() if suspects else (todo.popleft(), 0)
                with _workers_without_main() if own else contextlib.nullcontext():  # submit starts workers
                    running[pool.submit(run, chunk)] = chunk, failures
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            alone = len(running) == 1
            for f in finished:
                finish(f, alone)
            if own and any(isinstance(f.exception(), cf.BrokenExecutor) for f in finished):
                for f in cf.wait(running).done:  # the other chunks in flight, most of them dead with the pool
                    finish(f, False)
                pool.shutdown(wait=True)
                pool = new_pool(workers)
        flush()
    finally:
        if own:
            pool.shutdown(wait=True, cancel_futures=True)
