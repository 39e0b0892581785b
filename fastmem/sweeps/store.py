"""The on-disk store of a sweep: ``OUT/runs/chunk-*.parquet`` (one row per run),
``OUT/trajectories/chunk-*.parquet`` (long format, the same chunk names), ``OUT/sweep.json``
(the grids the folder holds) and ``OUT/.lock``.

Guarantees (issue 18):
- a chunk is written atomically (temporary file, then rename), trajectories before runs:
  a runs file marks a chunk done;
- one sweep writes to a folder at a time: an exclusive ``flock`` on ``OUT/.lock`` held by the
  process that schedules the sweep (workers, local or Dask, only write chunk files under it).
  A lock rather than claim files per chunk: chunks are cut from the runs still to do when a
  sweep starts, so two sweeps would cut different chunks of overlapping grids and claims would
  not see each other; the kernel drops the lock when its holder dies (kill -9 included), so
  it never goes stale;
- a chunk that cannot be read (truncated, empty, not Parquet), or whose trajectories twin
  cannot, is moved aside to ``OUT/damaged/`` (never deleted), named in a warning, and its
  runs are done again; ``load`` reads every good chunk and names the ones it skipped.
"""

import contextlib
import fcntl
import json
import os
import time
import warnings
from pathlib import Path

from .. import _validate as v

FORMAT = 1


class SweepStoreWarning(UserWarning):
    """A chunk of a sweep's folder could not be read (it is skipped, or moved aside)."""


def _read(path, columns=None):
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=columns).to_pandas()  # pandas' read_parquet, less its overhead


def _read_all(paths):
    """Each file read (a DataFrame) or the exception reading it raised, in order: on threads
    (pyarrow reads without the GIL), a folder of 2,520 chunks in a third of the time."""
    import concurrent.futures as cf

    def one(path):
        try:
            return _read(path)
        except Exception as exc:  # noqa: BLE001 - any failure to read is damage (pyarrow raises several types)
            return exc

    with cf.ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        return list(pool.map(one, paths))


def _grid_key(grid):
    """A grid as the set of its runs: each key's values as a set (order and repeats aside)."""
    return json.dumps({k: sorted({json.dumps(x, sort_keys=True) for x in (vals if isinstance(vals, list) else [vals])})
                       for k, vals in grid.items()}, sort_keys=True)


def _set_aside(df, columns, seen):
    """Why a readable Parquet file in runs/ is not read as runs (None if it is): every chunk holds
    the grid's keys, run_id and status; one whose runs are all in chunks read before (``seen``)
    is a copy."""
    need = list(columns[:columns.index("run_id") + 1]) + ["status"] if "run_id" in columns else ["run_id", "status"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        return f"foreign: not a chunk of this sweep, no column {missing}"
    if len(df) and set(df["run_id"]) <= seen:
        return "runs already on disk in another chunk"
    return None


def _once_per_run(runs, out, stacklevel):
    """Each run once: rows of a run id seen before (a chunk copied under another name) are set
    aside, and said."""
    dup = runs["run_id"].duplicated()
    if dup.any():
        warnings.warn(f"{out}: {int(dup.sum())} row(s) of runs already on disk (a chunk copied under another name?) "
                      f"set aside: {sorted(set(runs['run_id'][dup]))[:5]}", SweepStoreWarning, stacklevel=stacklevel)
        runs = runs[~dup].reset_index(drop=True)
    return runs


def _readable(path):
    try:
        _read(path)
    except Exception:  # noqa: BLE001 - any failure to read is damage (pyarrow raises several types)
        return False
    return True


def experiment_of(out):
    """The experiment a sweep folder's sweep.json names (None without one)."""
    try:
        return json.loads((Path(out) / "sweep.json").read_text())["experiment"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def sessions_of(out):
    """The sweep calls a folder's sweep.json records ([] without any): started, finished (None
    while running or if killed), backend, fastmem, cpu_level, workers."""
    try:
        return list(json.loads((Path(out) / "sweep.json").read_text()).get("sessions", []))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def grids_of(out):
    """The grids a sweep folder's sweep.json records ([] without one)."""
    try:
        return list(json.loads((Path(out) / "sweep.json").read_text())["grids"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def chunk_files(out):
    return sorted((Path(out) / "runs").glob("chunk-*.parquet"))


def load(out, columns, trajectories=False):
    """(runs DataFrame, trajectory frames or None) of every readable chunk; unreadable ones are
    named in one SweepStoreWarning and skipped (a runs chunk with a damaged trajectories twin
    is skipped whole when ``trajectories``)."""
    import pandas as pd

    out = Path(out)
    if not (out / "runs").is_dir() and not (out / "sweep.json").is_file():
        v.fail("out", "the folder of a sweep (holding runs/ or sweep.json)",
               f"{str(out)!r}, which {'is not a sweep folder' if out.exists() else 'does not exist'}")
    frames, trajs, skipped, seen = [], [], [], set()
    files = chunk_files(out)
    twins = [out / "trajectories" / f.name for f in files]
    wanted = [t for t in twins if trajectories and t.exists()]
    read = _read_all(files + wanted)
    twin_read = dict(zip(wanted, read[len(files):]))
    for f, df, twin in zip(files, read, twins):
        traj = twin_read.get(twin)
        bad = df if isinstance(df, Exception) else traj if isinstance(traj, Exception) else None
        if bad is not None:
            skipped.append(f"{f.relative_to(out)} ({type(bad).__name__})")
            continue
        why = _set_aside(df, columns, seen)
        if why:
            skipped.append(f"{f.relative_to(out)} ({why})")
            continue
        frames.append(df)
        seen.update(df["run_id"])
        if traj is not None:
            trajs.append(traj)
    if skipped:
        warnings.warn(f"{out}: skipped {len(skipped)} unreadable or foreign chunk(s): {', '.join(skipped)}; running "
                      f"the sweep again moves them to {out / 'damaged'} and redoes their runs", SweepStoreWarning,
                      stacklevel=3)
    runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    runs = _once_per_run(runs, out, stacklevel=3)
    if trajectories and trajs:  # chunks that overlap in part: each run's points once, as its row
        trajs = [pd.concat(trajs, ignore_index=True).drop_duplicates(["run_id", "point"])]
    return runs, (trajs if trajectories else None)


def write_atomic(df, folder, name):
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    df.to_parquet(tmp, index=False)
    os.replace(tmp, folder / f"{name}.parquet")  # atomic: a reader sees the whole chunk or nothing


class Store:
    """A sweep's folder, opened for writing: checked, locked, its grids recorded.

    ``Store(out, grids, extend)`` raises InvalidArgumentError naming ``out`` where the folder
    cannot be written, another sweep holds it, or it holds other grids (unless ``extend``);
    use it as a context manager (the lock is released on exit)."""

    def __init__(self, out, experiment, grids, extend=False):
        self.out = Path(out)
        self.experiment = experiment
        self._lock = None
        self._open(grids, extend)

    def _open(self, grids, extend):
        out = self.out
        if out.exists() and not out.is_dir():
            v.fail("out", "a folder (or a path to create)", f"{str(out)!r}, a file")
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            self._lock = open(out / ".lock", "a+")  # noqa: SIM115 - held until close()
        except OSError as exc:
            v.fail("out", "a folder this process can write to", f"{str(out)!r} ({exc.strerror or exc})")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "another process"
            self.close()
            v.fail("out", "a folder no other sweep is writing to (each run is on disk once: wait for it to finish)",
                   f"{str(out)!r}, locked by {holder}")
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"pid {os.getpid()}\n")
        self._lock.flush()
        try:
            self._record_grids(grids, extend)
        except BaseException:
            self.close()
            raise
        for tmp in list(out.glob("runs/.*.tmp")) + list(out.glob("trajectories/.*.tmp")):
            tmp.unlink()  # left by a killed writer: no other writer runs while we hold the lock

    def _record_grids(self, grids, extend):
        path = self.out / "sweep.json"
        want = [_grid_key(g) for g in grids]
        given = dict(zip(want, grids))
        if path.exists():
            try:
                meta = json.loads(path.read_text())
                held = [_grid_key(g) for g in meta["grids"]]
                given.update(zip(held, meta["grids"]))
                experiment = meta["experiment"]
            except (ValueError, KeyError, TypeError):
                v.fail("out", "a sweep folder whose sweep.json fastmem wrote", f"{str(path)!r}, unreadable")
            if experiment != self.experiment:
                v.fail("out", f"a folder of {self.experiment!r} sweeps", f"{str(self.out)!r}, of {experiment!r}")
        else:
            held = [] if not chunk_files(self.out) else [None]  # runs of unknown grids (no sweep.json)
        new = [g for g in want if g not in held]
        if held and new and not extend:
            v.fail("out", "a folder holding this sweep's grid, or extend=True (--extend) to add the grid to it",
                   f"{str(self.out)!r}, which holds {'another grid' if held != [None] else 'runs of unknown grids'} "
                   f"({path.name})")
        held = [g for g in held if g is not None] + new
        self._meta = {"format": FORMAT, "experiment": self.experiment, "grids": [given[g] for g in held],
                      "sessions": meta.get("sessions", []) if path.exists() else []}
        self._write_meta()

    def _write_meta(self):
        path = self.out / "sweep.json"
        tmp = path.with_name(f".sweep.json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self._meta, indent=1) + "\n")
        os.replace(tmp, path)

    def record_session(self, **facts):
        """Append (or, called again, update) this sweep call's facts in sweep.json: when it
        started and finished, the backend, fastmem's version and the CPU level (fastmem report
        shows them)."""
        if not getattr(self, "_session", None):
            self._session = {}
            self._meta["sessions"].append(self._session)
        self._session.update(facts)
        self._write_meta()

    def close(self):
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def scan(self, columns):
        """The runs on disk (a DataFrame), each chunk read once; every chunk whose runs file or
        trajectories twin cannot be read is moved, both files, to OUT/damaged/ (runs/ and
        trajectories/ below it) and named in a SweepStoreWarning, its runs to be done again."""
        import pandas as pd

        frames, moved, seen = [], [], set()
        for f in chunk_files(self.out):
            twin = self.out / "trajectories" / f.name
            try:
                df = _read(f)
            except Exception:  # noqa: BLE001 - any failure to read is damage (pyarrow raises several types)
                df = None
            why = None if df is None else _set_aside(df, columns, seen)
            if df is None or why or twin.exists() and not _readable(twin):
                moved.append(str(f.relative_to(self.out)) + (f" ({why})" if why else ""))
                for path in (f, twin):
                    if path.exists():
                        self._move_aside(path)
            else:
                frames.append(df)
                seen.update(df["run_id"])
        if moved:
            warnings.warn(f"{self.out}: {len(moved)} damaged or foreign chunk(s) moved to {self.out / 'damaged'}, "
                          f"their runs are done again: {', '.join(moved)}", SweepStoreWarning, stacklevel=3)
        runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
        return _once_per_run(runs, self.out, stacklevel=3)

    def _move_aside(self, path):
        dest = self.out / "damaged" / path.parent.name
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / path.name
        if target.exists():
            target = dest / f"{path.stem}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}{path.suffix}"
        os.replace(path, target)

    def drop_runs(self, run_ids):
        """Remove these runs' rows from the chunks holding them (each chunk rewritten atomically,
        removed when nothing is left): runs recorded "failed", about to be retried."""
        run_ids = set(run_ids)
        for f in chunk_files(self.out):
            df = _read(f)
            keep = ~df["run_id"].isin(run_ids)
            if keep.all():
                continue
            twin = self.out / "trajectories" / f.name
            if keep.any():
                if twin.exists():
                    t = _read(twin)
                    write_atomic(t[t["run_id"].isin(df["run_id"][keep])], twin.parent, f.stem)
                write_atomic(df[keep], f.parent, f.stem)
            else:
                f.unlink()  # runs first: a trajectories file without its runs file is never read
                with contextlib.suppress(FileNotFoundError):
                    twin.unlink()
