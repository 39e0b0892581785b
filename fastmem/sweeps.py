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

import concurrent.futures as cf
import contextlib
import hashlib
import itertools
import json
import multiprocessing
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from . import _validate as v

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
COLUMNS = list(KEYS) + ["run_id", "status", "error", "loss", "steps", "seconds", "representation", "message"]


def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_num(x):
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and np.isfinite(x)


def expand(grid):
    """The run configurations of a grid (a dict of values or lists), validated before any run."""
    if not isinstance(grid, dict):
        v.fail("grid", "a dict of keys to values or lists of values", type(grid).__name__)
    unknown = sorted(set(grid) - set(KEYS))
    if unknown:
        v.fail(f"grid[{unknown[0]!r}]", f"one of the keys {sorted(KEYS)}", repr(unknown[0]))
    axes = {k: (grid[k] if isinstance(grid[k], list) else [grid[k]]) for k in grid}
    axes = {**{k: [val] for k, val in DEFAULTS.items() if k not in axes}, **axes}
    missing = sorted(set(KEYS) - set(axes))
    if missing:
        v.fail("grid", f"a value for every key; missing {missing}", sorted(axes))
    for k, values in axes.items():
        ok, what = KEYS[k]
        for x in values:
            if not ok(x):
                v.fail(f"grid[{k!r}]", what, repr(x))
    names = list(KEYS)
    configs = [dict(zip(names, combo)) for combo in itertools.product(*(axes[k] for k in names))]
    for c in configs:
        if c["ntrain"] % c["batch_size"]:
            v.fail("grid['ntrain']", f"a multiple of batch_size {c['batch_size']}", c["ntrain"])
    return configs


def run_id(config):
    """A stable identifier of a configuration (its JSON, hashed)."""
    blob = json.dumps({k: (float(x) if k in ("lr", "alpha") else x) for k, x in config.items()}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def run_one(config, backend=None, trajectory=0):
    """One run of the scaling-law grid (EXPERIMENTS.md): Normal(0, 1/d) inits (W from
    fm.kernels.normal), training tokens drawn once and consumed in consecutive batches
    (ntrain / batch_size steps), Adam with betas (0, 0) at lr / d for W and lr / sqrt(d) for E
    and U; error = sum of p(x) over tokens whose argmax score is wrong. Returns the result row
    (a dict) and, with ``trajectory`` K > 0, the run's (step, loss, error) at about K log-spaced
    steps (else None)."""
    import fastmem as fm
    from .models import train_model

    c = config
    t0 = time.perf_counter()
    task = fm.Task.zipf(c["N"], c["M"], c["alpha"])
    E, U = fm.embeddings.gaussian(c["N"], c["M"], c["d"], seed=c["seed"])
    W = fm.kernels.normal((c["d"], c["d"]), seed=c["seed"], scale=c["d"] ** -0.5, dtype=E.dtype, backend=backend)
    steps = c["ntrain"] // c["batch_size"]
    adam = c["optimizer"] == "adam"
    rec = fm.Record(steps="log" if trajectory else "last", metrics=("loss", "accuracy"), num=max(trajectory, 1))
    if c["model"] == "matrix":
        opt = fm.Adam(lr=c["lr"] / c["d"], betas=(0.0, 0.0)) if adam else fm.SGD(lr=c["lr"])
        # Adam(0, 0) without LayerNorm: train W U^T (d x M), not W (the grid needs no W)
        rep = "projected" if adam and not c["layernorm"] else "auto"
        run = fm.train(fm.AssociativeMemory(E, U, W=W, layernorm=c["layernorm"]), task, opt, steps,
                       batch_size=c["batch_size"], seed=c["seed"], record=rec, backend=backend, representation=rep)
        rep = run.representation
    else:
        opt = fm.Adam(lr=c["lr"], betas=(0.0, 0.0)) if adam else fm.SGD(lr=c["lr"])
        scale = {"W": 1 / c["d"], "E": c["d"] ** -0.5, "U": c["d"] ** -0.5} if adam else None
        run = train_model(c["model"], E, U, task, opt, steps, batch_size=c["batch_size"], seed=c["seed"], W=W,
                          layernorm=c["layernorm"], lr_scale=scale, record=rec, backend=backend)
        rep = "primal"
    done = len(run.loss) > 0
    row = {**c, "run_id": run_id(c), "status": run.status, "error": float(1 - run.accuracy[-1]) if done else np.nan,
           "loss": float(run.loss[-1]) if done else np.nan, "steps": int(run.steps_done),
           "seconds": time.perf_counter() - t0, "representation": rep, "message": ""}
    traj = {"step": run.steps, "loss": run.loss, "error": 1 - run.accuracy} if trajectory else None
    return row, traj


@contextlib.contextmanager
def _single_threaded():
    """One OpenMP thread in the compiled core for the block: the sweep parallelises over runs."""
    from .backends import backends

    if not backends()["cpp"]["available"]:
        yield
        return
    from . import _core

    before = _core.get_num_threads()
    _core.set_num_threads(1)
    try:
        yield
    finally:
        _core.set_num_threads(before)


def run_chunk(configs, out, backend=None, trajectory=0):
    """Run the configurations one after the other, single-threaded, retrying a failing run
    once, then write them all atomically (trajectories first: a runs file marks a chunk done)."""
    rows, trajs = [], []
    with _single_threaded():
        for c in configs:
            for attempt in (1, 2):
                try:
                    row, traj = run_one(c, backend, trajectory)
                    rows.append(row)
                    if traj is not None:
                        trajs.append((row["run_id"], traj))
                    break
                except Exception:  # noqa: BLE001 - a failed run is recorded, the sweep goes on
                    if attempt == 2:
                        rows.append({**c, "run_id": run_id(c), "status": "failed", "error": np.nan, "loss": np.nan,
                                     "steps": 0, "seconds": 0.0, "representation": "",
                                     "message": traceback.format_exc(limit=3)})
    name = "chunk-" + hashlib.sha1("".join(r["run_id"] for r in rows).encode()).hexdigest()[:16]
    if trajs:
        _write_atomic(_trajectory_frame(trajs), Path(out) / "trajectories", name)
    _write_atomic(_frame(rows), Path(out) / "runs", name)
    return [r["run_id"] for r in rows]


def _frame(rows):
    import pandas as pd

    return pd.DataFrame(rows, columns=COLUMNS)


def _trajectory_frame(trajs):
    import pandas as pd

    return pd.concat([pd.DataFrame({"run_id": rid, "point": np.arange(len(t["step"])), **t}) for rid, t in trajs],
                     ignore_index=True)


def _write_atomic(df, folder, name):
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    df.to_parquet(tmp, index=False)
    os.replace(tmp, folder / f"{name}.parquet")  # atomic: a reader sees the whole chunk or nothing


def load_sweep(out, trajectories=False):
    """All finished runs under ``out`` as a pandas DataFrame (one row per run); with
    ``trajectories``, also an xarray Dataset of the recorded trajectories: variables step, loss,
    error over (run_id, point), NaN past a run's last point, the grid's keys as coordinates."""
    import pandas as pd

    files = sorted((Path(out) / "runs").glob("chunk-*.parquet"))
    runs = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame(columns=COLUMNS)
    if not trajectories:
        return runs
    import xarray as xr

    done = [Path(out) / "trajectories" / f.name for f in files]
    parts = [pd.read_parquet(f) for f in done if f.exists()]
    if not parts:
        return runs, xr.Dataset()
    ds = pd.concat(parts, ignore_index=True).set_index(["run_id", "point"]).to_xarray()
    keys = runs.set_index("run_id").loc[ds["run_id"].values]
    return runs, ds.assign_coords({k: ("run_id", keys[k].to_numpy()) for k in KEYS})


def _chunks(configs, size):
    """Runs of the same shapes together (model, d, layernorm, optimizer), in chunks of ``size``."""
    key = lambda c: (c["model"], c["d"], c["layernorm"], c["optimizer"], c["N"], c["M"])  # noqa: E731
    ordered = sorted(configs, key=lambda c: (key(c), c["seed"], c["lr"], c["batch_size"], c["ntrain"]))
    for _, group in itertools.groupby(ordered, key=key):
        group = list(group)
        for i in range(0, len(group), size):
            yield group[i:i + size]


def _cost(c):
    """A run's rough cost for scheduling: steps x d (d + N) multiply-adds."""
    return c["ntrain"] // c["batch_size"] * c["d"] * (c["d"] + c["N"])


def sweep(grid_or_configs, out, executor=None, workers=None, chunk_size=16, quiet=False, backend=None, trajectory=0):
    """Run every configuration of a grid (dict) or list of configurations not already on disk
    under ``out``; return ``load_sweep(out)``.

    executor : any concurrent.futures.Executor (``distributed.Client(...).get_executor()``
        for a Dask cluster); default a local process pool of ``workers`` (default: CPU count)
    chunk_size : runs per task and per file (what a kill can lose)
    backend : the backend every run uses (default: the workers' own choice, see fm.backends)
    trajectory : K > 0 also records each run's loss and error at about K log-spaced steps
        (``load_sweep(out, trajectories=True)``); runs already on disk keep what they recorded
    """
    configs = expand(grid_or_configs) if isinstance(grid_or_configs, dict) else \
        [c for g in grid_or_configs for c in expand(g)]
    out = Path(out)
    done = set(load_sweep(out)["run_id"])
    todo = [c for c in configs if run_id(c) not in done]
    chunk_size = v.positive_int("chunk_size", chunk_size)
    trajectory = v.positive_int("trajectory", trajectory, allow_zero=True)
    own = executor is None
    if own:
        workers = os.cpu_count() if workers is None else v.positive_int("workers", workers)
        # forkserver: forking a process that runs OpenMP / numba / XLA threads can deadlock
        executor = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))
    from tqdm.auto import tqdm

    bar = tqdm(total=len(configs), initial=len(configs) - len(todo), unit="run", desc="sweep",
               disable=quiet or not sys.stderr.isatty())
    try:
        # the costliest chunks first, so that the last ones to finish are short (no idle worker)
        chunks = sorted(_chunks(todo, chunk_size), key=lambda chunk: -sum(map(_cost, chunk)))
        futures = [executor.submit(run_chunk, chunk, str(out), backend, trajectory) for chunk in chunks]
        for f in cf.as_completed(futures):
            bar.update(len(f.result()))
    finally:
        bar.close()
        if own:
            executor.shutdown()
    return load_sweep(out)
