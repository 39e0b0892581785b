"""``fastmem reproduce NAME``: the experiments of *Learning Associative Memories with Gradient
Descent* (Cabannes, Simsek, Bietti, ICML 2024), computed by fastmem at run time.

Also ``cmd``: Correlation Mode Decomposition (fastmem.cmd) of a fastmem run, and PathCond's
``pathcond-moons``, ``pathcond-depth``, ``pathcond-conv`` and ``pathcond-conv-resnet18``
(fastmem.pathcond; PyTorch and scikit-learn needed), and
Scan and Snap's ``scan-snap-small`` (Fig. 4) and ``scan-snap-medium`` (Fig. 6; fastmem.scansnap), and the
paper's own small-transformer study, ``ihead-wo2`` and ``ihead-all`` (fastmem.transformer).
Each writes its figures (PNG and PDF) and NAME.json with its key numbers, the
phenomenon the paper reports ("expected") and whether this run shows it ("holds").
"""

import time
from dataclasses import dataclass

from . import cmd_run, larger, pathcond, scaling_law, scansnap, transformer, two_token, underparam
from ._common import write_json


@dataclass(frozen=True)
class Experiment:
    name: str
    run: object
    minutes: float = 0.0  # about how long it takes on 2 cores, where more than seconds
    full_minutes: float = 0.0  # where it runs at a reduced size: how long the paper's size takes (--full)
    takes_a_sweep: bool = False  # draws from a sweep folder given with --from (else runs the sweep first)

    @property
    def summary(self):
        return " ".join(self.run.__doc__.strip().split("\n\n")[0].split())  # the first paragraph


EXPERIMENTS = {e.name: e for e in (
    Experiment("landscape", two_token.landscape_experiment),
    Experiment("spike", two_token.spike_experiment),
    Experiment("learning-rates", two_token.learning_rates_experiment),
    Experiment("forgetting", underparam.forgetting_experiment),
    Experiment("sharpness", underparam.sharpness_experiment),
    Experiment("eos", larger.eos_experiment),
    Experiment("margins-log", larger.margins_log_experiment),
    Experiment("one-step", larger.one_step_experiment),
    Experiment("imbalance", larger.imbalance_experiment),
    Experiment("cmd", cmd_run.cmd_experiment),
    Experiment("pathcond-moons", pathcond.moons_experiment, minutes=0.8),
    Experiment("pathcond-depth", pathcond.depth_experiment, minutes=2.5),
    Experiment("pathcond-conv", pathcond.conv_experiment, minutes=1.2),
    Experiment("pathcond-conv-resnet18", pathcond.conv_resnet18_experiment, minutes=1.3),
    Experiment("scan-snap-small", scansnap.small_experiment),
    Experiment("scan-snap-medium", scansnap.medium_experiment, minutes=0.2),
    Experiment("ihead-wo2", transformer.wo2_experiment, minutes=0.3),
    Experiment("ihead-all", transformer.all_experiment, minutes=1.2, full_minutes=20),
    Experiment("scaling-law", scaling_law.scaling_law_experiment, minutes=7, takes_a_sweep=True),
)}


def reproduce(name, out=".", full=False, source=None):
    """Run experiment ``name``, write its figures and ``name.json`` under ``out``; return the numbers.
    ``full``: at the paper's size, for the experiments that run at a reduced one by default;
    ``source``: the sweep folder to draw from, for those that take one (``scaling-law``)."""
    from .._validate import fail

    if name not in EXPERIMENTS:
        fail("name", f"one of {sorted(EXPERIMENTS)}", repr(name))
    e = EXPERIMENTS[name]
    if full and not e.full_minutes:
        fail("full", f"an experiment with a reduced size ({[x.name for x in EXPERIMENTS.values() if x.full_minutes]})",
             repr(name))
    if source is not None and not e.takes_a_sweep:
        fail("source", f"an experiment drawn from a sweep ({[x.name for x in EXPERIMENTS.values() if x.takes_a_sweep]})",
             repr(name))
    t0 = time.perf_counter()
    kw = {"full": True} if full else {}
    if source is not None:
        kw["source"] = source
    numbers = e.run(out, **kw)
    numbers["seconds"] = round(time.perf_counter() - t0, 3)
    write_json(out, name, numbers)
    return numbers
