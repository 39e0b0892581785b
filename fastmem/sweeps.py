"""Sweeps: a grid of runs from one call, resumable, on one machine or any Executor (Dask's too).

Each chunk of finished runs is written atomically to ``OUT/runs/chunk-*.parquet``;
running the same sweep again skips what is on disk, so a killed sweep loses only the
runs in flight. ``load_sweep(OUT)`` reads them back as one pandas DataFrame.

With ``trajectory=K`` every run also records its loss and error at about K log-spaced steps,
written before the chunk's runs file to ``OUT/trajectories/chunk-*.parquet`` in long format
(run_id, point, step, loss, error). Parquet rather than Zarr or NetCDF: one atomic file per
chunk like the runs (appending to one store is not atomic), the same reader, no further
dependency; pandas reads it as it is and ``load_sweep(OUT, trajectories=True)`` turns it
into an xarray Dataset over (run_id, point) with the grid's keys as coordinates.
"""

import collections
import concurrent.futures as cf
import contextlib
import functools
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from . import _sweep_store as store
from . import _validate as v
from .train import Record

# key: (type check, human description). A grid value may be a scalar or a list.
KEYS = {
    "model": (lambda x: x in ("matrix", "learnable", "exponential"), "'matrix', 'learnable' or 'exponential'"),
    "optimizer": (lambda x: x in ("sgd", "adam"), "'sgd' or 'adam' (Adam with betas (0, 0))"),
    "N": (lambda x: _is_int(x) and x >= 1, "an integer >= 1"),
    "M": (lambda x: _is_int(x) and x >= 2, "an integer >= 2"),
    "d": (lambda x: _is_int(x) and x >= 1, "an integer >= 1"),
    "alpha": (lambda x: _is_num(x) and x >= 0, "a Zipf exponent >= 0"),
    "seed": (lambda x: _is_int(x) and x >= 0, "an integer >= 0"),
    "lr": (lambda x: _is_num(x) and x > 0, "a number > 0"),
    "batch_size": (lambda x: _is_int(x) and x >= 1, "an integer >= 1"),
    "ntrain": (lambda x: _is_int(x) and x >= 1, "an integer >= 1"),
    "layernorm": (lambda x: isinstance(x, bool), "true or false"),
}
DEFAULTS = {"model": "matrix", "optimizer": "sgd", "N": 100, "M": 5, "alpha": 2.0, "layernorm": False}
EXPERIMENT = "scaling-law"  # what sweep.json records: the grid keys above, run by run_group
COLUMNS = list(KEYS) + ["run_id", "status", "error", "loss", "steps", "seconds", "representation", "message"]


def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_num(x):
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and np.isfinite(x)


def axes(grid):
    """The validated axes of a grid (a dict of values or lists): every key, defaults filled in,
    each a non-empty list; nothing expanded."""
    if not isinstance(grid, dict):
        v.fail("grid", "a dict of keys to values or lists of values", type(grid).__name__)
    unknown = sorted(set(grid) - set(KEYS))
    if unknown:
        v.fail(f"grid[{unknown[0]!r}]", f"one of the keys {sorted(KEYS)}", repr(unknown[0]))
    ax = {k: (grid[k] if isinstance(grid[k], list) else [grid[k]]) for k in grid}
    ax = {**{k: [val] for k, val in DEFAULTS.items() if k not in ax}, **ax}
    missing = sorted(set(KEYS) - set(ax))
    if missing:
        v.fail("grid", f"a value for every key; missing {missing}", sorted(ax))
    for k, values in ax.items():
        if not values:
            v.fail(f"grid[{k!r}]", "a value or a non-empty list of values", "[]")
        ok, what = KEYS[k]
        for x in values:
            if not ok(x):
                v.fail(f"grid[{k!r}]", what, repr(x))
    for b in ax["batch_size"]:
        for n in ax["ntrain"]:
            if n % b:
                v.fail("grid['ntrain']", f"a multiple of batch_size {b}", n)
    return {k: [float(x) if k in ("lr", "alpha") else (x.item() if isinstance(x, np.generic) else x) for x in ax[k]]
            for k in KEYS}


def count(grid):
    """The number of runs of a grid, without expanding it."""
    return math.prod(len(values) for values in axes(grid).values())


def expand(grid):
    """The run configurations of a grid (a dict of values or lists), validated before any run."""
    ax = axes(grid)
    names = list(KEYS)
    return [dict(zip(names, combo)) for combo in itertools.product(*(ax[k] for k in names))]


def run_id(config):
    """A stable identifier of a configuration (its JSON, hashed)."""
    blob = json.dumps({k: (float(x) if k in ("lr", "alpha") else x) for k, x in config.items()}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def run_one(config, backend=None, trajectory=0):
    """One run of the scaling-law grid (docs/experiments.md): Normal(0, 1/d) inits (W from
    fm.kernels.normal), training tokens drawn once and consumed in consecutive batches
    (ntrain / batch_size steps), Adam with betas (0, 0) at lr / d for W and lr / sqrt(d) for E
    and U; error = sum of p(x) over tokens whose argmax score is wrong. Returns the result row
    (a dict) and, with ``trajectory`` K > 0, the run's (step, loss, error) at about K log-spaced
    steps (else None)."""
    return run_group([config], backend, trajectory)[0]


def run_group(configs, backend=None, trajectory=0):
    """Runs that differ only in ntrain, from one trajectory; [(row, trajectory)] as run_one
    gives each, in the order of ``configs``.

    The tokens come from a counter-based stream, so the run of ntrain tokens is the first
    ntrain / batch_size steps of a longer run of the same seed: one run to the longest, recording
    at every member's own steps, gives each member's records and status exactly. SGD runs that
    the cost model would give another representation at their own length run apart.
    """
    lengths = [c["ntrain"] // c["batch_size"] for c in configs]
    if len({json.dumps({**c, "ntrain": 0}, sort_keys=True) for c in configs}) != 1:
        v.fail("configs", "configurations that differ only in ntrain", [c["ntrain"] for c in configs])
    t0 = time.perf_counter()
    start = _Setup(configs[0], backend)
    out = [None] * len(configs)
    reps = [start.representation(n) for n in lengths]
    for rep in dict.fromkeys(reps):
        members = [i for i, r in enumerate(reps) if r == rep]
        own = [_record(trajectory).resolve(lengths[i]) for i in members]
        run = start.train(max(lengths[i] for i in members), Record(np.unique(np.concatenate(own))), rep)
        for i, pts in zip(members, own):
            out[i] = _member(configs[i], lengths[i], pts, run, rep, trajectory)
    seconds = time.perf_counter() - t0
    for i, n in enumerate(lengths):  # the shared time split by steps; a rerun adds its own
        if out[i] is None:
            out[i] = run_group([configs[i]], backend, trajectory)[0]
        else:
            out[i][0]["seconds"] = seconds * max(n, 1) / sum(max(m, 1) for m in lengths)
    return out


def _record(trajectory):
    return Record(steps="log" if trajectory else "last", num=max(trajectory, 1))


def _member(c, n, pts, run, rep, trajectory):
    """A member's (row, trajectory) from the run of its group, or None where they cannot be
    told apart from it: the run stopped at a record of another member, which a run of n steps
    would not have taken (it would have gone on to its next step)."""
    steps, s = np.asarray(run.steps), int(run.steps_done)
    diverged = run.status != "ok"
    # a non-finite population loss at a record stopped the run; else the loss of a batch
    at_record = diverged and len(steps) > 0 and steps[-1] == s and not np.isfinite(run.loss[-1])
    if diverged and at_record and n > s and s not in pts:
        return None
    keep = np.isin(steps, pts) & (steps <= n)
    loss, error = np.asarray(run.loss)[keep], 1 - np.asarray(run.accuracy)[keep]
    status = "diverged" if diverged and (n > s or (n == s and at_record)) else "ok"
    row = {**c, "run_id": run_id(c), "status": status, "error": float(error[-1]) if keep.any() else np.nan,
           "loss": float(loss[-1]) if keep.any() else np.nan, "steps": min(n, s), "seconds": 0.0,
           "representation": rep, "message": ""}
    traj = {"step": steps[keep], "loss": loss, "error": error} if trajectory else None
    return row, traj


class _Setup:
    """The initial state of a grid configuration: task, embeddings, W and optimizer."""

    def __init__(self, c, backend):
        import fastmem as fm

        self.c, self.backend = c, backend
        self.task = fm.Task.zipf(c["N"], c["M"], c["alpha"])
        self.E, self.U = fm.embeddings.gaussian(c["N"], c["M"], c["d"], seed=c["seed"])
        self.W = fm.kernels.normal((c["d"], c["d"]), seed=c["seed"], scale=c["d"] ** -0.5, dtype=self.E.dtype,
                                   backend=backend)
        adam = c["optimizer"] == "adam"
        if c["model"] == "matrix":
            self.opt = fm.Adam(lr=c["lr"] / c["d"], betas=(0.0, 0.0)) if adam else fm.SGD(lr=c["lr"])
            self.memory = fm.AssociativeMemory(self.E, self.U, W=self.W, layernorm=c["layernorm"])
        else:
            self.opt = fm.Adam(lr=c["lr"], betas=(0.0, 0.0)) if adam else fm.SGD(lr=c["lr"])
            self.scale = {"W": 1 / c["d"], "E": c["d"] ** -0.5, "U": c["d"] ** -0.5} if adam else None

    def representation(self, steps):
        """What fm.train would take for a run of this many steps (the models: "primal")."""
        from .dual import choose

        c = self.c
        if c["model"] != "matrix":
            return "primal"
        if c["optimizer"] == "adam" and not c["layernorm"]:
            return "projected"  # Adam(0, 0) without LayerNorm: train W U^T (d x M); the grid needs no W
        return choose(self.memory, self.task, self.opt, steps, c["batch_size"], "auto")[0]

    def train(self, steps, record, representation):
        import fastmem as fm

        from .models import train_model

        c = self.c
        if c["model"] == "matrix":
            return fm.train(self.memory, self.task, self.opt, steps, batch_size=c["batch_size"], seed=c["seed"],
                            record=record, backend=self.backend, representation=representation)
        return train_model(c["model"], self.E, self.U, self.task, self.opt, steps, batch_size=c["batch_size"],
                           seed=c["seed"], W=self.W, layernorm=c["layernorm"], lr_scale=self.scale, record=record,
                           backend=self.backend)


@contextlib.contextmanager
def _single_threaded():
    """One thread in the compiled core and (threadpoolctl installed: the sweep extra) in the
    BLAS libraries for the block: the sweep parallelises over runs, and a BLAS pool that
    spins after each call takes a core from the other workers (matrix third: 188 -> 182 s)."""
    from .backends import backends

    with contextlib.ExitStack() as stack:
        with contextlib.suppress(ImportError):
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(1))
        if backends()["cpp"]["available"]:
            from . import _core

            before = _core.get_num_threads()
            _core.set_num_threads(1)
            stack.callback(_core.set_num_threads, before)
        yield


def run_chunk(configs, out, backend=None, trajectory=0):
    """Run the configurations one group after the other (runs that differ only in ntrain:
    run_group), single-threaded, retrying a failing group once, then write them all atomically
    (trajectories first: a runs file marks a chunk done)."""
    rows, trajs = [], []
    with _single_threaded():
        for group in _groups(configs):
            for attempt in (1, 2):
                try:
                    results = run_group(group, backend, trajectory)
                    break
                except Exception:  # noqa: BLE001 - a failed run is recorded, the sweep goes on
                    if attempt == 2:
                        results = [(row, None) for row in _failed_rows(group, traceback.format_exc(limit=3))]
            for row, traj in results:
                rows.append(row)
                if traj is not None:
                    trajs.append((row["run_id"], traj))
    return _write_chunk(out, rows, trajs)


def _failed_rows(configs, message):
    return [{**c, "run_id": run_id(c), "status": "failed", "error": np.nan, "loss": np.nan, "steps": 0,
             "seconds": 0.0, "representation": "", "message": message} for c in configs]


def _write_chunk(out, rows, trajs=()):
    """The chunk's files (trajectories first: a runs file marks a chunk done); its run ids."""
    name = "chunk-" + hashlib.sha1("".join(r["run_id"] for r in rows).encode()).hexdigest()[:16]
    if trajs:
        store.write_atomic(_trajectory_frame(trajs), Path(out) / "trajectories", name)
    store.write_atomic(_frame(rows), Path(out) / "runs", name)
    return [r["run_id"] for r in rows]


def _groups(configs):
    """The configurations in groups that differ only in ntrain (run_group), in order."""
    groups = {}
    for c in configs:
        groups.setdefault(json.dumps({**c, "ntrain": 0}, sort_keys=True), []).append(c)
    return list(groups.values())


def _frame(rows):
    import pandas as pd

    return pd.DataFrame(rows, columns=COLUMNS)


def _trajectory_frame(trajs):
    import pandas as pd

    return pd.concat([pd.DataFrame({"run_id": rid, "point": np.arange(len(t["step"])), **t}) for rid, t in trajs],
                     ignore_index=True)


def load_sweep(out, trajectories=False):
    """All finished runs under ``out`` as a pandas DataFrame (one row per run); with
    ``trajectories``, also an xarray Dataset of the recorded trajectories: variables step, loss,
    error over (run_id, point), NaN past a run's last point, the grid's keys as coordinates.

    A chunk that cannot be read is skipped and named in a ``SweepStoreWarning`` (running the
    sweep again moves it aside and redoes its runs); a path that is not a sweep's folder raises
    InvalidArgumentError."""
    import pandas as pd

    runs, parts = store.load(out, COLUMNS, trajectories)
    if not trajectories:
        return runs
    import xarray as xr

    if not parts:
        return runs, xr.Dataset()
    ds = pd.concat(parts, ignore_index=True).set_index(["run_id", "point"]).to_xarray()
    keys = runs.set_index("run_id").loc[ds["run_id"].values]
    return runs, ds.assign_coords({k: ("run_id", keys[k].to_numpy()) for k in KEYS})


def _chunks(configs, size):
    """Runs of the same shapes together (model, d, layernorm, optimizer), in chunks of about
    ``size`` that keep each group of run_group whole."""
    key = lambda c: (c["model"], c["d"], c["layernorm"], c["optimizer"], c["N"], c["M"])  # noqa: E731
    ordered = sorted(configs, key=lambda c: (key(c), c["seed"], c["lr"], c["batch_size"], c["ntrain"]))
    for _, same in itertools.groupby(ordered, key=key):
        chunk = []
        for group in _groups(list(same)):
            if chunk and len(chunk) + len(group) > size:
                yield chunk
                chunk = []
            chunk += group
        yield chunk


def _cost(c):
    """A run's rough cost for scheduling: steps x d (d + N) multiply-adds."""
    return c["ntrain"] // c["batch_size"] * c["d"] * (c["d"] + c["N"])


def sweep(grid_or_configs, out, executor=None, workers=None, chunk_size=16, quiet=False, backend=None, trajectory=0,
          max_runs=10**6, extend=False):
    """Run every configuration of a grid (dict), or of a list of grids, not already on disk
    under ``out``; return the sweep's own runs (a DataFrame, one row per run, from disk).

    executor : any concurrent.futures.Executor (``distributed.Client(...).get_executor()``
        for a Dask cluster); default a local process pool of ``workers`` (default: CPU count),
        replaced if a worker process dies (see _schedule: what was in flight runs again alone,
        and a group of runs that kills its worker twice is recorded as "failed"; where every
        chunk fails, the cheapest included, the sweep stops with RuntimeError instead). Local
        workers exit when the sweeping process dies (kill -9 included).
    chunk_size : about this many runs per task and per file (what a kill can lose); runs that
        differ only in ntrain stay together (one trajectory gives them all, see run_group)
    backend : the backend every run uses (default: the workers' own choice, see fm.backends)
    trajectory : K > 0 also records each run's loss and error at about K log-spaced steps
        (``load_sweep(out, trajectories=True)``); runs already on disk keep what they recorded
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
    grids = [axes(g) for g in grids]
    max_runs = v.positive_int("max_runs", max_runs)
    total = sum(math.prod(map(len, g.values())) for g in grids)
    if total > max_runs:
        v.fail("grid", f"at most max_runs = {max_runs:,} runs (raise max_runs, or --max-runs, to run more)",
               f"{total:,} runs")
    chunk_size = v.positive_int("chunk_size", chunk_size)
    trajectory = v.positive_int("trajectory", trajectory, allow_zero=True)
    if executor is None:
        workers = os.cpu_count() if workers is None else v.positive_int("workers", workers)
    with store.Store(out, EXPERIMENT, grids, extend=extend) as st:
        st.quarantine_damaged()
        configs = list({run_id(c): c for g in grids for c in expand(g)}.items())
        ids = {rid for rid, _ in configs}
        on_disk = store.load(out, COLUMNS)[0]
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
        # the costliest chunks first, so that the last ones to finish are short (no idle worker)
        chunks = sorted(_chunks(todo, chunk_size), key=lambda chunk: -sum(max(map(_cost, g)) for g in _groups(chunk)))
        with bar:
            _schedule(chunks, functools.partial(run_chunk, out=str(out), backend=backend, trajectory=trajectory),
                      executor, workers, done=lambda ids: bar.update(len(ids)),
                      failed=lambda chunk, message: bar.update(len(_write_chunk(out, _failed_rows(chunk, message)))))
        runs = load_sweep(out)
    return runs[runs["run_id"].isin(ids)].reset_index(drop=True)


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


def _schedule(chunks, run, executor=None, workers=1, done=None, failed=None, new_pool=_local_pool):
    """run(chunk) for every chunk (in order of decreasing cost) on the executor (None: a pool of
    ``workers`` processes from new_pool, ``workers`` chunks in flight), then done(result).

    A chunk whose task raised, or that was in flight when a worker process died, runs again
    alone; a second failure makes it failed. A chunk of several groups that kills its worker
    when alone is split into its groups, each run alone, so that only the group that kills the
    worker is failed. failed(chunk, message) is called once a later chunk has finished (or at
    the end): after two failures with no success between them, the cheapest chunk left runs
    alone first, and if it fails too, nothing works here (a worker that cannot start, a full
    disk): RuntimeError, nothing of the failures recorded. The caller's own executor broken
    cannot be replaced: its error is raised."""
    own = executor is None
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
        if died and alone and len(_groups(chunk)) > 1:
            suspects.extend((group, 1) for group in _groups(chunk))
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
