"""What a sweep runs: an experiment is a function from a configuration to a result row (and
optionally a trajectory), with a declared schema of keys. Experiments register by name; a grid
names its experiment (``experiment = "scan-snap"`` in a TOML grid), the default being the
associative memory's scaling law."""

import importlib
from dataclasses import dataclass, field

import numpy as np

from .. import _validate as v

# {name: Experiment}: each system registers its own (fastmem/<system>/experiments.py, imported by
# the system's package), so that a new one touches no list here
_REGISTRY = {}


def _alone(config):
    return id(config)


@dataclass(frozen=True)
class Experiment:
    """A sweepable experiment.

    name : the name grids use
    keys : {key: (check(value) -> bool, description)}: every configuration sets each key
    defaults : values of keys a grid may leave out
    columns : the result row's columns after the keys and run_id (status, message and the
        experiment's own), in order; rows hold a "status" of "ok", "diverged" or "failed"
    run_group : run_group(configs, backend, trajectory) -> [(row, trajectory or None)], one per
        configuration; rows need not hold the keys and run_id (the runner adds them)
    group_key : configurations with equal group_key(config) run as one group (default: alone)
    order_key : order_key(config) -> (together, order): a chunk holds configurations of one
        ``together`` value (the same shapes, say), sorted by ``order`` (default: one chunk order)
    cost : cost(config), a relative cost for scheduling the costliest chunks first
    check_axes : check_axes(axes) raises InvalidArgumentError on axis values that cannot go
        together (each value alone is checked by ``keys``)
    float_keys : keys whose values are floats in run ids (1 and 1.0: the same run)
    kernels : kernels(axes) -> the names of the kernels (fm.backends' signature table) the grid's
        runs call: a sweep on a backend that lacks one refuses before its first run, naming it
    module : the module that registers it (workers import it to find the experiment)
    """

    name: str
    keys: dict
    columns: tuple
    run_group: object
    defaults: dict = field(default_factory=dict)
    group_key: object = _alone
    order_key: object = None
    cost: object = None
    check_axes: object = None
    float_keys: tuple = ()
    kernels: object = None
    module: str = ""


def integer_key(lo):
    """A key's check and description: an integer >= lo (numpy's too; not a bool)."""
    return (lambda x: isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= lo,
            f"an integer >= {lo}")


def number_key(lo, strict=False, description=None):
    """A key's check and description: a finite number > lo (strict) or >= lo (not a bool)."""

    def check(x):
        return (isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)
                and bool(np.isfinite(x)) and (x > lo if strict else x >= lo))

    return check, description or f"a number {'>' if strict else '>='} {lo}"


def register(experiment):
    """Make ``experiment`` runnable by name (fm.sweep(..., experiment=name), TOML ``experiment``)."""
    if not isinstance(experiment, Experiment):
        v.fail("experiment", "an fm.sweeps.Experiment", type(experiment).__name__)
    reserved = {"run_id", "status", "message"} & set(experiment.keys)
    if reserved:
        v.fail("experiment.keys", "names other than run_id, status and message", sorted(reserved))
    _REGISTRY[experiment.name] = experiment
    return experiment


def get(name, module=None):
    """The experiment registered as ``name`` (importing ``module`` first, in a worker: a user's
    experiment registers when its module is imported)."""
    if module and name not in _REGISTRY:
        importlib.import_module(module)
    if name not in _REGISTRY:
        v.fail("experiment", f"one of the registered experiments {sorted(_REGISTRY)}", repr(name))
    return _REGISTRY[name]


def names():
    """The names of the registered experiments."""
    return sorted(_REGISTRY)
