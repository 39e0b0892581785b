"""The small-transformer study of the associative-memory paper (Cabannes, Simsek, Bietti, ICML
2024, section 6): the two-layer attention-only transformer of Bietti et al., *Birth of a
Transformer: a memory viewpoint*, trained on the induction-head task. docs/transformer.md states
the model, the data, the probes and which part is one of fastmem's associative memories.

>>> import fastmem as fm
>>> task = fm.transformer.InductionHeads(k=5, seq_len=256)
>>> model = fm.transformer.TwoLayer(d=64, seed=0)
>>> run = fm.transformer.train(model, task, lr=100, steps=50, batch_size=512, train="wo2")
>>> run.loss, run.margins["wo2"], run.recall["wo2"]
"""

from ..backends import register as _register

_register(__name__, {  # the induction-head kernels (kernels/induction_heads.hpp)
    "ihead_sample": ("tables", "spec", "z", "outs"),
    "ihead_rows_forward": ("weights", "z", "rows", "Hr", "A2"),
    "ihead_loss_grads": ("weights", "z", "rows", "weight", "grads"),
    "ihead_wo2_grads": ("Hr", "A2", "WU", "y", "Ws", "weight", "G", "loss"),
})

from .data import Batch, Bigrams, InductionHeads
from .model import TRAIN_SETS, TwoLayer
from .probes import PROBES, probe_memories, probes
from .train import IHeadRun, Record, train, train_lrs
from . import experiments  # registers the sweep experiment "ihead"

__all__ = ["Batch", "Bigrams", "IHeadRun", "InductionHeads", "PROBES", "Record", "TRAIN_SETS", "TwoLayer",
           "probe_memories", "probes", "train", "train_lrs"]
