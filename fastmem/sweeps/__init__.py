"""Sweeps: a grid of runs of any registered experiment from one call, resumable, on one machine
or any Executor (Dask's too).

- ``grid.py``: a grid's axes validated against the experiment's keys, counted without expanding,
  expanded; the run id of a configuration.
- ``runner.py``: ``sweep`` and ``load_sweep``: chunks scheduled on worker processes (replaced if
  they die, exiting with the sweep, started without the caller's main module) or an Executor,
  failures retried and recorded.
- ``store.py``: the folder: atomic Parquet chunks, its lock, the grids it holds, damaged chunks
  moved aside.
- ``report.py``: ``report``, one self-contained HTML page of a folder (``fastmem report``): its
  counts, figures chosen from the grid, failed and diverged runs, another folder compared.
- ``experiment.py``: what an experiment declares (keys, result columns, how to run a group of
  configurations) and the registry. Each system registers its own experiments from its package
  (the associative memory's scaling law: ``fastmem/memory/experiments.py``).

Each chunk of finished runs is written atomically to ``OUT/runs/chunk-*.parquet``; running the
same sweep again skips what is on disk, so a killed sweep loses only the runs in flight. With
``trajectory=K`` runs also record a trajectory (the scaling law: loss and error at about K
log-spaced steps) under ``OUT/trajectories/`` in long format (run_id, point, ...). Parquet rather
than Zarr or NetCDF: one atomic file per chunk like the runs (appending to one store is not
atomic), the same reader, no further dependency; ``load_sweep(OUT, trajectories=True)`` gives
it as an xarray Dataset over (run_id, point) with the grid's keys as coordinates.
"""

from . import grid as _grid
from .experiment import Experiment, names, register
from .experiment import get as get_experiment
from .report import report
from .runner import DEFAULT_EXPERIMENT, load_sweep, sweep  # noqa: F401 - DEFAULT_EXPERIMENT: the CLI


def axes(grid, experiment_name=DEFAULT_EXPERIMENT):
    """The validated axes of a grid of an experiment (default the scaling law)."""
    return _grid.axes(grid, get_experiment(experiment_name))


def count(grid, experiment_name=DEFAULT_EXPERIMENT):
    """The number of runs of a grid, without expanding it."""
    return _grid.count(axes(grid, experiment_name))


def expand(grid, experiment_name=DEFAULT_EXPERIMENT):
    """The run configurations of a grid, validated before any run."""
    return _grid.expand(axes(grid, experiment_name))


__all__ = ["Experiment", "axes", "count", "expand", "get_experiment", "load_sweep", "names", "register", "sweep"]
