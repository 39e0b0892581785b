"""Scan and Snap over the vocabulary M and the sequence length L: five sampled steps (batch
128, SGD with momentum, float32) and five population steps (16 facts), each call's fixed cost
(checks, Y's transposed copy) included, as a user pays it."""

import numpy as np

import fastmem as fm

from .common import BACKENDS, require

ss = fm.scansnap


def facts_with_M(M, facts=16, common=32):
    """The authors' generator at M tokens: 16 facts, 32 common tokens, the rest distinct."""
    unique = (M - common - 2 * facts) // facts
    return ss.Facts.synthetic(num_last=facts, num_next_per_last=1, num_common=common, num_common_per_last=0,
                              num_unique_per_next=unique)


class _Steps:
    timeout = 300

    def _setup(self, M, backend):
        require(backend, "scansnap_train")
        if backend != "cpp" and M > 512:
            raise NotImplementedError("the fallbacks are timed at M = 512 only")
        self.facts, self.backend = facts_with_M(M), backend
        self.Y, self.Z = ss.init(self.facts.M, "torch", seed=0, dtype=np.float32)

    def _train(self, simulator, L=2):
        ss.train(self.facts, 5, batch=128, L=L, Y=self.Y, Z=self.Z, simulator=simulator, record_steps=[],
                 dtype=np.float32, backend=self.backend)


class ScanSnapSampled(_Steps):
    params = ([512, 2048, 8192], [128, 512], BACKENDS)
    param_names = ["M", "L", "backend"]

    def setup(self, M, L, backend):
        self._setup(M, backend)

    def time_5_steps(self, M, L, backend):
        self._train("sampled", L)

    def peakmem_5_steps(self, M, L, backend):
        self._train("sampled", L)


class ScanSnapPopulation(_Steps):
    params = ([512, 2048, 8192], BACKENDS)
    param_names = ["M", "backend"]

    def setup(self, M, backend):
        self._setup(M, backend)

    def time_5_steps(self, M, backend):
        self._train("population")
