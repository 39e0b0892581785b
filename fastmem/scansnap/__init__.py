"""Scan and Snap (Tian et al., NeurIPS 2023): the training dynamics of a 1-layer transformer
(attention over one-hot context tokens, then a decoder), simulated exactly in histogram form.
docs/scansnap.md states the model, the data and the theory.

>>> import fastmem as fm
>>> run = fm.scansnap.train(fm.scansnap.syn_small(), steps=100, lr_z=1.0, ratio=1.0)
>>> run.records.argmax[-1]          # each fact's most attended token
"""

from ..backends import register as _register

_register(__name__, {  # Scan and Snap's kernel, as fastmem.memory's
    "scansnap_train": ("Yt", "Z", "mY", "vY", "mZ", "vZ", "facts", "sequences", "spec", "out"),
})

from .data import Facts, Sequences, draw, syn_medium, syn_small
from .metrics import attention, attention_metrics
from .theory import h_continuous, h_star, snap_time
from .train import Records, ScanSnapRun, init, train
from . import experiments  # registers the sweep experiment "scan-snap"


def sample(data, batch=128, L=128, seed=0, step=0):
    """The sequences of global step ``step``'s batch that the sampled simulator trains on:
    (tokens (batch, L) int64, the last column the query; target (batch,) int64)."""
    from .. import _validate as v

    if not isinstance(data, (Facts, Sequences)):
        v.fail("data", "fm.scansnap.Facts or fm.scansnap.Sequences", type(data).__name__)
    batch, L = v.positive_int("batch", batch), v.positive_int("L", L)
    if L < 2:
        v.fail("L", "a sequence length >= 2", L)
    seed = v.positive_int("seed", seed, allow_zero=True, below=2**64)
    step = v.positive_int("step", step, allow_zero=True, below=2**40)
    if isinstance(data, Facts):
        return draw(data.tables(), None, seed, step, batch, L)
    if data.L != L:
        v.fail("L", f"the sequences' length {data.L}", L)
    return draw(None, data.tables(), seed, step, batch, L)


__all__ = ["Facts", "Records", "ScanSnapRun", "Sequences", "attention", "attention_metrics", "h_continuous", "h_star",
           "init", "sample", "snap_time", "syn_medium", "syn_small", "train"]
