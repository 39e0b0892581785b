"""The induction-head transformer over the width d and the sequence length T: one SGD step of
the W_O^2-only study and of the all-parameter study (batch 64, float32, the batch drawn inside
the step as a run draws it), and the sampler at the paper's batch (512 sequences)."""

import numpy as np

import fastmem as fm

from .common import BACKENDS, require

tr = fm.transformer


class _Step:
    timeout = 300
    B = 64

    def setup(self, d, T, backend):
        require(backend, "ihead_loss_grads")
        if backend == "numpy" and (d, T) != (32, 64):
            raise NotImplementedError("the dense float64 reference is timed at d = 32, T = 64 only")
        self.task = tr.InductionHeads(k=5, seq_len=T)
        self.model = tr.TwoLayer(d=d, seq_len=T, dtype=np.float32, seed=0)
        self.record = tr.Record(steps=[])
        self.backend = backend


class IHeadWO2Step(_Step):
    params = ([32, 64, 128], [64, 256], BACKENDS)
    param_names = ["d", "T", "backend"]

    def time_step(self, d, T, backend):
        tr.train(self.model, self.task, 50.0, 1, batch_size=self.B, record=self.record, backend=self.backend)


class IHeadAllStep(_Step):
    params = ([32, 64, 128], [64, 256], BACKENDS)
    param_names = ["d", "T", "backend"]

    def time_step(self, d, T, backend):
        tr.train(self.model, self.task, 5.0, 1, batch_size=self.B, train="all", record=self.record,
                 backend=self.backend)

    def peakmem_step(self, d, T, backend):
        tr.train(self.model, self.task, 5.0, 1, batch_size=self.B, train="all", record=self.record,
                 backend=self.backend)


class IHeadSample(_Step):
    params = ([64], [64, 256], BACKENDS)
    param_names = ["d", "T", "backend"]

    def setup(self, d, T, backend):
        require(backend, "ihead_sample")
        if backend == "numpy":
            raise NotImplementedError("the reference sampler is a Python loop: timed on the compiled backend")
        self.task = tr.InductionHeads(k=5, seq_len=T)
        self.task.sample(1)  # the alias tables, built once per Bigrams
        self.backend = backend

    def time_batch_512(self, d, T, backend):
        self.task.sample(512, seed=0, step=1, backend=self.backend)


class IHeadWO2Sweep(_Step):
    """One step of cell 3's sweep: 4 lrs on a shared frozen forward (fm.transformer.train_lrs)."""

    params = ([32, 64, 128], [64, 256], BACKENDS)
    param_names = ["d", "T", "backend"]

    def time_step_4_lrs(self, d, T, backend):
        tr.train_lrs(self.model, self.task, [20.0, 50.0, 100.0, 200.0], 1, batch_size=self.B, record=self.record,
                     backend=self.backend)
