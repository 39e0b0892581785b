"""Grids: validated axes, counted without expanding, expanded into configurations, and the
stable identifier of a configuration."""

import hashlib
import itertools
import json
import math

import numpy as np

from .. import _validate as v


def axes(grid, experiment):
    """The validated axes of a grid (a dict of values or lists) of ``experiment``: every key,
    defaults filled in, each a non-empty list of plain Python values; nothing expanded."""
    if not isinstance(grid, dict):
        v.fail("grid", "a dict of keys to values or lists of values", type(grid).__name__)
    keys = experiment.keys
    unknown = sorted(set(grid) - set(keys))
    if unknown:
        v.fail(f"grid[{unknown[0]!r}]", f"one of the keys of {experiment.name!r} {sorted(keys)}", repr(unknown[0]))
    ax = {k: (grid[k] if isinstance(grid[k], list) else [grid[k]]) for k in grid}
    ax = {**{k: [val] for k, val in experiment.defaults.items() if k not in ax}, **ax}
    missing = sorted(set(keys) - set(ax))
    if missing:
        v.fail("grid", f"a value for every key; missing {missing}", sorted(ax))
    for k, values in ax.items():
        if not values:
            v.fail(f"grid[{k!r}]", "a value or a non-empty list of values", "[]")
        ok, what = keys[k]
        for x in values:
            if not ok(x):
                v.fail(f"grid[{k!r}]", what, repr(x))
    ax = {k: [float(x) if k in experiment.float_keys else (x.item() if isinstance(x, np.generic) else x)
              for x in ax[k]] for k in keys}
    if experiment.check_axes is not None:
        experiment.check_axes(ax)
    return ax


def count(ax):
    """The number of runs of validated axes."""
    return math.prod(len(values) for values in ax.values())


def expand(ax):
    """The configurations of validated axes, in the order of the experiment's keys."""
    names = list(ax)
    return [dict(zip(names, combo)) for combo in itertools.product(*(ax[k] for k in names))]


def run_id(config, float_keys=()):
    """A stable identifier of a configuration (its JSON, hashed)."""
    blob = json.dumps({k: (float(x) if k in float_keys else x) for k, x in config.items()}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]
